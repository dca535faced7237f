"""``enqueue_many`` writes the bytes it always wrote, built more cheaply: each task encoded
once, its message's header block written directly (``_task_headers``), its record's JSON
completed from a head made before the publish (``_new_record_head``/``_new_record_bytes``),
and the dead-letter size check short-cut by a bound only where it surely holds.

The builders are compared with the general ones for any id (hypothesis); on a real
nats-server, the stored messages and records of an ``enqueue_many`` are read back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats import kv, replies
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token, untoken
from distributed_agents.adapters.nats.task_queue import (
    _carried_id,
    _digest,
    _header_carries,
    _id_headers,
    _new_record,
    _new_record_bytes,
    _new_record_head,
    _task_headers,
    letter_bytes,
)
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadTooLargeError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task, task_to_dict

pytestmark = pytest.mark.timeout(120)

# Ids with what a header or JSON writer must treat specially: surrounding whitespace, line
# breaks, quotes and backslashes, control characters, non-ASCII.
_IDS = st.text(min_size=1, max_size=40) | st.sampled_from(
    [" padded ", "tab\there", "line\nbreak", "cr\rlf", '"quoted\\"', "\x01\x1f", "ünï©ødé", "\u2028sep", "wf:n:0"])


@given(task_id=_IDS)
@settings(max_examples=300, deadline=None)
def test_task_headers_are_the_general_header_block_of_the_id_headers(task_id: str) -> None:
    block = _task_headers(task_id)
    assert block == replies.header_block(_id_headers(task_id, _carried_id(task_id)))
    # What a header carries exactly names the id: Da-Task-Id itself, or Da-Task-Token read back.
    read = replies.header_lines(block[len(b"NATS/1.0\r\n"):])
    assert read["Nats-Msg-Id"] == _carried_id(task_id)
    if _header_carries(task_id):
        assert read["Da-Task-Id"] == task_id and "Da-Task-Token" not in read
    else:
        assert untoken(read["Da-Task-Token"]) == task_id and "Da-Task-Id" not in read


@given(first=_IDS, second=_IDS)
@settings(max_examples=500, deadline=None)
def test_distinct_ids_are_carried_as_distinct_header_values(first: str, second: str) -> None:
    if first != second:
        assert _carried_id(first) != _carried_id(second)
        assert _id_headers(first, "m") != _id_headers(second, "m")


@pytest.mark.parametrize("task_id", ["a", "wf:n:0", "ünï", "a b", "_20a", "-x"])
def test_an_id_a_header_carries_exactly_is_carried_as_itself(task_id: str) -> None:
    assert _carried_id(task_id) == task_id
    assert _id_headers(task_id, "m") == {"Nats-Msg-Id": "m", "Da-Task-Id": task_id}


@pytest.mark.parametrize("task_id", ["=eq", "=", "=_20a", "= spaced"])
def test_an_id_starting_with_equals_is_queued_under_itself_as_older_claimers_check_it(task_id: str) -> None:
    """Older claimers compare Da-Task-Id with the task's id and dead-letter a message whose
    header differs: an id starting with "=" keeps its own Da-Task-Id (only its message id is
    the distinct carried form), so they still run it during a rolling upgrade."""
    assert _id_headers(task_id, _carried_id(task_id))["Da-Task-Id"] == task_id
    assert _carried_id(task_id) != task_id


@pytest.mark.parametrize("task_id", [" lead", "trail ", "line\nbreak", "cr\rlf", "\ttab", ""])
def test_an_id_a_header_cannot_carry_has_no_da_task_id_for_older_claimers_to_misread(task_id: str) -> None:
    """Older claimers know only Da-Task-Id: without it they take the message as one with no
    header and run it (with it, stripped, they dead-lettered it as queued under another id)."""
    headers = _id_headers(task_id, _carried_id(task_id))
    assert "Da-Task-Id" not in headers and untoken(headers["Da-Task-Token"]) == task_id


@given(task_id=_IDS, node_type=_IDS, priority=st.integers(-10**6, 10**6),
       max_attempts=st.none() | st.integers(1, 10**6), seq=st.integers(0, 2**63), data=st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_new_record_bytes_are_the_encoded_new_record(
        task_id: str, node_type: str, priority: int, max_attempts: int | None, seq: int, data: bytes) -> None:
    digest = _digest(data)
    made = _new_record_bytes(_new_record_head(task_id, node_type, priority, max_attempts, digest), seq)
    record = _new_record(task_id, node_type, priority, max_attempts, seq=seq, digest=digest)
    assert made == encode(record)
    assert decode(made) == record


@pytest.mark.parametrize(("priority", "max_attempts"), [(True, None), (0, False), (2**70, 2**70), (-1, 1)])
def test_new_record_bytes_for_values_the_members_are_not_written_for(priority: Any, max_attempts: Any) -> None:
    """Values other than a plain int (a bool) take the encoder's path, big ints the written one: the same bytes."""
    made = _new_record_bytes(_new_record_head("t", "alpha", priority, max_attempts, "00ff"), 9)
    assert made == encode(_new_record("t", "alpha", priority, max_attempts, seq=9, digest="00ff"))


