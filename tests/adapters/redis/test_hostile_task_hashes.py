"""Hostile input N5: task hashes edited by hand in Redis, and tasks naming another node type.

A field missing or of the wrong kind, garbage bytes, the hash deleted or written over by
another type of key, edited at rest or while a worker holds the task: the task is never
run and never lost. It is dead-lettered (its bytes kept) with a reason naming the hash
key and the field, and the queue goes on serving the tasks behind it. A task whose bytes
name another node type than the queue it sits in is dead-lettered the same way, never
handed to a claimer, even one serving both types. Every case goes through a real Redis
server and the adapter's own scripts; the edits are made with redis-py, as by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.core.ports.task_queue import Task, task_to_dict

pytestmark = pytest.mark.timeout(120)
TYPES = ["alpha", "beta"]


def task(task_id: str, node_type: str = "alpha") -> Task:
    return Task(task_id, "wf-1", "node", node_type, {"state": {}}, max_attempts=3)


async def edit(client: Any, key: str, field: str, value: bytes | None) -> None:
    """Set ``field`` of hash ``key`` to ``value``; None deletes the field, field "" the key, "<type>" writes another type."""
    if field == "":
        await client.delete(key)
    elif field == "<string>":
        await client.delete(key)
        await client.set(key, value or b"junk")
    elif field == "<list>":
        await client.delete(key)
        await client.rpush(key, value or b"junk")
    elif value is None:
        await client.hdel(key, field)
    else:
        await client.hset(key, field, value)


async def claim_all(queue: Any, types: list[str] = TYPES) -> list[Any]:
    """Every claim a queue gives now, each nacked as failed right away (a malformed task must not come back)."""
    claimed = []
    for _ in range(4):
        batch = await queue.claim(types, worker_id="w", max_tasks=10)
        claimed += batch
    return claimed


# (field, value) edits of a queued task's hash; the reason must name the field (or say the key is wrong)
AT_REST = [
    ("raw", None), ("raw", b"\xff\xfe\x00 garbage"), ("raw", b"{}"), ("type", None), ("type", b"beta"),
    ("type", b"\xff"), ("score", None), ("score", b"high"), ("score", b"\xff\xfe"), ("max", b"lots"),
    ("member", None), ("member", b"0000000000000009someone-else"), ("attempt", b"x"), ("attempt", b"-5"),
    ("", None), ("<string>", b'{"id": "t-1"}'), ("<list>", None),
]


@pytest.mark.parametrize(("field", "value"), AT_REST)
def test_a_hand_edited_queued_task_is_dead_lettered_naming_key_and_field_and_the_queue_keeps_serving(
        open_redis: Any, redis_url: str, field: str, value: bytes | None) -> None:
    async def scenario() -> tuple[list[Any], list[Any], str]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            key = backend.task_queue._keys.task("t-1")
            await queue.enqueue(task("t-1"))
            await edit(client, key, field, value)
            claimed = await claim_all(queue)
            await queue.enqueue(task("t-2"))  # the queue keeps serving
            after = await queue.claim(TYPES, worker_id="w", max_tasks=10)
            await queue.ack(after[0], {"ok": True})
            return [c.task.id for c in claimed] + [c.task.id for c in after], await queue.dead_letters(), key
        finally:
            await client.aclose()
            await backend.close()

    claimed, letters, key = run(scenario(), 60)
    assert claimed == ["t-2"]
    assert [(letter.task_id, letter.node_type) for letter in letters] == [("t-1", "alpha")]
    reason = letters[0].reason
    assert reason.startswith(("malformed task: ", "undecodable payload: ")), reason
    assert key in reason, reason
    if field and not field.startswith("<") and field != "attempt":
        assert f"'{field}'" in reason, reason
    assert letters[0].task is not None or letters[0].raw is not None  # what is left of its bytes is kept


@pytest.mark.parametrize("how", ["nack", "nack-delayed", "release", "lease expiry"])
@pytest.mark.parametrize(("field", "value"), [("score", b"x"), ("max", b"x"), ("attempt", b"x"), ("member", b"")])
def test_a_task_edited_while_a_worker_holds_it_is_dead_lettered_when_it_would_be_queued_again(
        open_redis: Any, redis_url: str, how: str, field: str, value: bytes) -> None:
    async def scenario() -> tuple[list[str], list[Any]]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t-1"))
            [held] = await queue.claim(TYPES, worker_id="w", lease_seconds=0.3 if how == "lease expiry" else 30)
            await edit(client, queue._keys.task("t-1"), field, value)
            if how.startswith("nack"):
                await queue.nack(held, "boom", delay=0.05 if how == "nack-delayed" else 0)
            elif how == "release":
                await queue.release(held)
            await asyncio.sleep(0.4)  # the lease or the delay runs out
            claimed = [c.task.id for c in await claim_all(queue)]
            await queue.enqueue(task("t-2"))
            claimed += [c.task.id for c in await queue.claim(TYPES, worker_id="w")]
            return claimed, await queue.dead_letters()
        finally:
            await client.aclose()
            await backend.close()

    claimed, letters = run(scenario(), 60)
    if field == "member" and how.startswith("nack"):
        # A nack gives the task a new place in the queue: the edit is undone, and the task runs again.
        assert claimed == ["t-1", "t-2"] and letters == []
        return
    assert claimed == ["t-2"]
    assert [letter.task_id for letter in letters] == ["t-1"]
    assert letters[0].reason.startswith("malformed task: ") and "q:t:t-1" in letters[0].reason, letters[0].reason


@pytest.mark.parametrize("served", [["alpha"], ["alpha", "beta"]])
def test_a_task_naming_another_node_type_than_its_queue_is_dead_lettered_never_run(
        open_redis: Any, redis_url: str, served: list[str]) -> None:
    """Its bytes say beta, it sits in alpha's queue: no claimer gets it, whatever types it serves."""
    async def scenario() -> tuple[list[str], list[Any], bytes]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t-1", "alpha"))
            raw = json.dumps(task_to_dict(task("t-1", "beta"))).encode()
            await client.hset(queue._keys.task("t-1"), "raw", raw)
            await queue.enqueue(task("t-2", "alpha"))
            claimed = [c.task.id for c in await claim_all(queue, served)]
            return claimed, await queue.dead_letters(), raw
        finally:
            await client.aclose()
            await backend.close()

    claimed, letters, raw = run(scenario(), 60)
    assert claimed == ["t-2"]
    [letter] = letters
    assert (letter.task_id, letter.node_type, letter.raw) == ("t-1", "alpha", raw)
    assert "names node type 'beta' but sits in the queue of node type 'alpha'" in letter.reason
    assert "q:t:t-1, field 'raw'" in letter.reason


