"""Review of 305f737 (NATS dead letters: a requeue's or delayed task's message whose record is
gone is acked away unrun; a requeue whose bind lost answers False unless a cancel took the
record; a purge never takes an unbound record without ``requeued_at``; a cancel of a
requeue's unbound record removes the task's letters), and of its follow-ups 0e56eee and
bdf29a4 (faults this module found), on real nats-servers (one, a restarted one, and the
3-server cluster with a restarted follower) and processes.

A requeue paused between its record write and its publish is a real process stopped there
(SIGSTOP, as in test_review_s14), resumed after what the test does meanwhile. A requeue that
died after its publish (before binding) is its record (aged past the takeover time) and its
message, published with the headers the requeue gives it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import task_to_dict

from .conftest import open_nats, settle, through_elections
from .test_review_s11b import _retrying
from .test_review_s14 import (
    _drain,
    _letters,
    _age,
    _make_dead,
    _paused_requeue,
    _prefix,
    _requeue_died,
    _requeue_message,
    _task,
    tree_before_requeued_at,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.timeout(120)

HEX = "0123456789abcdef" * 2
# Ids a header carries, ones it cannot (a blank lead, "="-led, a line break), and ids that
# themselves hold what a requeue's or a delayed task's message id adds to an id.
LOOKALIKES = ["plain", " a", "=x", "a\nb", f"r/requeue/{HEX}", f"g/again/{HEX}", f" s/again/{HEX}"]


def _urls(where: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    if where == "cluster":
        cluster = request.getfixturevalue("nats_cluster")
        return cluster.server(0).url + "?replicas=3", cluster.server(1).url + "?replicas=3"
    url = request.getfixturevalue("nats_url")
    return url, url


async def _wait_gone(queue: Any, task_id: str) -> None:
    """Until ``task_id``'s record has expired (its TTL, result_ttl, passed)."""
    for _ in range(150):
        if await kv.get(queue._tasks, token(task_id)) is None:  # noqa: SLF001
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the record of {task_id!r} never expired")


async def _older_requeue_message(backend: Any, task_id: str) -> None:
    """The message a requeue of ``task_id`` by a version before 2d4c58a publishes: the id itself
    in its headers (``Nats-Msg-Id`` = the id, ``/requeue/`` and 32 hex digits)."""
    await backend.connection.js.publish(
        backend.connection.names.task_subject("alpha", 0), encode(task_to_dict(_task(task_id, max_attempts=1))),
        headers={"Nats-Msg-Id": f"{task_id}/requeue/{uuid.uuid4().hex}", "Da-Task-Id": task_id})


# -- messages that must run: ids like a requeue's message id, requeues, delays, moves ----------------

