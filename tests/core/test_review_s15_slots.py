"""Review s15 of aebc12b ("Slots"): a task settling its result leaves its capacity slot.

Attacked on the memory backend, with the queue's settling calls held back or failing:
never more than ``capacity`` node functions at once (async, plain functions in threads,
abandoned threads, streaming nodes, nodes that raise and are retried), never more than
``2 * capacity`` claimed-and-unsettled tasks (also while acks fail as an outage would make
them, and across stop()/start()), stop() drains, a cancel during settling leaves the ack
alone, and the claim loop wakes when a slot frees (no lost wake-up; a streaming task's
wait for its chunks did not wake it: found here, fixed in d51b0b2). Real servers:
``tests/distributed/test_review_s15_slots.py``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from support.aio import run
from support.worker_slots import Leases, register_mixed_nodes, serving, until

from distributed_agents import NodeContext, RetryPolicy, State, Worker
from distributed_agents.core import worker as worker_module
from distributed_agents.core.ports import Task
from distributed_agents import get_stream_writer

pytestmark = pytest.mark.timeout(60)


async def enqueue(worker: Worker, ids: list[str], node_type: str = "work", workflow: str = "wf-s15",
                  **payload: Any) -> None:
    for i, task_id in enumerate(ids):
        assert await worker.backend.task_queue.enqueue(
            Task(task_id, workflow, node_type, node_type, {"state": {"i": i}, **payload}))


async def results(worker: Worker, ids: list[str]) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for _ in range(100):
        if len(got) == len(ids):
            break
        got.update(await worker.backend.task_queue.wait_results([i for i in ids if i not in got], timeout=10))
    return got


def test_mixed_nodes_never_exceed_capacity_nor_twice_capacity_leases_with_acks_held() -> None:
    """Async nodes, plain functions in threads, nodes that raise once (retried) and nodes that
    stream, capacity 3, every settling call held until 6 wait: at most 3 nodes at once, at
    most 6 tasks held, no claim asked for more than the room left; then all 24 succeed once."""
    capacity = 3

    async def body() -> tuple[Leases, Worker, dict[str, Any], int]:
        worker = Worker(capacity=capacity, poll_wait=0.05)
        leases = Leases(worker)
        register_mixed_nodes(worker, leases)
        task = await serving(worker)
        ids: list[str] = []
        leases.gate.clear()
        retry = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception).to_dict()
        for name in ("a", "t", "f", "s"):
            batch = [f"{name}-{i}" for i in range(6)]
            ids += batch
            await enqueue(worker, batch, node_type=name, retry=retry)
        try:
            # 3 tasks' results held, 3 more nodes run and finish: 6 settling calls waiting.
            assert await until(lambda: leases.waiting_settles >= 2 * capacity)
            await asyncio.sleep(0.3)  # room for a wrong seventh claim (never needed by a correct worker)
            held_during = (len(leases.held), leases.waiting_settles, worker.slot_usage()["in_flight"])
            leases.gate.set()
            got = await results(worker, ids)
        finally:
            leases.gate.set()
            await worker.stop(grace=2)
            await task
        return leases, worker, {k: (v.status, v.attempts) for k, v in got.items()}, held_during[0]

    leases, worker, got, held_during = run(body(), timeout=50)
    assert held_during == 2 * capacity
    assert leases.peak_nodes <= capacity
    assert leases.peak_held <= 2 * capacity
    assert leases.peak_in_flight <= 2 * capacity
    assert all(v[0] == "succeeded" for v in got.values()) and len(got) == 24
    assert sorted(v[1] for k, v in got.items() if k.startswith("f-")) == [2] * 6
    assert worker.stats.succeeded == 24 and worker.stats.retried == 6


def test_acks_failing_as_in_an_outage_stop_claims_at_twice_capacity_then_all_land_once() -> None:
    """Acks raise BackendUnavailableError (retried with backoff within SETTLE_PATIENCE): the
    worker holds at most 2 x capacity tasks and claims nothing more while they fail; once the
    backend answers, every task succeeds on its first attempt, none twice."""
    capacity = 2

    async def body() -> tuple[Leases, Worker, dict[str, Any], tuple[int, int]]:
        worker = Worker(capacity=capacity, poll_wait=0.05)
        leases = Leases(worker)
        runs: list[int] = []

        async def node(state: State) -> dict[str, Any]:
            leases.node_in()
            runs.append(state["i"])
            await asyncio.sleep(0.005)
            leases.node_out()
            return {"v": state["i"]}

        worker.register_node("work", node)
        leases.failing = True
        task = await serving(worker)
        ids = [f"out-{i}" for i in range(10)]
        try:
            await enqueue(worker, ids)
            assert await until(lambda: len(runs) >= 2 * capacity)
            await asyncio.sleep(0.5)  # several failed acks and claim-loop turns
            during = (len(leases.held), len(runs))
            leases.failing = False
            got = await results(worker, ids)
        finally:
            leases.failing = False
            await worker.stop(grace=2)
            await task
        return leases, worker, {k: (v.status, v.attempts) for k, v in got.items()}, during

    leases, worker, got, during = run(body(), timeout=50)
    assert during == (2 * capacity, 2 * capacity)
    assert leases.peak_held <= 2 * capacity and leases.peak_nodes <= capacity
    assert got == {f"out-{i}": ("succeeded", 1) for i in range(10)}
    assert worker.stats.succeeded == 10


def test_an_abandoned_thread_keeps_its_slot_while_its_task_settles_and_frees_it_when_it_returns() -> None:
    """Capacity 1: a plain-function node times out and is abandoned (its thread goes on); its
    task's nack is held. The thread keeps the slot: the next node does not start until the
    thread returns, and it then does (the claim loop wakes on the thread's end)."""

    async def body() -> tuple[list[str], list[str], int]:
        worker = Worker(capacity=1, poll_wait=0.05)
        leases = Leases(worker)
        release_thread = threading.Event()
        started: list[str] = []

        def slow(state: State, context: NodeContext) -> dict[str, Any]:
            leases.node_in()
            started.append(context.idempotency_key)
            if context.idempotency_key == "ab-0":
                release_thread.wait(30)
            leases.node_out()
            return {}

        worker.register_node("work", slow)
        task = await serving(worker)
        try:
            await enqueue(worker, ["ab-0"], timeout=0.2)
            assert await until(lambda: worker.slot_usage()["busy_abandoned"] == 1)
            await enqueue(worker, ["ab-1"], workflow="wf-s15-b")
            await asyncio.sleep(0.5)
            before = list(started)
            release_thread.set()
            assert await until(lambda: "ab-1" in started)
            got = await results(worker, ["ab-0", "ab-1"])
        finally:
            release_thread.set()
            await worker.stop(grace=2)
            await task
        return before, sorted(v.status for v in got.values()), leases.peak_nodes

    before, statuses, peak = run(body(), timeout=50)
    assert before == ["ab-0"]
    assert statuses == ["failed", "succeeded"]
    assert peak == 1


def test_a_claim_loop_waiting_for_a_slot_wakes_when_a_task_starts_settling() -> None:
    """Capacity 1, the node's ack held: the next task is claimed and run while the first's ack
    waits (the claim loop was waiting for a slot and is woken by _slot_freed)."""

    async def body() -> list[str]:
        worker = Worker(capacity=1, poll_wait=0.05)
        leases = Leases(worker)
        started: list[str] = []
        first_may_end = asyncio.Event()

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if context.idempotency_key == "w-0":
                await first_may_end.wait()
            return {}

        worker.register_node("work", node)
        task = await serving(worker)
        try:
            await enqueue(worker, ["w-0", "w-1"])
            assert await until(lambda: started == ["w-0"])
            await asyncio.sleep(0.2)  # the claim loop waits for the slot now
            leases.gate.clear()
            first_may_end.set()
            woke = await until(lambda: "w-1" in started)
            leases.gate.set()
            assert woke
            await results(worker, ["w-0", "w-1"])
        finally:
            leases.gate.set()
            first_may_end.set()
            await worker.stop(grace=2)
            await task
        return started

    assert run(body(), timeout=50) == ["w-0", "w-1"]


def test_a_claim_loop_waiting_for_a_slot_wakes_when_a_streaming_task_waits_for_its_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Capacity 1: a node streams a chunk and ends; the bus holds its publishing back. Its task
    waits for the chunk before its ack (the "streaming wait" that the Slots change counts as
    settling), so its slot is free: the next task must be claimed and run meanwhile, before
    the first one's ack is even sent. (Fault found in review on aebc12b, fixed in d51b0b2: the
    wait did not set _slot_freed, so the claim loop slept until the chunks went out, up to
    STREAM_FLUSH_TIMEOUT with a slow bus.)"""
    monkeypatch.setattr(worker_module, "STREAM_FLUSH_TIMEOUT", 60.0)

    async def body() -> tuple[bool, dict[str, Any]]:
        worker = Worker(capacity=1, poll_wait=0.05)
        leases = Leases(worker)
        started: list[str] = []
        first_may_end = asyncio.Event()
        bus_open = asyncio.Event()
        bus = worker.backend.message_bus
        publish_many = bus.publish_many

        async def held_publish(messages: Any) -> Any:
            await bus_open.wait()
            return await publish_many(messages)

        bus.publish_many = held_publish  # type: ignore[method-assign]

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if context.idempotency_key == "st-0":
                await first_may_end.wait()
                get_stream_writer()({"chunk": 1})
            return {}

        worker.register_node("work", node)
        # A subscriber, so the in-process bus publishes the chunk at all.
        sub = await bus.subscribe("stream.>")
        task = await serving(worker)
        assert worker._slot_freed is not None
        freed = worker._slot_freed
        event_wait = freed.wait
        waits: list[int] = []

        async def counted_wait() -> Any:  # the claim loop waiting for a slot
            waits.append(len(started))
            return await event_wait()

        freed.wait = counted_wait  # type: ignore[method-assign]
        try:
            await enqueue(worker, ["st-0", "st-1"])
            # The claim loop waits for a slot, with st-0 running.
            assert await until(lambda: started == ["st-0"] and bool(waits) and waits[-1] == 1)
            first_may_end.set()
            # st-0 is in its streaming wait: settling, its ack not sent.
            assert await until(lambda: bool(worker._settling))
            woke = await until(lambda: "st-1" in started, bound=10.0)
            state = {"started": list(started), "settled": list(leases.settled), "waits": list(waits)}
            woke = woke and "st-0" not in {task_id for _, task_id in leases.settled}  # before st-0's ack
            bus_open.set()
            await results(worker, ["st-0", "st-1"])
        finally:
            bus_open.set()
            first_may_end.set()
            await worker.stop(grace=2)
            await task
            await sub.close()
        return woke, state

    woke, state = run(body(), timeout=50)
    assert woke, state


def test_stop_waits_for_the_slot_waiting_claim_loop_drains_and_gives_back_the_rest() -> None:
    """Capacity 2 with acks held: 2 tasks settle, 2 more run (blocked). stop() is called while the
    claim loop waits for a slot: it returns (no hang); the settling acks land once released, the
    running nodes are cancelled after the grace and released (attempt not counted), the queued
    tasks stay queued; a second start() runs every one of them once more at most."""

    async def body() -> tuple[Any, ...]:
        worker = Worker(capacity=2, poll_wait=0.05)
        leases = Leases(worker)
        started: list[str] = []
        block = asyncio.Event()

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            leases.node_in()
            started.append(context.idempotency_key)
            try:
                if len(started) > 2:
                    await block.wait()
            finally:
                leases.node_out()
            return {}

        worker.register_node("work", node)
        ids = [f"d-{i}" for i in range(6)]
        leases.gate.clear()
        task = await serving(worker)
        await enqueue(worker, ids)
        assert await until(lambda: len(started) == 4 and leases.waiting_settles == 2)
        stopping = asyncio.ensure_future(worker.stop(grace=0.3))
        await asyncio.sleep(0.1)
        leases.gate.set()  # the settling acks go through (within SETTLE_ON_STOP)
        await asyncio.wait_for(stopping, 20)
        await task
        first = (sorted(started), sorted(leases.settled), worker.stats.succeeded, worker.stats.released,
                 (await worker.backend.task_queue.stats("work")).queued, leases.held)
        block.set()
        task = await serving(worker)
        try:
            got = await results(worker, ids)
        finally:
            await worker.stop(grace=2)
            await task
        return first, {k: (v.status, v.attempts) for k, v in got.items()}, sorted(started), leases.peak_held

    first, got, started, peak_held = run(body(), timeout=55)
    run_first, settled, succeeded, released, queued, held = first
    assert run_first == ["d-0", "d-1", "d-2", "d-3"]
    assert [k for k, _ in settled].count("ack") == 2 and [k for k, _ in settled].count("release") == 2
    assert (succeeded, released, queued, held) == (2, 2, 4, set())  # 2 given back, 2 never claimed
    assert got == {f"d-{i}": ("succeeded", 1) for i in range(6)}
    # the two released tasks ran again (at-least-once), nothing else twice
    assert len(started) == 8 and len(set(started)) == 6
    assert peak_held <= 4


def test_a_workflow_cancel_while_acks_wait_leaves_them_alone_and_cancels_only_running_nodes() -> None:
    """Capacity 2, acks held: 2 tasks of workflow X settle, 2 more of X run. Cancelling X cancels
    the 2 running nodes only; the 2 held acks land as successes."""

    async def body() -> tuple[Any, ...]:
        worker = Worker(capacity=2, poll_wait=0.05)
        leases = Leases(worker)
        started: list[str] = []
        cancelled: list[str] = []

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if len(started) > 2:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.append(context.idempotency_key)
                    raise
            return {}

        worker.register_node("work", node)
        ids = [f"c-{i}" for i in range(4)]
        leases.gate.clear()
        task = await serving(worker)
        try:
            await enqueue(worker, ids, workflow="wf-s15-cancel")
            assert await until(lambda: len(started) == 4 and leases.waiting_settles == 2)
            await worker.backend.message_bus.publish(worker_module.CONTROL_CANCEL_CHANNEL,
                                                     {"workflow_id": "wf-s15-cancel"})
            assert await until(lambda: len(cancelled) == 2)
            leases.gate.set()
            got = await results(worker, ids)
        finally:
            leases.gate.set()
            await worker.stop(grace=2)
            await task
        return sorted(cancelled), {k: v.status for k, v in got.items()}, worker.stats.succeeded

    cancelled, got, succeeded = run(body(), timeout=50)
    assert cancelled == ["c-2", "c-3"]
    assert got["c-0"] == got["c-1"] == "succeeded" and succeeded == 2


def test_stop_wakes_a_claim_loop_waiting_for_a_slot_while_every_task_is_stuck() -> None:
    """Capacity 1: the first task's ack is held, the second's node blocks: the claim loop waits
    for a slot that nothing frees. stop() must end that wait by itself (the loop stops claiming,
    stop_claiming is called) before any ack lands; then everything drains."""

    async def body() -> tuple[bool, list[str], int, int]:
        worker = Worker(capacity=1, poll_wait=0.05)
        leases = Leases(worker)
        started: list[str] = []
        stopped_claiming: list[str] = []
        stop_claiming = leases.queue.stop_claiming

        async def recorded(worker_id: str) -> Any:
            stopped_claiming.append(worker_id)
            return await stop_claiming(worker_id)

        leases.queue.stop_claiming = recorded  # type: ignore[method-assign]

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if context.idempotency_key == "k-1":
                await asyncio.sleep(30)
            return {}

        worker.register_node("work", node)
        task = await serving(worker)
        await enqueue(worker, ["k-0", "k-1", "k-2"])
        leases.gate.clear()
        assert await until(lambda: started == ["k-0", "k-1"] and leases.waiting_settles == 1)
        await asyncio.sleep(0.2)  # the claim loop waits for a slot
        stopping = asyncio.ensure_future(worker.stop(grace=0.2))
        woke = await until(lambda: bool(stopped_claiming), bound=10.0)
        leases.gate.set()
        await asyncio.wait_for(stopping, 30)
        await task
        return woke, started, worker.stats.succeeded, worker.stats.released

    woke, started, succeeded, released = run(body(), timeout=50)
    assert woke
    assert started == ["k-0", "k-1"] and (succeeded, released) == (1, 1)


def test_the_registry_and_the_workers_listing_count_settling_tasks_in_flight() -> None:
    """Capacity 2, acks held: 2 tasks settle and 2 nodes run blocked. slot_usage(), the registry's
    metadata (at the next heartbeat) and the `workers` listing's JSON say in_flight 4 (twice
    capacity, as the README and --help say), busy_abandoned 0, capacity 2."""
    from distributed_agents.operations import worker_json

    async def body() -> tuple[dict[str, int], dict[str, Any]]:
        worker = Worker(capacity=2, poll_wait=0.05, heartbeat_interval=0.05)
        leases = Leases(worker)
        started: list[str] = []
        block = asyncio.Event()

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if len(started) > 2:
                await block.wait()
            return {}

        worker.register_node("work", node)
        leases.gate.clear()
        task = await serving(worker)
        try:
            await enqueue(worker, [f"r-{i}" for i in range(5)])
            assert await until(lambda: len(started) == 4 and leases.waiting_settles == 2)
            usage = worker.slot_usage()
            listed: list[Any] = []

            async def published() -> bool:
                listed[:] = await worker.backend.worker_registry.list_workers()
                return bool(listed) and listed[0].metadata.get("in_flight") == 4

            for _ in range(500):
                if await published():
                    break
                await asyncio.sleep(0.01)
            row = worker_json(listed[0])
        finally:
            leases.gate.set()
            block.set()
            await worker.stop(grace=2)
            await task
        return usage, row

    usage, row = run(body(), timeout=50)
    assert usage == {"in_flight": 4, "busy_abandoned": 0}
    assert (row["capacity"], row["in_flight"], row["busy_abandoned"]) == (2, 4, 0)


def test_stop_with_acks_stuck_past_settle_on_stop_gives_up_on_them_and_a_restart_runs_them_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Capacity 2, leases of 1 s, acks stuck: 2 tasks settle, 2 more run. stop() cancels the
    running nodes after the grace (their releases go through) and gives up on the stuck acks
    once SETTLE_ON_STOP (0.3 s here) passes. Once acks answer again, a restarted worker runs
    what the lapsed leases gave back: every task ends succeeded (at least once), the one never
    claimed runs once, and the worker never held more than 4."""
    monkeypatch.setattr(worker_module, "SETTLE_ON_STOP", 0.3)

    async def body() -> tuple[Any, ...]:
        worker = Worker(capacity=2, poll_wait=0.05, lease_seconds=1.0)
        release = worker.backend.task_queue.release
        leases = Leases(worker)

        async def released(claim: Any) -> None:  # releases are not held back
            await release(claim)
            leases.held.discard(claim.task.id)

        leases.queue.release = released  # type: ignore[method-assign]
        runs: list[str] = []

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            runs.append(context.idempotency_key)
            if len(runs) in (3, 4):
                await asyncio.sleep(30)  # the first run of the third and fourth task: stopped
            return {}

        worker.register_node("work", node)
        ids = [f"x-{i}" for i in range(5)]
        leases.gate.clear()
        task = await serving(worker)
        await enqueue(worker, ids)
        assert await until(lambda: len(runs) == 4 and leases.waiting_settles == 2)
        await asyncio.wait_for(worker.stop(grace=0.2), 20)
        await task
        first_runs = sorted(runs)
        leases.held.clear()  # (the acks given up on: their leases lapse; the worker holds nothing)
        leases.gate.set()
        task = await serving(worker)
        try:
            got = await results(worker, ids)
        finally:
            await worker.stop(grace=2)
            await task
        return first_runs, {k: v.status for k, v in got.items()}, sorted(runs), leases.peak_held

    first_runs, got, runs, peak_held = run(body(), timeout=55)
    assert first_runs == ["x-0", "x-1", "x-2", "x-3"]
    assert got == {f"x-{i}": "succeeded" for i in range(5)}
    assert set(runs) == {f"x-{i}" for i in range(5)} and runs.count("x-4") == 1
    assert peak_held <= 4
