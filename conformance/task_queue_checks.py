"""Scenario checks of the TaskQueue port: one short, deterministic story per clause.

The state machine in ``task_queue_machine`` explores random interleavings; these
scenarios make sure each clause is exercised at least once, so a failure names the
clause precisely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import Session, Window, monotonic
from distributed_agents.conformance.helpers import claim_ids, make_task, refused, sleep_past
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.task_queue import Task, task_to_dict

PORT = "task_queue"


async def _peer(session: Session, backend: Backend) -> Backend:
    """A second connection on the same prefix, or the same backend if the engine cannot share."""
    if session.requirements.supports("shared_prefix"):
        return await session.open(prefix=backend.options.prefix)
    return backend


@conformance_check(PORT, ("task_queue.priority-fifo",))
async def check_priority_then_fifo(session: Session) -> None:
    """Highest priority first, FIFO within a priority, for single and batch claims."""
    queue = (await session.open()).task_queue
    plan = [("a1", 0), ("b1", 2), ("a2", 0), ("c1", 1), ("b2", 2), ("a3", 0), ("c2", 1), ("n1", -1)]
    for task_id, priority in plan:
        await queue.enqueue(make_task(task_id, priority=priority))
    expected = ["b1", "b2", "c1", "c2", "a1", "a2", "a3", "n1"]
    none = await queue.claim(["alpha"], worker_id="w0", max_tasks=0)
    expect(none == [], "task_queue.priority-fifo", f"claim(max_tasks=0) returned {[c.task.id for c in none]}, expected []")
    got = [c.task.id for _ in range(4) for c in await claim_ids(queue, ["alpha"])]
    expect(got == expected[:4], "task_queue.priority-fifo", f"single claims returned {got}, expected {expected[:4]}")
    batch = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=10)]
    expect(batch == expected[4:], "task_queue.priority-fifo", f"a batch claim returned {batch}, expected {expected[4:]}")


@conformance_check(PORT, ("task_queue.idempotent-enqueue",))
async def check_enqueue_is_idempotent(session: Session) -> None:
    """Enqueuing a known id (queued, claimed, done, dead) returns False and changes nothing."""
    queue = (await session.open()).task_queue
    clause = "task_queue.idempotent-enqueue"
    expect(await queue.enqueue(make_task("t1")) is True, clause, "first enqueue of t1 did not return True")
    expect(await queue.enqueue(make_task("t1", payload={"other": 1})) is False, clause, "re-enqueue of queued t1 returned True")
    stats = await queue.stats("alpha")
    expect(stats.queued == 1, clause, f"after enqueuing t1 twice, {stats.queued} tasks are queued")
    [claim] = await claim_ids(queue, ["alpha"])
    expect(claim.task.payload == {"task": "t1"}, clause, f"the second enqueue replaced the payload: {claim.task.payload}")
    expect(await queue.enqueue(make_task("t1")) is False, clause, "re-enqueue of claimed t1 returned True")
    expect(await claim_ids(queue, ["alpha"]) == [], clause, "re-enqueue of claimed t1 made it claimable twice")
    await queue.ack(claim, {"ok": True})
    expect(await queue.enqueue(make_task("t1")) is False, clause, "re-enqueue of finished t1 returned True")
    expect(await claim_ids(queue, ["alpha"]) == [], clause, "re-enqueue of finished t1 queued it again")
    await queue.enqueue(make_task("t2", max_attempts=1))
    [doomed] = await claim_ids(queue, ["alpha"])
    await queue.nack(doomed, "fails")
    expect(await queue.enqueue(make_task("t2")) is False, clause, "re-enqueue of dead-lettered t2 returned True")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.in_flight) == (0, 0), clause, f"re-enqueues left queued={stats.queued} in_flight={stats.in_flight}")


@conformance_check(PORT, ("task_queue.enqueue-many", "task_queue.idempotent-enqueue"))
async def check_enqueue_many(session: Session) -> None:
    """enqueue_many flags each task as enqueue would, and queues them in batch order by priority."""
    queue = (await session.open()).task_queue
    clause = "task_queue.enqueue-many"
    expect(await queue.enqueue_many([]) == [], clause, "enqueue_many([]) did not return []")
    await queue.enqueue(make_task("known"))
    batch = [make_task("m1"), make_task("known"), make_task("m2", priority=1), make_task("b1", "beta"),
             make_task("m1", payload={"other": 1}), make_task("m3")]
    flags = await queue.enqueue_many(batch)
    expect(flags == [True, False, True, True, False, True], clause,
           f"enqueue_many returned {flags} for [new, known, new, new (other type), repeat in batch, new]")
    claims = await claim_ids(queue, ["alpha"], max_tasks=10)
    got = [c.task.id for c in claims]
    # Tasks of one batch may be queued in any order among themselves; after earlier calls.
    expect(got[:2] == ["m2", "known"] and sorted(got[2:]) == ["m1", "m3"], clause,
           f"tasks queued by enqueue_many were claimed as {got}, expected m2 (priority 1), then known "
           "(enqueued before the batch), then m1 and m3")
    payloads = {c.task.id: c.task.payload for c in claims}
    expect(payloads.get("m1") == {"task": "m1"}, clause, f"a repeat of m1 in the batch replaced its payload: {payloads.get('m1')}")
    [beta] = await claim_ids(queue, ["beta"])
    expect(beta.task.id == "b1", clause, f"the beta task of the batch was claimed as {beta.task.id!r}")
    again = await claim_ids(queue, ["alpha"], max_tasks=10)
    expect(again == [], clause, f"a task repeated in the batch was queued twice: {[c.task.id for c in again]}")


@conformance_check(PORT, ("task_queue.invisible-while-claimed",))
async def check_claimed_task_is_invisible(session: Session) -> None:
    """While one worker holds a task, no other claimer gets it."""
    backend = await session.open()
    other = await _peer(session, backend)
    clause = "task_queue.invisible-while-claimed"
    await backend.task_queue.enqueue(make_task("t1"))
    await backend.task_queue.enqueue(make_task("t2", priority=-1))
    [held] = await claim_ids(backend.task_queue, ["alpha"], worker_id="w1")
    got = [c.task.id for c in await claim_ids(other.task_queue, ["alpha"], worker_id="w2", max_tasks=5)]
    expect(got == ["t2"], clause, f"while w1 holds t1, w2's claim returned {got}, expected only ['t2']")
    again = [c.task.id for c in await claim_ids(other.task_queue, ["alpha"], worker_id="w3", max_tasks=5)]
    expect(again == [], clause, f"while both tasks are held, w3's claim returned {again}")
    stats = await backend.task_queue.stats("alpha")
    expect((stats.queued, stats.in_flight) == (0, 2), "task_queue.stats", f"two held tasks show {stats}")


@conformance_check(PORT, ("task_queue.lease-expiry", "task_queue.attempts"))
async def check_expired_lease_is_redelivered(session: Session) -> None:
    """A lease that runs out makes the task claimable again, as a new attempt."""
    backend = await session.open()
    queue = backend.task_queue
    await queue.enqueue(make_task("t1"))
    [first] = await claim_ids(queue, ["alpha"], lease=session.short)
    expect(first.attempt == 1, "task_queue.attempts", f"first delivery has attempt {first.attempt}, expected 1")
    early = await claim_ids(queue, ["alpha"])
    expect(early == [], "task_queue.invisible-while-claimed", "the task was claimable again before its lease expired")
    await sleep_past(session.short, session.slack)
    again = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in again] == ["t1"], "task_queue.lease-expiry",
           f"after the lease of {session.short}s expired, claim returned {[c.task.id for c in again]}")
    expect(again[0].attempt == 2, "task_queue.attempts", f"redelivery after lease expiry has attempt {again[0].attempt}, expected 2")
    expect(again[0].lease_id != first.lease_id, "task_queue.lease-expiry", "redelivery reused the expired lease id")


@conformance_check(PORT, ("task_queue.lease-extension",))
async def check_extend_keeps_the_task(session: Session) -> None:
    """An extended lease outlives its original deadline; the extended claim can still ack."""
    backend = await session.open()
    other = await _peer(session, backend)
    clause = "task_queue.lease-extension"
    await backend.task_queue.enqueue(make_task("t1"))
    [claim] = await claim_ids(backend.task_queue, ["alpha"], lease=session.short)
    extended = await backend.task_queue.extend(claim, 30.0)
    expect(extended.deadline > claim.deadline + 1.0, clause, f"extend(30) moved the deadline from {claim.deadline} to {extended.deadline}")
    expect(extended.task.id == claim.task.id and extended.lease_id == claim.lease_id, clause, "extend returned another delivery")
    await sleep_past(session.short, session.slack)
    stolen = await claim_ids(other.task_queue, ["alpha"], worker_id="w2")
    expect(stolen == [], clause, "the task was delivered again after its lease was extended")
    stats = await backend.task_queue.stats("alpha")
    expect(stats.in_flight == 1, clause, f"an extended lease shows in_flight={stats.in_flight}")
    await backend.task_queue.ack(extended, {"done": 1})


@conformance_check(PORT, ("task_queue.ack-result",))
async def check_ack_stores_result_and_removes(session: Session) -> None:
    """Ack stores the output (visible to get_result and wait_results) and removes the task."""
    queue = (await session.open()).task_queue
    clause = "task_queue.ack-result"
    await queue.enqueue(make_task("t1"))
    expect(await queue.get_result("t1") is None, clause, "a queued task already has a result")
    [claim] = await claim_ids(queue, ["alpha"], worker_id="w7")
    await queue.ack(claim, {"answer": 42, "nested": {"list": [1, 2]}})
    result = await queue.get_result("t1")
    expect(result is not None, clause, "get_result is None right after ack")
    assert result is not None
    expect(result.status == "succeeded", clause, f"acked task has status {result.status!r}")
    expect(dict(result.output or {}) == {"answer": 42, "nested": {"list": [1, 2]}}, clause, f"stored output is {result.output!r}")
    expect(result.attempts == 1, clause, f"stored attempts is {result.attempts}, expected 1")
    waited = await queue.wait_results(["t1", "unknown"], timeout=session.requirements.delivery_timeout)
    expect(set(waited) == {"t1"}, clause, f"wait_results returned {sorted(waited)}")
    await queue.enqueue(make_task("t2"))
    await queue.enqueue(make_task("t3"))
    for other in await claim_ids(queue, ["alpha"], max_tasks=2):
        await queue.ack(other, {"id": other.task.id})
    both = await queue.wait_results(["t1", "t2", "t3"], timeout=1.0)
    expect(set(both) == {"t1", "t2", "t3"}, clause, f"with t1, t2, t3 acked wait_results returned {sorted(both)}")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), clause, f"after ack the stats are {stats}")
    expect(await claim_ids(queue, ["alpha"]) == [], clause, "an acked task was delivered again")


@conformance_check(PORT, ("task_queue.lost-lease-refused",))
async def check_lost_lease_is_refused(session: Session) -> None:
    """Settling through a lease that expired and was re-claimed, or was settled, is refused."""
    backend = await session.open()
    queue = backend.task_queue
    clause = "task_queue.lost-lease-refused"
    await queue.enqueue(make_task("t1"))
    [stale] = await claim_ids(queue, ["alpha"], worker_id="w1", lease=session.short)
    await sleep_past(session.short, session.slack)
    [current] = await claim_ids(queue, ["alpha"], worker_id="w2", wait=session.requirements.delivery_timeout)
    await refused(queue.ack(stale, {"by": "w1"}), LeaseLostError, clause, "ack by the worker whose lease expired")
    await refused(queue.nack(stale, "late"), LeaseLostError, clause, "nack by the worker whose lease expired")
    await refused(queue.extend(stale, 30.0), LeaseLostError, clause, "extend by the worker whose lease expired")
    await refused(queue.release(stale), LeaseLostError, clause, "release by the worker whose lease expired")
    expect(await queue.get_result("t1") is None, clause, "a refused ack stored a result")
    stats = await queue.stats("alpha")
    expect(stats.in_flight == 1, clause, f"after refused calls the new holder's task shows in_flight={stats.in_flight}")
    await queue.ack(current, {"by": "w2"})
    result = await queue.get_result("t1")
    expect(result is not None and dict(result.output or {}) == {"by": "w2"}, clause, f"result is {result!r}, expected w2's")
    await refused(queue.ack(current, {"by": "again"}), LeaseLostError, clause, "a second ack of the same delivery")
    await refused(queue.nack(current, "after ack"), LeaseLostError, clause, "nack after ack")


@conformance_check(PORT, ("task_queue.nack-redelivery", "task_queue.attempts"))
async def check_nack_redelivers(session: Session) -> None:
    """Nack without delay re-delivers at once; with a delay, not before it; attempts count."""
    queue = (await session.open()).task_queue
    clause = "task_queue.nack-redelivery"
    await queue.enqueue(make_task("t1", max_attempts=5))
    [first] = await claim_ids(queue, ["alpha"])
    expect(await queue.nack(first, "e1") is True, clause, "nack below max_attempts did not return True")
    second = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in second] == ["t1"], clause, "a task nacked without delay was not delivered again")
    expect(second[0].attempt == 2, "task_queue.attempts", f"delivery after one nack has attempt {second[0].attempt}")
    delay = session.short
    await queue.nack(second[0], "e2", delay=delay)
    expect(await claim_ids(queue, ["alpha"]) == [], clause, f"a task nacked with delay={delay}s was claimable at once")
    stats = await queue.stats("alpha")
    # A task that is counted nowhere was lost by the nack, not merely miscounted.
    vanished = (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    expect((stats.queued, stats.in_flight) == (1, 0), clause if vanished else "task_queue.stats",
           f"a delayed task must count as queued: queued={stats.queued} in_flight={stats.in_flight}")
    await sleep_past(delay, session.slack)
    third = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in third] == ["t1"], clause, "a task nacked with a delay was not delivered after the delay")
    expect(third[0].attempt == 3, "task_queue.attempts", f"delivery after two nacks has attempt {third[0].attempt}")


@conformance_check(PORT, ("task_queue.release",))
async def check_release_does_not_count(session: Session) -> None:
    """Release gives the task back at once and the next delivery keeps the attempt number."""
    queue = (await session.open()).task_queue
    clause = "task_queue.release"
    await queue.enqueue(make_task("t1", max_attempts=1))
    [claim] = await claim_ids(queue, ["alpha"])
    await queue.release(claim)
    again = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in again] == ["t1"], clause, "a released task was not delivered again")
    expect(again[0].attempt == 1, clause, f"after release the next delivery has attempt {again[0].attempt}, expected 1")
    await queue.enqueue(make_task("t2", max_attempts=3))
    [first] = await claim_ids(queue, ["alpha"])
    await queue.nack(first, "e1")
    [second] = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    await queue.release(second)
    third = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.attempt for c in third] == [2], clause, f"a release of attempt 2 was followed by attempts {[c.attempt for c in third]}, expected [2]")


@conformance_check(PORT, ("task_queue.attempts", "task_queue.dead-letter"))
async def check_attempts_across_nacks_and_expiry(session: Session) -> None:
    """Nacks and lease expiries both count; the dead letter records every attempt's error."""
    queue = (await session.open()).task_queue
    await queue.enqueue(make_task("t1", max_attempts=3))
    [a1] = await claim_ids(queue, ["alpha"])
    await queue.nack(a1, "first-error")
    [a2] = await claim_ids(queue, ["alpha"], lease=session.short, wait=session.requirements.delivery_timeout)
    expect(a2.attempt == 2, "task_queue.attempts", f"second delivery has attempt {a2.attempt}")
    await sleep_past(session.short, session.slack)
    a3 = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect(len(a3) == 1, "task_queue.lease-expiry", "the task was not delivered after its lease expired")
    expect(a3[0].attempt == 3, "task_queue.attempts", f"delivery after a nack and an expiry has attempt {a3[0].attempt}")
    expect(await queue.nack(a3[0], "third-error") is False, "task_queue.dead-letter",
           "nack on the last allowed attempt did not return False (dead-lettered)")
    letters = await queue.dead_letters("alpha")
    expect([d.task_id for d in letters] == ["t1"], "task_queue.dead-letter", f"dead letters are {[d.task_id for d in letters]}")
    expect(letters[0].attempts == 3, "task_queue.attempts", f"dead letter records {letters[0].attempts} attempts, expected 3")
    history = " | ".join(letters[0].errors)
    expect(len(letters[0].errors) == 3 and "first-error" in history and "third-error" in history,
           "task_queue.dead-letter", f"error history {list(letters[0].errors)} lacks an attempt")


