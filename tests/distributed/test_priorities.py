"""Priorities reach users: a high-priority workflow's tasks overtake a backlog on every backend.

Deterministic, with no timing: a backlog is enqueued while no worker runs, then the
urgent workflow is enqueued, and only then does one worker of capacity 1 start; the
order in which it ran the tasks is the order it claimed them.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.errors import ConfigurationError, GraphValidationError, NodeExecutionError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


def work_graph(name: str = "prio", *, node_priority: int = 0) -> Graph:
    graph = Graph(name).add_node("work", priority=node_priority)
    return graph.set_entry_point("work").set_finish_point("work").compile()


async def until_queued(orchestrator: Orchestrator, count: int) -> None:
    while (await orchestrator.backend.task_queue.stats("work")).queued < count:
        await asyncio.sleep(0.02)


async def enqueue_all(orchestrator: Orchestrator, plan: list[tuple[str, Graph, int]]) -> list[asyncio.Future[State]]:
    """Execute each (label, graph, workflow priority) in turn, each once its task is queued."""
    await orchestrator.connect()
    running = []
    for label, graph, priority in plan:
        running.append(asyncio.ensure_future(orchestrator.execute(graph, {"label": label}, priority=priority)))
        await until_queued(orchestrator, len(running))
    return running


BACKLOG: list[tuple[str, Graph, int]] = [(f"low{i}", work_graph(), 0) for i in range(4)]


def test_on_memory_workflow_and_node_priorities_order_the_claims() -> None:
    order: list[str] = []

    def work(state: State) -> dict[str, Any]:
        order.append(state["label"])
        return {"done": state["label"]}

    plan = [("lowest", work_graph(), -5), *BACKLOG, ("urgent-node", work_graph("urgent_node", node_priority=5), 0),
            ("urgent-workflow", work_graph(), 10), ("both", work_graph("urgent_node", node_priority=5), 10)]

    async def scenario() -> list[State]:
        orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True)
        running = await enqueue_all(orchestrator, plan)
        worker = Worker(capacity=1, poll_wait=0.05)
        worker.register_node("work", work)
        serving = asyncio.ensure_future(worker.start())
        try:
            return list(await asyncio.gather(*running))
        finally:
            await worker.stop(grace=1)
            await serving

    results = run(scenario())
    assert [r["done"] for r in results] == [label for label, _, _ in plan]
    assert order == ["both", "urgent-workflow", "urgent-node", "low0", "low1", "low2", "low3", "lowest"]


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_high_priority_workflow_overtakes_a_backlog(backend: str, request: pytest.FixtureRequest,
                                                      tmp_path: pathlib.Path) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"prio{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "redrive_app:registry")
    plan = [*BACKLOG, ("urgent", work_graph(), 10), ("urgent-node", work_graph("urgent_node", node_priority=5), 0)]

    async def scenario() -> list[State]:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            running = await enqueue_all(orchestrator, plan)
            workers.start("w1", "--capacity", "1", "--node-types", "work")
            return list(await asyncio.gather(*running))
        finally:
            await orchestrator.close()

    try:
        results = run(scenario(), timeout=100)
    finally:
        workers.close()
    assert [r["done"] for r in results] == [label for label, _, _ in plan]
    order = (tmp_path / "order").read_text().splitlines()
    assert order == ["urgent", "urgent-node", "low0", "low1", "low2", "low3"]


def test_resume_keeps_the_workflow_priority() -> None:
    def broken(state: State) -> dict[str, Any]:
        raise RuntimeError("down")

    graph = Graph("prio_resume").add_node("work", priority=2).set_entry_point("work").set_finish_point("work")
    graph.compile()

    async def scenario() -> list[int]:
        orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True)
        worker = Worker(capacity=1, poll_wait=0.05)
        worker.register_node("work", broken)
        serving = asyncio.ensure_future(worker.start())
        try:
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(graph, {}, workflow_id="wf-prio", priority=7)
            with pytest.raises(NodeExecutionError):
                await Orchestrator(local_nodes=False, wait_for_workers=True).resume("wf-prio", graph)
            letters = await orchestrator.backend.task_queue.dead_letters("work")
            return [letter.task.priority for letter in letters if letter.task is not None]
        finally:
            await worker.stop(grace=1)
            await serving

    assert run(scenario()) == [9, 9]  # both runs: workflow 7 + node 2


@pytest.mark.parametrize("priority", [1.5, True, "high", 10 ** 7])
def test_priorities_are_validated(priority: Any) -> None:
    with pytest.raises(GraphValidationError, match="priority"):
        Graph("bad").add_node("n", lambda s: None, priority=priority)
    with pytest.raises(ConfigurationError, match="priority"):
        run(Orchestrator().execute(work_graph(), {}, priority=priority))
