"""Review of the parked registration topped up by acks (Redis queue) with real workers.

What the change must keep: a worker never runs more tasks than its capacity, every task runs
once (no lease lapses, no task stranded on a registration nobody pops), and a worker that
stopped claiming is handed nothing. Checked by counts and states, not timings.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents import NodeContext, NodeRegistry, State, Worker
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.ports.backend import Backend, BackendOptions
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(120)


def _backend(url: str, prefix: str, poll_cap: float | None = None) -> Backend:
    backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600))
    if poll_cap is not None:
        backend.task_queue.poll_cap = poll_cap  # type: ignore[attr-defined]
    return backend


async def _rooms(meter: redis_asyncio.Redis, prefix: str) -> list[int]:
    """The room of every parked registration under ``prefix`` now."""
    rooms = []
    async for key in meter.scan_iter(f"{prefix}:q:park:*"):
        room = await meter.hget(key, "m")
        if room is not None:
            rooms.append(int(room))
    return rooms


@pytest.mark.parametrize("seed", [1, 2])
def test_bursts_to_workers_never_exceed_capacity_and_run_every_task_once(seed: int) -> None:
    """Two workers (capacity 3 and 2) under bursts of single and batched enqueues, nodes of
    random short length: no node ever runs beside more than its worker's capacity, no worker
    ever holds more than twice its capacity (its settling tasks leave their slots:
    core.worker "Slots"), no registration ever has more room than its worker's capacity,
    every task runs exactly once, on its first attempt, and nothing is left queued, leased
    or handed over."""
    rng = random.Random(seed)
    registry = NodeRegistry()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    held: dict[str, int] = {}
    peak_held: dict[str, int] = {}
    runs: dict[str, int] = {}

    @registry.register("quick")
    async def quick(state: State, context: NodeContext) -> dict[str, Any]:
        runs[state["id"]] = runs.get(state["id"], 0) + 1
        worker_id = context.worker_id
        running[worker_id] = running.get(worker_id, 0) + 1
        peak[worker_id] = max(peak.get(worker_id, 0), running[worker_id])
        try:
            await asyncio.sleep(state["pause"])
        finally:
            running[worker_id] -= 1
        return {"ok": state["id"]}

    async def scenario(url: str) -> tuple[dict[str, Any], list[int], Any]:
        prefix = f"rv{uuid.uuid4().hex[:8]}"
        producer = _backend(url, prefix)
        backends = [_backend(url, prefix, poll_cap=2), _backend(url, prefix, poll_cap=2)]
        workers = [Worker(["quick"], capacity=cap, backend=b, registry=registry, worker_id=f"w{cap}",
                          heartbeat_interval=300, poll_wait=1, lease_seconds=60)
                   for cap, b in zip((3, 2), backends)]
        # Count the tasks each worker holds (claimed, not settled) from the task handler's side.
        for worker in workers:
            original = worker._handle  # noqa: SLF001

            async def counted(claim: Any, _original: Any = original, _id: str = worker.worker_id) -> Any:
                held[_id] = held.get(_id, 0) + 1
                peak_held[_id] = max(peak_held.get(_id, 0), held[_id])
                try:
                    return await _original(claim)
                finally:
                    held[_id] -= 1

            worker._handle = counted  # type: ignore[method-assign]  # noqa: SLF001
        serving = [asyncio.ensure_future(w.start()) for w in workers]
        meter = redis_asyncio.Redis.from_url(url)
        rooms: list[int] = []
        try:
            await producer.connect()
            queue = producer.task_queue
            ids: list[str] = []
            n = 0
            for _ in range(25):
                batch = []
                for _ in range(rng.choice([1, 1, 2, 4])):
                    tid = f"t{n}"
                    n += 1
                    batch.append(Task(tid, "wf", "n", "quick", {"v": 1, "step": 0, "state": {
                        "id": tid, "pause": rng.choice([0, 0, 0.002, 0.01, 0.03])}}))
                ids += [t.id for t in batch]
                if len(batch) == 1:
                    await queue.enqueue(batch[0])
                else:
                    await queue.enqueue_many(batch)
                rooms += await _rooms(meter, prefix)
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05]))
            found: dict[str, Any] = {}
            while len(found) < len(ids):
                found.update(await queue.wait_results([i for i in ids if i not in found], timeout=10))
                rooms += await _rooms(meter, prefix)
            return found, rooms, await queue.stats("quick")
        finally:
            await meter.aclose()
            for worker in workers:
                await worker.stop()
            await asyncio.gather(*serving)
            await producer.close()
            for backend in backends:
                await backend.close()

    with RedisServer() as server:
        found, rooms, stats = run(scenario(server.url), 100)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in found.values()), \
        [(r.task_id, r.status, r.attempts) for r in found.values() if r.status != "succeeded" or r.attempts != 1]
    assert set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
    assert peak.get("w3", 0) <= 3 and peak.get("w2", 0) <= 2, peak
    assert peak_held.get("w3", 0) <= 6 and peak_held.get("w2", 0) <= 4, peak_held
    assert max(rooms, default=0) <= 3, rooms
    assert (stats.queued, stats.in_flight) == (0, 0), stats


def test_a_stopped_worker_sharing_its_backend_is_handed_no_new_task() -> None:
    """A worker given a backend it does not own (so ``stop()`` does not close its queue) that
    ran tasks while parked, then stopped: a task enqueued after ``stop()`` returned is not
    leased to it (its registration, topped up by its last acks, would strand the task until
    the lease lapses); it waits in the queue for another worker. (Registrations last 5.2 s,
    claims wait 1 s: the registration outlives the worker's last claim by about 4 s.)"""
    registry = NodeRegistry()

    @registry.register("quick")
    async def quick(state: State) -> dict[str, Any]:
        return {"ok": 1}

    async def scenario(url: str) -> tuple[int, int, list[dict[bytes, bytes]]]:
        prefix = f"st{uuid.uuid4().hex[:8]}"
        producer, shared = _backend(url, prefix), _backend(url, prefix, poll_cap=10)
        meter = redis_asyncio.Redis.from_url(url)
        await producer.connect()
        await shared.connect()
        worker = Worker(["quick"], capacity=3, backend=shared, registry=registry, worker_id="w",
                        heartbeat_interval=300, poll_wait=1, lease_seconds=60)
        serving = asyncio.ensure_future(worker.start())
        queue = producer.task_queue
        try:
            for i in range(6):
                task = Task(f"a{i}", "wf", "n", "quick", {"v": 1, "step": 0, "state": {}})
                await queue.enqueue(task)
                found: dict[str, Any] = {}
                while not found:
                    found = await queue.wait_results([task.id], timeout=5)
            await worker.stop()
            await serving
            await queue.enqueue(Task("late", "wf", "n", "quick", {"v": 1, "step": 0, "state": {}}))
            stats = await queue.stats("quick")
            parks = [await meter.hgetall(key) async for key in meter.scan_iter(f"{prefix}:q:park:*")]
            return stats.queued, stats.in_flight, parks
        finally:
            await meter.aclose()
            await producer.close()
            await shared.close()

    with RedisServer() as server:
        queued, in_flight, parks = run(scenario(server.url), 60)
    assert (queued, in_flight) == (1, 0), parks


@pytest.mark.parametrize("op", ["ack", "nack", "release", "extend"])
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_settling_a_lease_no_script_has_seen_run_out_is_refused(redis_url: str, op: str, max_attempts: int) -> None:
    """A lease that ran out while no script applied time to its type: the settling script is
    the first to see it. It is refused (``LeaseLostError``), changes nothing of its own, and
    the task is as the lease expiry leaves it: delivered again (attempt 2) or, at its last
    attempt, dead-lettered; never a stored success."""
    from distributed_agents.core.errors import LeaseLostError

    async def scenario(url: str) -> tuple[Any, Any, list[int], Any]:
        prefix = f"exp{uuid.uuid4().hex[:8]}"
        backend = _backend(url, prefix)
        await backend.connect()
        queue = backend.task_queue
        try:
            await queue.enqueue(Task("x", "wf", "n", "alpha", {"v": 1}, max_attempts=max_attempts))
            [claim] = await queue.claim(["alpha"], worker_id="w", lease_seconds=0.2)
            await asyncio.sleep(0.5)  # the lease runs out; nothing of type alpha runs meanwhile
            raised: Any = None
            try:
                if op == "ack":
                    await queue.ack(claim, {"late": True})
                elif op == "nack":
                    await queue.nack(claim, "late")
                elif op == "release":
                    await queue.release(claim)
                else:
                    await queue.extend(claim, 30)
            except LeaseLostError as exc:
                raised = exc
            again = await queue.claim(["alpha"], worker_id="w2")
            return raised, await queue.get_result("x"), [c.attempt for c in again], await queue.stats("alpha")
        finally:
            await backend.close()

    raised, result, attempts, stats = run(scenario(redis_url), 60)
    assert raised is not None
    if max_attempts == 1:
        assert attempts == [] and stats.dead == 1 and (stats.queued, stats.in_flight) == (0, 0)
        assert result is None or result.status != "succeeded"
    else:
        assert attempts == [2] and result is None and (stats.queued, stats.in_flight, stats.dead) == (0, 1, 0)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_a_claimer_emulating_a_worker_gets_every_task_once_within_its_capacity(redis_url: str, seed: int) -> None:
    """One claimer of capacity 3 (each claim asks for its free slots, waits up to 0.3 s, and
    settles some tasks at once - ack, release or nack - and others later) while a producer
    enqueues single tasks and batches of random priorities concurrently: no claim returns
    more than it asked, every task is acked exactly once (a release or nack delivers it again,
    never beside a live lease), and in the end nothing is queued, leased or left handed over."""
    rng = random.Random(seed)

    async def scenario(url: str) -> tuple[dict[str, int], list[int], Any, list[str]]:
        prefix = f"emu{uuid.uuid4().hex[:8]}"
        producer, claimer = _backend(url, prefix), _backend(url, prefix, poll_cap=2)
        await producer.connect()
        await claimer.connect()
        queue, cq = producer.task_queue, claimer.task_queue
        ids = [f"t{i}" for i in range(45)]
        acked: dict[str, int] = {}
        over: list[int] = []
        held: list[Any] = []
        capacity = 3

        async def produce() -> None:
            i = 0
            while i < len(ids):
                size = rng.choice([1, 1, 1, 2, 3])
                batch = [Task(t, "wf", "n", "alpha", {"t": t}, priority=rng.choice([0, 0, 1, 5]))
                         for t in ids[i:i + size]]
                i += size
                if len(batch) == 1:
                    await queue.enqueue(batch[0])
                else:
                    await queue.enqueue_many(batch)
                await asyncio.sleep(rng.choice([0, 0.001, 0.02, 0.1]))

        producing = asyncio.ensure_future(produce())
        try:
            while len(acked) < len(ids):
                free = capacity - len(held)
                if free > 0:
                    got = await cq.claim(["alpha"], worker_id="w", max_tasks=free, wait=0.3)
                    if len(got) > free:
                        over.append(len(got) - free)
                    held += got
                for claim in list(held):
                    choice = rng.random()
                    if choice < 0.15:
                        continue  # settled later
                    held.remove(claim)
                    if choice < 0.25:
                        await cq.release(claim)
                    elif choice < 0.32 and claim.attempt < 3:
                        await cq.nack(claim, "again")
                    else:
                        await cq.ack(claim, {"t": claim.task.id})
                        acked[claim.task.id] = acked.get(claim.task.id, 0) + 1
            await producing
            stats = await queue.stats("alpha")
            await claimer.close()  # gives back anything still handed over
            meter = redis_asyncio.Redis.from_url(url)
            try:
                left = [key.decode() async for key in meter.scan_iter(f"{prefix}:q:h:*")
                        if await meter.llen(key)]
            finally:
                await meter.aclose()
            return acked, over, stats, left
        finally:
            producing.cancel()
            await producer.close()
            await claimer.close()

    acked, over, stats, left = run(scenario(redis_url), 100)
    assert over == []
    assert acked == {f"t{i}": 1 for i in range(45)}
    assert (stats.queued, stats.in_flight) == (0, 0), stats
    assert left == []


def test_stop_claiming_gives_back_tasks_handed_over_and_not_taken_uncounted(redis_url: str) -> None:
    """``stop_claiming(worker_id)``: a task handed to the worker's parked registration after its
    last claim returned goes back to the queue (attempt not counted: the next delivery is its
    first), a later ack of that worker tops nothing up, and new tasks wait in the queue."""

    async def scenario(url: str) -> tuple[Any, list[tuple[str, int]], Any]:
        prefix = f"sc{uuid.uuid4().hex[:8]}"
        producer, claimer, other = _backend(url, prefix), _backend(url, prefix, poll_cap=10), _backend(url, prefix)
        for backend in (producer, claimer, other):
            await backend.connect()
        queue, cq = producer.task_queue, claimer.task_queue
        try:
            await queue.enqueue(Task("held", "wf", "n", "alpha", {}))
            [held] = await cq.claim(["alpha"], worker_id="w", max_tasks=3)
            assert await cq.claim(["alpha"], worker_id="w", max_tasks=2, wait=0.2) == []  # parked, 5.2 s
            await queue.enqueue(Task("handed", "wf", "n", "alpha", {}))  # leased to the registration
            handed = await queue.stats("alpha")
            await cq.stop_claiming("w")
            await cq.ack(held, None)  # (no registration to top up any more)
            await queue.enqueue(Task("later", "wf", "n", "alpha", {}))
            after = await queue.stats("alpha")
            got = await other.task_queue.claim(["alpha"], worker_id="x", max_tasks=5)
            return handed, [(c.task.id, c.attempt) for c in got], after
        finally:
            for backend in (producer, claimer, other):
                await backend.close()

    handed, got, after = run(scenario(redis_url), 60)
    assert (handed.queued, handed.in_flight) == (0, 2)  # the hand-over happened
    assert (after.queued, after.in_flight) == (2, 0)
    assert sorted(got) == [("handed", 1), ("later", 1)]
