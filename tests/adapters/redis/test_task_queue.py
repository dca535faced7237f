"""RedisTaskQueue beyond the shared conformance suite: layout, wake-ups, round trips."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis import RedisTaskQueue
from distributed_agents.adapters.redis.backend import RedisBackend
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task


def task(task_id: str, node_type: str = "alpha", priority: int = 0, **extra: object) -> Task:
    return Task(task_id, "wf-1", "node", node_type, {"id": task_id}, priority=priority, **extra)  # type: ignore[arg-type]


def test_one_claim_over_several_types_keeps_priority_then_fifo(open_redis) -> None:
    async def scenario() -> list[str]:
        backend: RedisBackend = await open_redis()
        try:
            queue = backend.task_queue
            for task_id, node_type, priority in [
                ("a1", "alpha", 0), ("b1", "beta", 0), ("a2", "alpha", 3), ("b2", "beta", 3), ("a3", "alpha", 0),
            ]:
                await queue.enqueue(task(task_id, node_type, priority))
            claims = await queue.claim(["alpha", "beta"], worker_id="w", max_tasks=10)
            return [c.task.id for c in claims]
        finally:
            await backend.close()

    assert run(scenario(), 20) == ["a2", "b2", "a1", "b1", "a3"]


def test_claim_wait_wakes_on_enqueue_without_polling(open_redis) -> None:
    async def scenario() -> tuple[float, list[str]]:
        consumer = await open_redis()
        producer = await open_redis(prefix=consumer.options.prefix)
        consumer.task_queue.poll_cap = 30.0  # no safety poll inside the claim's wait (its BLPOP blocks 5 s at most)
        try:
            async def later() -> None:
                await asyncio.sleep(0.3)
                await producer.task_queue.enqueue(task("t1"))

            feeder = asyncio.create_task(later())
            started = time.monotonic()
            claims = await consumer.task_queue.claim(["alpha"], worker_id="w", wait=5.0)
            elapsed = time.monotonic() - started
            await feeder
            return elapsed, [c.task.id for c in claims]
        finally:
            await producer.close()
            await consumer.close()

    elapsed, ids = run(scenario(), 20)
    assert ids == ["t1"]
    # Woken by the enqueue: a claim not woken would look again only when its 5 s block ends.
    assert 0.25 < elapsed < 4.0


def test_wait_results_wakes_on_ack_from_another_connection(open_redis) -> None:
    async def scenario() -> tuple[float, str]:
        waiter = await open_redis()
        worker = await open_redis(prefix=waiter.options.prefix)
        waiter.task_queue.poll_cap = 30.0  # no safety poll within the wait: only the ack's announcement wakes it
        try:
            await waiter.task_queue.enqueue(task("t1"))
            [claim] = await worker.task_queue.claim(["alpha"], worker_id="w")

            async def finish() -> None:
                await asyncio.sleep(0.3)
                await worker.task_queue.ack(claim, {"v": 1})

            acker = asyncio.create_task(finish())
            started = time.monotonic()
            results = await waiter.task_queue.wait_results(["t1", "t2"], timeout=5.0)
            elapsed = time.monotonic() - started
            await acker
            return elapsed, results["t1"].status
        finally:
            await worker.close()
            await waiter.close()

    elapsed, status = run(scenario(), 20)
    assert status == "succeeded"
    assert 0.25 < elapsed < 4.0  # a waiter not woken would sleep out its 5 s timeout


def test_wait_results_sees_a_dead_letter_from_an_expired_last_lease(open_redis) -> None:
    """Nobody claims again: the waiter itself applies the expiry and learns of the failure."""

    async def scenario() -> tuple[str, str | None, float]:
        backend = await open_redis(max_attempts=1)
        producer = await open_redis(max_attempts=1, prefix=backend.options.prefix)
        try:
            queue = backend.task_queue
            queue.poll_cap = 30.0  # a fixed poll would sleep past the 5 s timeout
            # Enqueued elsewhere, so the waiter reads the task (and learns its lease
            # deadline); tasks a queue enqueued itself are never read but announce
            # their results, and a lost lease among them is seen within poll_cap.
            await producer.task_queue.enqueue(task("t1"))
            await queue.claim(["alpha"], worker_id="gone", lease_seconds=0.3)
            started = time.monotonic()
            results = await queue.wait_results(["t1"], timeout=5.0)
            return results["t1"].status, results["t1"].error, time.monotonic() - started
        finally:
            await backend.close()
            await producer.close()

    status, error, elapsed = run(scenario(), 20)
    assert status == "failed" and error is not None and "lease expired on attempt 1 of 1" in error
    assert elapsed < 4.0  # slept until the reported 0.3 s deadline, not a fixed (30 s) poll


def test_a_repeated_settle_call_is_recognised_but_a_second_call_is_refused(open_redis) -> None:
    """What the client's retry after a lost reply relies on: same op id -> same outcome."""

    async def scenario() -> tuple[int, int, bool]:
        backend = await open_redis()
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t1"))
            [claim] = await queue.claim(["alpha"], worker_id="w")
            args = [claim.task.id, claim.lease_id, "op-1", b'{"task_id":"t1","status":"succeeded"}']
            first = await queue._run("ack", args, "ack")
            repeat = await queue._run("ack", args, "ack")
            try:
                await queue.ack(claim, {"again": True})
            except LeaseLostError:
                refused = True
            else:
                refused = False
            return int(first), int(repeat), refused
        finally:
            await backend.close()

    assert run(scenario(), 20) == (1, 1, True)


