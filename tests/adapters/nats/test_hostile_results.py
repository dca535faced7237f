"""Hostile input: task records edited by hand in the NATS KV bucket ``<p>_tasks`` after the task settled.

The examples (hostile-input trial): garbage written over a finished task's record failed the
waiting workflow with a decoding error naming no key, and a record rewritten to ``done``
without a result (or carrying another task's) was waited on for ever. Now such a record
reads as a failed result of its task whose error names the bucket, the key and what to do
(logged too), as the Redis queue does for its result keys; the other tasks read in the same
call are unaffected.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.ports.task_queue import Task, TaskResult

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def task(task_id: str) -> Task:
    return Task(task_id, "wf-1", "node", "alpha", {"state": {}}, max_attempts=3)


def forged(how: str, record: dict[str, Any]) -> bytes:
    """What is written over ``record`` (t-bad's settled record) for the case ``how``."""
    if how == "not json":
        return b"not json"
    if how == "a list":
        return b"[]"
    if how == "done without a result":
        return encode({key: value for key, value in record.items() if key != "result"})
    if how == "another task's record":
        return encode({**record, "id": "t-other"})
    if how == "another task's result":
        return encode({**record, "result": TaskResult("t-other", "succeeded", output={"forged": 1}).to_dict()})
    if how == "a result of the wrong shape":
        return encode({**record, "result": {"task_id": "t-bad", "status": "maybe"}})
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["not json", "a list", "done without a result", "another task's record",
                                 "another task's result", "a result of the wrong shape"])
def test_a_malformed_record_fails_its_task_naming_the_key_and_spares_the_others(
        nats_url: str, how: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[dict[str, TaskResult], TaskResult | None, str, str]:
        backend = await open_nats(nats_url)
        reader = await open_nats(nats_url, prefix=backend.options.prefix)  # another process: it reads the records
        queue = backend.task_queue
        try:
            await queue.enqueue_many([task("t-bad"), task("t-good")])
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=2)
            assert sorted(c.task.id for c in claims) == ["t-bad", "t-good"]
            for claim in claims:
                await queue.ack(claim, {"real": claim.task.id})
            key = token("t-bad")
            entry = await kv.get(queue._tasks, key)
            assert entry is not None
            await kv.put(backend.connection.js, queue._tasks, key, forged(how, decode(entry.value)))
            waited = await reader.task_queue.wait_results(["t-bad", "t-good"], timeout=5)
            return waited, await reader.task_queue.get_result("t-bad"), key, backend.connection.names.task_bucket
        finally:
            await reader.close()
            await backend.close()

    with caplog.at_level(logging.ERROR):
        waited, read, key, bucket = run(scenario(), 40)
    assert waited["t-good"].status == "succeeded" and waited["t-good"].output == {"real": "t-good"}
    for result in (waited["t-bad"], read):
        assert result is not None and result.status == "failed" and result.task_id == "t-bad"
        error = result.error or ""
        assert repr(key) in error and repr(bucket) in error and "malformed" in error, error
        assert "Delete the key" in error and "resume the workflow" in error
    assert any(repr(key) in r.getMessage() or key in r.getMessage() for r in caplog.records)


def test_a_queued_tasks_record_is_not_a_result_and_an_expired_one_is_none(nats_url: str) -> None:
    """The check does not turn ordinary records into failures: queued and claimed tasks have no
    result yet, and a settled one whose ``expires_at`` passed reads as gone (None)."""
    async def scenario() -> tuple[TaskResult | None, TaskResult | None, TaskResult | None]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            await queue.enqueue_many([task("t-q"), task("t-c"), task("t-x")])
            queued = await queue.get_result("t-q")
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=3)
            claimed = await queue.get_result("t-c")
            for claim in claims:
                await queue.ack(claim, {"real": True})
            entry = await kv.get(queue._tasks, token("t-x"))
            assert entry is not None
            record = json.loads(entry.value)
            await kv.put(backend.connection.js, queue._tasks, token("t-x"), encode({**record, "expires_at": 1.0}))
            return queued, claimed, await queue.get_result("t-x")
        finally:
            await backend.close()

    queued, claimed, expired = run(scenario(), 40)
    assert queued is None and claimed is None and expired is None


@pytest.mark.parametrize("queued_together", [1, 3])
def test_a_queued_task_whose_record_is_another_tasks_is_dead_lettered_not_acked_away(
        nats_url: str, queued_together: int) -> None:
    """From a trial: another task's record copied over a queued task's key had the claim take the
    task for a stale duplicate (the record names another message) and ack it away unrun, unseen:
    the workflow waited for ever. Now the task is dead-lettered with the reason naming the key,
    its result is a failure saying so, and the tasks claimed with it run (the batched claim of
    several messages and the claim of one take different paths)."""
    async def scenario() -> tuple[list[str], Any, TaskResult | None, str]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        others = [f"t-ok{i}" for i in range(queued_together - 1)]
        try:
            await queue.enqueue_many([task("t-source")])
            [source] = await queue.claim(["alpha"], worker_id="w", max_tasks=1)
            await queue.ack(source, {"real": True})
            await queue.enqueue_many([task("t-victim"), *map(task, others)])
            copied = await kv.get(queue._tasks, token("t-source"))
            assert copied is not None
            await kv.put(backend.connection.js, queue._tasks, token("t-victim"), copied.value)
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=10)
            for claim in claims:
                await queue.ack(claim, {"real": True})
            [letter] = await queue.dead_letters("alpha")
            return sorted(c.task.id for c in claims), letter, await queue.get_result("t-victim"), token("t-victim")
        finally:
            await backend.close()

    claimed, letter, result, key = run(scenario(), 40)
    assert claimed == [f"t-ok{i}" for i in range(queued_together - 1)]
    assert letter.task_id == "t-victim"
    assert key in letter.reason and "another task ('t-source')" in letter.reason, letter.reason
    assert result is not None and result.status == "failed" and "another task" in (result.error or "")


def test_a_requeued_message_whose_record_was_deleted_is_logged_not_dropped_unseen(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A message queued after its record (a retry's) whose record is gone is stale and not run:
    that is logged, naming the task and the bucket, so a record deleted by hand is traceable."""
    async def scenario() -> tuple[list[Any], str]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            await queue.enqueue(task("t-retried"))
            [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1)
            await queue.nack(claim, "boom")  # queued again: a message written after its record
            await kv.remove(backend.connection.js, queue._tasks, token("t-retried"))
            return await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1.0), \
                backend.connection.names.task_bucket
        finally:
            await backend.close()

    with caplog.at_level(logging.WARNING, logger="distributed_agents.adapters.nats"):
        claims, bucket = run(scenario(), 40)
    assert claims == []
    assert any("'t-retried'" in r.getMessage() and bucket in r.getMessage() and "deleted by hand" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