@conformance_check(PORT, ("task_queue.dead-letter",))
async def check_dead_letter_after_max_attempts(session: Session) -> None:
    """Past max_attempts (by nack or by expiry) a task is dead-lettered with a failed result."""
    queue = (await session.open(max_attempts=2)).task_queue
    clause = "task_queue.dead-letter"
    await queue.enqueue(make_task("t1", payload={"keep": "me"}))
    await queue.enqueue(make_task("t2", "beta", max_attempts=1))
    [c1] = await claim_ids(queue, ["alpha"])
    expect(await queue.nack(c1, "boom-1") is True, clause, "nack on attempt 1 of 2 dead-lettered the task")
    [c2] = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect(await queue.nack(c2, "boom-2") is False, clause, "nack on attempt 2 of 2 (queue default) did not dead-letter")
    [c3] = await claim_ids(queue, ["beta"], lease=session.short)
    await sleep_past(session.short, session.slack)
    expect(await claim_ids(queue, ["alpha", "beta"]) == [], clause, "a task past its max_attempts was delivered again")
    letters = {d.task_id: d for d in await queue.dead_letters()}
    expect(set(letters) == {"t1", "t2"}, clause, f"dead letters are {sorted(letters)}, expected t1 (nacked) and t2 (expired)")
    t1 = letters["t1"]
    expect(t1.task is not None and dict(t1.task.payload) == {"keep": "me"}, clause, f"dead letter lost the task: {t1.task!r}")
    expect(t1.node_type == "alpha" and t1.reason, clause, f"dead letter has node_type={t1.node_type!r} reason={t1.reason!r}")
    expect(any("boom-1" in e for e in t1.errors) and any("boom-2" in e for e in t1.errors), clause, f"errors {list(t1.errors)}")
    expect([d.task_id for d in await queue.dead_letters("beta")] == ["t2"], clause, "dead_letters('beta') is not [t2]")
    for task_id in ("t1", "t2"):
        result = await queue.get_result(task_id)
        expect(result is not None and result.status == "failed", clause, f"dead-lettered {task_id} has result {result!r}")
    waited = await queue.wait_results(["t1"], timeout=session.requirements.delivery_timeout)
    expect("t1" in waited and waited["t1"].status == "failed", clause, "wait_results does not report the dead letter")
    alpha = await queue.stats("alpha")
    expect((alpha.queued, alpha.in_flight, alpha.dead) == (0, 0, 1), "task_queue.stats", f"stats after dead-lettering: {alpha}")
    del c3