@pytest.mark.parametrize("where", ["one_server", "cluster"])
def test_lookalike_ids_run_through_requeue_delay_and_nack(where: str, request: pytest.FixtureRequest) -> None:
    """Ids a header cannot carry and ids holding "/requeue/" or "/again/" and 32 hex digits go
    through enqueue, a final nack (dead letter), a requeue, a nack with a delay (the claim
    after it moves the task: an ``/again/`` message), a nack without one (``/again/``), and an
    ack: every message that should run runs (after the requeue the task is claimed three times, each attempt
    counted: 1, 2, 3), the result is done, no letter is left. A claimer on another connection (on the
    cluster, another server)."""
    url, other = _urls(where, request)

    async def scenario() -> tuple[Any, ...]:
        prefix = _prefix("lk")
        # (Retried: a cluster just started may not yet place a replicated stream.)
        one = await _retrying(lambda: open_nats(url, prefix=prefix))
        two = await _retrying(lambda: open_nats(other, prefix=prefix))
        claims_of: dict[str, list[int]] = {task_id: [] for task_id in LOOKALIKES}
        try:
            for task_id in LOOKALIKES:
                # Not asserted True: an enqueue that timed out but landed answers False when retried.
                await _retrying(lambda: one.task_queue.enqueue(_task(task_id, max_attempts=5)))
            for _ in range(20):
                if all(claims_of.values()):
                    break
                # The first claim makes the consumer: on a cluster it may wait for the consumer's leader.
                for claim in await _retrying(lambda: two.task_queue.claim(["alpha"], worker_id="w", max_tasks=8,
                                                                          wait=0.5)):
                    claims_of[claim.task.id].append(claim.attempt)
                    assert not await two.task_queue.nack(claim, "first", final=True)
            assert sorted(await _letters(one.task_queue)) == sorted(LOOKALIKES)
            for task_id in LOOKALIKES:
                assert await one.task_queue.requeue_dead_letter(task_id), task_id
                claims_of[task_id] = []
            for _ in range(60):
                if all(len(attempts) == 3 for attempts in claims_of.values()):
                    break
                for claim in await two.task_queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=0.5):
                    attempts = claims_of[claim.task.id]
                    attempts.append(claim.attempt)
                    if len(attempts) == 1:
                        assert await two.task_queue.nack(claim, "later", delay=0.3)
                    elif len(attempts) == 2:
                        assert await two.task_queue.nack(claim, "again")
                    else:
                        await two.task_queue.ack(claim, {"ran": claim.task.id})
            extra = await _drain(one.task_queue, wait=0.5)
            results = {t: (r.status if (r := await one.task_queue.get_result(t)) else None) for t in LOOKALIKES}
            return claims_of, extra, results, await _letters(one.task_queue)
        finally:
            await one.close()
            await two.close()

    claims_of, extra, results, letters = run(scenario(), 110)
    assert claims_of == {task_id: [1, 2, 3] for task_id in LOOKALIKES}, claims_of
    assert extra == [] and letters == [], (extra, letters)
    assert results == {task_id: "succeeded" for task_id in LOOKALIKES}, results


def test_a_redelivered_requeue_message_never_runs_twice(nats_url: str) -> None:
    """A requeued task ran and was acked; its requeue's message comes again (a copy, as a
    redelivery whose ack was lost) while the result is kept and after it expired: neither
    runs the task again."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("rd"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            ids = ["rd", " rd"]
            for task_id in ids:
                await _make_dead(queue, task_id)
            for task_id in ids:
                assert await queue.requeue_dead_letter(task_id)
            first = await _drain(queue, wait=0.5)
            for task_id in ids:
                await _requeue_message(backend, task_id)
            kept = await _drain(queue, wait=0.5)
            for task_id in ids:
                await _wait_gone(queue, task_id)
                await _requeue_message(backend, task_id)
            gone = await _drain(queue, wait=0.5)
            return sorted(first), kept, gone, await _letters(queue)
        finally:
            await backend.close()

    assert run(scenario(), 90) == (sorted(["rd", " rd"]), [], [], [])


# -- a requeue that died after publishing, then a cancel: the message must never run ----------------

def test_a_died_requeues_message_of_a_cancelled_task_never_runs(nats_url: str) -> None:
    """A requeue (of this version) died after its publish, before binding; a cancel takes the
    task (True, its letter goes with it); once the cancelled record expired (result_ttl 1 s)
    the requeue's message is claimed: acked away, the cancelled task never runs."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("dc"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            ids = ["dc", " dc", "=dc", f"dc/requeue/{HEX}"]
            answers = []
            for task_id in ids:
                await _make_dead(queue, task_id)
                await _requeue_died(backend, task_id)
                await _requeue_message(backend, task_id)
                answers.append(await queue.cancel(task_id))
            listed = await _letters(queue)
            for task_id in ids:
                await _wait_gone(queue, task_id)
            return answers, listed, await _drain(queue, wait=0.5)
        finally:
            await backend.close()

    assert run(scenario(), 90) == ([True] * 4, [], [])


