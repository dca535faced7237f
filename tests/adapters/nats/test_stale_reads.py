"""Decisions a claim takes on a task's record when a direct get answers from a replica behind
the stream's leader (nats-server issue 4162: a replica just restarted answers with the
record as it was): nothing is acked away on such a read, and a CAS lost to one is retried
on the leader's record instead of leaving the task to AckWait.

The lagging replica is played by direct gets (``kv.get``, ``kv.get_many``) answering, for
one key, the bytes and revision the record had earlier; the leader's reads
(``kv.get_from_leader``) and every write go to the real server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import encode
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _lagging(monkeypatch: pytest.MonkeyPatch, key: str, record: dict[str, Any], revision: int) -> None:
    """Direct gets of ``key`` answer ``record`` at ``revision`` from now on (a replica behind)."""
    direct_get, direct_get_many = kv.get, kv.get_many
    stale = kv.Entry(key, encode(record), revision)

    async def get(bucket: Any, wanted: str, **kwargs: Any) -> kv.Entry | None:
        return stale if wanted == key else await direct_get(bucket, wanted, **kwargs)

    async def get_many(bucket: Any, keys: list[str], **kwargs: Any) -> dict[str, kv.Entry]:
        entries = await direct_get_many(bucket, keys, **kwargs)
        if key in keys:
            entries[key] = stale
        return entries

    monkeypatch.setattr(kv, "get", get)
    monkeypatch.setattr(kv, "get_many", get_many)


def _on_a_queue(nats_url: str, monkeypatch: pytest.MonkeyPatch, body: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``body(queue)`` on a fresh backend's queue; direct gets answer normally again after it."""
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        try:
            await body(backend.task_queue)
        finally:
            monkeypatch.undo()
            await backend.close()

    run(scenario())


@pytest.mark.parametrize("together", [1, 3])
def test_a_nacked_task_is_not_acked_away_on_the_record_of_its_earlier_message(
        nats_url: str, monkeypatch: pytest.MonkeyPatch, together: int) -> None:
    """A nack puts the task at the end of its priority as a new message; a claim whose direct
    get still answers the record naming the earlier message (claimed) takes the new one for a
    stale duplicate: it must read the leader before acking it away, and claim it. With
    other tasks claimed together the record comes from the batched read."""
    async def body(queue: Any) -> None:
        await queue.enqueue(Task("t", "wf", "n", "n", {}))
        (first,) = await queue.claim(["n"], worker_id="w", wait=5)
        running = await queue._read("t")
        assert await queue.nack(first, "boom")
        for i in range(together - 1):
            await queue.enqueue(Task(f"other{i}", "wf", "n", "n", {}))
        assert running.record is not None
        _lagging(monkeypatch, token("t"), running.record, running.revision)
        claims = await queue.claim(["n"], worker_id="w", max_tasks=together, wait=5)
        monkeypatch.undo()
        again = [c for c in claims if c.task.id == "t"]
        assert len(again) == 1 and again[0].attempt == 2, claims
        await queue.ack(again[0], {"ran": True})
        result = await queue.get_result("t")
        assert result is not None and result.output == {"ran": True}

    _on_a_queue(nats_url, monkeypatch, body)