@conformance_check(PORT, ("task_queue.requeue",), requires=("dead_letter_requeue",))
async def check_requeue_dead_letter(session: Session) -> None:
    """A dead letter goes back to the queue with a fresh attempt count, once however many requeue it at once."""
    queue_backend = await session.open()
    queue = queue_backend.task_queue
    clause = "task_queue.requeue"
    await queue.enqueue(make_task("t1", max_attempts=1, payload={"p": 1}, priority=5))
    [claim] = await claim_ids(queue, ["alpha"])
    await queue.nack(claim, "fatal")
    await queue.enqueue(make_task("low", priority=0))
    expect(await queue.requeue_dead_letter("t1") is True, clause, "requeue_dead_letter of a dead letter returned False")
    expect(await queue.requeue_dead_letter("t1") is False, clause, "a second requeue of the same letter returned True")
    expect(await queue.requeue_dead_letter("never-seen") is False, clause, "requeue of an unknown id returned True")
    expect(await queue.dead_letters("alpha") == [], clause, "the requeued task is still listed as a dead letter")
    pending = await queue.get_result("t1")
    expect(pending is None, clause, f"while the requeued task is pending get_result still reads {pending!r}")
    expect(await queue.wait_results(["t1"], timeout=0) == {}, clause, "while the requeued task is pending wait_results reports a result")
    expect(await queue.enqueue(make_task("t1")) is False, "task_queue.idempotent-enqueue", "enqueue of a requeued (queued) id returned True")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.dead) == (2, 0), clause, f"after requeue stats are {stats}")
    again = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in again] == ["t1"], clause, f"the requeued priority-5 task was not delivered first (got {[c.task.id for c in again]})")
    expect(again[0].attempt == 1, clause, f"requeued task starts at attempt {again[0].attempt}, expected 1")
    expect(dict(again[0].task.payload) == {"p": 1}, clause, f"requeued payload is {again[0].task.payload}")
    await queue.ack(again[0], {"second": "life"})
    result = await queue.get_result("t1")
    expect(result is not None and result.status == "succeeded", clause, f"after requeue and ack the result is {result!r}")
    # Requeues of one letter at once, from two connections: exactly one takes it, and the
    # task is delivered once (an operator's retry button pressed twice must not run it twice).
    await queue.enqueue(make_task("t2", "beta", max_attempts=1))
    [claim] = await claim_ids(queue, ["beta"])
    await queue.nack(claim, "fatal")
    peer = (await _peer(session, queue_backend)).task_queue
    answers = await asyncio.gather(queue.requeue_dead_letter("t2"), peer.requeue_dead_letter("t2"),
                                   queue.requeue_dead_letter("t2"))
    expect(sorted(answers) == [False, False, True], clause,
           f"three requeues of the same dead letter at once returned {answers}; exactly one must be True")
    delivered = [c.task.id for c in await claim_ids(queue, ["beta"], max_tasks=3, wait=session.requirements.delivery_timeout)]
    delivered += [c.task.id for c in await claim_ids(queue, ["beta"], max_tasks=3, wait=0.3)]
    expect(delivered == ["t2"], clause, f"after three racing requeues of t2 claims delivered {delivered}, expected it once")
    listed = [d.task_id for d in await queue.dead_letters("beta")]
    expect(listed == [], clause, f"after racing requeues of t2 the dead letters are {listed}")


@conformance_check(PORT, ("task_queue.undecodable",), requires=("undecodable_payloads",))
async def check_undecodable_payload_dead_lettered(session: Session) -> None:
    """Garbage bytes are dead-lettered with a reason at claim time; claim never returns them."""
    queue = (await session.open()).task_queue
    clause = "task_queue.undecodable"
    await queue.enqueue(make_task("good1"))
    await queue.enqueue_raw("alpha", b"\xff\xfe not json")
    await queue.enqueue_raw("alpha", b'{"not": "a task"}', priority=5)
    await queue.enqueue(make_task("good2"))
    got: list[str] = []
    for _ in range(4):
        try:
            claims = await claim_ids(queue, ["alpha"])
        except Exception as exc:
            raise ContractViolation(clause, f"claim raised {type(exc).__name__} on an undecodable payload: {exc}") from exc
        got += [c.task.id for c in claims]
        for claim in claims:
            await queue.ack(claim, None)
    expect(got == ["good1", "good2"], clause, f"claims around garbage returned {got}, expected ['good1', 'good2']")
    letters = await queue.dead_letters("alpha")
    expect(len(letters) == 2, clause, f"{len(letters)} dead letters for 2 undecodable payloads")
    raws = sorted(bytes(d.raw or b"") for d in letters)
    expect(raws == sorted([b"\xff\xfe not json", b'{"not": "a task"}']), clause, f"dead letters keep raw bytes {raws}")
    expect(all(d.task is None and d.reason for d in letters), clause, "an undecodable dead letter has a task or no reason")
    expect((await queue.stats("alpha")).dead == 2, "task_queue.stats", "undecodable dead letters are not counted")
    if session.requirements.supports("dead_letter_requeue"):
        expect(await queue.requeue_dead_letter(letters[0].task_id) is False, clause, "an undecodable dead letter was requeued")


