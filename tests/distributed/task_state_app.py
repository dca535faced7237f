"""Nodes for the task-state tests, served by real worker processes: each reader reports what it read.

``reader`` reports the length and first character of ``doc`` and its worker; the graph
writes a large ``doc`` (so its readers' tasks name the state instead of carrying it),
fans out to ``WIDTH`` readers, then writes another ``doc`` and fans out again.
"""

from __future__ import annotations

import os
from typing import Any

from distributed_agents import END, START, Graph, NodeContext, NodeRegistry, State

registry = NodeRegistry()
WIDTH = 20
DOC_BYTES = 200_000


@registry.register("reader")
def reader(state: State, context: NodeContext) -> dict[str, Any]:
    return {"read": [[len(state["doc"]), state["doc"][:1], context.worker_id or str(os.getpid())]]}


@registry.register("write_a")
def write_a(state: State) -> dict[str, Any]:
    return {"doc": "a" * DOC_BYTES}


@registry.register("write_b")
def write_b(state: State) -> dict[str, Any]:
    return {"doc": "b" * DOC_BYTES}


def fan_twice_graph() -> Graph:
    """start ("a" doc) -> WIDTH readers -> bump ("b" doc) -> WIDTH readers -> END."""
    graph = Graph("task_state_twice", reducers={"read": "extend"})
    graph.add_node("start", node_type="write_a")
    graph.add_node("bump", node_type="write_b")
    first = [f"first{i}" for i in range(WIDTH)]
    second = [f"second{i}" for i in range(WIDTH)]
    for name in first + second:
        graph.add_node(name, node_type="reader")
    graph.add_edge(START, "start")
    for name in first:
        graph.add_edge("start", name)
    graph.add_edge(first, "bump")
    for name in second:
        graph.add_edge("bump", name)
    graph.add_edge(second, END)
    return graph.compile()
