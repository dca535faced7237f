"""Graphs for the durability-mode tests; also the orchestrator process the SIGKILL test kills.

Worker processes serve ``registry`` (``--app durability_app``): ``add`` appends the node's
name to ``path``. ``chain_graph(local=True)`` runs the same nodes in the orchestrator's
process, where each run appends a line to ``$DA_MARKER_DIR/runs`` (so a test counts how
often each node ran, across processes) and ``hang`` blocks forever when ``DA_HANG=1``.

Usage as the orchestrator: ``python durability_app.py URL PREFIX WORKFLOW_ID MODE``:
executes the local chain with ``durability=MODE`` and lease_ttl 1 s.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from typing import Any

from distributed_agents import Graph, NodeContext, NodeRegistry, Orchestrator, State

registry = NodeRegistry()
NODES = ["n0", "n1", "hang", "n3", "n4"]


@registry.register("add")
def add(state: State, context: NodeContext) -> dict[str, Any]:
    return {"path": context.node, "total": state.get("total", 0) + len(context.node)}


def _local(name: str) -> Any:
    async def run(state: State) -> dict[str, Any]:
        with open(pathlib.Path(os.environ["DA_MARKER_DIR"]) / "runs", "a") as runs:
            runs.write(f"{name} {os.getpid()}\n")
        if name == "hang" and os.environ.get("DA_HANG") == "1":
            await asyncio.sleep(300)
        return {"path": name, "total": state.get("total", 0) + len(name)}
    return run


def chain_graph(local: bool = False) -> Graph:
    """n0 -> n1 -> hang -> n3 -> n4, in this process (``local``) or on workers."""
    graph = Graph("durability-chain", reducers={"path": "append"})
    for name in NODES:
        if local:
            graph.add_node(name, _local(name))
        else:
            graph.add_node(name, node_type="add")
    graph.set_entry_point(NODES[0])
    for a, b in zip(NODES, NODES[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(NODES[-1]).compile()


def fan_graph() -> Graph:
    """start -> (a, b) -> join -> end, every node on workers."""
    graph = Graph("durability-fan", reducers={"path": "append", "total": "add"})
    for name in ("start", "a", "b", "join", "end"):
        graph.add_node(name, node_type="add")
    graph.set_entry_point("start").add_edge("start", "a").add_edge("start", "b").add_edge(["a", "b"], "join")
    return graph.add_edge("join", "end").set_finish_point("end").compile()


async def main(url: str, prefix: str, workflow_id: str, mode: str) -> None:
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, lease_ttl=1.0)
    await orchestrator.execute(chain_graph(local=True), {}, workflow_id=workflow_id, durability=mode)
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