@conformance_check(PORT, ("task_queue.stats",))
async def check_depth_and_in_flight_counts(session: Session) -> None:
    """Queued (ready or delayed), in flight and dead are counted per node type."""
    queue = (await session.open()).task_queue
    clause = "task_queue.stats"
    for index in range(4):
        await queue.enqueue(make_task(f"a{index}", max_attempts=1))
    await queue.enqueue(make_task("b0", "beta"))
    c_dead, c_delay, c_held = await claim_ids(queue, ["alpha"], max_tasks=3)
    await queue.nack(c_dead, "dead")
    await queue.enqueue(make_task("a9", priority=5, max_attempts=3))
    [c9] = await claim_ids(queue, ["alpha"], max_tasks=1)
    await queue.nack(c9, "later", delay=30.0)
    del c_delay, c_held
    cases = {"alpha": (2, 2, 1), "beta": (1, 0, 0), "gamma": (0, 0, 0)}
    for node_type, expected in cases.items():
        stats = await queue.stats(node_type)
        got = (stats.queued, stats.in_flight, stats.dead)
        expect(stats.node_type == node_type, clause, f"stats({node_type!r}) names {stats.node_type!r}")
        expect(got == expected, clause, f"stats({node_type!r}) is (queued, in_flight, dead)={got}, expected {expected}")


@conformance_check(PORT, ("task_queue.result-expiry",), requires=("result_expiry",))
async def check_results_expire(session: Session) -> None:
    """A result is readable right after ack and gone after result_ttl."""
    queue = (await session.open(result_ttl=session.short)).task_queue
    clause = "task_queue.result-expiry"
    await queue.enqueue(make_task("t1"))
    [claim] = await claim_ids(queue, ["alpha"])
    await queue.ack(claim, {"x": 1})
    expect(await queue.get_result("t1") is not None, "task_queue.ack-result", "no result right after ack")
    await sleep_past(session.short, session.slack)
    expect(await queue.get_result("t1") is None, clause, f"the result is still there after result_ttl={session.short}s")


@conformance_check(PORT, ("task_queue.cancel",))
async def check_cancel_queued_only(session: Session) -> None:
    """Cancel removes a queued task, refuses a claimed or unknown one."""
    queue = (await session.open()).task_queue
    clause = "task_queue.cancel"
    await queue.enqueue(make_task("t1"))
    await queue.enqueue(make_task("t2"))
    expect(await queue.cancel("t1") is True, clause, "cancel of a queued task returned False")
    [claim] = await claim_ids(queue, ["alpha"])
    expect(claim.task.id == "t2", clause, f"a cancelled task was delivered ({claim.task.id})")
    expect(await queue.cancel("t2") is False, clause, "cancel of a claimed task returned True")
    expect(await queue.cancel("nope") is False, clause, "cancel of an unknown task returned True")
    await queue.ack(claim, None)


# --- every parameter the core passes, full value ranges, boundaries in time ------------


@conformance_check(PORT, ("task_queue.final-nack",))
async def check_final_nack_dead_letters_at_once(session: Session) -> None:
    """nack(final=True) dead-letters on attempt 1 of many; nack(final=False) is an ordinary nack."""
    queue = (await session.open(max_attempts=5)).task_queue
    clause = "task_queue.final-nack"
    await queue.enqueue(make_task("t1", max_attempts=4))
    [claim] = await claim_ids(queue, ["alpha"])
    again = await queue.nack(claim, "the retry policy gave up", final=True)
    expect(again is False, clause, f"nack(final=True) on attempt 1 of 4 returned {again!r}, expected False (dead-lettered)")
    redelivered = [c.task.id for c in await claim_ids(queue, ["alpha"])]
    expect(redelivered == [], clause, f"after nack(final=True) a claim returned {redelivered}")
    letters = await queue.dead_letters("alpha")
    expect([d.task_id for d in letters] == ["t1"], clause, f"after nack(final=True) the dead letters are {[d.task_id for d in letters]}")
    expect(letters[0].attempts == 1 and any("gave up" in e for e in letters[0].errors), clause,
           f"the dead letter has attempts={letters[0].attempts} errors={list(letters[0].errors)}")
    result = await queue.get_result("t1")
    expect(result is not None and result.status == "failed" and "gave up" in (result.error or ""), clause,
           f"after nack(final=True) get_result is {result!r}, expected a failed result with the error")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.in_flight, stats.dead) == (0, 0, 1), clause, f"after nack(final=True) stats are {stats}")
    await queue.enqueue(make_task("t2", max_attempts=2))
    [first] = await claim_ids(queue, ["alpha"])
    expect(await queue.nack(first, "e1", final=False) is True, clause, "nack(final=False) on attempt 1 of 2 dead-lettered the task")
    [second] = await claim_ids(queue, ["alpha"], wait=session.requirements.delivery_timeout)
    expect(await queue.nack(second, "e2", final=False) is False, "task_queue.dead-letter",
           "nack(final=False) on the last attempt did not dead-letter the task")


@conformance_check(PORT, ("task_queue.claim-wait",))
async def check_claim_waits_for_work(session: Session) -> None:
    """claim(wait=) returns a task enqueued, or a delayed task becoming ready, during the wait."""
    backend = await session.open()
    other = await _peer(session, backend)
    queue = backend.task_queue
    clause = "task_queue.claim-wait"
    wait = session.requirements.delivery_timeout
    nothing = await claim_ids(queue, ["alpha"], wait=session.short)
    expect(nothing == [], clause, f"claim(wait={session.short}) on an empty queue returned {[c.task.id for c in nothing]}")

    async def enqueue_soon() -> None:
        await asyncio.sleep(session.short)
        await other.task_queue.enqueue(make_task("t1"))

    waited, _ = await asyncio.gather(claim_ids(queue, ["alpha"], wait=wait), enqueue_soon())
    expect([c.task.id for c in waited] == ["t1"], clause,
           f"claim(wait={wait}) returned {[c.task.id for c in waited]} although t1 was enqueued {session.short}s into the wait")
    started = monotonic()
    await queue.nack(waited[0], "later", delay=session.short)
    window = Window.after(started, monotonic(), session.short, session.slack)
    woken = await claim_ids(queue, ["alpha"], wait=wait)
    got_at = monotonic()
    expect([c.task.id for c in woken] == ["t1"], clause,
           f"claim(wait={wait}) returned {[c.task.id for c in woken]} although t1's {session.short}s nack delay ended during the wait")
    expect(got_at >= window.earliest, "task_queue.nack-redelivery", "a claim returned t1 before its nack delay ended")
    expect(woken[0].attempt == 2, "task_queue.attempts", f"the delivery after a delayed nack has attempt {woken[0].attempt}")


