"""A LangGraph-style module: the graph holds its node functions (a subgraph's too).

Worker processes serve it with ``distributed-agents worker --app lg_graph_app:app``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from distributed_agents import END, START, Graph, Runtime, StateGraph


class QA(TypedDict, total=False):
    q: str
    a: str
    checked: str


def answer(state: QA) -> dict[str, Any]:
    return {"a": "answer to " + state["q"]}


def check(state: dict[str, Any]) -> dict[str, Any]:
    return {"checked": state["a"].upper()}


checker = Graph("checker").add_node("check", check).set_entry_point("check").set_finish_point("check").compile()
builder = StateGraph(QA)
builder.add_node(answer)
builder.add_node("verify", checker)
builder.add_edge(START, "answer").add_edge("answer", "verify").add_edge("verify", END)
app = builder.compile()


class Greeting(TypedDict, total=False):
    greeting: str


def greet(state: Greeting, runtime: Runtime[Any]) -> dict[str, Any]:
    """Reads the run's context (LangGraph's ``runtime.context``) on a worker."""
    return {"greeting": f"hello {runtime.context.user_id} at level {runtime.context['level']}"}


greeter = StateGraph(Greeting)
greeter.add_node(greet).add_edge(START, "greet").add_edge("greet", END)
greeter_app = greeter.compile()


def other_answer(state: QA) -> dict[str, Any]:
    """Another graph's node ``answer``: the same node type as ``app``'s, another function."""
    return {"a": "another graph's answer"}


other = StateGraph(QA)  # named "QA" too, as app: only the functions tell the graphs apart
other.add_node("answer", other_answer).add_edge(START, "answer").add_edge("answer", END)
other_app = other.compile()
