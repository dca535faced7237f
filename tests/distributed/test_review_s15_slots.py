"""Review s15 of aebc12b ("Slots") on real servers (Redis, NATS JetStream).

A task settling its result leaves its capacity slot: a worker runs at most ``capacity``
nodes and holds at most ``2 * capacity`` claimed, unsettled tasks. Checked here with the
worker's settling calls held back or failing (an in-process wrapper of its queue) while a
second connection enqueues and waits for results, as an orchestrator would: bounds, and
every task succeeding once on its first attempt (or its second, for one that raised once).
Redis only (fault found here, fixed in d51b0b2): the parked claim registration was given a
slot back by each ack of the worker, a slot the worker already counted free when the ack
started, so enqueues handed an idle worker tasks its claim gave back (the last test).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio
from support.aio import run
from support.worker_slots import Leases, register_mixed_nodes, serving, until

from distributed_agents import NodeContext, RetryPolicy, State, Worker
from distributed_agents.core.ports import Task
from distributed_agents.plugins import open_backend

pytestmark = pytest.mark.timeout(120)


async def results(producer: Any, ids: list[str]) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for _ in range(60):
        if len(got) == len(ids):
            break
        got.update(await producer.task_queue.wait_results([i for i in ids if i not in got], timeout=5))
    return got


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    request.applymarker(getattr(pytest.mark, request.param))
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.parametrize("mode", ["held", "failing"])
def test_mixed_nodes_on_a_real_backend_stay_within_capacity_and_twice_capacity_leases(url: str, mode: str) -> None:
    """Capacity 3, 24 tasks of four kinds (async, thread, raising once then retried, streaming);
    the worker's settling calls are held back ("held") or answer BackendUnavailableError
    ("failing", retried by the worker) until 6 are waiting: the worker then holds 6 tasks and
    claims no more; at most 3 nodes ever run at once. Once they go through, every task
    succeeds once (the raising ones on attempt 2)."""
    capacity = 3
    prefix = f"rv15{uuid.uuid4().hex[:8]}"

    async def body() -> tuple[Any, ...]:
        backend = open_backend(url, prefix=prefix)
        producer = open_backend(url, prefix=prefix)
        await producer.connect()
        worker = Worker(capacity=capacity, poll_wait=0.2, backend=backend)
        leases = Leases(worker)
        register_mixed_nodes(worker, leases)
        if mode == "held":
            leases.gate.clear()
        else:
            leases.failing = True
        task = await serving(worker)
        ids: list[str] = []
        retry = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception).to_dict()
        try:
            for name in ("a", "t", "f", "s"):
                for i in range(6):
                    ids.append(f"{name}-{i}")
                    assert await producer.task_queue.enqueue(
                        Task(ids[-1], "wf-s15", name, name, {"state": {"i": i}, "retry": retry}))
            if mode == "held":
                assert await until(lambda: leases.waiting_settles >= 2 * capacity)
            else:
                assert await until(lambda: len(leases.held) >= 2 * capacity and leases.nodes == 0)
            await asyncio.sleep(0.5)  # room for a wrong seventh claim
            during = len(leases.held)
            leases.failing = False
            leases.gate.set()
            got = await results(producer, ids)
        finally:
            leases.failing = False
            leases.gate.set()
            await worker.stop(grace=5)
            await task
            await backend.close()
            await producer.close()
        return during, leases, worker, {k: (v.status, v.attempts) for k, v in got.items()}

    during, leases, worker, got = run(body(), timeout=100)
    assert during == 2 * capacity
    assert leases.peak_nodes <= capacity
    assert leases.peak_held <= 2 * capacity
    expected = {f"{name}-{i}": ("succeeded", 2 if name == "f" else 1) for name in "atfs" for i in range(6)}
    assert got == expected
    assert worker.stats.succeeded == 24 and worker.stats.retried == 6


@pytest.mark.redis
def test_redis_parked_claim_is_not_handed_more_tasks_than_it_takes_after_settling_acks(redis_url: str) -> None:
    """Capacity 2: two tasks run and their acks are held; the worker, counting them free, parks a
    claim for 2. The acks land (on aebc12b each gave the registration a slot back: room 4). Four
    tasks are then enqueued: the worker is handed only what its claim takes, never tasks it
    gives back (on aebc12b: two, leased to it and released by its claim)."""
    prefix = f"rv15{uuid.uuid4().hex[:8]}"

    async def body() -> tuple[list[tuple[str, str]], dict[str, Any]]:
        backend = open_backend(redis_url, prefix=prefix)
        producer = open_backend(redis_url, prefix=prefix)
        await producer.connect()
        worker = Worker(capacity=2, poll_wait=10.0, backend=backend)
        leases = Leases(worker)
        started: list[str] = []
        release_first = asyncio.Event()

        async def node(state: State, context: NodeContext) -> dict[str, Any]:
            started.append(context.idempotency_key)
            if context.idempotency_key.startswith("p-"):
                await release_first.wait()
            else:
                await asyncio.sleep(30)  # the next ones run on: the worker stays full of nodes
            return {}

        worker.register_node("work", node)
        task = await serving(worker)
        try:
            for task_id in ("p-0", "p-1"):
                assert await producer.task_queue.enqueue(Task(task_id, "wf-s15", "work", "work", {"state": {}}))
            assert await until(lambda: len(started) == 2)
            leases.gate.clear()
            release_first.set()
            assert await until(lambda: leases.waiting_settles == 2)
            # The claim loop's claim for the 2 freed slots parks (its registration is live).
            loop = asyncio.get_running_loop()
            queue: Any = backend.task_queue
            assert await until(lambda: (park := queue._park_of.get(worker.worker_id)) is not None
                               and park.claiming and park.live(loop.time()) and park.room == 2)
            leases.gate.set()
            assert await until(lambda: [k for k, _ in leases.settled].count("ack") == 2)
            # The registration's room as the server keeps it (what an enqueue may hand over).
            park = queue._park_of[worker.worker_id]
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                room = await client.hget(f"{queue._keys.prefix}:q:park:{park.id}", "m")
            finally:
                await client.aclose()
            ids = [f"q-{i}" for i in range(4)]
            await producer.task_queue.enqueue_many([Task(i, "wf-s15", "work", "work", {"state": {}}) for i in ids])
            assert await until(lambda: len(started) == 4)
            await asyncio.sleep(0.5)
            settled = list(leases.settled)
        finally:
            leases.gate.set()
            release_first.set()
            await worker.stop(grace=0.5)
            await task
            await backend.close()
            await producer.close()
        return settled, {"started": started, "room": None if room is None else int(room)}

    settled, info = run(body(), timeout=100)
    # The claim asked for 2 (its slots, the settling tasks' counted free): its registration's room
    # stays 2 after their acks, and the worker is handed no task it gives back.
    assert info["room"] is not None and info["room"] <= 2, (settled, info)
    assert [entry for entry in settled if entry[0].startswith("adapter-")] == [], (settled, info)