def test_an_older_versions_died_requeue_message_of_a_cancelled_task_never_runs(nats_url: str) -> None:
    """As above, the requeue's message published as versions before 2d4c58a published it (the
    id itself in ``Nats-Msg-Id`` and ``Da-Task-Id``, which a header delivers stripped: " a" as
    "a"; 305f737 knew such messages by the id itself only, and the cancelled " a" ran; 0e56eee
    knows them by what the header delivers too). "b" (an id a header carries as it is) is the
    control. Neither runs."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("oc"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            ids = ["b", " a"]
            answers = []
            for task_id in ids:
                await _make_dead(queue, task_id)
                await _requeue_died(backend, task_id)
                await _older_requeue_message(backend, task_id)
                answers.append(await queue.cancel(task_id))
            for task_id in ids:
                await _wait_gone(queue, task_id)
            return answers, await _drain(queue, wait=0.5), await _letters(queue)
        finally:
            await backend.close()

    assert run(scenario(), 90) == ([True, True], [], [])


# -- a delayed task's move and a cancel -----------------------------------------------------------

def test_a_cancel_of_a_delayed_task_during_its_move_never_runs_it(nats_url: str) -> None:
    """A delayed task's move (its record queued with seq 0, an ``/again/`` message published
    after) of a task once dead and requeued, with a cancel in between: the cancel answers True,
    another task's letter stays listed, and the ``/again/`` message, claimed once the cancelled
    record expired, never runs the task."""

    async def scenario() -> tuple[Any, ...]:
        from distributed_agents.adapters.nats.task_queue import _carried_id, _id_headers

        backend = await open_nats(nats_url, prefix=_prefix("mv"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            await _make_dead(queue, "other")
            # Dead once (it may be tried 5 times), then requeued.
            assert await queue.enqueue(_task("mv", max_attempts=5))
            [first] = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
            assert not await queue.nack(first, "boom", final=True)
            assert await queue.requeue_dead_letter("mv")
            [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
            assert claim.task.id == "mv"
            assert await queue.nack(claim, "later", delay=30.0)
            found = await queue._read_from_leader("mv")  # noqa: SLF001
            assert found.record is not None and found.record["state"] == "delayed"
            # The claim after the delay: it writes the record queued with seq 0 and dies before publishing.
            moving = {**found.record, "state": "queued", "seq": 0}
            assert await kv.cas(backend.connection.js, queue._tasks, token("mv"), encode(moving),  # noqa: SLF001
                                last=found.revision) is not None
            cancelled = await queue.cancel("mv")
            await backend.connection.js.publish(
                backend.connection.names.task_subject("alpha", 0), encode(task_to_dict(claim.task)),
                headers=_id_headers("mv", f"{_carried_id('mv')}/again/{uuid.uuid4().hex}"))
            listed = await _letters(queue)
            await _wait_gone(queue, "mv")  # claimed only once the cancelled record expired
            return cancelled, listed, await _drain(queue, wait=0.5)
        finally:
            await backend.close()

    assert run(scenario(), 90) == (True, ["other"], [])


# -- requeue, purge and cancel racing on one died requeue's letter ------------------------------------

def _explainable(requeued: bool, purged: bool, cancelled: bool, ran: list[str]) -> bool:
    """Whether the answers of a requeue, a purge and a cancel of a died requeue's letter (and
    what ran after, with no claimer during the calls) come from some order of the three. A
    cancel of the died requeue's task may take it (True, as 305f737 does) or take it for the
    dead task it is (False, nothing changed); test_review_s14 accepts either."""

    def steps(state: str, call: str) -> list[tuple[bool, str]]:
        if call == "R":
            return [(True, "queued")] if state == "died" else [(False, state)]
        if call == "P":
            return [(True, "purged")] if state == "died" else [(False, state)]
        if state == "died":
            return [(True, "cancelled"), (False, state)]
        return [(True, "cancelled")] if state == "queued" else [(False, state)]

    outcomes: set[tuple[bool, bool, bool, bool]] = set()
    for order in permutations("RPC"):
        paths: list[tuple[str, dict[str, bool]]] = [("died", {})]
        for call in order:
            paths = [(after, {**answers, call: answer}) for state, answers in paths
                     for answer, after in steps(state, call)]
        outcomes.update((a["R"], a["P"], a["C"], state == "queued") for state, a in paths)
    return (requeued, purged, cancelled, bool(ran)) in outcomes


@pytest.mark.parametrize("where", ["one_server", "cluster"])
def test_racing_requeue_purge_and_cancel_of_a_died_requeues_letter_are_explainable(
        where: str, request: pytest.FixtureRequest) -> None:
    """Each round a died requeue's letter (record aged past the takeover time), then a requeue,
    a purge and a cancel of it at once from two connections (on the cluster, two servers),
    0-4 ms apart in rotating orders: the answers are those of some order of the three calls,
    the task runs iff the requeue came first and no cancel followed, no letter is left."""
    url, other = _urls(where, request)

    async def scenario() -> list[tuple[Any, ...]]:
        prefix = _prefix("rc")
        # (Retried: a cluster just started may not yet place a replicated stream.)
        one = await _retrying(lambda: open_nats(url, prefix=prefix))
        two = await _retrying(lambda: open_nats(other, prefix=prefix))
        outcomes = []
        try:
            await settle(one)  # on the cluster: the streams and consumer just made answer through each
            await settle(two)
            for round_ in range(12):
                task_id = f"{['', ' ', '='][round_ % 3]}rc{round_}"
                await _make_dead(one.task_queue, task_id)
                await _requeue_died(one, task_id)
                delay = (round_ % 5) * 0.001
                calls: list[Callable[[], Awaitable[bool]]] = [
                    lambda: one.task_queue.requeue_dead_letter(task_id),
                    lambda: two.task_queue.purge_dead_letter(task_id),
                    lambda: (two if round_ % 2 else one).task_queue.cancel(task_id)]
                turn = round_ % 3

                async def go(index: int) -> bool:
                    await asyncio.sleep(((index - turn) % 3) * delay)
                    return bool(await calls[index]())

                requeued, purged, cancelled = await asyncio.gather(go(0), go(1), go(2))
                ran = await _drain(one.task_queue, wait=0.3)
                outcomes.append((task_id, requeued, purged, cancelled, ran, await _letters(one.task_queue)))
        finally:
            await one.close()
            await two.close()
        return outcomes

    for task_id, requeued, purged, cancelled, ran, letters in run(scenario(), 110):
        assert _explainable(requeued, purged, cancelled, ran), (task_id, requeued, purged, cancelled, ran)
        assert letters == [], (task_id, letters)


# -- a requeue paused between its record write and its publish ---------------------------------------

def test_a_paused_requeue_and_a_cancel_both_answer_true_and_the_task_never_runs(nats_url: str) -> None:
    """A cancel while a requeue is paused before its publish: True (it takes the requeue's
    record and the letter); the requeue, resumed, answers True (it came first); the task
    never runs, no letter is left."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            return await backend.task_queue.cancel(" c"), await _letters(backend.task_queue)
        finally:
            await backend.close()

    assert _paused_requeue(nats_url, " c", meanwhile) == ((True, []), True, [], [])