async def _open(url: str) -> NatsBackend:
    backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"eb{uuid.uuid4().hex[:8]}"))
    await backend.connect()
    return backend


def test_enqueue_many_stores_each_task_its_headers_and_its_record(nats_server: Any) -> None:
    """Tasks with awkward ids, two priorities: every record is the new record an enqueue
    creates (queued, no message bound: seq 0), every message holds its task's JSON under
    headers naming its id and, in its message id, the revision its record was created at,
    and the tasks are claimed as they were enqueued (a claim checks its message's Da-Task-Id
    header against the task's id: one that differs is dead-lettered, not claimed)."""
    ids = ["quote\"d", "ünï©ødé", "a.b*c>d", "wf:n:0", "back\\slash", "tab\tinside"]

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            tasks = [Task(task_id, "wf", f"n{i}", "alpha", {"i": i}, priority=i % 2, max_attempts=None if i % 3 else 4)
                     for i, task_id in enumerate(ids)]
            flags = await queue.enqueue_many(tasks)
            stored = []
            names = backend.connection.names
            messages = [await backend.connection.js.get_msg(names.task_stream, seq)
                        for seq in range(1, len(tasks) + 1)]
            by_data = {bytes(m.data): m for m in messages}
            for task in tasks:
                entry = await kv.get(queue._tasks, token(task.id))
                message = by_data[encode(task_to_dict(task))]
                stored.append((entry.value, entry.revision, message.data, dict(message.headers or {})))
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=len(tasks))
            return tasks, flags, stored, claims
        finally:
            await backend.close()

    tasks, flags, stored, claims = run(scenario(nats_server.url), 60)
    assert flags == [True] * len(tasks)
    for task, (raw, revision, data, headers) in zip(tasks, stored):
        assert raw == encode(_new_record(task.id, task.node_type, task.priority, task.max_attempts, seq=0,
                                         digest=_digest(encode(task_to_dict(task)))))
        assert data == encode(task_to_dict(task))
        if task.id.isascii():  # (nats-py's get_msg reads other header values as email headers)
            assert headers["Da-Task-Id"] == task.id
            assert headers["Nats-Msg-Id"] == f"{task.id}@{revision}"
            assert "Da-Task-Token" not in headers
    assert sorted(c.task.id for c in claims) == sorted(ids)
    assert {c.task.id: c.task for c in claims} == {t.id: t for t in tasks}


@pytest.mark.parametrize("task_id", ["plain", "\x01" * 30, "é" * 30])
def test_the_size_check_is_exact_at_the_limit_for_enqueue_and_enqueue_many(nats_server: Any, task_id: str) -> None:
    """A task whose letter takes exactly the server's max_payload is taken, one byte more is
    refused, by both enqueue paths, for ids whose JSON is longer than their characters
    (escaped control characters, multi-byte UTF-8): the short cut never accepts more."""

    async def scenario(url: str) -> list[tuple[int, bool, Any]]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            limit = int(backend.connection.nc.max_payload)
            outcomes: list[tuple[int, bool, Any]] = []
            for over in (0, 1):
                for many in (False, True):
                    one_id = f"{task_id}-{over}{int(many)}"
                    one = _task_of(one_id, limit - letter_bytes(0, one_id, "alpha") + over)
                    try:
                        outcome = (await queue.enqueue_many([one]))[0] if many else await queue.enqueue(one)
                    except PayloadTooLargeError as refused:
                        outcome = (refused.size, refused.limit)
                    outcomes.append((over, many, outcome))
            return outcomes
        finally:
            await backend.close()

    outcomes = run(scenario(nats_server.url), 60)
    assert [o for _, _, o in outcomes[:2]] == [True, True], outcomes
    assert all(isinstance(o, tuple) and o[0] == o[1] + 1 for _, _, o in outcomes[2:]), outcomes


