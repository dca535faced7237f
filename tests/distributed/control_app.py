"""Node functions for the Send and interrupt tests, served by real worker processes.

``square`` runs once per Send (its state is the Send's argument) and reports which
worker ran it; ``human_approval`` and ``ask_twice`` pause with ``interrupt()`` and
get their answers from the task payload when the workflow is resumed. The graphs at
the end use these nodes; ``local=True`` gives them their functions, so an orchestrator
runs them itself (same fingerprint: functions are not part of a graph's identity).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from typing import Any, Literal

from distributed_agents import END, START, Command, Graph, NodeContext, NodeRegistry, Send, State, interrupt

registry = NodeRegistry()


@registry.register("plan")
def plan(state: State) -> dict[str, Any]:
    return {"total": 0}


@registry.register("square")
async def square(state: State, context: NodeContext) -> dict[str, Any]:
    await asyncio.sleep(state.get("pause", 0.002))  # long enough that one worker cannot drain the queue alone
    if state.get("mark"):  # one file per run of an item: how often each item ran
        (pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"square-{state['n']}-{uuid.uuid4().hex}").touch()
    return {"total": state["n"] * state["n"], "ran_on": [context.worker_id], "order": [state["n"]]}


@registry.register("generate")
def generate(state: State) -> dict[str, Any]:
    return {"llm_output": f"summary of {state['topic']}"}


@registry.register("human_approval")
def human_approval(state: State) -> Command[Literal["some_node", "another_node"]]:
    is_approved = interrupt({"question": "Is this correct?", "llm_output": state["llm_output"]})
    return Command(goto="some_node" if is_approved else "another_node")


@registry.register("some_node")
def some_node(state: State) -> dict[str, Any]:
    return {"decision": "approved"}


@registry.register("another_node")
def another_node(state: State) -> dict[str, Any]:
    return {"decision": "rejected"}


@registry.register("ask_twice")
def ask_twice(state: State) -> dict[str, Any]:
    name = interrupt("name?")
    return {"greeting": f"{interrupt(f'title of {name}?')} {name}"}


@registry.register("review_draft")
def review_draft(state: State) -> dict[str, Any]:
    answer = interrupt("send this draft?")
    return {"answer": answer, "seen": state["draft"][-8:], "length": len(state["draft"])}


def fan_out(state: State) -> list[Send]:
    extra = {key: state[key] for key in ("mark", "pause") if key in state}
    return [Send("square", {"n": n, **extra}) for n in state["items"]]


def map_graph(local: bool = False) -> Graph:
    """plan -> one ``square`` task per item -> END, reduced by ``add`` and ``extend``."""
    graph = Graph("distributed_map", reducers={"total": "add", "ran_on": "extend", "order": "extend"})
    graph.add_node("plan", _func("plan", local)).add_node("square", _func("square", local))
    graph.set_entry_point("plan").add_conditional_edge("plan", fan_out, ["square"])
    return graph.set_finish_point("square").compile()


def approval_graph(local: bool = False) -> Graph:
    """LangGraph's human-approval example; ``human_approval`` routes with Command(goto=)."""
    graph = Graph("distributed_approval")
    graph.add_node("generate", _func("generate", local))
    graph.add_node("human_approval", _func("human_approval", local), destinations=["some_node", "another_node"])
    graph.add_node("some_node", _func("some_node", local)).add_node("another_node", _func("another_node", local))
    graph.add_edge(START, "generate").add_edge("generate", "human_approval")
    return graph.add_edge("some_node", END).add_edge("another_node", END).compile()


def ask_graph(local: bool = False) -> Graph:
    """One node asking two questions in a row."""
    graph = Graph("distributed_ask").add_node("ask_twice", _func("ask_twice", local))
    return graph.set_entry_point("ask_twice").set_finish_point("ask_twice").compile()


def review_graph(local: bool = False) -> Graph:
    """One node that asks before it reads ``draft`` (which may be edited by the answer's ``Command(update=)``)."""
    graph = Graph("distributed_review").add_node("review_draft", _func("review_draft", local))
    return graph.set_entry_point("review_draft").set_finish_point("review_draft").compile()


def _func(node_type: str, local: bool) -> Any:
    return registry.get(node_type) if local else None
