"""One queue (and one bus) object used by many coroutines at once, across lost connections.

redis-py asyncio connections are not safe for concurrent use: a subscription or
health check sent while the pub/sub reader reads or reconnects fails with "readuntil()
called while another coroutine is already waiting". And pub/sub loses what is published
while its connection is re-made, so a waiter for results must then read them from Redis.
"""

from __future__ import annotations

import asyncio
import uuid

from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis import RedisTaskQueue
from distributed_agents.adapters.redis import queue_scripts as lua
from distributed_agents.adapters.redis.backend import RedisBackend
from distributed_agents.adapters.redis.message_bus import RedisMessageBus
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import BackendError
from distributed_agents.core.ports.task_queue import Task, TaskResult


def task(task_id: str, node_type: str = "alpha") -> Task:
    return Task(task_id, "wf-1", "node", node_type, {"id": task_id})


def test_an_event_lost_while_the_subscription_is_remade_is_read_from_redis(open_redis) -> None:
    """The pub/sub connection is killed in the same transaction as the ack: its event is
    never delivered, redis-py reconnects and re-subscribes on its own, and the waiter (of
    a task this queue enqueued, which it would otherwise not read) still gets the result."""

    async def scenario() -> dict[str, TaskResult]:
        orchestrator: RedisBackend = await open_redis()
        worker: RedisBackend = await open_redis(prefix=orchestrator.options.prefix)
        try:
            queue = orchestrator.task_queue
            assert isinstance(queue, RedisTaskQueue)
            queue.poll_cap = 60.0  # only a wake-up, not the safety-net poll, may end the wait
            await queue.enqueue(task("t1"))
            [claim] = await worker.task_queue.claim(["alpha"], worker_id="w")
            assert isinstance(worker.task_queue, RedisTaskQueue)
            wq = worker.task_queue
            raw = encode(TaskResult("t1", "succeeded", output={"x": 1}, attempts=1, worker_id="w").to_dict())
            script = wq._connection.script("ack", lua.ACK)
            base = [wq.prefix, wq.max_attempts, max(1, round(wq.result_ttl * 1000))]
            async with wq._connection.client().pipeline(transaction=True) as pipe:
                pipe.client_kill_filter(_type="pubsub")
                await script(keys=[], args=base + ["t1", claim.lease_id, uuid.uuid4().hex, raw], client=pipe)
                await pipe.execute()
            # Without a wake-up this waits for the hour (the run bound fails the test).
            return await queue.wait_results(["t1"], timeout=3600)
        finally:
            await worker.close()
            await orchestrator.close()

    found = run(scenario(), 60)
    assert found["t1"].output == {"x": 1}


def test_many_waiters_claimers_and_subscribers_on_one_object_survive_server_restarts() -> None:
    """Dozens of coroutines wait for results, claim with cancellations and subscribe to the
    bus on one queue and one bus object while the server restarts twice: no coroutine
    ever reads another's connection, and every result arrives."""

    async def scenario(server: RedisServer) -> tuple[list[BaseException], dict[str, TaskResult]]:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        queue = RedisTaskQueue(server.url, prefix=prefix)
        worker = RedisTaskQueue(server.url, prefix=prefix)
        bus = RedisMessageBus(server.url, prefix=prefix)
        unexpected: list[BaseException] = []
        results: dict[str, TaskResult] = {}
        ids = [f"t{i}" for i in range(30)]

        async def guarded(coro: object) -> None:
            try:
                await coro  # type: ignore[misc]
            except BackendError:
                pass  # an outage is reported as such; anything else is a bug
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                unexpected.append(exc)

        async def waiter(task_id: str) -> None:
            while task_id not in results:
                try:
                    results.update(await queue.wait_results([task_id], timeout=0.5))
                except BackendError:
                    await asyncio.sleep(0.05)

        async def claimer(n: int) -> None:
            while len(results) < len(ids):
                attempt = asyncio.ensure_future(queue.claim([f"idle{n}"], worker_id=f"c{n}", wait=0.3))
                await asyncio.sleep(0.01 * (n % 5))
                attempt.cancel()  # a claim cancelled inside its BLPOP
                await asyncio.gather(guarded(attempt), return_exceptions=True)

        async def subscriber(n: int) -> None:
            while len(results) < len(ids):
                async def once() -> None:
                    subscription = await bus.subscribe(f"events.s{n}.>")
                    await subscription.close()
                await guarded(once())
                await asyncio.sleep(0.02)

        async def work() -> None:
            while len(results) < len(ids):
                try:
                    for claim in await worker.claim(["alpha"], worker_id="w", max_tasks=5, wait=0.2):
                        await worker.ack(claim, {"id": claim.task.id})
                except BackendError:
                    await asyncio.sleep(0.05)

        async def restarts() -> None:
            for _ in range(2):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.restart)

        try:
            # Everyone starts while the server is down: the first subscriptions are made
            # by many coroutines at once, as it comes back.
            await asyncio.to_thread(server.stop)
            helpers = [asyncio.ensure_future(c) for c in
                       [*(claimer(n) for n in range(8)), *(subscriber(n) for n in range(6)), work()]]
            waiters = [asyncio.ensure_future(waiter(t)) for t in ids]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)
            while True:
                try:
                    await queue.enqueue_many([task(t) for t in ids[:15]])
                    break
                except BackendError:
                    await asyncio.sleep(0.1)
            await restarts()
            while True:
                try:
                    await queue.enqueue_many([task(t) for t in ids[15:]])
                    break
                except BackendError:
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(asyncio.gather(*waiters), 60)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        finally:
            await bus.close()
            await worker.close()
            await queue.close()
        return unexpected, results

    with RedisServer(appendonly=True) as server:
        unexpected, results = run(scenario(server), 110)
    assert unexpected == []
    assert {t: r.output for t, r in results.items()} == {f"t{i}": {"id": f"t{i}"} for i in range(30)}
