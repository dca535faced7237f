"""A LangGraph-style module: the graph holds its node functions (a subgraph's too).

Worker processes serve it with ``distributed-agents worker --app lg_graph_app:app``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from distributed_agents import END, START, Graph, StateGraph


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
