"""The NATS queue's enqueue writes the task's record before its message (``adapters.nats.task_queue``):
what another enqueue of the same id does while the first producer, a retry or a requeue is
between those writes, and what a cancelled task's message left in the stream does later.

Each scenario holds one process between its two writes (an instance's method delayed), as a
stalled producer or worker would be; the other calls are made meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats


def _stats(stats: Any) -> tuple[int, int, int]:
    return stats.queued, stats.in_flight, stats.dead


def test_a_stalled_producers_task_runs_when_another_enqueues_its_id_meanwhile(nats_url: str) -> None:
    """Producer 1 creates the record, then stalls before publishing; producer 2 enqueues the same
    id with another payload meanwhile: it answers False and sends nothing of its own (its copy,
    sent once the record is past the grace a live producer has, carries the first producer's
    message id and is dropped as a duplicate). The task that runs is producer 1's, once."""

    async def scenario() -> tuple[Any, ...]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        q1, q2 = first.task_queue, second.task_queue
        publish = q1._publish_task

        async def stalled(task: Task, raw: bytes, message_id: str) -> None:
            await asyncio.sleep(0.3)
            await publish(task, raw, message_id)

        q1._publish_task = stalled  # type: ignore[method-assign]
        try:
            async def meanwhile() -> bool:
                await asyncio.sleep(0.1)
                return await q2.enqueue(Task("a", "wf-2", "other", "x", {"from": 2}))

            flags = await asyncio.gather(q1.enqueue(Task("a", "wf-1", "n", "x", {"from": 1})), meanwhile())
            stats = _stats(await q1.stats("x"))
            claims = await q1.claim(["x"], worker_id="w", max_tasks=5, wait=1)
            for claim in claims:
                await q1.ack(claim, None)
            late = await q1.claim(["x"], worker_id="w", max_tasks=5, wait=0.3)
            return flags, stats, [(c.task.workflow_id, dict(c.task.payload)) for c in claims], late
        finally:
            await first.close()
            await second.close()

    flags, stats, ran, late = run(scenario(), 40)
    assert flags == [True, False]
    assert stats == (1, 0, 0)
    assert ran == [("wf-1", {"from": 1})]
    assert late == []


def test_an_enqueue_while_a_retry_is_requeued_sends_nothing_and_the_task_runs_as_queued(nats_url: str) -> None:
    """A worker nacks a task for a retry and stalls between writing its record (queued, no message
    bound) and publishing the retry's message; another producer enqueues the id with another
    payload meanwhile: False, nothing sent. The retry runs the original task, at attempt 2, once."""

    async def scenario() -> tuple[Any, ...]:
        worker = await open_nats(nats_url, max_attempts=5)
        producer = await open_nats(nats_url, prefix=worker.options.prefix)
        q1, q2 = worker.task_queue, producer.task_queue
        republish = q1._republish

        async def stalled(*args: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.3)
            await republish(*args, **kwargs)

        q1._republish = stalled  # type: ignore[method-assign]
        try:
            assert await q1.enqueue(Task("a", "wf-1", "n", "x", {"v": "orig"})) is True
            [claim] = await q1.claim(["x"], worker_id="w1")

            async def meanwhile() -> bool:
                await asyncio.sleep(0.1)
                return await q2.enqueue(Task("a", "wf-2", "other", "x", {"v": "intruder"}))

            _, flag = await asyncio.gather(q1.nack(claim, "failed"), meanwhile())
            stats = _stats(await q2.stats("x"))
            claims = await q2.claim(["x"], worker_id="w2", max_tasks=5, wait=2)
            for got in claims:
                await q2.ack(got, None)
            late = await q2.claim(["x"], worker_id="w2", max_tasks=5, wait=0.3)
            return flag, stats, [(c.task.workflow_id, dict(c.task.payload), c.attempt) for c in claims], late, _stats(
                await q2.stats("x"))
        finally:
            await worker.close()
            await producer.close()

    flag, stats, ran, late, after = run(scenario(), 40)
    assert flag is False
    assert stats == (1, 0, 0)
    assert ran == [("wf-1", {"v": "orig"}, 2)]
    assert late == [] and after == (0, 0, 0)