@pytest.mark.xfail(strict=True, reason="a paused requeue whose record a cancel took answers False once the cancelled "
                   "record expired (result_ttl): the cancel answered True, which only the requeue coming first explains")
def test_a_paused_requeue_whose_cancelled_record_expired_answers_as_the_cancel_says(nats_url: str) -> None:
    """As above with result_ttl 1 s (the cancel's): the cancelled record expires before the
    requeue goes on. The cancel answered True, so the requeue came first: it must answer
    True as well (a requeue answering False after it means the cancel took a dead task)."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix, result_ttl=1.0)
        try:
            cancelled = await backend.task_queue.cancel("e")
            await _wait_gone(backend.task_queue, "e")
            return cancelled, await _letters(backend.task_queue)
        finally:
            await backend.close()

    assert _paused_requeue(nats_url, "e", meanwhile) == ((True, []), True, [], [])


def test_a_requeue_paused_past_the_takeover_time_answers_false_after_a_purge_whose_record_expired(
        nats_url: str) -> None:
    """A requeue paused past the takeover time (its record aged); a purge takes the letter
    (True), and its purged record expires (result_ttl 1 s) before the requeue goes on. The
    requeue finds no record: False (the purge came first); nothing runs, no letter is left."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix, result_ttl=1.0)
        try:
            await _age(backend, " x", 31.0)
            purged = await backend.task_queue.purge_dead_letter(" x")
            await _wait_gone(backend.task_queue, " x")
            return purged, await _letters(backend.task_queue)
        finally:
            await backend.close()

    assert _paused_requeue(nats_url, " x", meanwhile) == ((True, []), False, [], [])