def test_a_requeued_dead_letter_is_not_acked_away_on_its_dead_record(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead letter requeued goes out as a new message; a claim whose direct get still answers
    the dead record reads the leader before acking it as settled, and runs it."""
    async def body(queue: Any) -> None:
        await queue.enqueue(Task("t", "wf", "n", "n", {}))
        (first,) = await queue.claim(["n"], worker_id="w", wait=5)
        assert not await queue.nack(first, "boom", final=True)
        dead = await queue._read("t")
        assert dead.record is not None and dead.record["state"] == "dead"
        assert await queue.requeue_dead_letter("t")
        _lagging(monkeypatch, token("t"), dead.record, dead.revision)
        claims = await queue.claim(["n"], worker_id="w", wait=5)
        monkeypatch.undo()
        assert [c.task.id for c in claims] == ["t"]
        await queue.ack(claims[0], None)
        assert await queue.dead_letters() == []
        result = await queue.get_result("t")
        assert result is not None and result.status == "succeeded"

    _on_a_queue(nats_url, monkeypatch, body)


@pytest.mark.parametrize("together", [1, 3])
def test_a_claim_whose_cas_lost_to_a_lagging_read_claims_on_the_leaders_record(
        nats_url: str, monkeypatch: pytest.MonkeyPatch, together: int) -> None:
    """Direct gets answering a revision behind the record's (a replica catching up) make the
    claim's CAS lose; the retry reads the leader, so the task is claimed now rather than left
    unacked until AckWait (30 s here) lets another claim try."""
    async def body(queue: Any) -> None:
        # Another type's task first: the record of "t" is not the bucket's first write.
        await queue.enqueue(Task("filler", "wf", "m", "m", {}))
        await queue.enqueue(Task("t", "wf", "n", "n", {}))
        for i in range(together - 1):
            await queue.enqueue(Task(f"other{i}", "wf", "n", "n", {}))
        current = await queue._read("t")
        assert current.record is not None and current.revision > 1
        _lagging(monkeypatch, token("t"), current.record, current.revision - 1)
        claims = await queue.claim(["n"], worker_id="w", max_tasks=together, wait=5)
        monkeypatch.undo()
        assert sorted(c.task.id for c in claims) == sorted(["t", *(f"other{i}" for i in range(together - 1))])
        for claim in claims:
            await queue.ack(claim, None)

    _on_a_queue(nats_url, monkeypatch, body)


def test_an_ack_from_a_queue_that_does_not_hold_the_lease_reads_the_leader(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease settled from another process (or after a lost CAS) is checked on the record; a
    direct get answering it from before the claim (queued) would make a live lease's ack a
    LeaseLostError. Read from the leader, the ack lands, once."""
    async def scenario() -> None:
        holder = await open_nats(nats_url)
        other = await open_nats(nats_url, prefix=holder.connection.names.prefix)
        try:
            await holder.task_queue.enqueue(Task("t", "wf", "n", "n", {}))
            queued = await holder.task_queue._read("t")
            (claim,) = await holder.task_queue.claim(["n"], worker_id="w", wait=5)
            assert queued.record is not None
            _lagging(monkeypatch, token("t"), queued.record, queued.revision)
            await other.task_queue.ack(claim, {"from": "other"})
            monkeypatch.undo()
            result = await holder.task_queue.get_result("t")
            assert result is not None and result.output == {"from": "other"}
        finally:
            monkeypatch.undo()
            await other.close()
            await holder.close()

    run(scenario())


def test_cancel_and_requeue_decide_on_the_leaders_record(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task released back to the queue is cancellable, and a dead letter requeueable, even while
    direct gets answer their records from before (claimed): both read the leader."""
    async def body(queue: Any) -> None:
        await queue.enqueue(Task("c", "wf", "n", "n", {}))
        (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
        claimed = await queue._read("c")
        await queue.release(claim)
        assert claimed.record is not None
        _lagging(monkeypatch, token("c"), claimed.record, claimed.revision)
        assert await queue.cancel("c")
        monkeypatch.undo()
        assert (await queue._read("c")).record["state"] == "cancelled"  # type: ignore[index]

        await queue.enqueue(Task("d", "wf", "n", "n", {}))
        (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
        claimed = await queue._read("d")
        assert not await queue.nack(claim, "boom", final=True)
        assert claimed.record is not None
        _lagging(monkeypatch, token("d"), claimed.record, claimed.revision)
        assert await queue.requeue_dead_letter("d")
        monkeypatch.undo()
        (again,) = await queue.claim(["n"], worker_id="w", wait=5)
        assert again.task.id == "d"
        await queue.ack(again, None)

    _on_a_queue(nats_url, monkeypatch, body)


def test_a_new_priority_level_is_registered_while_reads_of_the_levels_key_lag(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The levels key read at an older revision (a lagging replica) makes the registration's CAS
    lose; its retries read the leader, so the enqueue at a new level succeeds instead of
    failing after 20 lost CASes, and the claim takes it first."""
    from distributed_agents.adapters.nats.task_queue import _levels_key

    async def scenario() -> None:
        first = await open_nats(nats_url)
        try:
            await first.task_queue.enqueue(Task("p0", "wf", "n", "n", {}, priority=0))
            old = await kv.get(first.task_queue._claims, _levels_key("n"))
            await first.task_queue.enqueue(Task("p1", "wf", "n", "n", {}, priority=1))
            assert old is not None
            second = await open_nats(nats_url, prefix=first.connection.names.prefix)
            try:
                monkeypatch.setattr(kv, "get", _answering(kv.get, _levels_key("n"), old))
                await second.task_queue.enqueue(Task("p3", "wf", "n", "n", {}, priority=3))
                monkeypatch.undo()
                claims = await second.task_queue.claim(["n"], worker_id="w", max_tasks=3, wait=5)
                assert [c.task.id for c in claims][:1] == ["p3"]
                for claim in claims:
                    await second.task_queue.ack(claim, None)
            finally:
                monkeypatch.undo()
                await second.close()
        finally:
            await first.close()

    run(scenario())


def _answering(direct_get: Any, key: str, entry: kv.Entry) -> Any:
    async def get(bucket: Any, wanted: str, **kwargs: Any) -> kv.Entry | None:
        return entry if wanted == key else await direct_get(bucket, wanted, **kwargs)
    return get