def test_an_enqueue_while_a_dead_letter_is_requeued_sends_nothing_and_the_letters_task_runs(nats_url: str) -> None:
    """``requeue_dead_letter`` stalls between writing the queued record and publishing; a producer
    enqueues the id with another payload meanwhile: False, nothing sent. The requeue answers
    True, the letter is gone, and the task that runs is the letter's, once."""

    async def scenario() -> tuple[Any, ...]:
        requeuer = await open_nats(nats_url, max_attempts=1)
        producer = await open_nats(nats_url, prefix=requeuer.options.prefix, max_attempts=1)
        q1, q2 = requeuer.task_queue, producer.task_queue
        try:
            assert await q1.enqueue(Task("a", "wf-1", "n", "x", {"v": "orig"})) is True
            [claim] = await q1.claim(["x"], worker_id="w")
            await q1.nack(claim, "bad")
            ensure = q1._ensure_level

            async def stalled(*args: Any, **kwargs: Any) -> None:
                await asyncio.sleep(0.3)
                return await ensure(*args, **kwargs)

            q1._ensure_level = stalled  # type: ignore[method-assign]

            async def meanwhile() -> bool:
                await asyncio.sleep(0.1)
                return await q2.enqueue(Task("a", "wf-2", "other", "x", {"v": "intruder"}))

            flags = await asyncio.gather(q1.requeue_dead_letter("a"), meanwhile())
            stats = _stats(await q2.stats("x"))
            claims = await q2.claim(["x"], worker_id="w2", max_tasks=5, wait=2)
            for got in claims:
                await q2.ack(got, None)
            late = await q2.claim(["x"], worker_id="w2", max_tasks=5, wait=0.3)
            letters = await q2.dead_letters("x")
            return flags, stats, [(c.task.workflow_id, dict(c.task.payload)) for c in claims], late, letters
        finally:
            await requeuer.close()
            await producer.close()

    flags, stats, ran, late, letters = run(scenario(), 40)
    assert flags == [True, False]
    assert stats == (1, 0, 0)
    assert ran == [("wf-1", {"v": "orig"})]
    assert late == [] and letters == []


def test_a_cancelled_message_stays_withdrawn_past_result_ttl_and_never_runs_for_a_new_task_of_its_id(
        nats_url: str) -> None:
    """A task cancelled before any claim (its message cannot be deleted, and waits in the stream)
    is not counted queued, also once its cancelled record expired (``result_ttl``); the id
    enqueued again then, with another payload but the same ``created_at`` (a task rebuilt from
    stored fields): only the new task runs, one claim at a time, and the counts end at zero."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, result_ttl=1.0)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(Task("a", "wf", "n", "x", {"v": "old"}, created_at=1.7e9)) is True
            assert await queue.cancel("a") is True
            seen = [_stats(await queue.stats("x"))]
            await asyncio.sleep(2.5)  # the cancelled record's result_ttl passes
            seen.append(_stats(await queue.stats("x")))
            again = await queue.enqueue(Task("a", "wf", "n", "x", {"v": "new"}, created_at=1.7e9))
            seen.append(_stats(await queue.stats("x")))
            ran = []
            for _ in range(3):
                for claim in await queue.claim(["x"], worker_id="w", max_tasks=1, wait=0.3):
                    ran.append(dict(claim.task.payload))
                    await queue.ack(claim, None)
            seen.append(_stats(await queue.stats("x")))
            return again, seen, ran
        finally:
            await backend.close()

    again, seen, ran = run(scenario(), 40)
    assert again is True
    assert seen == [(0, 0, 0), (0, 0, 0), (1, 0, 0), (0, 0, 0)]
    assert ran == [{"v": "new"}]


def test_a_message_sent_again_for_a_dead_producers_record_runs_even_when_redelivered(nats_url: str) -> None:
    """From the chaos soak: an orchestrator created a task's record and died before publishing;
    the one taking over enqueued the task again (a Task of its own: another ``created_at``, so
    other bytes than the record's digest) and the message went out; its first delivery was
    pulled by a worker that died before claiming it. Redelivered, it was taken for an earlier
    task's message (the digest differs) and acked away unrun: the workflow waited for ever.
    Now a message whose id names the record's revision is that record's, whatever its bytes."""
    from distributed_agents.adapters.nats.delivery import pull_ready
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import _fresh_record_bytes
    from distributed_agents.adapters.nats import kv
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import task_to_dict

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue, names = backend.task_queue, backend.connection.names
        try:
            await queue._ensure_consumer("x", 0)
            first = Task("t", "wf", "n", "x", {"v": 1}, created_at=1000.0)  # the producer that died
            assert await kv.cas(backend.connection.js, queue._tasks, token("t"),
                                _fresh_record_bytes(first, encode(task_to_dict(first))), last=0)
            again = await queue.enqueue(Task("t", "wf", "n", "x", {"v": 1}, created_at=2000.0))
            # A worker pulls the delivery and dies before claiming it: redelivered after AckWait.
            pulled = await pull_ready(backend.connection.nc, names.task_stream, names.task_consumer("x", 0), 1)
            claims = await queue.claim(["x"], worker_id="w", max_tasks=1, wait=5)
            ran = [(c.task.id, c.attempt) for c in claims]
            for claim in claims:  # its first attempt fails: the retry is the claimed task sent again
                await queue.nack(claim, "failed once")
            claims = await queue.claim(["x"], worker_id="w", max_tasks=1, wait=5)
            ran += [(c.task.id, c.attempt) for c in claims]
            for claim in claims:
                await queue.ack(claim, None)
            return again, len(pulled), ran, await queue.get_result("t")
        finally:
            await backend.close()

    again, pulled, ran, result = run(scenario(), 40)
    assert again is False and pulled == 1
    assert ran == [("t", 1), ("t", 2)]
    assert result is not None and result.status == "succeeded"