def test_a_requeue_paused_past_the_takeover_time_answers_false_after_a_takeover_that_ran(nats_url: str) -> None:
    """A requeue paused past the takeover time (its record aged); another requeue takes over
    (True) and the task runs and finishes. The paused one, resumed, answers False; the task
    ran once, no letter is left."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            await _age(backend, "=t", 31.0)
            took = await backend.task_queue.requeue_dead_letter("=t")
            return took, await _drain(backend.task_queue, wait=0.5)
        finally:
            await backend.close()

    assert _paused_requeue(nats_url, "=t", meanwhile) == ((True, ["=t"]), False, [], [])


def test_a_requeue_paused_past_the_takeover_time_and_a_takeover_are_not_both_true_after_a_cancel(
        nats_url: str) -> None:
    """As above, but the task taken over is cancelled (True) before any claim. The paused
    requeue finds the record cancelled; that is the takeover's record (another requeued_at),
    not its own: it answers False (305f737 answered True, as the takeover did; fixed in
    0e56eee). Of two requeues of one letter at most one may."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            await _age(backend, "k", 31.0)
            took = await backend.task_queue.requeue_dead_letter("k")
            return took, await backend.task_queue.cancel("k")
        finally:
            await backend.close()

    seen, requeued, ran, letters = _paused_requeue(nats_url, "k", meanwhile)
    assert (seen, ran, letters) == ((True, True), [], []), (seen, ran, letters)
    assert requeued is False, (seen, requeued)


def test_a_purge_during_a_paused_requeue_before_the_takeover_time_declines(nats_url: str) -> None:
    """A purge while a requeue is paused (not yet past the takeover time): False (a requeue is
    under way); the requeue, resumed, answers True; the task runs once, no letter is left."""

    async def meanwhile(prefix: str) -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            return await backend.task_queue.purge_dead_letter("=p"), await _letters(backend.task_queue)
        finally:
            await backend.close()

    assert _paused_requeue(nats_url, "=p", meanwhile) == ((False, ["=p"]), True, ["=p"], [])


def test_a_requeue_during_a_previous_versions_requeue_and_that_requeue_are_not_both_true(
        nats_url: str, tree_before_requeued_at: Path) -> None:
    """Mixed versions (a rolling upgrade): a requeue by 77ce1a5, which writes no ``requeued_at``,
    is between its record write and its publish (held there, a few ms in real runs) when this
    version requeues the same letter. The older requeue answers True whatever happens (its bind
    lost, it deletes its message and answers True), so this one must decline: 305f737 took the
    record, with no ``requeued_at``, for a died one's at once and answered True as well; bdf29a4
    ages it by when the server stored it. The task runs once."""

    async def meanwhile(prefix: str) -> bool:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            return bool(await backend.task_queue.requeue_dead_letter("mix"))
        finally:
            await backend.close()

    seen, requeued, ran, letters = _paused_requeue(nats_url, "mix", meanwhile, tree_before_requeued_at)
    assert (ran, letters) == (["mix"], []), (seen, requeued, ran, letters)
    assert sorted([seen, requeued]) == [False, True], (seen, requeued)


# -- record-first messages across a server restart and a lagging replica -----------------------------

