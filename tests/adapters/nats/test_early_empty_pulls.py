"""``kv.scan`` and claims against a real nats-server: a pull that answers "no messages" too early is
asked again while the scan's consumer still counts messages pending."""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import delivery, kv, task_queue

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _first_pulls_empty(monkeypatch: pytest.MonkeyPatch, empties: int, before: Any = None) -> list[int]:
    """Make the first ``empties`` pulls answer nothing (as a server that has not caught up
    would; ``before`` runs first); the sizes of every answer, in order."""
    real = delivery.pull_ready
    answers: list[int] = []

    async def pull(*args: Any, **kwargs: Any) -> Any:
        if len(answers) < empties:
            if before is not None:
                await before()
            answers.append(0)
            return []
        got = await real(*args, **kwargs)
        answers.append(len(got))
        return got

    monkeypatch.setattr(delivery, "pull_ready", pull)
    monkeypatch.setattr(task_queue, "pull_ready", pull)  # the levels key's pull, sent with its read
    return answers


async def _claim_after_early_empties(queue: Any, monkeypatch: pytest.MonkeyPatch, task_id: str,
                                     empties: int) -> tuple[list[str], list[int]]:
    """Enqueue ``task_id`` (node type "n"), claim with the first ``empties`` pulls answering nothing,
    ack what came: the ids claimed and the sizes of every pull's answer."""
    from distributed_agents.core.ports.task_queue import Task

    await queue.enqueue(Task(task_id, "wf", "n", "n", {"state": {}}))
    answers = _first_pulls_empty(monkeypatch, empties)
    claims = await queue.claim(["n"], worker_id="w")
    monkeypatch.undo()
    for claim in claims:
        await queue.ack(claim, None)
    return [c.task.id for c in claims], answers


@pytest.mark.parametrize("empties", [1, 3])
def test_a_scan_asks_again_when_a_pull_answers_nothing_too_early(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, empties: int,
) -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            for n in range(3):
                await kv.put(queue._conn.js, queue._dead, f"n.k{n}", b"{}")  # type: ignore[attr-defined]
            answers = _first_pulls_empty(monkeypatch, empties)
            entries = await kv.scan(queue._conn.js, queue._dead, "n.*")  # type: ignore[attr-defined]
            monkeypatch.undo()
            return [e.key for e in entries], answers
        finally:
            await backend.close()

    keys, answers = run(scenario(), 30)
    assert keys == ["n.k0", "n.k1", "n.k2"]
    assert answers[:empties] == [0] * empties and sum(answers) == 3


def test_a_scan_whose_entries_were_removed_meanwhile_ends_with_none(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer counted them when made; removed before the pull, the empty answer is right
    and the scan ends (asking the consumer how many are still pending) instead of retrying."""
    async def scenario() -> tuple[list[str], list[int]]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        js, bucket = queue._conn.js, queue._dead  # type: ignore[attr-defined]
        try:
            for n in range(2):
                await kv.put(js, bucket, f"n.k{n}", b"{}")

            async def remove_all() -> None:
                for n in range(2):
                    await kv.remove(js, bucket, f"n.k{n}")

            answers = _first_pulls_empty(monkeypatch, 1, remove_all)
            entries = await kv.scan(js, bucket, "n.*")
            monkeypatch.undo()
            return [e.key for e in entries], answers
        finally:
            await backend.close()

    keys, answers = run(scenario(), 30)
    assert keys == []
    assert answers == [0]  # no pull after the consumer said nothing is pending


@pytest.mark.parametrize("empties", [1, 2])
def test_a_claim_asks_again_when_a_pull_answers_nothing_though_the_stream_holds_the_task(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, empties: int,
) -> None:
    """``claim(wait=0)`` right after an enqueue returns the task even when the server's first
    answers to the pull were "no messages" (the consumer still counts it pending)."""

    async def scenario() -> tuple[list[str], list[int]]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            return await _claim_after_early_empties(queue, monkeypatch, "t-early-404", empties)
        finally:
            await backend.close()

    ids, answers = run(scenario(), 30)
    assert ids == ["t-early-404"]
    assert answers[:empties] == [0] * empties


def test_a_claim_with_nothing_pending_answers_at_once_with_nothing(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claimed (in-flight) task is counted by the stream but not pending on its consumer:
    a second claimer's empty answer stands, with one pull."""
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> tuple[list[str], list[int]]:
        backend = await open_nats(nats_url)
        other = await open_nats(nats_url, prefix=backend.connection.names.prefix)
        try:
            await backend.task_queue.enqueue(Task("t-held", "wf", "n", "n", {"state": {}}))
            (held,) = await backend.task_queue.claim(["n"], worker_id="w1")
            answers = _first_pulls_empty(monkeypatch, 0)
            claims = await other.task_queue.claim(["n"], worker_id="w2")
            monkeypatch.undo()
            await backend.task_queue.ack(held, None)
            return [c.task.id for c in claims], answers
        finally:
            await other.close()
            await backend.close()

    ids, answers = run(scenario(), 30)
    assert ids == []
    assert answers == [0]


def test_a_claim_through_the_levels_key_asks_again_when_its_pull_answers_nothing(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The levels key's claim (one type, its level known: the pull goes out with the key's read)
    checks an empty answer as the look's claim does: the task enqueued before it is returned."""
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> tuple[list[str], list[int]]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            queue.poll_interval = 30.0  # no look but the first: the levels key stands in
            for n in range(3):  # the look, then the key's read; from then on the pull goes out with the read
                await queue.enqueue(Task(f"t-first-{n}", "wf", "n", "n", {"state": {}}))
                (first,) = await queue.claim(["n"], worker_id="w")
                await queue.ack(first, None)
            return await _claim_after_early_empties(queue, monkeypatch, "t-second", 1)
        finally:
            await backend.close()

    ids, answers = run(scenario(), 30)
    assert ids == ["t-second"]
    assert answers[0] == 0 and sum(answers) == 1


def test_every_claim_right_after_an_enqueue_gets_its_task(nats_url: str) -> None:
    """Enqueue, then claim(wait=0), a few hundred times on one queue: every claim gets the task
    just enqueued. (Under load the server answered such a pull "no messages" before its consumer
    counted the new message: about 1 claim in 500 came back empty.)"""
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> list[int]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        empty: list[int] = []
        try:
            for n in range(400):
                await queue.enqueue(Task(f"t-{n}", "wf", "n", "n", {}))
                claims = await queue.claim(["n"], worker_id="w")
                if not claims:
                    empty.append(n)
                    claims = await queue.claim(["n"], worker_id="w", wait=5)
                for claim in claims:
                    await queue.ack(claim, None)
            return empty
        finally:
            await backend.close()

    assert run(scenario(), 50) == []
