"""A requeue and a purge of the same dead letter, racing (two backends, one server): exactly
one of them returns True, and what happens after agrees with it: a requeued task runs again
and its letter is gone; a purged one never runs again and no letter of it is listed.

Before, a purge that lost the record to the requeue still found the letter (the requeue
removes it only after publishing) and answered True as well, while the task ran again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(120)


async def _dead(queue: Any, task_id: str) -> None:
    assert await queue.enqueue(Task(task_id, "wf", "n", "alpha", {}, max_attempts=1))
    [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
    await queue.nack(claim, "boom", final=True)
    assert [d.task_id for d in await queue.dead_letters("alpha")] == [task_id]


def test_a_racing_requeue_and_purge_are_never_both_true(nats_server: Any) -> None:
    async def scenario() -> list[tuple[bool, bool, list[str], list[str]]]:
        prefix = f"rp{uuid.uuid4().hex[:8]}"
        one, two = await open_nats(nats_server.url, prefix=prefix), await open_nats(nats_server.url, prefix=prefix)
        outcomes = []
        try:
            for round_ in range(24):
                task_id = f"t{round_}"
                await _dead(one.task_queue, task_id)
                delay = (round_ % 6) * 0.001  # the purge starts 0-5 ms after the requeue

                async def purge() -> bool:
                    await asyncio.sleep(delay)
                    return bool(await two.task_queue.purge_dead_letter(task_id))

                requeued, purged = await asyncio.gather(one.task_queue.requeue_dead_letter(task_id), purge())
                ran = [c.task.id for c in await one.task_queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=0.5)]
                for claim in await one.task_queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=0):
                    ran.append(claim.task.id)
                letters = [d.task_id for d in await one.task_queue.dead_letters("alpha")]
                outcomes.append((requeued, purged, ran, letters))
                # (a requeued task is left claimed: the next round's ids differ)
        finally:
            await one.close()
            await two.close()
        return outcomes

    outcomes = run(scenario(), 110)
    for round_, (requeued, purged, ran, letters) in enumerate(outcomes):
        assert requeued != purged, (round_, outcomes[round_])
        assert ran == ([f"t{round_}"] if requeued else []), (round_, outcomes[round_])
        assert letters == [], (round_, outcomes[round_])


def test_a_task_whose_letter_cannot_fit_is_dead_lettered_by_a_batched_claim_too(nats_server: Any) -> None:
    """A queued task whose dead letter could not fit the server's max_payload (enqueue refuses
    such a task; this one's record and message are written directly) - under the size bound a
    batched claim used, but with an id long enough to push its letter over - is dead-lettered
    unrun ("oversized task") when it is claimed together with others, as a claim of it alone
    is; the others are claimed."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import LETTER_RESERVE_BYTES, _new_record, letter_bytes
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import task_to_dict

    async def scenario() -> tuple[list[str], list[tuple[str, str]], int, int, int]:
        backend = await open_nats(nats_server.url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(Task("small-1", "wf", "n", "alpha", {}))
            limit = int(backend.connection.nc.max_payload)
            long_id = "i" * 4000
            base = len(encode(task_to_dict(Task(long_id, "wf", "n", "alpha", {"f": ""}, created_at=1.0))))
            size = limit - LETTER_RESERVE_BYTES - 1000  # under the batched claim's old bound
            big = Task(long_id, "wf", "n", "alpha", {"f": "x" * (size - base)}, created_at=1.0)
            raw = encode(task_to_dict(big))
            ack = await backend.connection.js.publish(backend.connection.names.task_subject("alpha", 0), raw,
                                                      headers={"Da-Task-Id": long_id})
            # Its record, queued, as an enqueue writes it (one made while the server allowed more,
            # say): the batched claim takes such deliveries without reading them one by one.
            record = _new_record(long_id, "alpha", 0, None, seq=ack.seq)
            assert await kv.cas(backend.connection.js, queue._tasks, token(long_id), encode(record), last=0)
            assert await queue.enqueue(Task("small-2", "wf", "n", "alpha", {}))
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=2)]
            letters = [(d.task_id[:8], d.reason[:16]) for d in await queue.dead_letters("alpha")]
            return claimed, letters, len(raw), letter_bytes(len(raw), long_id, "alpha") - limit, limit
        finally:
            await backend.close()

    claimed, letters, size, over, limit = run(scenario(), 60)
    assert over > 0 and size < limit - 8000, (size, over, limit)  # the letter would not fit; the message itself does
    assert sorted(claimed) == ["small-1", "small-2"], claimed
    assert letters == [("iiiiiiii", "oversized task: ")], letters