def test_record_first_messages_run_after_a_server_restart() -> None:
    """A requeued task (bound), a requeue that died after publishing (its record unbound), a
    nacked task (its ``/again/`` message) and a delayed one (moved after the restart), ids a
    header carries and not; the server is SIGKILLed and started again on its store. A claimer
    connecting at once runs each task once (their records are there: none is acked away),
    within the AckWait after which the server delivers what it no longer knows as settled."""
    from support.nats_server import NatsServer, require_nats_server

    server = NatsServer(require_nats_server())
    server.start()
    prefix = _prefix("sr")
    ids = ["rq", " rq", "died", "=died", "nk", " nk", "dl", "=dl"]
    try:
        async def before() -> None:
            # A short AckWait: a SIGKILLed server may come back without the consumer's latest acks
            # and naks (its state is flushed now and then), and then delivers those messages again
            # only after AckWait (30 s by default).
            backend = await open_nats(server.url, prefix=prefix, visibility_timeout=3.0)
            queue = backend.task_queue
            try:
                for task_id in ids[:4]:
                    await _make_dead(queue, task_id)
                for task_id in ids[:2]:
                    assert await queue.requeue_dead_letter(task_id)
                for task_id in ids[2:4]:
                    await _requeue_died(backend, task_id)
                    await _requeue_message(backend, task_id)
                for task_id in ids[4:]:
                    assert await queue.enqueue(_task(task_id, max_attempts=5))
                # Claimed in order of enqueue, the requeued ones first (max_attempts 1: acked).
                for _ in range(10):
                    claims = await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=0.5)
                    for claim in claims:
                        if claim.task.id.strip(" =") == "nk":
                            assert await queue.nack(claim, "again")
                        elif claim.task.id.strip(" =") == "dl":
                            assert await queue.nack(claim, "later", delay=1.0)
                        else:
                            await queue.release(claim)
                    if {c.task.id for c in claims} >= set(ids[4:]):
                        break
            finally:
                await backend.close()

        run(before(), 60)
        server.restart(kill=True)

        async def after() -> tuple[list[str], list[str]]:
            backend = await _retrying(lambda: open_nats(server.url + "?reconnect_wait=0.1", prefix=prefix,
                                                        visibility_timeout=3.0))
            queue = backend.task_queue
            try:
                ran: list[str] = []
                for _ in range(40):
                    if sorted(ran) == sorted(ids):
                        break
                    for claim in await _retrying(lambda: queue.claim(["alpha"], worker_id="a", max_tasks=8,
                                                                     wait=0.5)):
                        ran.append(claim.task.id)
                        await queue.ack(claim, {"ran": claim.task.id})
                ran += await _drain(queue, wait=0.5)
                return sorted(ran), await _letters(queue)
            finally:
                await backend.close()

        ran, letters = run(after(), 90)
        assert ran == sorted(ids), ran
        # (The letters of the requeues that died after publishing stay listed: nothing removed them.)
        assert set(letters) <= {"died", "=died"}, letters
    finally:
        server.cleanup()


async def _make_dead_through_elections(queue: Any, task_id: str) -> None:
    """``_make_dead`` on a cluster with a server down: enqueue (a retried one may answer False),
    claim until the task comes, final nack, each retried while a call goes unanswered."""
    enqueued, retried = await through_elections(lambda: queue.enqueue(_task(task_id, max_attempts=1)))
    assert enqueued or retried, task_id
    claims: list[Any] = []
    for _ in range(30):
        claims, _ = await through_elections(lambda: queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1))
        if claims:
            break
    assert [c.task.id for c in claims] == [task_id], claims
    await through_elections(lambda: queue.nack(claims[0], "boom", final=True), landed=(LeaseLostError,))


async def _settled(queue: Any) -> None:
    """Until a whole dead-letter round trip goes through (the streams the killed server led have
    new leaders): enqueue, claim, final nack, requeue, claim, ack of a probe task. Then the dead
    letters of the probes that failed on the way are purged: a try cut short between its final
    nack and its requeue left one (a CI run found ``probe0``'s among the test's own at the end)."""
    from distributed_agents.core.ports.task_queue import Task

    last: Exception | None = None
    for attempt in range(60):
        probe = f"probe{attempt}"  # its own id and node type: what an earlier try left is not in its way
        try:
            assert await queue.enqueue(Task(probe, "wf", "n", probe, {}, max_attempts=1))
            [claim] = await queue.claim([probe], worker_id="p", max_tasks=1, wait=5)
            assert not await queue.nack(claim, "probe", final=True)
            assert await queue.requeue_dead_letter(probe)
            [claim] = await queue.claim([probe], worker_id="p", max_tasks=1, wait=5)
            await queue.ack(claim, {})
            # The probe's consumer is new; the test's own ("alpha", priority 0) may have been led
            # by the killed server, and its election takes seconds (a claim's consumer-info
            # request timed out in CI): until it answers again.
            names = queue._conn.names  # noqa: SLF001
            await _retrying(lambda: queue._conn.js.consumer_info(  # noqa: SLF001
                names.task_stream, names.task_consumer("alpha", 0), timeout=2))
            for failed in (f"probe{earlier}" for earlier in range(attempt)):
                await through_elections(lambda: queue.purge_dead_letter(failed))  # noqa: B023
            return
        except Exception as exc:  # an election under way: a fresh probe
            last = exc
            await asyncio.sleep(0.5)
    raise AssertionError(f"the cluster never settled after the kill: {last!r}")


