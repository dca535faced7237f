"""``Worker.readiness()``: what the worker's readiness probe reports, through its life."""

from __future__ import annotations

import asyncio

from distributed_agents import Graph, NodeRegistry, Orchestrator, Worker
from distributed_agents.core.state import State


def test_ready_only_while_serving_and_registered() -> None:
    registry = NodeRegistry()
    gate = asyncio.Event()

    @registry.register("slow")
    async def slow(state: State) -> dict[str, bool]:
        await gate.wait()
        return {"done": True}

    graph = Graph("held").add_node("slow").set_entry_point("slow").set_finish_point("slow").compile()

    async def scenario() -> list[str | None]:
        url = "memory://readiness"
        worker = Worker(["slow"], backend=url, registry=registry, poll_wait=0.05)
        seen = [worker.readiness()]
        serving = asyncio.ensure_future(worker.start())
        while worker.readiness() is not None:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        seen.append(worker.readiness())
        async with Orchestrator(backend=url, local_nodes=False, wait_for_workers=True) as orchestrator:
            workflow_id = await orchestrator.submit(graph, {})
            while worker.slot_usage()["in_flight"] == 0:  # the node runs on the worker, held by the gate
                await asyncio.sleep(0.01)
            stopping = asyncio.ensure_future(worker.stop(grace=60))
            while not worker.readiness():
                await asyncio.sleep(0.01)
            seen.append(worker.readiness())  # the drain waits for the held node: not ready meanwhile
            gate.set()
            await stopping
            await serving
            seen.append(worker.readiness())
            assert (await orchestrator.wait(workflow_id))["done"] is True
        return seen

    before, ready, draining, after = asyncio.run(scenario())
    assert before is not None and "not serving yet" in before
    assert ready is None
    assert draining is not None and draining.startswith("draining"), draining
    assert after == "stopped"