@conformance_check(PORT, ("task_queue.priority-fifo",))
async def check_priorities_over_the_whole_range(session: Session) -> None:
    """Priorities compare as numbers from -2**31 to 2**31-1 (15 before 9, -10 after -9); FIFO past ten tasks."""
    queue = (await session.open()).task_queue
    clause = "task_queue.priority-fifo"
    priorities = [0, 9, 15, 10, -1, 2, -1000, 1000, 2**31 - 1, -(2**31), 99, 100, 1, -9, -10, 5, 9, 15, 0, 11]
    for index, priority in enumerate(priorities):
        await queue.enqueue(make_task(f"p{index}", priority=priority))
    expected = [f"p{i}" for i, _ in sorted(enumerate(priorities), key=lambda item: (-item[1], item[0]))]
    got = [c.task.id for _ in range(3) for c in await claim_ids(queue, ["alpha"])]
    expect(got == expected[:3], clause, f"single claims returned {got}, expected {expected[:3]} (priorities "
           f"{[priorities[int(i[1:])] for i in got]})")
    batch = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=len(priorities))]
    want = expected[3:]
    expect(batch == want, clause, f"a batch claim returned priorities {[priorities[int(i[1:])] for i in batch]}, "
           f"expected {[priorities[int(i[1:])] for i in want]}")
    count = 25
    for index in range(count):
        await queue.enqueue(make_task(f"f{index}", "beta", priority=3))
    fifo = [c.task.id for _ in range(2) for c in await claim_ids(queue, ["beta"])]
    fifo += [c.task.id for c in await claim_ids(queue, ["beta"], max_tasks=count)]
    expect(fifo == [f"f{i}" for i in range(count)], clause, f"{count} tasks of one priority were claimed as {fifo}")


# Node types that are prefixes, substrings or wildcard look-alikes of one another, and Unicode.
NODE_TYPE_NAMES = ("a", "ab", "ba", "a.b", "a*", "a>", "b", "ä", "日本", "日本語")


@conformance_check(PORT, ("task_queue.node-types", "task_queue.stats"))
async def check_node_types_are_exact(session: Session) -> None:
    """Node types whose names overlap stay apart in claim, stats and dead letters; several merge by priority."""
    queue = (await session.open()).task_queue
    clause = "task_queue.node-types"
    for name in NODE_TYPE_NAMES:
        for index in range(2):
            added = await queue.enqueue(make_task(f"t-{name}-{index}", name))
            expect(added is True, "task_queue.idempotent-enqueue", f"first enqueue of task 't-{name}-{index}' returned {added}")
    for name in NODE_TYPE_NAMES:
        stats = await queue.stats(name)
        expect((stats.queued, stats.in_flight) == (2, 0), "task_queue.stats", f"stats({name!r}) is {stats} with 2 tasks queued")
    for name in NODE_TYPE_NAMES:
        got = [c.task.id for c in await claim_ids(queue, [name], max_tasks=10)]
        want = [f"t-{name}-0", f"t-{name}-1"]
        expect(got == want, clause, f"claim([{name!r}]) returned {got}, expected {want}")
        stats = await queue.stats(name)
        expect((stats.queued, stats.in_flight) == (0, 2), "task_queue.stats", f"stats({name!r}) is {stats} with 2 tasks claimed")
    plan = [("x1", "a", 0), ("y1", "ab", 1), ("z1", "日本", 0), ("x2", "a", 1), ("y2", "ab", 0), ("z2", "日本", 7), ("n1", "b", 9)]
    for task_id, name, priority in plan:
        await queue.enqueue(make_task(task_id, name, priority=priority))
    types = ["a", "ab", "日本"]
    first = [c.task.id for c in await claim_ids(queue, types)]
    rest = [c.task.id for c in await claim_ids(queue, types, max_tasks=10)]
    expected = ["z2", "y1", "x2", "x1", "z1", "y2"]
    expect(first + rest == expected, clause, f"claim({types}) returned {first} then {rest}, expected {expected} "
           "(highest priority across the types, then enqueue order across them)")
    expect([c.task.id for c in await claim_ids(queue, ["ba", "a.b"], max_tasks=5)] == [], clause,
           "a claim of node types with no ready task returned one of a similarly named type")


@conformance_check(PORT, ("task_queue.idempotent-enqueue", "task_queue.cancel"))
async def check_enqueue_known_id_in_every_state(session: Session) -> None:
    """An id that is delayed, cancelled or queued under another type/priority cannot be enqueued again."""
    queue = (await session.open()).task_queue
    clause = "task_queue.idempotent-enqueue"
    await queue.enqueue(make_task("t1"))
    again = await queue.enqueue(make_task("t1", "beta", priority=9, payload={"other": True}))
    expect(again is False, clause, "re-enqueue of queued t1 under another node type and priority returned True")
    expect(await claim_ids(queue, ["beta"]) == [], clause, "re-enqueue of t1 under another node type made it claimable there")
    [claim] = await claim_ids(queue, ["alpha"])
    await queue.nack(claim, "later", delay=30.0)
    expect(await queue.enqueue(make_task("t1")) is False, clause, "re-enqueue of delayed t1 returned True")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.in_flight) == (1, 0), clause, f"after re-enqueuing delayed t1 stats are {stats}")
    expect(await claim_ids(queue, ["alpha"]) == [], clause, "re-enqueue of delayed t1 made it claimable before its delay")
    expect(await queue.cancel("t1") is True, "task_queue.cancel", "cancel of a delayed (queued, not claimed) task returned False")
    stats = await queue.stats("alpha")
    expect(stats.queued == 0, "task_queue.cancel", f"after cancelling delayed t1 stats are {stats}")
    await queue.enqueue(make_task("t2"))
    expect(await queue.cancel("t2") is True, "task_queue.cancel", "cancel of a queued task returned False")
    expect(await queue.enqueue(make_task("t2")) is False, clause, "re-enqueue of cancelled t2 (within result_ttl) returned True")
    expect(await claim_ids(queue, ["alpha"]) == [], clause, "re-enqueue of cancelled t2 queued it again")


@conformance_check(PORT, ("task_queue.idempotent-enqueue", "task_queue.result-expiry"), requires=("result_expiry",))
async def check_idempotency_window_is_result_ttl(session: Session) -> None:
    """A finished id is refused while its result lives and accepted again after; a dead letter keeps its id."""
    queue = (await session.open(result_ttl=session.short)).task_queue
    clause = "task_queue.idempotent-enqueue"
    await queue.enqueue(make_task("done"))
    await queue.enqueue(make_task("dead", max_attempts=1))
    await queue.enqueue(make_task("gone"))
    claims = {c.task.id: c for c in await claim_ids(queue, ["alpha"], max_tasks=2)}
    await queue.ack(claims["done"], {"n": 1})
    await queue.nack(claims["dead"], "fatal")
    await queue.cancel("gone")
    for task_id in ("done", "dead", "gone"):
        expect(await queue.enqueue(make_task(task_id)) is False, clause, f"re-enqueue of finished {task_id!r} right away returned True")
    await sleep_past(session.short, session.slack)
    expect(await queue.get_result("done") is None, "task_queue.result-expiry", "the result outlived result_ttl")
    for task_id in ("done", "gone"):
        added = await queue.enqueue(make_task(task_id, payload={"task": task_id, "run": 2}))
        expect(added is True, clause, f"enqueue of {task_id!r} after its result expired (result_ttl={session.short}s) returned {added}")
    expect(await queue.enqueue(make_task("dead")) is False, clause, "enqueue of a dead-lettered id returned True")
    got = sorted(c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=5, wait=session.requirements.delivery_timeout))
    expect(got == ["done", "gone"], clause, f"after their results expired, the re-enqueued ids were claimed as {got}")
    expect([d.task_id for d in await queue.dead_letters("alpha")] == ["dead"], "task_queue.dead-letter",
           "a dead letter vanished when its result expired")


@conformance_check(PORT, ("task_queue.lease-extension", "task_queue.lease-expiry"))
async def check_extended_lease_still_expires(session: Session) -> None:
    """An extended lease holds past the first deadline, then expires at the new one and the task comes back."""
    backend = await session.open()
    other = await _peer(session, backend)
    queue = backend.task_queue
    short = session.short
    await queue.enqueue(make_task("t1"))
    [claim] = await claim_ids(queue, ["alpha"], lease=short)
    started = monotonic()
    extended = await queue.extend(claim, short * 2)
    window = Window.after(started, monotonic(), short * 2, session.slack)
    await sleep_past(short, session.slack)
    probe = monotonic()
    held = await claim_ids(other.task_queue, ["alpha"], worker_id="w2")
    if held and window.state(probe, monotonic() - probe) == "pending":
        raise ContractViolation("task_queue.lease-extension", f"a lease extended by {short * 2}s was lost at its first {short}s deadline")
    if not held:
        await asyncio.sleep(max(0.0, window.latest - monotonic()))
        held = await claim_ids(other.task_queue, ["alpha"], worker_id="w2", wait=session.requirements.delivery_timeout)
    expect([c.task.id for c in held] == ["t1"], "task_queue.lease-expiry",
           f"after the extended {short * 2}s lease ran out, claim returned {[c.task.id for c in held]}")
    expect(held[0].attempt == 2, "task_queue.attempts", f"the delivery after an extended lease expired has attempt {held[0].attempt}")
    await refused(queue.ack(extended, {"late": True}), LeaseLostError, "task_queue.lost-lease-refused",
                  "ack through an extended lease that since expired")


