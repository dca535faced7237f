"""Every dead letter and dead record the NATS queue writes fits the server's max_payload,
whatever the task's size (up to what enqueue accepts), the error texts and the attempts
(``task_queue.LETTER_RESERVE_BYTES``, ``error_history.shortened``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.error_history import ERRORS_KEPT_BYTES, REASON_KEPT_BYTES, shortened, with_error
from distributed_agents.adapters.nats.task_queue import LETTER_RESERVE_BYTES, letter_bytes
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import PayloadTooLargeError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task, task_to_dict

pytestmark = pytest.mark.timeout(120)

# Characters JSON escapes to six bytes each: the longest encoding an error text can have.
WORST = "\x01"


def _task_of(task_id: str, size: int, **kwargs: Any) -> Task:
    """A task of node type "alpha" whose JSON takes exactly ``size`` bytes."""
    base = len(encode(task_to_dict(Task(task_id, "wf", "n", "alpha", {"f": ""}, created_at=1.0, **kwargs))))
    task = Task(task_id, "wf", "n", "alpha", {"f": "x" * (size - base)}, created_at=1.0, **kwargs)
    assert len(encode(task_to_dict(task))) == size
    return task


async def _open(url: str) -> NatsBackend:
    backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"ls{uuid.uuid4().hex[:8]}"))
    await backend.connect()
    return backend


async def _claim_one(queue: Any) -> Any:
    """The next task the queue hands out (the raw bytes before it are dead-lettered on the way)."""
    for _ in range(20):
        claims = await queue.claim(["alpha"], worker_id="w", wait=5)
        if claims:
            [claim] = claims
            return claim
    raise AssertionError("no task was handed out")


def _largest(backend: NatsBackend, task_id: str) -> int:
    """The largest task JSON enqueue takes for ``task_id`` and node type "alpha"."""
    limit = int(backend.connection.nc.max_payload)
    return limit - (letter_bytes(0, task_id, "alpha"))


_TEXTS = (st.text(max_size=20_000) | st.just(WORST * 200_000) | st.just("\U0001f600" * 9_000)
          | st.builds(lambda a, b: a + WORST * 4_000 + b, st.text(max_size=3_000), st.text(max_size=3_000)))


@given(reason=_TEXTS, earlier=st.lists(_TEXTS, max_size=12))
@settings(max_examples=60, deadline=None)
def test_a_letters_errors_and_reason_fit_its_reserve(reason: str, earlier: list[str]) -> None:
    """Whatever the texts, a letter's reason and errors (and a record's reason, result error
    and errors) take less than the reserve, with 1 KB to spare for the other fields."""
    errors: list[Any] = []
    for text in earlier:
        errors = with_error(errors, text)
    errors = with_error(errors, reason)
    kept = shortened(reason)
    assert len(encode(kept)) <= REASON_KEPT_BYTES and len(encode(errors)) <= ERRORS_KEPT_BYTES
    assert len(encode(kept)) + len(encode(errors)) + 1024 <= LETTER_RESERVE_BYTES
    if len(encode(reason)) <= 1000:
        assert kept == reason
    # A dead record keeps the reason twice (``reason`` and its result's ``error``) beside its errors.
    assert len(encode(kept)) * 2 + len(encode(errors)) + 1024 <= 2 * LETTER_RESERVE_BYTES


def test_a_huge_final_error_still_leaves_a_letter_that_fits(nats_server: Any) -> None:
    """A task at the limit nacked for good with an error of 3 MB of worst-case characters:
    dead (False), its letter holds the whole task, the failed result's error is shortened
    (start and end kept), the stats count it dead."""

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            task = _task_of("huge", _largest(backend, "huge"))
            assert await queue.enqueue(task)
            claim = await _claim_one(queue)
            error = "BEGIN" + WORST * 3_000_000 + "Error: the end"
            flag = await queue.nack(claim, error, final=True)
            return task, flag, await queue.dead_letters("alpha"), await queue.stats("alpha"), await queue.get_result("huge")
        finally:
            await backend.close()

    task, flag, letters, stats, result = run(scenario(nats_server.url), 90)
    assert flag is False
    [letter] = letters
    assert letter.task == task and letter.reason.startswith("BEGIN") and letter.reason.endswith("Error: the end")
    assert "characters not kept" in letter.reason
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
    assert result.status == "failed" and result.error == letter.reason


def test_every_task_the_core_can_make_is_accepted(nats_server: Any) -> None:
    """A task whose payload takes the whole of ``max_payload_bytes`` (the core's bound), with a
    long id, is under the limit: the reserve never refuses what a workflow makes."""

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            task_id = "wf-" + "i" * 200 + ":node:" + "9" * 40
            payload = {"arg": "a" * backend.max_payload_bytes, "meta": {"checkpoint": "c" * 3000}}
            task = Task(task_id, "wf", "n", "alpha", payload, max_attempts=1)
            created = await queue.enqueue(task)
            claim = await _claim_one(queue)
            flag = await queue.nack(claim, WORST * 1_000_000)
            return created, flag, [letter.task for letter in await queue.dead_letters("alpha")], task
        finally:
            await backend.close()

    created, flag, tasks, task = run(scenario(nats_server.url), 60)
    assert (created, flag, tasks) == (True, False, [task])


def test_enqueue_many_refuses_a_batch_with_one_task_too_large_and_writes_nothing(nats_server: Any) -> None:
    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            small = Task("small", "wf", "n", "alpha", {})
            big = _task_of("big", _largest(backend, "big") + 1)
            with pytest.raises(PayloadTooLargeError) as refused:
                await queue.enqueue_many([small, big])
            return refused.value, await queue.stats("alpha"), await queue.get_result("small")
        finally:
            await backend.close()

    refused, stats, result = run(scenario(nats_server.url), 60)
    assert "'big'" in str(refused) and refused.size == refused.limit + 1, str(refused)
    assert (stats.queued, stats.in_flight, stats.dead, result) == (0, 0, 0, None)


def test_raw_tasks_at_and_over_the_claim_limit(nats_server: Any) -> None:
    """Bytes enqueue did not write: one byte over the letter's limit is dead-lettered unread
    at claim (oversized, its first bytes kept); one at the limit is claimed, and nacked for
    good with a huge error its letter holds it whole; one that re-encodes longer (numbers
    written short) still gets a letter that fits, keeping its first bytes as raw."""

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = await _open(url)
        queue = backend.task_queue
        try:
            await queue.enqueue_raw("alpha", b"{}")  # the stream and consumer; dead-lettered as undecodable
            subject = backend.connection.names.task_subject("alpha", 0)
            over = _task_of("over", _largest(backend, "over") + 1)
            await backend.connection.js.publish(subject, encode(task_to_dict(over)), headers={"Da-Task-Id": "over"})
            at = _task_of("at", _largest(backend, "at"))
            await backend.connection.js.publish(subject, encode(task_to_dict(at)), headers={"Da-Task-Id": "at"})
            claim = await _claim_one(queue)
            assert await queue.nack(claim, WORST * 2_000_000, final=True) is False
            # Numbers written short re-encode longer (1e15 -> 1000000000000000.0): its letter cannot hold it whole.
            short = dict(task_to_dict(Task("short", "wf", "n", "alpha", {}, created_at=1.0)))
            count = (_largest(backend, "short") - len(encode(short)) - 20) // 5
            short["payload"] = {"n": [1e15] * count}
            data = encode(short).replace(b"1000000000000000.0", b"1e15")
            assert len(data) <= _largest(backend, "short")
            await backend.connection.js.publish(subject, data, headers={"Da-Task-Id": "short"})
            claim = await _claim_one(queue)
            assert await queue.nack(claim, "boom", final=True) is False
            return at, {letter.task_id: letter for letter in await queue.dead_letters("alpha")}, await queue.stats("alpha")
        finally:
            await backend.close()

    at, letters, stats = run(scenario(nats_server.url), 90)
    assert sorted(key for key in letters if not key.startswith("raw-")) == ["at", "over", "short"], sorted(letters)
    assert letters["over"].reason.startswith("oversized task: ") and letters["over"].task is None
    assert letters["over"].raw is not None and len(letters["over"].raw) == 64 * 1024
    assert letters["at"].task == at and letters["at"].attempts == 1
    short = letters["short"]
    assert short.task is None and short.raw is not None and short.raw.startswith(b'{"id":"short"')
    assert "did not fit the server's max_payload" in short.reason and short.reason.startswith("boom")
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 4)


def test_the_reserve_leaves_room_for_a_letters_fields() -> None:
    """The fixed part of a letter (without task, reason and errors) is far under the 1 KB the reserve keeps."""
    letter = {"task_id": "", "node_type": "", "reason": "", "errors": [], "attempts": 2 ** 31, "task": None,
              "raw": None, "dead_at": 1e18 / 3, "priority": -(2 ** 31), "max_attempts": 2 ** 31}
    assert len(encode(letter)) < 300