def test_lease_and_operation_ids_are_unique_across_calls_and_queue_objects(open_redis) -> None:
    """Ids come from a random prefix per queue object and a counter (not a uuid4 per call):
    two workers' leases of one task, or two settling calls, never share an id."""

    async def scenario() -> tuple[list[str], list[str]]:
        first = await open_redis()
        second = await open_redis(prefix=first.task_queue.prefix)
        try:
            leases = []
            for index in range(20):
                await first.task_queue.enqueue(task(f"t{index}"))
                queue = (first if index % 2 else second).task_queue
                [claim] = await queue.claim(["alpha"], worker_id="w")
                await queue.release(claim)  # the next claim of the task makes a new lease
                leases.append(claim.lease_id)
            ids = [q._new_id() for q in (first.task_queue, second.task_queue) for _ in range(5_000)]
            return leases, ids
        finally:
            await first.close()
            await second.close()

    leases, ids = run(scenario(), 30)
    assert len(set(leases)) == len(leases) and len(set(ids)) == len(ids) == 10_000
    assert not set(leases) & set(ids)


def test_a_forked_child_draws_ids_no_parent_call_draws() -> None:
    """A queue object made before a fork (a Worker built, then its process forked) must not
    hand out the parent's next lease ids in the child: two deliveries of one task could then
    carry the same lease id, and a late ack would pass for the current lease's. (A fresh,
    single-threaded interpreter forks: forking a threaded test process is unsafe.)"""
    import subprocess
    import sys

    script = """
import os
from distributed_agents.adapters.redis import RedisTaskQueue
queue = RedisTaskQueue("redis://127.0.0.1:1/0", prefix="fork")  # never connects
drawn = []
for _ in range(2):
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, " ".join(queue._new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        drawn += pipe.read().split()
drawn += [queue._new_id() for _ in range(100)]
print(len(drawn), len(set(drawn)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["300", "300"]


def test_every_key_lives_under_the_prefix(open_redis, redis_url: str) -> None:
    async def scenario() -> tuple[str, list[bytes]]:
        backend = await open_redis(max_attempts=1)
        prefix = backend.options.prefix
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t1"))
            await queue.enqueue(task("t2", priority=1))
            await queue.enqueue(task("t3"))
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=2)
            await queue.ack(claims[0], {"x": 1})
            await queue.nack(claims[1], "boom")
            client = redis_asyncio.Redis.from_url(redis_url)
            try:
                keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
                everything = [k async for k in client.scan_iter(match=f"{prefix}:*")]
            finally:
                await client.aclose()
            assert sorted(keys) == sorted(everything)
            return prefix, everything
        finally:
            await backend.close()

    prefix, keys = run(scenario(), 20)
    assert keys and all(k.startswith(f"{prefix}:".encode()) for k in keys)


def test_standalone_queue_from_a_url_with_the_seed_options(redis_url: str) -> None:
    async def scenario() -> tuple[float, float, int, str]:
        queue = RedisTaskQueue(redis_url, prefix=f"s{uuid.uuid4().hex[:8]}", result_ttl=60, visibility_timeout=5,
                               max_attempts=4)
        try:
            await queue.enqueue(task("t1"))
            [claim] = await queue.claim(["alpha"], worker_id="w")
            lease_left = claim.deadline - time.time()
            await queue.ack(claim, {"ok": True})
            result = await queue.get_result("t1")
            assert result is not None
            return queue.result_ttl, lease_left, queue.max_attempts, result.status
        finally:
            await queue.close()
            await queue.close()  # idempotent

    result_ttl, lease_left, max_attempts, status = run(scenario(), 20)
    assert (result_ttl, max_attempts, status) == (60, 4, "succeeded")
    assert 4.0 < lease_left < 6.0


def test_round_trips_per_task_match_the_module_docstring() -> None:
    """enqueue -> claim -> ack -> result is 4 round trips: counted by the server's slowlog.

    With ``slowlog-log-slower-than 0`` Redis logs every top-level command with the
    client's address; commands run inside a script are logged with address ``?:0`` and
    are not round trips. A private server keeps other tests' traffic out.
    """

    async def scenario(url: str) -> tuple[list[str], list[str]]:
        meter = redis_asyncio.Redis.from_url(url, client_name="meter")
        queue = RedisTaskQueue(url, prefix="rt")
        try:
            # Warm-up: scripts loaded, pub/sub not involved on this path.
            await queue.enqueue(task("warm"))
            [warm] = await queue.claim(["alpha"], worker_id="w")
            await queue.ack(warm, None)
            await queue.get_result("warm")
            await meter.config_set("slowlog-log-slower-than", 0)
            await meter.config_set("slowlog-max-len", 10000)
            await meter.slowlog_reset()
            await queue.enqueue(task("t1"))
            [claim] = await queue.claim(["alpha"], worker_id="w")
            await queue.ack(claim, {"v": 1})
            assert await queue.get_result("t1") is not None
            single = await _client_commands(meter)
            await meter.slowlog_reset()
            for index in range(10):
                await queue.enqueue(task(f"b{index}"))
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=10)
            for each in claims:
                await queue.ack(each, None)
            assert len(await queue.wait_results([c.task.id for c in claims], timeout=1)) == 10
            batch = await _client_commands(meter)
            return single, batch
        finally:
            await queue.close()
            await meter.aclose()

    with RedisServer() as server:
        single, batch = run(scenario(server.url), 30)
    assert single == ["EVALSHA"] * 4
    # Ten tasks: 10 enqueues + 1 batched claim + 10 acks; no result read, as this queue
    # enqueued the tasks and acked them itself (it keeps what its acks stored).
    assert batch == ["EVALSHA"] * 21


async def _client_commands(meter: redis_asyncio.Redis) -> list[str]:
    entries = await meter.slowlog_get(10000)
    names = []
    for entry in reversed(entries):
        if entry["client_address"] == b"?:0" or entry["client_name"] == b"meter":
            continue
        names.append(entry["command"].split()[0].decode().upper())
    return names


def test_tasks_handed_to_a_parked_claimer_after_its_wait_are_not_stranded(open_redis) -> None:
    """A parked registration outlives its claim call: tasks handed to it then are returned by
    the next claim of that worker (attempt 1), or put back by close() for anyone else."""

    async def scenario() -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str], int]:
        first: RedisBackend = await open_redis()
        second: RedisBackend = await open_redis(prefix=first.options.prefix)
        producer: RedisBackend = await open_redis(prefix=first.options.prefix)
        try:
            queue = first.task_queue
            queue.poll_cap = 5.0  # type: ignore[attr-defined]  # a registration lasts 5.2 s
            assert await queue.claim(["alpha"], worker_id="w1", max_tasks=2, wait=0.05) == []  # parks, returns
            await producer.task_queue.enqueue_many([task("h1"), task("h2"), task("h3")])
            # h1 and h2 went to the registration (room 2); h3 waits in the ready set.
            later = await queue.claim(["alpha"], worker_id="w1", max_tasks=5, wait=0.05)
            later += await queue.claim(["alpha"], worker_id="w1", max_tasks=5, wait=0.05)
            got_later = [(c.task.id, c.attempt) for c in later]
            assert await queue.claim(["alpha"], worker_id="w1", max_tasks=1, wait=0.05) == []  # parks again
            await producer.task_queue.enqueue(task("h4"))  # handed to the new registration
            await first.close()  # gives h4 back
            back = await second.task_queue.claim(["alpha"], worker_id="w2", max_tasks=5, wait=2)
            stats = await producer.task_queue.stats("alpha")
            return got_later, [(c.task.id, c.attempt) for c in back], [c.worker_id for c in back], stats.in_flight
        finally:
            await first.close()
            await second.close()
            await producer.close()

    later, back, workers, in_flight = run(scenario(), 30)
    assert sorted(later) == [("h1", 1), ("h2", 1), ("h3", 1)]
    assert back == [("h4", 1)] and workers == ["w2"]
    assert in_flight == 4  # h1..h3 held by w1, h4 by w2
