"""The TaskQueue state machine: random enqueues, claims and settlements against ``QueueModel``.

Leases are long here (time-based behaviour has its own scenarios), so every outcome is
determined and the comparison after every step is exact: stats per node type, dead
letters, results, and which task a claim may return.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import CheckContext
from distributed_agents.conformance.helpers import make_task
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.conformance.models import QueueModel
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import ClaimedTask

NODE_TYPES = ("alpha", "beta")
DEFAULT_LIMIT = 3
index = st.integers(min_value=0, max_value=1_000)


class TaskQueueMachine(BackendMachine):
    """Backend and ``QueueModel`` side by side."""

    backend_options = {"max_attempts": DEFAULT_LIMIT}

    def __init__(self) -> None:
        super().__init__()
        self.queue = self.backend.task_queue
        self.model = QueueModel(DEFAULT_LIMIT)
        self.live: list[ClaimedTask] = []
        self.stale: list[ClaimedTask] = []
        self.counter = 0

    # -- producing ---------------------------------------------------------------------

    @rule(node_type=st.sampled_from(NODE_TYPES), priority=st.integers(0, 2), limit=st.sampled_from([None, 1, 2]))
    def enqueue(self, node_type: str, priority: int, limit: int | None) -> None:
        self.counter += 1
        task_id = f"t{self.counter}"
        added = self.call(self.queue.enqueue(make_task(task_id, node_type, priority=priority, max_attempts=limit)))
        expect(added is True, "task_queue.idempotent-enqueue", f"first enqueue of {task_id} returned {added}")
        self.model.enqueue(task_id, node_type, priority, limit)

    @precondition(lambda self: bool(self.model.tasks))
    @rule(pick=index, node_type=st.sampled_from(NODE_TYPES), priority=st.integers(0, 2))
    def enqueue_again(self, pick: int, node_type: str, priority: int) -> None:
        task_id = sorted(self.model.tasks)[pick % len(self.model.tasks)]
        added = self.call(self.queue.enqueue(make_task(task_id, node_type, priority=priority, payload={"dup": True})))
        expect(added is False, "task_queue.idempotent-enqueue",
               f"re-enqueue of {task_id} ({self.model.tasks[task_id].state}) returned {added}")

    # -- consuming ---------------------------------------------------------------------

    @rule(types=st.sampled_from([("alpha",), ("beta",), ("alpha", "beta")]), max_tasks=st.integers(1, 3))
    def claim(self, types: tuple[str, ...], max_tasks: int) -> None:
        ready = sum(len(self.model.ready(t)) for t in types)
        wait = self.context.requirements.delivery_timeout if ready else 0.0
        claims = self.call(self.queue.claim(list(types), worker_id="w", max_tasks=max_tasks, wait=wait))
        got = [c.task.id for c in claims]
        if not ready:
            expect(not claims, self._why_unexpected(got[0]) if got else "task_queue.priority-fifo",
                   f"claim{types} returned {got} though no task is ready")
            return
        expect(1 <= len(claims) <= min(max_tasks, ready), "task_queue.priority-fifo",
               f"claim{types} with max_tasks={max_tasks} returned {len(claims)} tasks while {ready} are ready")
        for claim in claims:
            task_id = claim.task.id
            model_task = self.model.tasks.get(task_id)
            if model_task is None or model_task.state != "queued" or model_task.node_type not in types:
                raise ContractViolation(self._why_unexpected(task_id), f"claim{types} returned {task_id}, which is not ready")
            accepted = self.model.acceptable_next(model_task.node_type)
            expect(task_id in accepted, "task_queue.priority-fifo",
                   f"claim{types} returned {task_id} (priority {model_task.priority}); acceptable next: {sorted(accepted)}")
            self.model.claim(task_id)
            expect(claim.attempt == model_task.attempt, "task_queue.attempts",
                   f"{task_id} delivered with attempt {claim.attempt}, expected {model_task.attempt}")
            expect(dict(claim.task.payload) == {"task": task_id}, "task_queue.idempotent-enqueue",
                   f"{task_id} carries payload {dict(claim.task.payload)}")
            self.live.append(claim)

    def _why_unexpected(self, task_id: str) -> str:
        task = self.model.tasks.get(task_id)
        state = None if task is None else task.state
        return {
            "claimed": "task_queue.invisible-while-claimed",
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
        for node_type in NODE_TYPES:
            stats = self.call(self.queue.stats(node_type))
            got = (stats.queued, stats.in_flight, stats.dead)
            want = self.model.stats(node_type)
            clause = "task_queue.stats"
            if got[2] != want[2]:
                clause = "task_queue.dead-letter" if got[2] < want[2] else "task_queue.requeue"
            expect(got == want, clause, f"stats({node_type!r}) (queued, in_flight, dead) = {got}, model says {want}")
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
    "task_queue.priority-fifo", "task_queue.idempotent-enqueue", "task_queue.invisible-while-claimed",
    "task_queue.ack-result", "task_queue.lost-lease-refused", "task_queue.attempts", "task_queue.dead-letter",
    "task_queue.requeue", "task_queue.release", "task_queue.cancel", "task_queue.stats",
), timeout=300.0)
def check_task_queue_state_machine(context: CheckContext) -> None:
    """Random sequences of queue operations agree with the reference model after every step."""
    run_machine(TaskQueueMachine, context)
