"""Node functions for tests/distributed/test_review_s12.py, served by real worker processes.

``plan`` starts a fan-out (one ``cube`` per item, by ``Send``); ``cube`` appends a line per
run to ``<DA_MARKER_DIR>/runs`` (worker id, workflow id, item, attempt), sleeps
``pause`` seconds and returns the item's cube; ``bump`` adds one to ``count`` (a chain of
single-node steps).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

from distributed_agents import Graph, NodeContext, NodeRegistry, Send, State

registry = NodeRegistry()


def _mark(context: NodeContext, what: str) -> None:
    with open(pathlib.Path(os.environ["DA_MARKER_DIR"]) / "runs", "a") as runs:
        runs.write(f"{context.worker_id} {context.workflow_id} {what} {context.attempt}\n")


@registry.register("plan")
def plan(state: State) -> dict[str, Any]:
    return {"total": 0}


@registry.register("cube")
async def cube(state: State, context: NodeContext) -> dict[str, Any]:
    _mark(context, str(state["n"]))
    await asyncio.sleep(float(state.get("pause", 0.0)))
    return {"total": state["n"] ** 3, "order": [state["n"]]}


@registry.register("bump")
async def bump(state: State, context: NodeContext) -> dict[str, Any]:
    _mark(context, f"bump{state['count']}")
    return {"count": state["count"] + 1}


def fan_out(state: State) -> list[Send]:
    return [Send("cube", {"n": n, "pause": state.get("pause", 0.0)}) for n in state["items"]]


def map_graph() -> Graph:
    graph = Graph("review_s12_map", reducers={"total": "add", "order": "extend"})
    graph.add_node("plan").add_node("cube")
    graph.set_entry_point("plan").add_conditional_edge("plan", fan_out, ["cube"])
    return graph.set_finish_point("cube").compile()


def chain_graph(length: int) -> Graph:
    graph = Graph("review_s12_chain")
    names = [f"b{i}" for i in range(length)]
    for name in names:
        graph.add_node(name, node_type="bump")
    for left, right in zip(names, names[1:]):
        graph.add_edge(left, right)
    return graph.set_entry_point(names[0]).set_finish_point(names[-1]).compile()


async def _drive(url: str, prefix: str, workflow_id: str, items: int) -> None:
    """Submit a fan-out of ``items`` and drive it until this process is killed (``__main__``)."""
    from distributed_agents.distributed import DistributedOrchestrator

    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False, lease_ttl=1.0)
    await orchestrator.submit(map_graph(), {"items": list(range(items))}, workflow_id=workflow_id)
    print(workflow_id, flush=True)
    await orchestrator.wait(workflow_id)


if __name__ == "__main__":  # python review_s12_app.py URL PREFIX WORKFLOW_ID ITEMS: an orchestrator to SIGKILL
    import sys

    asyncio.run(_drive(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
