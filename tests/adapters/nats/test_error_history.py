"""A NATS task record keeps its newest errors in a bounded number of bytes (``error_history``),
so a result of ``max_payload_bytes`` still fits beside them after failed attempts, and a dead
letter still shows the newest errors and how many earlier ones were not kept."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats.error_history import ENTRY_KEPT_CHARS, ERRORS_KEPT_BYTES, with_error
from distributed_agents.core.codec import encode
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

TRACEBACK = "ValueError: " + "m" * 4000 + "\n" + "t" * 16000  # what a worker records at most for an attempt


def test_short_errors_are_kept_whole_and_in_order() -> None:
    errors: list[Any] = []
    for attempt in range(1, 6):
        errors = with_error(errors, f"attempt {attempt}: boom")
    assert errors == [f"attempt {n}: boom" for n in range(1, 6)]


def test_a_long_error_keeps_its_start_and_its_end() -> None:
    entry = "attempt 1: " + "a" * 5000 + "MIDDLE" + "b" * 5000 + "\nValueError: the last line"
    [kept] = with_error([], entry)
    assert len(kept) < ENTRY_KEPT_CHARS + 100 and kept.startswith("attempt 1: aaa")
    assert kept.endswith("ValueError: the last line") and "MIDDLE" not in kept
    assert "characters not kept" in kept


def test_the_oldest_errors_go_first_and_are_counted_across_appends() -> None:
    errors: list[Any] = []
    for attempt in range(1, 11):
        errors = with_error(errors, f"attempt {attempt}: {TRACEBACK}")
        assert len(encode(errors)) <= ERRORS_KEPT_BYTES
    assert errors[0].startswith("8 earlier errors not kept")  # 2 shortened tracebacks fit in 16 KiB
    assert [e.split(":")[0] for e in errors[1:]] == ["attempt 9", "attempt 10"]


@given(st.lists(st.text(max_size=9000), max_size=12), st.text(max_size=9000))
def test_kept_errors_stay_within_the_bound_and_keep_the_newest(earlier: list[str], entry: str) -> None:
    errors: list[Any] = []
    for text in earlier:
        errors = with_error(errors, text)
    kept = with_error(errors, entry)
    assert kept[-1] == with_error([], entry)[0]  # the newest, shortened only if long
    noted = len(kept) > 1 and " earlier error" in kept[0] and "not kept (a NATS task record" in kept[0]
    counted = int(kept[0].split()[0]) if noted else 0
    assert counted + len(kept) - noted == len(earlier) + 1  # every entry is kept or counted
    assert len(encode(kept)) <= ERRORS_KEPT_BYTES or len(kept) - noted == 1  # over only for a lone newest


async def _ack_after_failures(url: str, failures: int) -> tuple[str, Any, Any]:
    backend = await open_nats(url)
    try:
        queue = backend.task_queue
        limit = backend.max_payload_bytes  # what check_result_size lets a node return
        await queue.enqueue(Task("big", "wf", "n", "n", {}, max_attempts=failures + 1))
        for _ in range(failures):
            [claim] = await queue.claim(["n"], worker_id="w")
            await queue.nack(claim, TRACEBACK)
        [claim] = await queue.claim(["n"], worker_id="w")
        try:
            await queue.ack(claim, {"x": "y" * (limit - 20)})
            outcome = "acked"
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            outcome = f"{type(exc).__name__}: {exc}"
        return outcome, await queue.get_result("big"), await queue.stats("n")
    finally:
        await backend.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failures", [0, 1, 4, 9])
def test_a_result_at_the_payload_limit_is_acked_after_failed_attempts(nats_url: str, failures: int) -> None:
    outcome, result, stats = run(_ack_after_failures(nats_url, failures))
    assert outcome == "acked"
    assert result is not None and result.status == "succeeded" and result.attempts == failures + 1
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


@pytest.mark.timeout(60)
def test_a_dead_letter_after_many_failures_shows_the_newest_errors_and_the_count(nats_url: str) -> None:
    async def scenario() -> Any:
        backend = await open_nats(nats_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(Task("doomed", "wf", "n", "n", {}, max_attempts=8))
            for attempt in range(1, 9):
                [claim] = await queue.claim(["n"], worker_id="w")
                await queue.nack(claim, f"failure {attempt}\n{TRACEBACK}")
            [letter] = await queue.dead_letters()
            return letter
        finally:
            await backend.close()

    letter = run(scenario())
    assert letter.attempts == 8 and letter.reason.startswith("failure 8")
    assert letter.errors[0].startswith("6 earlier errors not kept")
    assert [e.split("\n")[0] for e in letter.errors[1:]] == ["attempt 7: failure 7", "attempt 8: failure 8"]