def test_record_first_messages_claimed_through_a_restarted_lagging_replica_run(nats_cluster: Any) -> None:
    """3-server cluster: a follower of the task records' stream is SIGKILLed; with it down,
    tasks are dead-lettered and requeued (their records exist on the other two only) and
    nacked (``/again/`` messages). It is started again and a claimer connected to it alone
    claims at once: a direct get may be answered by its replica, which has no record yet (the
    claim confirms on the leader before acking away). Every task runs once."""
    from support.nats_cluster import stream_leader

    cluster = nats_cluster
    ids = ["lg", " lg", "=lg", "nk", " nk"]

    async def scenario() -> tuple[list[str], list[str]]:
        holder = await _retrying(lambda: open_nats(cluster.url + "?replicas=3", prefix=_prefix("lg")))
        prefix = holder.connection.names.prefix
        queue = holder.task_queue
        killed: list[int] = []
        claimer = None
        try:
            # The streams exist (and their consumers have leaders) before the follower goes; on a
            # loaded machine a new 3-replica consumer can take over 5 s to elect one.
            await _retrying(lambda: queue.enqueue(_task("warm")))
            [warm] = await _retrying(lambda: queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5))
            await queue.ack(warm, {})
            leader, _ = await _retrying(lambda: stream_leader(cluster.url, f"KV_{holder.connection.names.task_bucket}"))
            follower = next(i for i in range(3) if f"n{i}" != leader)
            cluster.kill(follower)
            killed.append(follower)
            await _settled(queue)
            # With a server down every call needs both survivors, and one may still go unanswered
            # (BackendUnavailableError: a requeue's dead-letter scan timed out in a loaded run after
            # _settled): each is retried, and a retried one that may have landed is judged by the
            # runs below (every task once, no letter left), not by its answer.
            for task_id in ids[:3]:
                await _make_dead_through_elections(queue, task_id)
            for task_id in ids[:3]:
                requeued, retried = await through_elections(lambda: queue.requeue_dead_letter(task_id))
                assert requeued or retried, task_id
            for task_id in ids[3:]:
                enqueued, retried = await through_elections(lambda: queue.enqueue(_task(task_id, max_attempts=5)))
                assert enqueued or retried, task_id
            nacked: set[str] = set()
            for _ in range(20):
                claims, _ = await through_elections(lambda: queue.claim(["alpha"], worker_id="w", max_tasks=8,
                                                                        wait=0.5))
                for claim in claims:
                    if claim.task.id in ids[3:]:
                        again, retried = await through_elections(lambda: queue.nack(claim, "again"),
                                                                 landed=(LeaseLostError,))
                        assert again or retried, claim.task.id
                        nacked.add(claim.task.id)
                    else:
                        await through_elections(lambda: queue.release(claim), landed=(LeaseLostError,))
                if nacked == set(ids[3:]):
                    break
            cluster.restart(follower)
            killed.remove(follower)
            lone = cluster.server(follower).url + "?replicas=3"
            claimer = await _retrying(lambda: open_nats(lone, prefix=prefix))
            ran: list[str] = []
            for _ in range(60):
                if sorted(ran) == sorted(ids):
                    break
                claims, _ = await through_elections(lambda: claimer.task_queue.claim(["alpha"], worker_id="c",
                                                                                     max_tasks=8, wait=0.5))
                for claim in claims:
                    ran.append(claim.task.id)
                    await through_elections(lambda: claimer.task_queue.ack(claim, {"ran": claim.task.id}),
                                            landed=(LeaseLostError,))
            ran += await _drain(claimer.task_queue, wait=0.5)
            letters, _ = await through_elections(lambda: _letters(claimer.task_queue))
            return sorted(ran), letters
        finally:
            for index in killed:
                cluster.restart(index)
            if claimer is not None:
                await claimer.close()
            await holder.close()

    assert run(scenario(), 110) == (sorted(ids), [])
