"""Hostile input: task results edited by hand in Redis, and "done" events naming one task with another's result.

The example (hostile-input trial): garbage at ``<prefix>:q:r:<task id>`` failed the waiting
workflow with a decoding error naming no key; a hash there (WRONGTYPE) failed every read of
results in the same script. Now such a result reads as a failed result of its task whose
error names the key and what to do (logged too); the other tasks read in the same call are
unaffected. A "done" event whose inline result belongs to another task is not taken: the
key is read instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.core.ports.task_queue import Task, TaskResult

pytestmark = pytest.mark.timeout(60)


def task(task_id: str) -> Task:
    return Task(task_id, "wf-1", "node", "alpha", {"state": {}}, max_attempts=3)


async def plant(client: Any, key: str, how: str) -> None:
    await client.delete(key)
    if how == "hash":
        await client.hset(key, "status", "succeeded")
    elif how == "list":
        await client.rpush(key, b"x")
    elif how == "another task's":
        await client.set(key, json.dumps(TaskResult("t-other", "succeeded", output={"forged": 1}).to_dict()))
    else:
        await client.set(key, how.encode())


@pytest.mark.parametrize("how", ["not json", "hash", "list", "another task's", "[]", '{"task_id": "t-bad"}',
                                 '{"task_id": "t-bad", "status": "maybe"}'])
def test_a_malformed_result_fails_its_task_naming_the_key_and_spares_the_others(
        open_redis: Any, redis_url: str, how: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[dict[str, TaskResult], TaskResult | None, str]:
        backend = await open_redis()
        reader = await open_redis(prefix=backend.options.prefix)  # another process: it reads the keys
        client = redis_asyncio.from_url(redis_url)
        queue = backend.task_queue
        try:
            await queue.enqueue_many([task("t-bad"), task("t-good")])
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=2)
            assert sorted(c.task.id for c in claims) == ["t-bad", "t-good"]
            for claim in claims:
                await queue.ack(claim, {"real": claim.task.id})
            key = queue._keys.result("t-bad")
            await plant(client, key, how)
            waited = await reader.task_queue.wait_results(["t-bad", "t-good"], timeout=5)
            return waited, await reader.task_queue.get_result("t-bad"), key
        finally:
            await client.aclose()
            await reader.close()
            await backend.close()

    with caplog.at_level(logging.ERROR):
        waited, read, key = run(scenario(), 40)
    assert waited["t-good"].status == "succeeded" and waited["t-good"].output == {"real": "t-good"}
    for result in (waited["t-bad"], read):
        assert result is not None and result.status == "failed" and result.task_id == "t-bad"
        assert repr(key) in (result.error or "") and "malformed" in (result.error or "")
        assert "Delete the key" in (result.error or "")
    assert any(repr(key) in r.getMessage() for r in caplog.records)
    if how in ("hash", "list"):
        assert f"a Redis {how}, not a string" in (read.error or "")  # type: ignore[union-attr]


def test_a_done_event_carrying_another_tasks_result_is_not_taken(open_redis: Any, redis_url: str) -> None:
    async def scenario() -> dict[str, TaskResult]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        queue = backend.task_queue
        try:
            await queue.enqueue(task("t-1"))  # subscribes: its "done" event is awaited
            [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1)
            waiting = asyncio.ensure_future(queue.wait_results(["t-1"], timeout=10))
            await asyncio.sleep(0.2)
            forged = TaskResult("t-2", "succeeded", output={"forged": True})
            await client.publish(queue._keys.done_channel, "t-1\n" + json.dumps(forged.to_dict()))
            await asyncio.sleep(0.3)
            assert not waiting.done(), waiting.result()  # the event's result was not taken, nor any
            await queue.ack(claim, {"real": True})
            return await waiting
        finally:
            await client.aclose()
            await backend.close()

    found = run(scenario(), 40)
    assert found["t-1"].output == {"real": True} and found["t-1"].task_id == "t-1"


@pytest.mark.parametrize("settled", ["acked", "dead-lettered"])
def test_a_result_gone_from_a_settled_task_is_reported_not_waited_on_for_ever(
        open_redis: Any, redis_url: str, settled: str) -> None:
    """From a trial: the orchestrator SIGKILLed mid fan-out, one finished task's result key deleted (as a
    volatile-* maxmemory policy may evict it: it has a TTL), then resume: it waited for ever, no log.
    Now the read answers a failed result saying the result is gone and what to do."""
    async def scenario() -> tuple[TaskResult, TaskResult | None, str]:
        backend = await open_redis()
        reader = await open_redis(prefix=backend.options.prefix)
        client = redis_asyncio.from_url(redis_url)
        queue = backend.task_queue
        try:
            await queue.enqueue(task("t-gone"))
            [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1)
            if settled == "acked":
                await queue.ack(claim, {"real": True})
            else:
                await queue.nack(claim, "boom", final=True)
            key = queue._keys.result("t-gone")
            assert await client.delete(key) == 1
            waited = await reader.task_queue.wait_results(["t-gone"], timeout=5)
            return waited["t-gone"], await reader.task_queue.get_result("t-gone"), key
        finally:
            await client.aclose()
            await reader.close()
            await backend.close()

    waited, read, key = run(scenario(), 40)
    for result in (waited, read):
        assert result is not None and result.status == "failed"
        assert f"is gone from Redis key {key!r}" in (result.error or "") and "noeviction" in (result.error or "")
