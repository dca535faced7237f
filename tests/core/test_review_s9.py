"""Settling calls run by the node's own task (no shield), attacked on the memory backend.

A settling call that never returns must not hold stop() for ever (it waits SETTLE_ON_STOP);
a cancel of the workflow while the node's own cancellation is settling; stop() cancelling a
node whose release then settles; and a stop() in the middle of a burst of tasks finishing:
every claimed task ends either with its result or back in the queue, never both, never
neither, and the worker's counters match the queue.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import State, Worker, open_backend
from distributed_agents.core import worker as worker_module
from distributed_agents.core.ports import Task

pytestmark = pytest.mark.timeout(30)


def _task(task_id: str, workflow_id: str, node_type: str) -> Task:
    return Task(task_id, workflow_id, node_type, node_type, {"state": {}})


def test_stop_is_bounded_by_settle_on_stop_when_an_ack_never_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "SETTLE_ON_STOP", 0.3)
    node_type = f"stuck{uuid.uuid4().hex[:6]}"
    worker = Worker(poll_wait=0.05)
    worker.register_node(node_type, lambda state: {"ok": 1})
    backend = open_backend("memory://")
    queue = worker.backend.task_queue
    acking = asyncio.Event()
    passing = queue.ack

    async def stuck(claim: Any, output: Any) -> None:
        if claim.task.node_type != node_type:
            return await passing(claim, output)
        acking.set()
        await asyncio.Event().wait()  # the server never answers

    async def scenario() -> tuple[bool, int, Any]:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(_task(f"{node_type}-t", "wf-stuck", node_type))
        await acking.wait()
        await worker.stop(grace=0)  # returns once SETTLE_ON_STOP passed
        await serving
        return bool(worker._settling), len(worker._running), await backend.task_queue.stats(node_type)

    queue.ack = stuck  # type: ignore[method-assign]
    try:
        settling, running, stats = run(scenario())
    finally:
        queue.ack = passing  # type: ignore[method-assign]
    assert (settling, running) == (False, 0)
    assert (stats.queued, stats.in_flight) == (0, 1)  # still leased: its lease expiry redelivers it
    assert worker.stats.succeeded == 0 and worker.stats.released == 0


def test_a_cancel_during_the_cancelled_nodes_own_settling_leaves_no_dead_letter() -> None:
    node_type = f"cx{uuid.uuid4().hex[:6]}"
    started = asyncio.Event()

    async def slow(state: State) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    worker = Worker(poll_wait=0.05)
    worker.register_node(node_type, slow)
    backend = open_backend("memory://")
    queue = worker.backend.task_queue
    nacking, gate = asyncio.Event(), asyncio.Event()
    passing = queue.nack

    async def gated(claim: Any, error: str, **kw: Any) -> bool:
        nacking.set()
        await gate.wait()
        return await passing(claim, error, **kw)

    async def scenario() -> tuple[Any, Any, list[Any]]:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(_task(f"{node_type}-t", "wf-cx", node_type))
        await started.wait()
        await backend.message_bus.publish("control.cancel", {"workflow_id": "wf-cx"})
        await nacking.wait()
        # Again while the cancellation's nack settles, then a stop: neither interrupts it.
        await backend.message_bus.publish("control.cancel", {"workflow_id": "wf-cx"})
        stopping = asyncio.ensure_future(worker.stop(grace=0))
        for _ in range(20):
            await asyncio.sleep(0)
        gate.set()
        await stopping
        await serving
        return (await backend.task_queue.get_result(f"{node_type}-t"), await backend.task_queue.stats(node_type),
                await backend.task_queue.dead_letters(node_type))

    queue.nack = gated  # type: ignore[method-assign]
    try:
        result, stats, dead = run(scenario())
    finally:
        queue.nack = passing  # type: ignore[method-assign]
    assert result is not None and result.status == "failed" and "cancelled" in (result.error or "")
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0) and dead == []
    assert (worker.stats.succeeded, worker.stats.released, worker.stats.failed) == (0, 0, 0)


def test_a_node_stopped_mid_run_is_released_once_and_delivered_again_as_the_same_attempt() -> None:
    node_type = f"rel{uuid.uuid4().hex[:6]}"
    started = asyncio.Event()

    async def slow(state: State) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    worker = Worker(poll_wait=0.05)
    worker.register_node(node_type, slow)
    backend = open_backend("memory://")

    async def scenario() -> tuple[Any, list[Any]]:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(_task(f"{node_type}-t", "wf-rel", node_type))
        await started.wait()
        await worker.stop(grace=0)
        await serving
        stats = await backend.task_queue.stats(node_type)
        again = await backend.task_queue.claim([node_type], worker_id="next")
        for claim in again:
            await backend.task_queue.ack(claim, None)
        return stats, again

    stats, again = run(scenario())
    assert (stats.queued, stats.in_flight, stats.dead) == (1, 0, 0)
    assert [c.attempt for c in again] == [1]
    assert (worker.stats.released, worker.stats.succeeded, worker.stats.lost_leases) == (1, 0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stop_among_tasks_finishing_leaves_each_acked_or_queued_and_counts_match(seed: int) -> None:
    rng = random.Random(seed)
    node_type = f"burst{uuid.uuid4().hex[:6]}"
    delays = [rng.choice([0, 0, 0.001, 0.01, 0.05, 5]) for _ in range(40)]

    async def node(state: State) -> dict[str, Any]:
        await asyncio.sleep(delays[int(state["i"])])
        return {"i": state["i"]}

    worker = Worker(poll_wait=0.05, capacity=8)
    worker.register_node(node_type, node)
    backend = open_backend("memory://")
    ids = [f"{node_type}-{i}" for i in range(len(delays))]

    async def scenario() -> tuple[int, int, list[str], Any]:
        queue = backend.task_queue
        serving = asyncio.ensure_future(worker.start())
        for i, task_id in enumerate(ids):
            await queue.enqueue(Task(task_id, "wf-burst", node_type, node_type, {"state": {"i": i}}))
        for _ in range(rng.randint(5, 40)):
            await asyncio.sleep(0.005)
        await worker.stop(grace=0)
        await serving
        results = [await queue.get_result(task_id) for task_id in ids]
        done = sum(r is not None for r in results)
        wrong = [task_id for task_id, r in zip(ids, results)
                 if r is not None and (r.status != "succeeded" or r.output != {"i": ids.index(task_id)})]
        stats = await queue.stats(node_type)
        leftover = await queue.claim([node_type], worker_id="after", max_tasks=100)
        again = sum(1 for c in leftover if c.task.id in ids and results[ids.index(c.task.id)] is not None)
        for claim in leftover:
            await queue.ack(claim, None)
        return done, again, wrong, stats

    done, again, wrong, stats = run(scenario())
    assert wrong == [] and again == 0  # no task both acked and queued again
    assert stats.in_flight == 0 and stats.dead == 0
    assert done + stats.queued == len(ids)  # none lost
    assert worker.stats.succeeded == done


def test_a_cancel_while_a_streaming_nodes_chunks_are_published_still_settles_the_task() -> None:
    node_type = f"str{uuid.uuid4().hex[:6]}"

    async def streaming(state: State, context: Any) -> dict[str, Any]:
        context.stream_writer({"progress": 1})
        return {"done": True}

    worker = Worker(poll_wait=0.05)
    worker.register_node(node_type, streaming)
    backend = open_backend("memory://")
    bus = worker.backend.message_bus
    publishing, gate = asyncio.Event(), asyncio.Event()
    passing = bus.publish_many

    async def gated(messages: Any) -> None:
        if any(str(channel).startswith("stream.wf-str") for channel, _ in messages):
            publishing.set()
            await gate.wait()
        await passing(messages)

    async def scenario() -> tuple[Any, Any]:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(_task(f"{node_type}-t", "wf-str", node_type))
        await publishing.wait()  # the node returned; its chunk is being published
        await backend.message_bus.publish("control.cancel", {"workflow_id": "wf-str"})
        for _ in range(20):  # the worker's listener has had its turn
            await asyncio.sleep(0)
        gate.set()
        await worker.stop(grace=1)
        await serving
        return await backend.task_queue.get_result(f"{node_type}-t"), await backend.task_queue.stats(node_type)

    bus.publish_many = gated  # type: ignore[method-assign]
    try:
        result, stats = run(scenario())
    finally:
        bus.publish_many = passing  # type: ignore[method-assign]
    assert result is not None  # acked, or finished as cancelled
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


def test_a_cancel_between_claim_and_the_tasks_first_step_still_settles_it() -> None:
    node_type = f"un{uuid.uuid4().hex[:6]}"
    worker = Worker(poll_wait=0.05, lease_seconds=30)
    worker.register_node(node_type, lambda state: {"ok": 1})
    backend = open_backend("memory://")
    queue = worker.backend.task_queue
    passing = queue.claim

    async def claim(*args: Any, **kwargs: Any) -> Any:
        got = await passing(*args, **kwargs)
        if got:  # the cancel arrives with the claim's reply: the listener runs before the task starts
            await backend.message_bus.publish("control.cancel", {"workflow_id": "wf-un"})
        return got

    async def scenario() -> tuple[Any, Any]:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(_task(f"{node_type}-t", "wf-un", node_type))
        for _ in range(50):  # the task was claimed, and settled one way or the other
            stats = await backend.task_queue.stats(node_type)
            if stats.queued == 0 and stats.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        await worker.stop(grace=1)
        await serving
        return await backend.task_queue.stats(node_type), await backend.task_queue.dead_letters(node_type)

    queue.claim = claim  # type: ignore[method-assign]
    try:
        stats, dead = run(scenario())
    finally:
        queue.claim = passing  # type: ignore[method-assign]
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0) and dead == []


def test_many_concurrent_workflows_through_a_worker_commit_each_step_once_with_the_local_result() -> None:
    """The orchestrator's hot path (6585ffc: fewer coroutine layers, saves and waits handed on, no settle
    coroutine for a commit with nothing in flight): 40 workflows at once, chains and a Send map whose
    items run on an in-process worker, each with its local result and one checkpoint per step."""
    from distributed_agents import Graph, Orchestrator, Send

    prefix = f"hp{uuid.uuid4().hex[:6]}"

    def fan(state: State) -> list[Any]:
        return [Send(f"{prefix}sq", {"n": n}) for n in range(state["k"])]

    def build(remote: bool) -> Any:
        graph = Graph(f"{prefix}-g", reducers={"total": "add", "seen": "extend"})
        for name in ("a", "b"):
            if remote:
                graph.add_node(f"{prefix}{name}", node_type=f"{prefix}{name}")
            else:
                graph.add_node(f"{prefix}{name}", _steps[name])
        graph.add_node(f"{prefix}sq", node_type=f"{prefix}sq") if remote else graph.add_node(f"{prefix}sq", _square)
        graph.set_entry_point(f"{prefix}a").add_edge(f"{prefix}a", f"{prefix}b")
        graph.add_conditional_edge(f"{prefix}b", fan, [f"{prefix}sq"])
        return graph.set_finish_point(f"{prefix}sq").compile()

    async def _a(state: State) -> dict[str, Any]:
        return {"seen": ["a"], "k": state["k"] + 1}

    def _b(state: State) -> dict[str, Any]:
        return {"seen": ["b"]}

    async def _square(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"total": state["n"] * state["n"], "seen": [f"s{state['n']}"]}

    _steps = {"a": _a, "b": _b}
    worker = Worker(poll_wait=0.05, capacity=16)
    worker.register_node(f"{prefix}a", _a)
    worker.register_node(f"{prefix}b", _b)
    worker.register_node(f"{prefix}sq", _square)
    inputs = [{"k": k % 7, "total": 0, "seen": []} for k in range(40)]

    async def scenario() -> tuple[list[Any], list[Any], list[list[int]]]:
        serving = asyncio.ensure_future(worker.start())
        orchestrator = Orchestrator()
        try:
            local = [await Orchestrator().execute(build(False), dict(i)) for i in inputs[:7]]
            results = await asyncio.gather(*(orchestrator.execute(build(True), dict(i), workflow_id=f"{prefix}-{n}")
                                             for n, i in enumerate(inputs)))
            store = worker.backend.state_store
            steps = [[c.step for c in reversed(await store.list_checkpoints(f"{prefix}-{n}"))]
                     for n in range(len(inputs))]
            return local, list(results), steps
        finally:
            await worker.stop(grace=1)
            await serving

    local, results, steps = run(scenario(), 60)
    for n, result in enumerate(results):
        expected = local[n % 7]
        assert result["total"] == expected["total"] and sorted(result["seen"]) == sorted(expected["seen"]), n
        assert len(steps[n]) >= 3 and sorted(steps[n]) == list(range(len(steps[n]))), (n, steps[n])  # once each