def test_a_malformed_dead_letter_is_not_requeued_as_it_is_and_can_be_purged(open_redis: Any, redis_url: str) -> None:
    async def scenario() -> tuple[bool, bool, list[Any]]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t-1"))
            await client.hset(queue._keys.task("t-1"), "score", b"x")
            await claim_all(queue)
            requeued = await queue.requeue_dead_letter("t-1")
            purged = await queue.purge_dead_letter("t-1")
            return requeued, purged, await queue.dead_letters()
        finally:
            await client.aclose()
            await backend.close()

    assert run(scenario(), 60) == (False, True, [])


def test_a_dead_letter_with_hand_edited_numbers_still_lists(open_redis: Any, redis_url: str) -> None:
    async def scenario() -> list[Any]:
        backend = await open_redis()
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t-1"))
            [held] = await queue.claim(TYPES, worker_id="w")
            await queue.nack(held, "boom", final=True)
            await client.hset(queue._keys.task("t-1"), mapping={"attempt": b"many", "dead_at": b"\xff"})
            return await queue.dead_letters()
        finally:
            await client.aclose()
            await backend.close()

    [letter] = run(scenario(), 60)
    assert (letter.task_id, letter.attempts, letter.dead_at, letter.reason) == ("t-1", 0, 0.0, "boom")


FIELDS = st.sampled_from(["raw", "type", "score", "max", "member", "attempt", "state", "wf", ""])
VALUES = st.none() | st.binary(max_size=24) | st.sampled_from(
    [b"", b"0", b"-1", b"1e999", b"nan", b" 5", b"0x10", b"1.5", b"alpha", b"beta", b"\xff\xfe"])


@settings(max_examples=200 if os.environ.get("DA_TEST_PROFILE") == "thorough" else 25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(FIELDS, VALUES), min_size=1, max_size=3), held=st.booleans())
def test_any_hand_edit_ends_in_a_run_or_a_dead_letter_never_a_failed_claim_or_a_lost_task(
        open_redis: Any, redis_url: str, edits: list[tuple[str, bytes | None]], held: bool) -> None:
    """Edited at rest (``held`` False) or while leased: each claim answers, and the task is
    delivered or dead-lettered (naming its key), exactly one of the two at the end."""
    async def scenario() -> tuple[list[str], list[Any]]:
        backend = await open_redis(prefix=f"h{uuid.uuid4().hex[:10]}")
        client = redis_asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(task("t-1"))
            delivered: list[str] = []
            lease = None
            if held:
                [lease] = await queue.claim(TYPES, worker_id="w", lease_seconds=0.2)
            for field, value in edits:
                await edit(client, queue._keys.task("t-1"), field, value)
            if lease is not None:
                await asyncio.sleep(0.25)  # its lease runs out: the task is queued again or dead-lettered
            for _ in range(3):
                for claim in await queue.claim(TYPES, worker_id="w", max_tasks=5):
                    delivered.append(claim.task.id)
                    await queue.ack(claim, {"ok": True})
            result = await queue.get_result("t-1")  # decodes: a reason shows hand-written bytes escaped
            assert result is not None and result.status == ("succeeded" if delivered else "failed")
            return delivered, await queue.dead_letters()
        finally:
            await client.aclose()
            await backend.close()

    delivered, letters = run(scenario(), 60)
    assert len(delivered) + len(letters) == 1, (delivered, letters)
    if letters:
        assert letters[0].task_id == "t-1"
        assert "q:t:t-1" in letters[0].reason or letters[0].reason.startswith("lease expired"), letters[0].reason