def _task_of(task_id: str, size: int) -> Task:
    """A task of node type "alpha" with id ``task_id`` whose JSON takes exactly ``size`` bytes."""
    base = len(encode(task_to_dict(Task(task_id, "wf", "n", "alpha", {"f": ""}, created_at=1.0))))
    task = Task(task_id, "wf", "n", "alpha", {"f": "x" * (size - base)}, created_at=1.0)
    assert len(encode(task_to_dict(task))) == size
    return task


@pytest.mark.parametrize("many", [False, True])
def test_ids_a_header_would_merge_are_each_enqueued_and_claimed(nats_server: Any, many: bool) -> None:
    """Ids that differ only where a header changes a value (surrounding whitespace, a line break
    against a space, an "=" start against another id's carried form) are distinct tasks: each
    is enqueued (not taken for a duplicate of the other), claimed and acked under its own id."""
    ids = [" a", "a", "x\ny", "x y", "\tpad\t", "pad", "=" + "_20a", "_20a", "=plain", "plain"]

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            tasks = [Task(task_id, "wf", "n", "alpha", {"id": task_id}) for task_id in ids]
            if many:
                flags = await queue.enqueue_many(tasks)
            else:
                flags = [await queue.enqueue(task) for task in tasks]
            claims: list[Any] = []
            for _ in range(10):
                claims += await queue.claim(["alpha"], worker_id="w", max_tasks=len(ids), wait=1)
                if len(claims) >= len(ids):
                    break
            for claim in claims:
                await queue.ack(claim, {"id": claim.task.id})
            results = await queue.wait_results(ids, timeout=10)
            return flags, claims, results, await queue.dead_letters()
        finally:
            await backend.close()

    flags, claims, results, dead = run(scenario(nats_server.url), 60)
    assert flags == [True] * len(ids)
    assert sorted(c.task.id for c in claims) == sorted(ids), dead
    assert all(c.task.payload == {"id": c.task.id} for c in claims)
    assert {k: r.output for k, r in results.items()} == {i: {"id": i} for i in ids}
    assert dead == []


def test_a_message_naming_its_id_itself_is_claimed_as_before(nats_server: Any) -> None:
    """A message whose Da-Task-Id header is the id itself (as every version writes it for an id
    a header carries) is claimed, its record created by the claim; one naming another id is
    dead-lettered as before, and so is one whose Da-Task-Token names another id or none."""

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        names = backend.connection.names
        try:
            await queue.enqueue(Task("warm", "wf", "n", "alpha", {}))  # consumer and levels made
            for task_id, headers in (("=old", {"Da-Task-Id": "=old"}), ("other", {"Da-Task-Id": "=other"}),
                                     (" tok", {"Da-Task-Token": token(" tok")}),
                                     ("mine", {"Da-Task-Token": token("yours")}),
                                     ("bad", {"Da-Task-Token": "_zz"})):
                raw = encode(task_to_dict(Task(task_id, "wf", "n", "alpha", {})))
                await backend.connection.js.publish(names.task_subject("alpha", 0), raw,
                                                    headers={"Nats-Msg-Id": uuid.uuid4().hex, **headers})
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=1)
            return sorted(c.task.id for c in claims), sorted((d.task_id, d.reason[:60]) for d in await queue.dead_letters())
        finally:
            await backend.close()

    claimed, dead = run(scenario(nats_server.url), 60)
    assert claimed == [" tok", "=old", "warm"]
    assert len(dead) == 3 and {"=other", "yours"} <= {task_id for task_id, _ in dead}, dead
    reasons = dict(dead)
    assert reasons["=other"].startswith("malformed task: it names task id 'other'")
    assert reasons["yours"].startswith("malformed task: it names task id 'mine'")
    assert any(d.startswith("raw-") and "names task id 'bad'" in r for d, r in dead)
