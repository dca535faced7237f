"""Nodes for the NATS cluster test, served by real worker processes via the CLI.

``cluster_chain``: ``start`` sends one ``part`` task per item (``Send``), ``merge``
joins them, then ``step1``..``step3`` in a row. Every node sleeps ``DA_CLUSTER_DELAY``
seconds (default 0.2, so a server can be killed while tasks are in flight) and is a pure
function of its input, so the final state of a run with faults equals one without.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from distributed_agents import Graph, NodeRegistry, Send, State

registry = NodeRegistry()


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


async def _pause() -> None:
    await asyncio.sleep(float(os.environ.get("DA_CLUSTER_DELAY", "0.2")))


@registry.register("start")
async def start(state: State) -> dict[str, Any]:
    await _pause()
    return {"items": [_digest("item", state["value"], i) for i in range(3)], "trail": ["start"]}


@registry.register("part")
async def part(state: State) -> dict[str, Any]:  # state is the Send's argument
    await _pause()
    return {"parts": [_digest("part", state["item"])]}


@registry.register("merge")
async def merge(state: State) -> dict[str, Any]:
    await _pause()
    return {"value": _digest("merge", *sorted(state["parts"])), "trail": ["merge"]}


def _step(name: str) -> Any:
    async def node(state: State) -> dict[str, Any]:
        await _pause()
        return {"value": _digest(name, state["value"]), "trail": [name]}
    node.__name__ = name
    return node


for _name in ("step1", "step2", "step3"):
    registry.register_node(_name, _step(_name))


def build_graph() -> Graph:
    graph = Graph("cluster_chain", reducers={"trail": "extend", "parts": "extend"})
    for name in ("start", "part", "merge", "step1", "step2", "step3"):
        graph.add_node(name)
    graph.set_entry_point("start")
    graph.add_conditional_edge("start", lambda s: [Send("part", {"item": item}) for item in s["items"]], ["part"])
    graph.add_edge("part", "merge").add_edge("merge", "step1").add_edge("step1", "step2").add_edge("step2", "step3")
    return graph.set_finish_point("step3").compile()


NODE_TYPES = ("start", "part", "merge", "step1", "step2", "step3")


def fault_free_states(count: int) -> list[dict[str, Any]]:
    """The final states of ``count`` runs (inputs ``in-0``..) computed in this process, no delay, no faults.

    A cluster test's runs through server failures must end in exactly these states.
    """
    from support.aio import run  # tests/support is on sys.path in the test process only

    from distributed_agents import Orchestrator

    async def compute() -> list[dict[str, Any]]:
        orchestrator = Orchestrator(registry=registry)
        try:
            return [dict(await orchestrator.execute(build_graph(), {"value": f"in-{i}", "trail": []}))
                    for i in range(count)]
        finally:
            await orchestrator.close()

    previous = os.environ.get("DA_CLUSTER_DELAY")
    os.environ["DA_CLUSTER_DELAY"] = "0"
    try:
        return run(compute(), timeout=60)
    finally:
        if previous is None:
            os.environ.pop("DA_CLUSTER_DELAY", None)
        else:
            os.environ["DA_CLUSTER_DELAY"] = previous
