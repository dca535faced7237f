"""Plain reference models of the ports, written for the suite (not the memory adapter).

Each model is the smallest Python that states what a port promises: no locks, no
clocks, no encoding. The state machines apply every operation to the backend and to
the model, and compare. Where the contract allows more than one answer (which of two
re-delivered tasks comes first), the model says which answers are acceptable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BusModel",
    "ModelSubscription",
    "ModelTask",
    "ModelWorker",
    "QueueModel",
    "RegistryModel",
    "StoreModel",
    "channel_matches",
]


@dataclass
class ModelTask:
    """What the model knows of one task."""

    id: str
    node_type: str
    priority: int
    limit: int
    order: int
    state: str = "queued"  # queued | delayed | claimed | done | dead | cancelled
    attempt: int = 0
    fresh: bool = True  # never delivered since (re)queueing: strict FIFO applies
    errors: int = 0
    output: Any = None


class QueueModel:
    """The TaskQueue contract without time: priority, FIFO, leases, attempts, dead letters."""

    def __init__(self, default_limit: int) -> None:
        self.default_limit = default_limit
        self.tasks: dict[str, ModelTask] = {}
        self._order = 0

    def enqueue(self, task_id: str, node_type: str, priority: int, limit: int | None) -> bool:
        """True if new; a known id changes nothing."""
        if task_id in self.tasks:
            return False
        self._order += 1
        self.tasks[task_id] = ModelTask(task_id, node_type, priority, limit or self.default_limit, self._order)
        return True

    def ready(self, node_type: str) -> list[ModelTask]:
        """Tasks of ``node_type`` a claim may hand out now."""
        return [t for t in self.tasks.values() if t.node_type == node_type and t.state == "queued"]

    def acceptable_next(self, *node_types: str) -> set[str]:
        """Ids a claim of ``node_types`` may return next: top priority across all of them;
        the oldest (by enqueue, across the types) if never delivered.

        A re-delivered task may come before or after the fresh ones of its priority
        (engines differ on where a redelivery goes), so all of them are acceptable.
        """
        ready = [t for node_type in node_types for t in self.ready(node_type)]
        if not ready:
            return set()
        top = max(t.priority for t in ready)
        candidates = [t for t in ready if t.priority == top]
        fresh = [t for t in candidates if t.fresh]
        accepted = {t.id for t in candidates if not t.fresh}
        if fresh:
            accepted.add(min(fresh, key=lambda t: t.order).id)
        return accepted

    def claim(self, task_id: str) -> ModelTask:
        """Record a delivery of ``task_id``."""
        task = self.tasks[task_id]
        task.state, task.attempt, task.fresh = "claimed", task.attempt + 1, False
        return task

    def ack(self, task_id: str, output: Any) -> None:
        """Record success."""
        task = self.tasks[task_id]
        task.state, task.output = "done", output

    def nack(self, task_id: str) -> bool:
        """Record a failure; True if it will be delivered again, False if dead-lettered."""
        task = self.tasks[task_id]
        task.errors += 1
        if task.attempt >= task.limit:
            task.state = "dead"
            return False
        task.state = "queued"
        return True

    def nack_delayed(self, task_id: str) -> bool:
        """A nack with a delay: like ``nack``, but the task waits (counted as queued, not ready)."""
        again = self.nack(task_id)
        if again:
            self.tasks[task_id].state = "delayed"
        return again

    def delay_over(self, task_id: str) -> None:
        """The delay of a nacked task passed: it is ready again."""
        task = self.tasks[task_id]
        if task.state == "delayed":
            task.state = "queued"

    def expire(self, task_id: str) -> bool:
        """The lease of a claimed task ran out: the attempt counts as failed, like a nack."""
        return self.nack(task_id)

    def release(self, task_id: str) -> None:
        """Give back without counting the attempt."""
        task = self.tasks[task_id]
        task.state, task.attempt = "queued", task.attempt - 1

    def requeue(self, task_id: str) -> bool:
        """Dead letter back to the queue with a fresh count, at the end of its priority."""
        task = self.tasks.get(task_id)
        if task is None or task.state != "dead":
            return False
        self._order += 1
        task.state, task.attempt, task.errors, task.fresh, task.order = "queued", 0, 0, True, self._order
        return True

    def cancel(self, task_id: str) -> bool:
        """Remove a queued task."""
        task = self.tasks.get(task_id)
        if task is None or task.state != "queued":
            return False
        task.state = "cancelled"
        return True

    def stats(self, node_type: str) -> tuple[int, int, int]:
        """(queued, in flight, dead) of ``node_type``."""
        states = [t.state for t in self.tasks.values() if t.node_type == node_type]
        return states.count("queued") + states.count("delayed"), states.count("claimed"), states.count("dead")

    def dead_ids(self) -> set[str]:
        """Ids of dead-lettered tasks."""
        return {t.id for t in self.tasks.values() if t.state == "dead"}


@dataclass
class ModelWorkflow:
    """What the model knows of one workflow."""

    version: int
    status: str
    state: dict[str, Any]
    created_at: float
    checkpoints: list[int] = field(default_factory=list)


@dataclass
class ModelLease:
    """The live lease of one workflow."""

    owner: str
    token: int


class StoreModel:
    """The StateStore contract without time: CAS, checkpoint history, fenced leases."""

    def __init__(self) -> None:
        self.workflows: dict[str, ModelWorkflow] = {}
        self.leases: dict[str, ModelLease] = {}
        self.max_token: dict[str, int] = {}

    def save_outcome(self, workflow_id: str, expected_version: int, fencing_token: int | None) -> str:
        """``"ok"``, ``"exists"``, ``"conflict"`` or ``"fenced"`` (fenced may also be reported as conflict)."""
        if fencing_token is not None and fencing_token < self.max_token.get(workflow_id, 0):
            return "fenced"
        stored = self.workflows.get(workflow_id)
        if expected_version == 0:
            return "exists" if stored is not None else "ok"
        if stored is None or stored.version != expected_version:
            return "conflict"
        return "ok"

    def list_checkpoints(self, workflow_id: str, limit: int | None, before: int | None) -> list[int]:
        """Steps of the checkpoints ``list_checkpoints`` must return, newest first."""
        stored = self.workflows.get(workflow_id)
        steps = [] if stored is None else [s for s in reversed(stored.checkpoints) if before is None or s < before]
        return steps if limit is None else steps[:limit]

    def list_workflows(self, status: str | None) -> list[str]:
        """Ids ``list_workflows`` must return, oldest first."""
        chosen = [(w.created_at, wid) for wid, w in self.workflows.items() if status is None or w.status == status]
        return [wid for _, wid in sorted(chosen)]


# --- WorkerRegistry -----------------------------------------------------------------------


@dataclass
class ModelWorker:
    """A registered worker: what it registered with and when its liveness may end.

    ``expires`` is a ``Window`` (``earliest``/``latest`` on the monotonic clock) of the
    moment ``heartbeat_ttl`` runs out after its last register or heartbeat; ``beat`` is
    the operation that set it (``"register"`` or ``"heartbeat"``).
    """

    node_types: frozenset[str]
    capacity: int
    host: str
    pid: int
    expires: Any
    beat: str = "register"


class RegistryModel:
    """The WorkerRegistry contract: workers by id, each live until its expiry window.

    ``gone`` remembers why an id is not registered (``"deregistered"`` or ``"expired"``)
    so that a violation can name the broken clause.
    """

    def __init__(self) -> None:
        self.workers: dict[str, ModelWorker] = {}
        self.gone: dict[str, str] = {}

    def register(self, worker_id: str, worker: ModelWorker) -> None:
        """Record (or replace) ``worker_id``."""
        self.workers[worker_id] = worker
        self.gone.pop(worker_id, None)

    def remove(self, worker_id: str, why: str) -> None:
        """Forget ``worker_id`` because of ``why``."""
        if self.workers.pop(worker_id, None) is not None or why == "deregistered":
            self.gone[worker_id] = why

    def serving(self, node_type: str | None) -> dict[str, ModelWorker]:
        """The registered workers (live or not yet known dead) serving ``node_type`` (all if None)."""
        return {wid: w for wid, w in self.workers.items() if node_type is None or node_type in w.node_types}


# --- MessageBus ---------------------------------------------------------------------------


def channel_matches(pattern: str, channel: str) -> bool:
    """The bus contract's token rule: ``*`` is exactly one token, a final ``>`` one or more."""
    want, have = pattern.split("."), channel.split(".")
    if want[-1] == ">":
        head = want[:-1]
        return len(have) > len(head) and all(w in ("*", h) for w, h in zip(head, have))
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have))


