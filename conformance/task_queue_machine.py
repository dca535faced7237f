"""The TaskQueue state machines: random enqueues, claims and settlements against ``QueueModel``.

``TaskQueueMachine`` keeps leases long, so every outcome is determined and the
comparison after every step is exact: stats per node type, dead letters, results, and
which task a claim may return.

``TimedTaskQueueMachine`` adds one rule that lets real time pass: a short story on a
fresh task of its own node type (``gamma``), where a lease of ``short_timeout`` runs out,
is extended, or a nack is delayed by ``short_timeout``. The rule waits until the deadline
has certainly passed (``Window.latest``: ``timing_slack`` after it, measured around the
operation that set it), so no deadline is ever pending *between* steps and the
comparison after every step stays exact; inside the story a deadline that may have
passed early on a slow run is accepted either way. Result expiry stays a scenario
(``check_results_expire``): on networked engines ``result_ttl`` also bounds how long the
done and dead records that make enqueue idempotent are kept, so a short ``result_ttl``
would leave the model's idempotence and re-queue expectations undefined.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import LONG_TIMEOUT, CheckContext, Window, monotonic
from distributed_agents.conformance.helpers import make_task
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.conformance.models import QueueModel
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import ClaimedTask

# The second node type's name extends the first's: a claim must compare names exactly.
NODE_TYPES = ("alpha", "alphabet")
# Priorities from the whole range, compared as numbers (15 before 9, -10 after -9).
PRIORITIES = st.one_of(st.integers(-2, 2), st.sampled_from([-(2**31), -1000, -10, 9, 10, 15, 1000, 2**31 - 1]))
DEFAULT_LIMIT = 3
index = st.integers(min_value=0, max_value=1_000)


class TaskQueueMachine(BackendMachine):
    """Backend and ``QueueModel`` side by side."""

    backend_options = {"max_attempts": DEFAULT_LIMIT}
    node_types: tuple[str, ...] = NODE_TYPES

    def __init__(self) -> None:
        super().__init__()
        self.queue = self.backend.task_queue
        self.model = QueueModel(DEFAULT_LIMIT)
        self.live: list[ClaimedTask] = []
        self.stale: list[ClaimedTask] = []
        self.counter = 0
        self._listed_dead: frozenset[str] | None = None

    # -- producing ---------------------------------------------------------------------

    @rule(node_type=st.sampled_from(NODE_TYPES), priority=PRIORITIES, limit=st.sampled_from([None, 1, 2]))
    def enqueue(self, node_type: str, priority: int, limit: int | None) -> None:
        self.counter += 1
        task_id = f"t{self.counter}"
        added = self.call(self.queue.enqueue(make_task(task_id, node_type, priority=priority, max_attempts=limit)))
        expect(added is True, "task_queue.idempotent-enqueue", f"first enqueue of {task_id} returned {added}")
        self.model.enqueue(task_id, node_type, priority, limit)

    @precondition(lambda self: bool(self.model.tasks))
    @rule(pick=index, node_type=st.sampled_from(NODE_TYPES), priority=PRIORITIES)
    def enqueue_again(self, pick: int, node_type: str, priority: int) -> None:
        task_id = sorted(self.model.tasks)[pick % len(self.model.tasks)]
        added = self.call(self.queue.enqueue(make_task(task_id, node_type, priority=priority, payload={"dup": True})))
        expect(added is False, "task_queue.idempotent-enqueue",
               f"re-enqueue of {task_id} ({self.model.tasks[task_id].state}) returned {added}")

    # -- consuming ---------------------------------------------------------------------

    @rule(types=st.sampled_from([("alpha",), ("alphabet",), ("alpha", "alphabet")]), max_tasks=st.integers(1, 4))
    def claim(self, types: tuple[str, ...], max_tasks: int) -> None:
        self.live.extend(self._claim(types, max_tasks))

    def _claim(self, types: tuple[str, ...], max_tasks: int, *, lease: float | None = None,
               missing: str = "task_queue.priority-fifo") -> list[ClaimedTask]:
        """Claim and check every delivery against the model (which records it); the claims.

        ``missing`` is the clause broken if nothing comes back although a task is ready.
        """
        ready = sum(len(self.model.ready(t)) for t in types)
        wait = self.context.requirements.delivery_timeout if ready else 0.0
        claims = self.call(self.queue.claim(list(types), worker_id="w", max_tasks=max_tasks, lease_seconds=lease, wait=wait))
        got = [c.task.id for c in claims]
        if not ready:
            expect(not claims, self._why_unexpected(got[0]) if got else "task_queue.priority-fifo",
                   f"claim{types} returned {got} though no task is ready")
            return []
        expect(bool(claims), missing, f"claim{types} returned nothing while {ready} tasks are ready")
        expect(len(claims) <= min(max_tasks, ready), "task_queue.priority-fifo",
               f"claim{types} with max_tasks={max_tasks} returned {len(claims)} tasks while {ready} are ready")
        for claim in claims:
            task_id = claim.task.id
            model_task = self.model.tasks.get(task_id)
            if model_task is None or model_task.state != "queued" or model_task.node_type not in types:
                raise ContractViolation(self._why_unexpected(task_id), f"claim{types} returned {task_id}, which is not ready")
            accepted = self.model.acceptable_next(*types)
            expect(task_id in accepted, "task_queue.priority-fifo" if len(types) == 1 else "task_queue.node-types",
                   f"claim{types} returned {task_id} (priority {model_task.priority}); acceptable next: {sorted(accepted)}")
            self.model.claim(task_id)
            expect(claim.attempt == model_task.attempt, "task_queue.attempts",
                   f"{task_id} delivered with attempt {claim.attempt}, expected {model_task.attempt}")
            expect(dict(claim.task.payload) == {"task": task_id}, "task_queue.idempotent-enqueue",
                   f"{task_id} carries payload {dict(claim.task.payload)}")
        return claims

    def _why_unexpected(self, task_id: str) -> str:
        task = self.model.tasks.get(task_id)
        state = None if task is None else task.state
        return {
            "claimed": "task_queue.invisible-while-claimed",
            "delayed": "task_queue.nack-redelivery",
            "done": "task_queue.ack-result",
            "dead": "task_queue.dead-letter",
            "cancelled": "task_queue.cancel",
        }.get(state or "", "task_queue.idempotent-enqueue" if task is None else "task_queue.priority-fifo")

    def _take(self, pick: int) -> ClaimedTask:
        return self.live.pop(pick % len(self.live))

    @precondition(lambda self: bool(self.live))
    @rule(pick=index, value=st.integers())
    def ack(self, pick: int, value: int) -> None:
        claim = self._take(pick)
        self.call(self.queue.ack(claim, {"value": value}))
        self.model.ack(claim.task.id, {"value": value})
        self.stale.append(claim)
        result = self.call(self.queue.get_result(claim.task.id))
        expect(result is not None and result.status == "succeeded" and dict(result.output or {}) == {"value": value},
               "task_queue.ack-result", f"after ack of {claim.task.id} get_result is {result!r}")

    @precondition(lambda self: bool(self.live))
    @rule(pick=index)
    def nack(self, pick: int) -> None:
        claim = self._take(pick)
        again = self.call(self.queue.nack(claim, f"error {claim.attempt}"))
        expected = self.model.nack(claim.task.id)
        clause = "task_queue.dead-letter" if not expected else "task_queue.attempts"
        expect(again is expected, clause, f"nack of {claim.task.id} on attempt {claim.attempt} returned {again}, expected {expected}")
        self.stale.append(claim)

    @precondition(lambda self: bool(self.live))
    @rule(pick=index)
    def release(self, pick: int) -> None:
        claim = self._take(pick)
        self.call(self.queue.release(claim))
        self.model.release(claim.task.id)
        self.stale.append(claim)

    @precondition(lambda self: bool(self.stale))
    @rule(pick=index, how=st.sampled_from(["ack", "nack", "extend", "release"]))
    def settle_lost_lease(self, pick: int, how: str) -> None:
        claim = self.stale[pick % len(self.stale)]
        calls: dict[str, Any] = {
            "ack": lambda: self.queue.ack(claim, {"stale": True}),
            "nack": lambda: self.queue.nack(claim, "stale"),
            "extend": lambda: self.queue.extend(claim, 30.0),
            "release": lambda: self.queue.release(claim),
        }
        try:
            self.call(calls[how]())
        except LeaseLostError:
            return
        raise ContractViolation("task_queue.lost-lease-refused",
                                f"{how} through an already settled delivery of {claim.task.id} (attempt {claim.attempt}) was accepted")

    # -- dead letters and cancel ------------------------------------------------------

    @precondition(lambda self: bool(self.model.dead_ids()) and self.context.requirements.supports("dead_letter_requeue"))
    @rule(pick=index)
    def requeue(self, pick: int) -> None:
        task_id = sorted(self.model.dead_ids())[pick % len(self.model.dead_ids())]
        done = self.call(self.queue.requeue_dead_letter(task_id))
        expect(done is True, "task_queue.requeue", f"requeue_dead_letter({task_id!r}) returned {done}")
        self.model.requeue(task_id)

    @precondition(lambda self: bool(self.model.tasks))
    @rule(pick=index)
    def cancel(self, pick: int) -> None:
        task_id = sorted(self.model.tasks)[pick % len(self.model.tasks)]
        expected = self.model.tasks[task_id].state == "queued"
        done = self.call(self.queue.cancel(task_id))
        expect(done is expected, "task_queue.cancel", f"cancel({task_id!r}) of a {self.model.tasks[task_id].state} task returned {done}")
        if expected:
            self.model.cancel(task_id)

    # -- comparison after every step -------------------------------------------------

    @invariant()
    def counts_and_dead_letters_agree(self) -> None:
        for node_type in self.node_types:
            stats = self.call(self.queue.stats(node_type))
            got = (stats.queued, stats.in_flight, stats.dead)
            want = self.model.stats(node_type)
            clause = "task_queue.stats"
            if got[2] != want[2]:
                clause = "task_queue.dead-letter" if got[2] < want[2] else "task_queue.requeue"
            expect(got == want, clause, f"stats({node_type!r}) (queued, in_flight, dead) = {got}, model says {want}")
        # The listing is read whenever the model's dead letters changed (the counts above
        # catch every other change); on a networked engine it is the costliest read.
        dead = frozenset(self.model.dead_ids())
        if dead == self._listed_dead:
            return
        self._listed_dead = dead
        letters = self.call(self.queue.dead_letters(limit=1000))
        got_dead = {d.task_id for d in letters}
        expect(got_dead == self.model.dead_ids(), "task_queue.dead-letter",
               f"dead letters {sorted(got_dead)}, model says {sorted(self.model.dead_ids())}")
        for letter in letters:
            task = self.model.tasks[letter.task_id]
            expect(letter.attempts == task.attempt and len(letter.errors) >= task.errors, "task_queue.dead-letter",
                   f"dead letter {letter.task_id} has attempts={letter.attempts} errors={list(letter.errors)}; "
                   f"model: {task.attempt} attempts, {task.errors} errors")


@conformance_check("task_queue", (
    "task_queue.priority-fifo", "task_queue.node-types", "task_queue.idempotent-enqueue", "task_queue.invisible-while-claimed",
    "task_queue.ack-result", "task_queue.lost-lease-refused", "task_queue.attempts", "task_queue.dead-letter",
    "task_queue.requeue", "task_queue.release", "task_queue.cancel", "task_queue.stats",
), timeout=300.0)
def check_task_queue_state_machine(context: CheckContext) -> None:
    """Random sequences of queue operations agree with the reference model after every step."""
    run_machine(TaskQueueMachine, context)


TIMED = "gamma"
# Each example runs at most this many timed stories (each waits about short_timeout).
STORIES_PER_EXAMPLE = 3


class TimedTaskQueueMachine(TaskQueueMachine):
    """``TaskQueueMachine`` plus the ``timed`` rule (lease expiry, extension, delayed nack)."""

    node_types = (*NODE_TYPES, TIMED)

    def __init__(self) -> None:
        super().__init__()
        self.short = self.context.requirements.short_timeout
        self.slack = self.context.requirements.timing_slack

    @rule(types=st.sampled_from([("alpha",), ("alphabet",), ("alpha", "alphabet"), (TIMED,), ("alpha", TIMED)]), max_tasks=st.integers(1, 4))
    def claim(self, types: tuple[str, ...], max_tasks: int) -> None:
        self.live.extend(self._claim(types, max_tasks))

    @precondition(lambda self: not self.model.ready(TIMED) and self.may_wait(self.short))
    @rule(story=st.sampled_from(["lease-expiry", "extension", "delayed-nack"]), limit=st.sampled_from([None, 1, 2]))
    def timed(self, story: str, limit: int | None) -> None:
        """Enqueue a fresh ``gamma`` task (the only ready one of its type) and run ``story`` on it."""
        self.charge(self.short)
        self.counter += 1
        task_id = f"g{self.counter}"
        added = self.call(self.queue.enqueue(make_task(task_id, TIMED, max_attempts=limit)))
        expect(added is True, "task_queue.idempotent-enqueue", f"first enqueue of {task_id} returned {added}")
        self.model.enqueue(task_id, TIMED, 0, limit)
        {"lease-expiry": self._lease_expiry, "extension": self._extension, "delayed-nack": self._delayed_nack}[story](task_id)

    def _short_claim(self) -> tuple[ClaimedTask, Window]:
        started = monotonic()
        [claim] = self._claim((TIMED,), 1, lease=self.short)
        return claim, Window.after(started, monotonic(), self.short, self.slack)

    def _expired(self, task_id: str, claim: ClaimedTask, window: Window) -> None:
        """Wait until ``claim``'s lease certainly ran out; the task must be delivered again or dead."""
        self.sleep_until(window.latest)
        self.stale.append(claim)
        if self.model.expire(task_id):
            self.live.extend(self._claim((TIMED,), 1, missing="task_queue.lease-expiry"))
            return
        # A backend may dead-letter from a background task (NATS: the claimer's lease keeper
        # writes the letter after the deadline): it gets delivery_timeout to show, as a
        # redelivery does in the branch above.
        patience = self.context.requirements.delivery_timeout
        give_up = monotonic() + patience
        while True:
            letters = {d.task_id for d in self.call(self.queue.dead_letters(TIMED, limit=1000))}
            if task_id in letters or monotonic() >= give_up:
                break
            self.sleep_until(monotonic() + self.slack)
        expect(task_id in letters, "task_queue.lease-expiry",
               f"the {self.short}s lease of {task_id} ran out on its last attempt, but it is not dead-lettered "
               f"within {patience}s after")

    def _lease_expiry(self, task_id: str) -> None:
        claim, window = self._short_claim()
        self._expired(task_id, claim, window)

    def _extension(self, task_id: str) -> None:
        claim, window = self._short_claim()
        started = monotonic()
        try:
            extended = self.call(self.queue.extend(claim, LONG_TIMEOUT))
        except LeaseLostError:
            expect(window.state(started, monotonic() - started) != "pending", "task_queue.lease-extension",
                   f"extend of {task_id} was refused well within its {self.short}s lease")
            self._expired(task_id, claim, window)  # a slow run: the lease ran out before extend arrived
            return
        self.sleep_until(window.latest)
        stolen = [c.task.id for c in self.call(self.queue.claim([TIMED], worker_id="w2", max_tasks=1))]
        if stolen:
            clause = "task_queue.lease-extension" if stolen == [task_id] else self._why_unexpected(stolen[0])
            raise ContractViolation(clause, f"after extending its {self.short}s lease to {LONG_TIMEOUT}s, "
                                    f"a claim past the original deadline returned {stolen}")
        try:  # still held: the extended delivery can be extended (and so settled) past the first deadline
            extended = self.call(self.queue.extend(extended, LONG_TIMEOUT))
        except LeaseLostError as exc:
            raise ContractViolation("task_queue.lease-extension", f"{task_id}'s lease, extended to {LONG_TIMEOUT}s, "
                                    f"was lost at its original {self.short}s deadline: {exc}") from exc
        self.live.append(extended)

    def _delayed_nack(self, task_id: str) -> None:
        [claim] = self._claim((TIMED,), 1)
        started = monotonic()
        again = self.call(self.queue.nack(claim, "delayed", delay=self.short))
        window = Window.after(started, monotonic(), self.short, self.slack)
        expected = self.model.nack_delayed(task_id)
        expect(again is expected, "task_queue.attempts" if expected else "task_queue.dead-letter",
               f"nack of {task_id} on attempt {claim.attempt} returned {again}, expected {expected}")
        self.stale.append(claim)
        if not expected:
            return
        probe = monotonic()
        early = self.call(self.queue.claim([TIMED], worker_id="w", max_tasks=1))
        if early:
            on_time = early[0].task.id == task_id and window.state(probe, monotonic() - probe) != "pending"
            if not on_time:  # the delay had certainly not passed
                clause = "task_queue.nack-redelivery" if early[0].task.id == task_id else self._why_unexpected(early[0].task.id)
                raise ContractViolation(clause, f"a claim {self.short}s-delay after nack returned {early[0].task.id} at once")
            self.model.delay_over(task_id)  # a slow run: the delay was over already
            task = self.model.claim(task_id)
            expect(early[0].attempt == task.attempt, "task_queue.attempts",
                   f"{task_id} delivered with attempt {early[0].attempt}, expected {task.attempt}")
            self.live.extend(early)
            return
        self.sleep_until(window.latest)
        self.model.delay_over(task_id)
        self.live.extend(self._claim((TIMED,), 1, missing="task_queue.nack-redelivery"))


@conformance_check("task_queue", (
    "task_queue.lease-expiry", "task_queue.lease-extension", "task_queue.nack-redelivery", "task_queue.attempts",
    "task_queue.dead-letter", "task_queue.lost-lease-refused",
), timeout=300.0)
def check_task_queue_timed_state_machine(context: CheckContext) -> None:
    """Random queue operations mixed with real lease expiry, extension and delayed nacks agree with the model."""
    run_machine(TimedTaskQueueMachine, context, examples=0.2, steps=0.4, wait=STORIES_PER_EXAMPLE * context.requirements.short_timeout)