@conformance_check(PORT, ("task_queue.invisible-while-claimed", "task_queue.lease-expiry"))
async def check_lease_boundary(session: Session) -> None:
    """Just before a lease ends a claim gets nothing; just after, it gets the task."""
    backend = await session.open()
    other = await _peer(session, backend)
    lease = session.short * 2
    guard = max(2 * session.slack, 0.05)
    for attempt in range(3):  # a loaded machine may wake too late to judge the edge; try again
        task_id = f"t{attempt}"
        await backend.task_queue.enqueue(make_task(task_id))
        started = monotonic()
        [claim] = await claim_ids(backend.task_queue, ["alpha"], lease=lease)
        window = Window.after(started, monotonic(), lease, session.slack)
        await asyncio.sleep(max(0.0, window.earliest - guard - monotonic()))
        probe = monotonic()
        early = await claim_ids(other.task_queue, ["alpha"], worker_id="w2")
        judged = monotonic() < window.earliest
        if early and judged:
            raise ContractViolation("task_queue.invisible-while-claimed",
                                    f"a claim {window.earliest + session.slack - probe:.2f}s before the {lease}s lease ended returned "
                                    f"{[c.task.id for c in early]}")
        if not early:
            await asyncio.sleep(max(0.0, window.latest - monotonic()))
            early = await claim_ids(other.task_queue, ["alpha"], worker_id="w2", wait=session.requirements.delivery_timeout)
        expect([c.task.id for c in early] == [task_id], "task_queue.lease-expiry",
               f"just after the {lease}s lease ended, claim returned {[c.task.id for c in early]}")
        expect(early[0].attempt == 2, "task_queue.attempts", f"the delivery after the lease ended has attempt {early[0].attempt}")
        await other.task_queue.ack(early[0], None)
        if judged:
            return
        del claim


@conformance_check(PORT, ("task_queue.dead-letter-listing", "task_queue.stats"))
async def check_dead_letters_listing(session: Session) -> None:
    """Past a page of dead letters (270): oldest first, the default limit of 100, exact node-type filter."""
    queue = (await session.open()).task_queue
    clause = "task_queue.dead-letter-listing"
    # More than any engine's read page (100 by default here, 256 per pull on NATS, ...).
    plan = [("alpha" if i % 12 not in (5, 11) else ("alphabet" if i % 12 == 5 else "beta"), f"d{i:03d}") for i in range(270)]
    for node_type, task_id in plan:
        await queue.enqueue(make_task(task_id, node_type, max_attempts=1))
    order: list[str] = []
    for node_type in ("alpha", "alphabet", "beta"):
        for claim in await claim_ids(queue, [node_type], max_tasks=len(plan)):
            await queue.nack(claim, "fatal")
            order.append(claim.task.id)
    everything = [d.task_id for d in await queue.dead_letters(limit=1000)]
    expect(everything == order, clause, f"dead_letters(limit=1000) listed {len(everything)} letters "
           f"{'in another order' if sorted(everything) == sorted(order) else ''}: {everything[:12]}..., expected {order[:12]}...")
    default = [d.task_id for d in await queue.dead_letters()]
    expect(default == order[:100], clause, f"dead_letters() listed {len(default)} letters, expected the oldest 100")
    alphas = [t for n, t in plan if n == "alpha"]
    only = [d.task_id for d in await queue.dead_letters("alpha", limit=1000)]
    expect(only == alphas, clause, f"dead_letters('alpha') listed {len(only)} letters ({sorted(set(only) - set(alphas))[:5]} not "
           f"of type 'alpha'), expected {len(alphas)}")
    few = [d.task_id for d in await queue.dead_letters("alpha", limit=7)]
    expect(few == alphas[:7], clause, f"dead_letters('alpha', limit=7) listed {few}, expected {alphas[:7]}")
    betas = [t for n, t in plan if n == "beta"]
    few_betas = [d.task_id for d in await queue.dead_letters("beta", limit=5)]
    expect(few_betas == betas[:5], clause, f"dead_letters('beta', limit=5) listed {few_betas}, expected {betas[:5]}")
    bet = [d.task_id for d in await queue.dead_letters("alphabet", limit=1000)]
    expect(bet == [t for n, t in plan if n == "alphabet"], clause, f"dead_letters('alphabet') listed {bet}")
    stats = await queue.stats("alpha")
    expect((stats.queued, stats.in_flight, stats.dead) == (0, 0, len(alphas)), "task_queue.stats",
           f"stats('alpha') with {len(alphas)} dead letters is {stats}")


@conformance_check(PORT, ("task_queue.lease-expiry", "task_queue.lease-extension"))
async def check_default_lease_is_visibility_timeout(session: Session) -> None:
    """claim() and extend() without a length use visibility_timeout: a short one ends, an extension holds."""
    backend = await session.open(visibility_timeout=session.short)
    other = await _peer(session, backend)
    queue = backend.task_queue
    await queue.enqueue(make_task("t1"))
    await queue.enqueue(make_task("t2"))
    started = monotonic()
    first, second = await queue.claim(["alpha"], worker_id="w1", max_tasks=2)
    window = Window.after(started, monotonic(), session.short, session.slack)
    extended = await queue.extend(second)  # default: another visibility_timeout from now
    expect(extended.deadline > second.deadline - session.slack, "task_queue.lease-extension",
           f"extend() without seconds moved the deadline back from {second.deadline} to {extended.deadline}")
    await asyncio.sleep(max(0.0, window.latest - monotonic()))
    # By now the extension (one visibility_timeout from a moment after the claim) may have
    # ended too; two expired leases come back in no promised order (NATS redelivers in the
    # order the leases ended, which can be either one when they end milliseconds apart), so
    # claims until the delivery timeout must take ``first`` among them.
    until = monotonic() + session.requirements.delivery_timeout
    again: list[str] = []
    while first.task.id not in again and monotonic() < until:
        again += [c.task.id for c in await claim_ids(other.task_queue, ["alpha"], worker_id="w2", max_tasks=2,
                                                     wait=max(0.0, until - monotonic()))]
    expect(first.task.id in again, "task_queue.lease-expiry",
           f"a claim without lease_seconds on a queue with visibility_timeout={session.short}s was not delivered again "
           f"after it: claims returned {again}")
    del extended


@conformance_check(PORT, ("task_queue.ack-result", "task_queue.dead-letter"))
async def check_wait_results_wakes(session: Session) -> None:
    """wait_results returns a result stored during the wait (ack, or dead letter), and {} after its timeout."""
    backend = await session.open()
    other = await _peer(session, backend)
    queue = backend.task_queue
    wait = session.requirements.delivery_timeout
    await queue.enqueue(make_task("t1"))
    await queue.enqueue(make_task("t2", max_attempts=1))
    c1, c2 = await claim_ids(queue, ["alpha"], max_tasks=2)
    expect(await queue.wait_results(["t1", "t2"], timeout=session.short) == {}, "task_queue.ack-result",
           "wait_results reported a result for tasks still running")

    async def settle_soon() -> None:
        await asyncio.sleep(session.short)
        await queue.ack(c1, {"v": 1})

    got, _ = await asyncio.gather(other.task_queue.wait_results(["t1", "t2"], timeout=wait), settle_soon())
    expect(set(got) == {"t1"} and got["t1"].status == "succeeded", "task_queue.ack-result",
           f"wait_results(timeout={wait}) returned {sorted(got)} although t1 was acked {session.short}s into the wait")

    async def fail_soon() -> None:
        await asyncio.sleep(session.short)
        await queue.nack(c2, "fatal")

    got, _ = await asyncio.gather(other.task_queue.wait_results(["t2"], timeout=wait), fail_soon())
    expect(set(got) == {"t2"} and got["t2"].status == "failed", "task_queue.dead-letter",
           f"wait_results(timeout={wait}) returned {got} although t2 was dead-lettered {session.short}s into the wait")