@dataclass
class ModelSubscription:
    """One subscription: its pattern and, per publisher, the sequence numbers still owed to it."""

    pattern: str
    open: bool = True
    owed: dict[str, list[int]] = field(default_factory=dict)

    def pending(self) -> int:
        """How many messages must still arrive."""
        return sum(len(seqs) for seqs in self.owed.values())


class BusModel:
    """The MessageBus contract: a message goes to every open subscription whose pattern
    matches its channel at publish time, in publish order per publisher; nothing to a
    closed one, nothing replayed to a later one."""

    def __init__(self) -> None:
        self.subscriptions: list[ModelSubscription] = []
        self.published: dict[str, int] = {}

    def subscribe(self, pattern: str) -> int:
        """Add a subscription; its index."""
        self.subscriptions.append(ModelSubscription(pattern))
        return len(self.subscriptions) - 1

    def publish(self, publisher: str, channel: str) -> int:
        """Record a message of ``publisher`` on ``channel``; its sequence number."""
        seq = self.published.get(publisher, 0)
        self.published[publisher] = seq + 1
        for sub in self.subscriptions:
            if sub.open and channel_matches(sub.pattern, channel):
                sub.owed.setdefault(publisher, []).append(seq)
        return seq

    def close(self, index: int) -> None:
        """Close subscription ``index``: it is owed nothing more."""
        sub = self.subscriptions[index]
        sub.open = False
        sub.owed.clear()