def test_a_requeue_finishes_another_requeues_record_only_once_that_requeue_must_have_died(nats_server: Any) -> None:
    """A record a requeue wrote (queued, no message bound yet) is another requeue's to finish
    only once it is older than a live requeue can be (``_REQUEUE_TAKEOVER_SECONDS``): until
    then a second requeue answers False (of requeues at once exactly one is True); after it,
    the task is published and runs once; the purge of such a letter answers False and keeps it
    while that requeue may still be under way."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import _REQUEUE_TAKEOVER_SECONDS, _new_record
    from distributed_agents.core.codec import encode

    async def scenario() -> tuple[bool, bool, bool, list[str], list[str]]:
        backend = await open_nats(nats_server.url)
        queue = backend.task_queue
        try:
            await _dead(queue, "rq")

            async def left_by_a_requeue(age: float) -> None:
                found = await queue._read_from_leader("rq")  # noqa: SLF001
                record = {**_new_record("rq", "alpha", 0, 1, seq=0), "requeued_at": time.time() - age}
                assert await kv.cas(backend.connection.js, queue._tasks, token("rq"), encode(record),  # noqa: SLF001
                                    last=found.revision) is not None

            await left_by_a_requeue(1.0)
            young = await queue.requeue_dead_letter("rq")
            purged = await queue.purge_dead_letter("rq")
            await left_by_a_requeue(_REQUEUE_TAKEOVER_SECONDS + 1.0)
            old = await queue.requeue_dead_letter("rq")
            ran = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=2)]
            return young, purged, old, ran, [d.task_id for d in await queue.dead_letters("alpha")]
        finally:
            await backend.close()

    young, purged, old, ran, letters = run(scenario(), 60)
    assert (young, purged, old) == (False, False, True), (young, purged, old)
    assert ran == ["rq"] and letters == [], (ran, letters)


@pytest.mark.parametrize("with_requeue", [False, True], ids=["purge", "purge-racing-requeue"])
def test_the_letter_of_a_requeue_that_died_before_publishing_can_be_purged(nats_server: Any, with_requeue: bool) -> None:
    """A requeue that died between its record write and its publish left the task's record
    queued with no message and its letter listed. Once that requeue must have died
    (``_REQUEUE_TAKEOVER_SECONDS``), a purge takes the letter: True, the letter gone, never
    requeued or run, the failed result (the letter's reason) and the id kept until result_ttl.
    A requeue of it at the same moment (another connection): exactly one of the two is True,
    and what follows agrees."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import _REQUEUE_TAKEOVER_SECONDS, _new_record
    from distributed_agents.core.codec import encode

    async def scenario() -> tuple[bool, bool | None, list[str], list[str], Any, bool, bool]:
        prefix = f"pd{uuid.uuid4().hex[:8]}"
        one, two = await open_nats(nats_server.url, prefix=prefix), await open_nats(nats_server.url, prefix=prefix)
        queue = one.task_queue
        try:
            await _dead(queue, "pd")
            found = await queue._read_from_leader("pd")  # noqa: SLF001
            record = {**_new_record("pd", "alpha", 0, 1, seq=0), "requeued_at": time.time() - _REQUEUE_TAKEOVER_SECONDS - 1}
            assert await kv.cas(one.connection.js, queue._tasks, token("pd"), encode(record),  # noqa: SLF001
                                last=found.revision) is not None
            if with_requeue:
                purged, requeued = await asyncio.gather(queue.purge_dead_letter("pd"),
                                                        two.task_queue.requeue_dead_letter("pd"))
            else:
                purged, requeued = await queue.purge_dead_letter("pd"), None
            letters = [d.task_id for d in await queue.dead_letters("alpha")]
            ran = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=1.5)]
            result = await queue.get_result("pd")
            again = await queue.requeue_dead_letter("pd")
            enqueued = await queue.enqueue(Task("pd", "wf", "n", "alpha", {}))
            return purged, requeued, letters, ran, result, again, enqueued
        finally:
            await one.close()
            await two.close()

    purged, requeued, letters, ran, result, again, enqueued = run(scenario(), 60)
    assert letters == [] and again is False, (letters, again)
    if requeued:  # the requeue won: the task runs once, the purge purged nothing
        assert purged is False and ran == ["pd"], (purged, ran)
    else:
        assert purged is True and ran == [] and enqueued is False, (purged, ran, enqueued)
        assert result is not None and result.status == "failed" and result.error == "boom", result