# --- timeliness of waits, ordering of returned tasks, fields, purge --------------------

# A wait long enough that returning only at its end is unmistakable, and the bound by
# which a wait must have returned after the event that ends it.
LONG_WAIT = 3.0
PROMPT = LONG_WAIT / 2 - 0.1


async def _prompt(clause: str, what: str, attempt: Callable[[int], Awaitable[tuple[bool, float | None]]]) -> None:
    """Run ``attempt(n)`` (-> (returned the event, seconds from event to return)) until it is prompt.

    A loaded machine may be slow once; only a wait that misses the bound three times in a
    row (each time having returned only near the end of the wait) breaks ``clause``.
    """
    lags: list[float] = []
    for n in range(3):
        got, lag = await attempt(n)
        expect(got, clause, f"{what}: the wait of {LONG_WAIT}s ended without it")
        assert lag is not None
        if lag < PROMPT:
            return
        lags.append(lag)
    raise ContractViolation(clause, f"{what}: the wait returned {', '.join(f'{x:.2f}s' for x in lags)} after the event "
                                    f"(three tries), not promptly (bound {PROMPT:.2f}s of a {LONG_WAIT}s wait)")


@conformance_check(PORT, ("task_queue.claim-wait",))
async def check_claim_wait_returns_promptly(session: Session) -> None:
    """A waiting claim returns soon after an enqueue, a nack delay ending or a lease running out, not at the wait's end."""
    backend = await session.open()
    other = await _peer(session, backend)
    queue = backend.task_queue
    clause = "task_queue.claim-wait"

    async def on_enqueue(n: int) -> tuple[bool, float | None]:
        done: list[float] = []

        async def enqueue_soon() -> None:
            await asyncio.sleep(0.1)
            await other.task_queue.enqueue(make_task(f"e{n}"))
            done.append(monotonic())

        got, _ = await asyncio.gather(claim_ids(queue, ["alpha"], wait=LONG_WAIT), enqueue_soon())
        returned = monotonic()
        for claim in got:
            await queue.ack(claim, None)
        return [c.task.id for c in got] == [f"e{n}"], returned - done[0]

    await _prompt(clause, "a task enqueued 0.1s into claim(wait=3)", on_enqueue)

    async def on_lease_end(n: int) -> tuple[bool, float | None]:
        await queue.enqueue(make_task(f"l{n}"))
        started = monotonic()
        await claim_ids(queue, ["alpha"], worker_id="gone", lease=session.short)
        window = Window.after(started, monotonic(), session.short, session.slack)
        got = await claim_ids(other.task_queue, ["alpha"], worker_id="w2", wait=LONG_WAIT)
        returned = monotonic()
        for claim in got:
            await other.task_queue.ack(claim, None)
        return [c.task.id for c in got] == [f"l{n}"], returned - window.latest

    await _prompt(clause, f"a {session.short}s lease running out during claim(wait=3)", on_lease_end)

    async def on_delay_end(n: int) -> tuple[bool, float | None]:
        await queue.enqueue(make_task(f"d{n}", max_attempts=5))
        [claim] = await claim_ids(queue, ["alpha"])
        started = monotonic()
        await queue.nack(claim, "later", delay=session.short)
        window = Window.after(started, monotonic(), session.short, session.slack)
        got = await claim_ids(queue, ["alpha"], wait=LONG_WAIT)
        returned = monotonic()
        for delivered in got:
            await queue.ack(delivered, None)
        return [c.task.id for c in got] == [f"d{n}"], returned - window.latest

    await _prompt(clause, f"a {session.short}s nack delay ending during claim(wait=3)", on_delay_end)


@conformance_check(PORT, ("task_queue.wait-results",))
async def check_wait_results_returns_promptly(session: Session) -> None:
    """wait_results returns soon after an ack or a dead letter, not at the end of its timeout."""
    backend = await session.open()
    other = await _peer(session, backend)
    queue = backend.task_queue
    clause = "task_queue.wait-results"

    def settle(how: str) -> Callable[[int], Awaitable[tuple[bool, float | None]]]:
        async def attempt(n: int) -> tuple[bool, float | None]:
            task_id = f"{how}{n}"
            await queue.enqueue(make_task(task_id, max_attempts=1))
            [claim] = await claim_ids(queue, ["alpha"])
            done: list[float] = []

            async def settle_soon() -> None:
                await asyncio.sleep(0.1)
                if how == "ack":
                    await queue.ack(claim, {"v": n})
                else:
                    await queue.nack(claim, "fatal")
                done.append(monotonic())

            got, _ = await asyncio.gather(other.task_queue.wait_results([task_id], timeout=LONG_WAIT), settle_soon())
            return set(got) == {task_id}, monotonic() - done[0]

        return attempt

    await _prompt(clause, "a task acked 0.1s into wait_results(timeout=3)", settle("ack"))
    await _prompt(clause, "a task dead-lettered 0.1s into wait_results(timeout=3)", settle("dead"))
    started = monotonic()
    nothing = await queue.wait_results(["never"], timeout=session.short)
    expect(nothing == {}, clause, f"wait_results of an unknown id returned {nothing}")
    expect(monotonic() - started >= session.short - session.slack, clause,
           f"wait_results(timeout={session.short}) with nothing finished returned before its timeout")


@conformance_check(PORT, ("task_queue.round-trip",))
async def check_task_and_result_fields_round_trip(session: Session) -> None:
    """Every field of a task comes back on claim and in its dead letter; every field of a result on read."""
    queue = (await session.open()).task_queue
    clause = "task_queue.round-trip"
    payload = {"text": "naïve 日本語 ✓", "none": None, "nested": {"list": [1, 2.5, None, {"deep": True}]}, "big": 2**53, "neg": -7}
    sent = Task(id="t1", workflow_id="wf-Ω", node="node/one", node_type="alpha", payload=payload, priority=3, max_attempts=4,
                created_at=1234.5)
    await queue.enqueue(sent)
    [claim] = await claim_ids(queue, ["alpha"], worker_id="worker-7")
    expect(task_to_dict(claim.task) == task_to_dict(sent), clause, f"claimed task {task_to_dict(claim.task)} != enqueued {task_to_dict(sent)}")
    expect(claim.worker_id == "worker-7", clause, f"the claim names worker {claim.worker_id!r}, expected 'worker-7'")
    before = time.time()
    output = {"answer": None, "text": "ü", "nested": {"a": [1, {"b": None}]}}
    await queue.ack(claim, output)
    after = time.time()
    result = await queue.get_result("t1")
    expect(result is not None, "task_queue.ack-result", "no result right after ack")
    assert result is not None
    got = (result.task_id, result.status, dict(result.output or {}), result.error, result.attempts, result.worker_id)
    want = ("t1", "succeeded", output, None, 1, "worker-7")
    expect(got == want, clause, f"the result reads (task_id, status, output, error, attempts, worker_id)={got}, expected {want}")
    expect(before - 5.0 <= result.finished_at <= after + 5.0, clause,
           f"the result's finished_at {result.finished_at} is not the ack time ({before}..{after})")
    dead = Task(id="t2", workflow_id="wf-2", node="n2", node_type="alpha", payload=payload, priority=-2, max_attempts=1, created_at=99.25)
    await queue.enqueue(dead)
    [doomed] = await claim_ids(queue, ["alpha"], worker_id="worker-8")
    await queue.nack(doomed, "fatal: ✗")
    [letter] = await queue.dead_letters("alpha")
    expect(letter.task is not None and task_to_dict(letter.task) == task_to_dict(dead), clause,
           f"the dead letter holds task {None if letter.task is None else task_to_dict(letter.task)}, expected {task_to_dict(dead)}")
    failed = await queue.get_result("t2")
    expect(failed is not None and (failed.task_id, failed.status, failed.attempts) == ("t2", "failed", 1)
           and "fatal: ✗" in (failed.error or ""), clause, f"the dead letter's result is {failed!r}")


