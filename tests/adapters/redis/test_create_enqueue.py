"""A new workflow's create and its first step's enqueue in one script (``create_leased_enqueuing``).

Both or neither: no crash leaves a workflow created whose first tasks are not queued, and
a refused create (the id is taken, or another owner holds its lease) queues nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, NodeRegistry, State, Worker
from distributed_agents.core.errors import WorkflowExistsError
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(120)


def _record(workflow_id: str) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", WorkflowStatus.RUNNING, {"x": 0}, frontier={"next": ["n"]})


def test_the_create_queues_the_tasks_and_a_refused_create_queues_nothing(open_redis: Any) -> None:
    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        store, queue = backend.state_store, backend.task_queue
        try:
            record = _record("w1")
            made = await store.create_leased_enqueuing(
                record, owner="o1", ttl=30.0, checkpoint=Checkpoint("w1", 0, record.state, record.frontier),
                queue=queue, tasks=[Task("w1-t", "w1", "n", "alpha", {"state": {}})])
            assert made is not None
            saved, lease, queued = made
            stored = await store.get("w1")
            holder = await store.lease_holder("w1")
            checkpoints = await store.list_checkpoints("w1")
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=5)]
            # The id is taken: refused, and its task is not queued.
            with pytest.raises(WorkflowExistsError):
                await store.create_leased_enqueuing(record, owner="o1", ttl=30.0, queue=queue,
                                                    tasks=[Task("w1-again", "w1", "n", "beta", {})])
            # Another owner holds the lease of a new id: None, nothing written, nothing queued.
            other = await store.acquire_lease("w2", "o2", 30.0)
            assert other is not None
            held = await store.create_leased_enqueuing(_record("w2"), owner="o1", ttl=30.0, queue=queue,
                                                       tasks=[Task("w2-t", "w2", "n", "beta", {})])
            beta = await queue.stats("beta")
            return (saved.version, queued, lease.owner, stored is not None and stored.version,
                    holder is not None and holder.owner, [c.step for c in checkpoints], claimed, held,
                    await store.get("w2"), beta.queued)
        finally:
            await backend.close()

    (version, queued, owner, stored, holder, steps, claimed, held, absent, beta) = run(scenario(), 60)
    assert (version, queued, owner, stored, holder, steps) == (1, True, "o1", 1, "o1", [0])
    assert claimed == ["w1-t"]
    assert held is None and absent is None
    assert beta == 0  # neither refused create queued its task


def test_a_workflow_whose_orchestrator_died_right_after_the_create_is_taken_over_and_runs_its_node_once(
    open_redis: Any,
) -> None:
    """The orchestrator stores the workflow (its task queued with it) and dies before driving
    it: a worker runs the task meanwhile; another orchestrator takes the workflow over once
    the lease lapses, finds the task's result (the same task id) and completes the workflow:
    the node ran once."""
    runs: list[str] = []
    registry = NodeRegistry()

    @registry.register("count")
    async def count(state: State) -> dict[str, Any]:
        runs.append(state.workflow_id)
        return {"x": 1}

    graph = Graph("died").add_node("n", node_type="count").set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> tuple[str, Any, int]:
        prefix = f"died{uuid.uuid4().hex[:8]}"
        first, second, worker_backend = [await open_redis(prefix=prefix) for _ in range(3)]
        worker = Worker(["count"], capacity=2, backend=worker_backend, registry=registry, worker_id="w1")
        serving = asyncio.ensure_future(worker.start())
        dead = Orchestrator(backend=first, lease_ttl=1.0, local_nodes=False, wait_for_workers=True)
        rescuer = Orchestrator(backend=second, lease_ttl=1.0, local_nodes=False, wait_for_workers=True,
                               recover=True, recovery_interval=0.1)
        try:
            # What execute does up to the drive: the record, its lease and its first task, in one script.
            enqueued: dict[str, Any] = {}
            record, _ = await dead._start(graph, {}, workflow_id="wf-died", step_limit=None, priority=0,
                                          from_checkpoint=None, enqueued=enqueued)
            assert len(enqueued) == 1  # queued with the create
            rescuer.register_graph(graph)
            await rescuer.connect()
            result = await rescuer.wait("wf-died", timeout=60)
            final = await second.state_store.get("wf-died")
            assert final is not None
            return final.status, dict(result), final.version
        finally:
            await rescuer.close()
            await worker.stop()
            await serving
            for backend in (first, second, worker_backend):
                await backend.close()

    status, result, version = run(scenario(), 90)
    assert status == WorkflowStatus.COMPLETED and result == {"x": 1}
    assert runs == ["wf-died"]  # the task queued with the create ran once; the takeover reused its result
    assert version == 2  # created, then committed once (by the rescuer)


def test_tasks_queued_with_the_create_are_dated_from_its_dispatch_in_their_events(open_redis: Any) -> None:
    """``node.started`` says when a node was dispatched: for a task queued by the create script,
    when the create was sent (as ``workflow.started``), not when the first step took it up,
    which may be after the worker started it. A step that queues its own tasks (the second
    node) is dated when it does."""
    ran: dict[str, float] = {}
    registry = NodeRegistry()

    @registry.register("first")
    async def first(state: State) -> dict[str, Any]:
        ran["a"] = time.time()
        return {"x": 1}

    @registry.register("second")
    async def second(state: State) -> dict[str, Any]:
        ran["b"] = time.time()
        return {"x": 2}

    graph = (Graph("dated").add_node("a", node_type="first").add_node("b", node_type="second")
             .set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile())
    wanted = ("workflow.started:", "node.started:a", "node.completed:a", "node.started:b", "node.completed:b")

    async def scenario() -> dict[str, float]:
        prefix = f"dated{uuid.uuid4().hex[:8]}"
        backend, worker_backend = await open_redis(prefix=prefix), await open_redis(prefix=prefix)
        worker = Worker(["first", "second"], capacity=2, backend=worker_backend, registry=registry, worker_id="w1")
        serving = asyncio.ensure_future(worker.start())
        orchestrator = Orchestrator(backend=backend, local_nodes=False, wait_for_workers=True)
        subscription = await backend.message_bus.subscribe("events.>")
        try:
            assert dict(await orchestrator.execute(graph, {})) == {"x": 2}
            times: dict[str, float] = {}
            while len(times) < len(wanted):
                message = await subscription.get(timeout=10)
                assert message is not None, times
                key = f"{message.data['type']}:{message.data.get('node', '')}"
                if key in wanted:
                    times[key] = float(message.data["time"])
            return times
        finally:
            await subscription.close()
            await orchestrator.close()
            await worker.stop()
            await serving
            await backend.close()
            await worker_backend.close()

    times = run(scenario(), 60)
    assert times["node.started:a"] == times["workflow.started:"]  # queued with the create: dispatched with it
    assert times["node.started:a"] <= ran["a"]  # dispatched before the worker started it
    assert times["node.completed:a"] <= times["node.started:b"] <= ran["b"]
