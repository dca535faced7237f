"""Node functions for the tests of workflows deleted and created again under their id.

Every node runs on a worker (the graphs have no functions) and marks one file per run
under ``DA_MARKER_DIR`` (``<node>-<input>-<random>``), so a test sees which nodes really
ran for each incarnation of a workflow id. ``check`` fails (finally: no retry) when the
state says ``fail``, leaving a dead letter.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from distributed_agents import END, START, Graph, NodeRegistry, Send, State

registry = NodeRegistry()


def mark(node: str, value: Any) -> None:
    (pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"{node}-{value}-{uuid.uuid4().hex}").touch()


@registry.register("double")
def double(state: State) -> dict[str, Any]:
    mark("double", state["v"])
    return {"out": [state["v"] * 2]}


@registry.register("check")
def check(state: State) -> dict[str, Any]:
    mark("check", state["v"])
    if state.get("fail"):
        raise ValueError(f"refusing v={state['v']}")
    return {"checked": state["v"]}


def plain() -> Graph:
    """double -> check -> END, both on a worker."""
    graph = Graph("incarnation_plain", reducers={"out": "append"})
    graph.add_node("double").add_node("check")
    return graph.add_edge(START, "double").add_edge("double", "check").add_edge("check", END).compile()


def fan_out() -> Graph:
    """One Send to double per item of ``vs`` (each with its own ``v``)."""
    graph = Graph("incarnation_fan", reducers={"out": "append"})
    graph.add_node("double")
    graph.add_conditional_edge(START, lambda s: [Send("double", {"v": v}) for v in s["vs"]], ["double"])
    return graph.add_edge("double", END).compile()


def nested() -> Graph:
    """A subgraph node ``inner`` (double -> check) with shared keys, then END."""
    graph = Graph("incarnation_nested")  # no reducer: the subgraph's final "out" replaces ours
    graph.add_node("inner", plain())
    return graph.add_edge(START, "inner").add_edge("inner", END).compile()