@conformance_check(PORT, ("task_queue.nack-redelivery",))
async def check_nacked_task_goes_to_the_end(session: Session) -> None:
    """A nacked task is delivered after the tasks of its priority already waiting (at once, or once its delay passed)."""
    queue = (await session.open()).task_queue
    clause = "task_queue.nack-redelivery"
    for task_id in ("a", "b", "c"):
        await queue.enqueue(make_task(task_id, max_attempts=5))
    await queue.enqueue(make_task("low", priority=-1, max_attempts=5))
    [first] = await claim_ids(queue, ["alpha"])
    await queue.nack(first, "transient")
    got = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=4)]
    expect(got == ["b", "c", "a", "low"], clause, f"after a, b, c (and a lower 'low') and a nack of a, claim returned {got}, "
           "expected ['b', 'c', 'a', 'low']: a nacked task goes to the end of its priority")
    for task_id in ("x", "y"):
        await queue.enqueue(make_task(task_id, priority=4, max_attempts=5))
    [x] = await claim_ids(queue, ["alpha"])
    await queue.nack(x, "later", delay=session.short)
    await sleep_past(session.short, session.slack)
    got = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=2, wait=session.requirements.delivery_timeout)]
    if got == ["y"]:
        # A claim may return fewer tasks than asked for; x must still come, after y.
        got += [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=1,
                                                    wait=session.requirements.delivery_timeout)]
    expect(got == ["y", "x"], clause, f"after x, y and a delayed nack of x whose delay passed, claims returned {got}, expected ['y', 'x']")


@conformance_check(PORT, ("task_queue.requeue",), requires=("dead_letter_requeue",))
async def check_requeued_task_goes_to_the_end(session: Session) -> None:
    """A requeued dead letter is delivered after the tasks of its priority already waiting."""
    queue = (await session.open()).task_queue
    await queue.enqueue(make_task("a", max_attempts=1))
    [claim] = await claim_ids(queue, ["alpha"])
    await queue.nack(claim, "boom")
    await queue.enqueue(make_task("b"))
    await queue.enqueue(make_task("c"))
    await queue.requeue_dead_letter("a")
    got = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=3)]
    expect(got == ["b", "c", "a"], "task_queue.requeue", f"after b, c were queued and dead letter a requeued, claim returned {got}, "
           "expected ['b', 'c', 'a'] (the end of its priority)")


@conformance_check(PORT, ("task_queue.undecodable",), requires=("undecodable_payloads",))
async def check_enqueue_raw_keeps_priority(session: Session) -> None:
    """Raw bytes enqueued at a higher priority are reached (and dead-lettered) before older lower-priority tasks."""
    queue = (await session.open()).task_queue
    clause = "task_queue.undecodable"
    await queue.enqueue(make_task("good"))
    await queue.enqueue_raw("alpha", b"garbage", priority=5)
    got = [c.task.id for c in await claim_ids(queue, ["alpha"])]
    expect(got == ["good"], clause, f"claim returned {got}")
    letters = await queue.dead_letters("alpha")
    expect(len(letters) == 1, clause, f"after one claim, garbage enqueued at priority 5 (before 'good' at 0) gave {len(letters)} "
           "dead letters, expected 1: enqueue_raw(priority=5) was not honoured")


@conformance_check(PORT, ("task_queue.node-types",))
async def check_node_types_compared_exactly(session: Session) -> None:
    """Node types differing in case, in Unicode normalisation or by case folding (ß/ss) never match."""
    queue = (await session.open()).task_queue
    clause = "task_queue.node-types"
    names = ("Summarize", "summarize", "SUMMARIZE", "ß", "ss", "\u00e9", "e\u0301")
    for name in names:
        await queue.enqueue(make_task(f"t-{name}", name))
    for name in names:
        got = [c.task.id for c in await claim_ids(queue, [name], max_tasks=5)]
        expect(got == [f"t-{name}"], clause, f"claim([{name!r}]) returned {got}, expected only [{f't-{name}'!r}] (names compared exactly)")
    for name in names:
        await queue.enqueue(make_task(f"d-{name}", name, max_attempts=1))
        [claim] = await claim_ids(queue, [name])
        await queue.nack(claim, "dead")
    for name in names:
        letters = [d.task_id for d in await queue.dead_letters(name)]
        expect(letters == [f"d-{name}"], clause, f"dead_letters({name!r}) listed {letters}")
        stats = await queue.stats(name)
        expect(stats.dead == 1, clause, f"stats({name!r}) counts {stats.dead} dead letters, expected 1")


@conformance_check(PORT, ("task_queue.purge",))
async def check_purge_dead_letter(session: Session) -> None:
    """A purged dead letter is gone from the listing, the counts and requeue; its failed result and id stay."""
    queue = (await session.open()).task_queue
    clause = "task_queue.purge"
    await queue.enqueue(make_task("t1", max_attempts=1))
    await queue.enqueue(make_task("t2", max_attempts=1))
    for claim in await claim_ids(queue, ["alpha"], max_tasks=2):
        await queue.nack(claim, "boom")
    expect(await queue.purge_dead_letter("t1") is True, clause, "purge_dead_letter of a dead letter returned False")
    expect(await queue.purge_dead_letter("t1") is False, clause, "a second purge of the same letter returned True")
    expect(await queue.purge_dead_letter("never-seen") is False, clause, "purge of an unknown id returned True")
    listed = [d.task_id for d in await queue.dead_letters("alpha")]
    expect(listed == ["t2"], clause, f"after purging t1 the dead letters are {listed}, expected ['t2']")
    stats = await queue.stats("alpha")
    expect(stats.dead == 1, clause, f"after purging one of two dead letters stats count {stats.dead} dead")
    if session.requirements.supports("dead_letter_requeue"):
        expect(await queue.requeue_dead_letter("t1") is False, clause, "a purged dead letter was requeued")
        expect(await claim_ids(queue, ["alpha"]) == [], clause, "a purged dead letter was delivered again")
    result = await queue.get_result("t1")
    expect(result is not None and result.status == "failed", clause,
           f"after purge the failed result reads {result!r}; it must stay until result_ttl")
    expect(await queue.enqueue(make_task("t1")) is False, clause, "enqueue of a purged id (within result_ttl) returned True")
    expect((await queue.stats("alpha")).queued == 0, clause, "enqueue of a purged id queued it again")
    if session.requirements.supports("dead_letter_requeue"):
        # A requeue and a purge of one letter at once: exactly one of them takes it, and what
        # follows agrees (a requeued task is delivered again, a purged one never).
        requeued, purged = await asyncio.gather(queue.requeue_dead_letter("t2"), queue.purge_dead_letter("t2"))
        expect(requeued is not purged, clause,
               f"a requeue and a purge of the same dead letter at once returned {requeued} and {purged}; "
               "exactly one must be True")
        delivered = [c.task.id for c in await claim_ids(queue, ["alpha"], max_tasks=2, wait=2.0 if requeued else 0.0)]
        expect(delivered == (["t2"] if requeued else []), clause,
               f"after a racing requeue ({requeued}) and purge ({purged}) of t2, claims delivered {delivered}")
        listed = [d.task_id for d in await queue.dead_letters("alpha")]
        expect(listed == [], clause, f"after a racing requeue and purge of t2 the dead letters are {listed}")