def test_a_requeues_message_whose_record_expired_never_runs_and_an_enqueues_message_of_a_like_id_does(
        nats_server: Any) -> None:
    """A requeue writes the task's record, then publishes its message. A cancel in between
    (True) ends the record; a message that requeue published anyway (it died before deleting it)
    is stale: claimed while the cancelled record is kept or after it expired (result_ttl), it is
    acked away unrun, and the dead letter went with the cancel. An enqueue's message whose id
    merely looks like a requeue's ("x/requeue/<32 hex>"), its producer dead before the record,
    still runs."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import _carried_id, _id_headers, _new_record
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import task_to_dict

    lookalike = "x/requeue/" + "0123456789abcdef" * 2

    async def scenario() -> tuple[bool, list[str], list[str], list[str]]:
        backend = await open_nats(nats_server.url, prefix=f"rx{uuid.uuid4().hex[:8]}", result_ttl=1.0)
        queue = backend.task_queue
        js, names = backend.connection.js, backend.connection.names
        try:
            await _dead(queue, "rx")
            found = await queue._read_from_leader("rx")  # noqa: SLF001
            record = {**_new_record("rx", "alpha", 0, 1, seq=0), "requeued_at": time.time()}
            assert await kv.cas(js, queue._tasks, token("rx"), encode(record), last=found.revision)  # noqa: SLF001
            cancelled = await queue.cancel("rx")
            letters = [d.task_id for d in await queue.dead_letters("alpha")]
            task = Task("rx", "wf", "n", "alpha", {})
            await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(task)),
                             headers=_id_headers("rx", f"{_carried_id('rx')}/requeue/{uuid.uuid4().hex}"))
            for _ in range(50):  # the cancelled record's TTL (result_ttl) passes
                if await kv.get(queue._tasks, token("rx")) is None:  # noqa: SLF001
                    break
                await asyncio.sleep(0.1)
            look = Task(lookalike, "wf", "n", "alpha", {})
            await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(look)),
                             headers=_id_headers(lookalike, _carried_id(lookalike)))
            ran = []
            for claim in await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=2):
                ran.append(claim.task.id)
                await queue.ack(claim, None)
            again = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=0.5)]
            return cancelled, letters, ran, again
        finally:
            await backend.close()

    cancelled, letters, ran, again = run(scenario(), 60)
    assert cancelled and letters == [], (cancelled, letters)
    assert ran == [lookalike] and again == [], (ran, again)


def test_a_requeue_record_without_requeued_at_is_aged_by_when_the_server_stored_it(nats_server: Any) -> None:
    """An older version's requeue writes its record without ``requeued_at``. Such a record is
    aged by the time the server stored it (a leader read returns it): just written, it is a
    requeue under way, which neither a purge nor another requeue takes (both False, the
    letter listed); older than the takeover time, it is a died one's (``_requeue_died``)."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.adapters.nats.task_queue import _REQUEUE_TAKEOVER_SECONDS, _new_record, _requeue_died
    from distributed_agents.core.codec import encode

    async def scenario() -> tuple[bool, bool, list[str], float | None]:
        backend = await open_nats(nats_server.url, prefix=f"ov{uuid.uuid4().hex[:8]}")
        queue = backend.task_queue
        try:
            await _dead(queue, "ov")
            found = await queue._read_from_leader("ov")  # noqa: SLF001
            assert await kv.cas(backend.connection.js, queue._tasks, token("ov"),  # noqa: SLF001
                                encode(_new_record("ov", "alpha", 0, 1, seq=0)), last=found.revision)
            written_at = (await queue._read_from_leader("ov")).written_at  # noqa: SLF001
            purged = await queue.purge_dead_letter("ov")
            requeued = await queue.requeue_dead_letter("ov")
            return purged, requeued, [d.task_id for d in await queue.dead_letters("alpha")], written_at
        finally:
            await backend.close()

    purged, requeued, letters, written_at = run(scenario(), 60)
    assert (purged, requeued, letters) == (False, False, ["ov"]), (purged, requeued, letters)
    assert written_at is not None and abs(time.time() - written_at) < 60, written_at
    old = _new_record("ov", "alpha", 0, 1, seq=0)
    long_ago = time.time() - _REQUEUE_TAKEOVER_SECONDS - 1
    assert _requeue_died(old, long_ago) and not _requeue_died(old, time.time()) and not _requeue_died(old, None)
    assert _requeue_died({**old, "requeued_at": long_ago}, None)
    assert not _requeue_died({**old, "requeued_at": time.time()}, long_ago)  # its own time first
    assert not _requeue_died({**old, "seq": 7}, long_ago) and not _requeue_died({**old, "state": "dead"}, long_ago)
