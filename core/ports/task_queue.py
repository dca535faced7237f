"""The TaskQueue port: leased, prioritised, at-least-once delivery of node tasks.

The contract (checked by ``distributed_agents.conformance``):

* ``enqueue`` is idempotent on ``Task.id``: enqueuing an id that is queued, delayed,
  claimed or dead-lettered changes nothing and returns False, whatever the new task's
  node type, priority or payload. After a task finished (acked, or cancelled) its id is
  remembered exactly as long as its result: ``result_ttl`` seconds. Until then enqueue
  returns False; once the result expired, the id is new again (enqueue returns True and
  the task runs again). A dead letter keeps its id until it is requeued.
* ``claim`` hands out only tasks whose node type is one of ``node_types`` (names are
  compared exactly: ``"a"`` never matches ``"ab"``; any non-empty Unicode string is a
  valid node type or task id), highest ``priority`` first and FIFO (by enqueue order)
  within a priority. Priorities are any integers from ``-2**31`` to ``2**31 - 1``,
  compared as numbers. When several node types are claimed at once, their tasks are
  merged as one queue: highest priority across all of them first, then enqueue order
  across them. A claimed task is invisible to every other claimer until it is acked,
  nacked, released or its lease expires; after expiry it is claimable again and that
  delivery counts as a new attempt. ``claim(wait=w)`` returns as soon as a task
  becomes ready during the wait (enqueued, released, nacked, a ``nack`` delay or a
  lease running out), promptly (not at the end of the wait), and an empty list once
  ``w`` seconds passed without one. ``wait_results`` likewise returns promptly once a
  result is stored. ``enqueue_raw(priority=)`` places the bytes like a task of that
  priority.
* Every field of a task (``created_at`` included) reads back unchanged on claim and in
  its dead letter; a result keeps the ``worker_id`` of the delivery that acked it.
* Every delivery increments ``ClaimedTask.attempt`` (1 on the first delivery). When a
  task would be delivered for attempt ``max_attempts + 1`` (after a nack or a lease
  expiry), it is dead-lettered instead, with its error history.
* ``extend`` moves the lease deadline to now + ``seconds`` (the extended lease then
  expires like any other); ``ack``, ``nack``, ``extend`` and ``release`` on a lease that
  expired and was re-claimed (or already settled) raise ``LeaseLostError`` and change
  nothing.
* ``ack`` stores the ``TaskResult`` (kept ``result_ttl`` seconds) atomically with
  removing the task. ``nack(delay=)`` makes the task claimable again after ``delay``
  seconds, recording the error; ``nack(final=True)`` dead-letters at once. A nacked
  task goes to the end of its priority once its delay has passed (at once without a
  delay): tasks of that priority already waiting are delivered before it, so a task
  that keeps failing cannot starve its peers.
  ``release`` gives a task back without counting the
  attempt (a draining worker uses it).
* Bytes on the queue that do not decode as a task are dead-lettered with the reason at
  claim time; ``claim`` never raises for them and never returns them.
* A dead-lettered task stores a failed ``TaskResult`` too, so whoever waits on the task
  learns that it failed. ``requeue_dead_letter`` puts it back at the end of its priority
  with a fresh attempt count and forgets that failed result: ``get_result`` reads None
  while the requeued task is pending, then the new run's result.
* ``dead_letters`` lists oldest (first dead-lettered) first, only the given node type
  when one is given, at most ``limit`` (100 by default) of them.
* ``purge_dead_letter`` deletes one dead letter for good: it is no longer listed,
  counted by ``stats`` or requeueable. Its failed result stays until ``result_ttl``
  runs out and, as for a finished task, its id is remembered that long.
* ``stats`` reports per node type: queued (ready or delayed), in flight, dead letters.
* Every method accepts exactly the parameters of this class (names, kinds, defaults):
  the core passes keyword arguments such as ``nack(final=True)``.

All times are seconds. Adapters translate engine errors into ``BackendError``s.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from distributed_agents.core.codec import decode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.quick_init import FACTORY, quick_init

__all__ = [
    "ClaimedTask",
    "DeadLetter",
    "QueueStats",
    "Task",
    "TaskQueue",
    "TaskResult",
    "check_attempt",
    "decode_task",
    "lease_expired_reason",
    "malformed_result",
    "task_from_dict",
    "task_to_dict",
]


# Concurrent enqueues of the default ``enqueue_many``.
ENQUEUE_CONCURRENCY = 32

@quick_init  # one per node task, made by the orchestrator and read back by a worker
@dataclass(frozen=True)
class Task:
    """One unit of work: run ``node`` (served by workers of ``node_type``) on ``payload``.

    ``max_attempts`` overrides the queue's default when set. ``payload`` must be
    JSON-serialisable; for node tasks it holds the state snapshot and run metadata.
    """

    id: str
    workflow_id: str
    node: str
    node_type: str
    payload: Mapping[str, Any]
    priority: int = 0
    max_attempts: int | None = None
    created_at: float = field(default_factory=time.time)

    def __init__(self, id: str, workflow_id: str, node: str, node_type: str,  # noqa: A002 - the field's name
                 payload: Mapping[str, Any], priority: int = 0, max_attempts: int | None = None,
                 created_at: float = FACTORY) -> None:
        # The fields at once (core.quick_init checks this against them).
        self.__dict__.update({
            "id": id, "workflow_id": workflow_id, "node": node, "node_type": node_type, "payload": payload,
            "priority": priority, "max_attempts": max_attempts,
            "created_at": time.time() if created_at is FACTORY else created_at})


def task_to_dict(task: Task) -> dict[str, Any]:
    """The JSON shape of a task on the wire."""
    return {
        "id": task.id,
        "workflow_id": task.workflow_id,
        "node": task.node,
        "node_type": task.node_type,
        "payload": dict(task.payload),
        "priority": task.priority,
        "max_attempts": task.max_attempts,
        "created_at": task.created_at,
    }


_PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # the port's priorities (module docstring)


def task_from_dict(data: Any) -> Task:
    """Rebuild a task from its wire shape; raises ``ValueError`` naming the bad field.

    Checks every field ``task_to_dict`` writes: ``id``, ``workflow_id``, ``node`` and
    ``node_type`` non-empty strings; ``payload`` an object; ``priority`` (default 0) an
    int in the port's range; ``max_attempts`` null or an int >= 1 (a count below 1 would
    undercut the queue's limit); ``created_at`` (default 0) a finite number. JSON types
    exactly: ``true`` is no int, ``"5"`` no number.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a task must be a JSON object, got {type(data).__name__}")
    try:
        payload = data["payload"]
        if not isinstance(payload, dict):
            raise ValueError("field 'payload' must be an object")
        priority = data.get("priority", 0)
        if type(priority) is not int or not _PRIORITY_RANGE[0] <= priority <= _PRIORITY_RANGE[1]:
            raise ValueError(f"field 'priority' must be an int from -2**31 to 2**31-1, got {priority!r:.80}")
        max_attempts = data.get("max_attempts")
        if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
            raise ValueError(f"field 'max_attempts' must be null or an int >= 1, got {max_attempts!r:.80}")
        created_at = data.get("created_at", 0.0)
        if type(created_at) not in (float, int) or not math.isfinite(created_at):
            raise ValueError(f"field 'created_at' must be a finite number (seconds), got {created_at!r:.80}")
        return Task(
            id=_str_field(data, "id"),
            workflow_id=_str_field(data, "workflow_id"),
            node=_str_field(data, "node"),
            node_type=_str_field(data, "node_type"),
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            created_at=float(created_at),
        )
    except KeyError as exc:
        raise ValueError(f"task is missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        # OverflowError: an int too large for a float (created_at = 10**400).
        raise ValueError(f"task has an invalid field: {exc}") from None


def decode_task(raw: bytes | bytearray, *, queued_as: str | None = None, queued_in: str | None = None) -> Task:
    """The task stored as ``raw`` (``task_to_dict`` as JSON), checked: the one reader of task bytes.

    Every adapter decodes a claimed task, and the task of a dead letter, through this.
    ``queued_as`` is the id the backend keeps the task under (its key, its message
    header), when it has one: a task naming another id (copied, or written by hand)
    could not be settled under its own id and is refused. ``queued_in`` is the node
    type of the queue the task was claimed from: a task naming another node type is
    refused too, never run - neither by this queue's workers (whose function is not the
    one it names) nor moved to the queue it names (its bytes, written by something other
    than enqueue, are not trusted to be the task its workflow queued); its dead letter
    keeps its bytes. Total: raises only ``PayloadDecodeError``, whose message is the
    dead-letter reason, ``"undecodable payload: ..."`` (not JSON, nested too deeply, a
    field of the wrong type or range) or ``"malformed task: ..."`` (an id or node type
    that is not its own).
    """
    try:
        task = task_from_dict(decode(raw))
    except ValueError as exc:  # PayloadDecodeError included
        raise PayloadDecodeError(f"undecodable payload: {exc}") from None
    if queued_as is not None and task.id != queued_as:
        raise PayloadDecodeError(
            f"malformed task: it names task id {task.id[:80]!r} but is queued as {queued_as[:80]!r}; it was copied "
            "or written by something other than enqueue, so it is not run")
    if queued_in is not None and task.node_type != queued_in:
        raise PayloadDecodeError(
            f"malformed task: it names node type {task.node_type[:80]!r} but sits in the queue of node type "
            f"{queued_in[:80]!r}; it was written by something other than enqueue, so it is not run: enqueue it "
            "again as a task of the node type it means")
    return task


def lease_expired_reason(attempt: int, limit: int, worker: str) -> str:
    """The dead-letter reason of a task whose last allowed lease expired: every backend's one wording.

    ``worker`` held the lease and stopped renewing it. The Redis adapter's claim script
    writes the same words (``queue_scripts``); the tests compare them.
    """
    return (f"lease expired on attempt {attempt} of {limit}: worker {worker!r} held it and stopped renewing it "
            "(it died, hung, lost the backend, or its event loop was blocked by an async def node making a "
            "blocking call: the worker's log says which); each attempt a worker does not finish counts toward "
            "max_attempts")


def malformed_result(task_id: str, what: str, where: str, problem: object, delete: str) -> TaskResult:
    """The failed result of a task whose stored result is not one this engine wrote: every backend's one wording.

    ``what`` is what was read (``"the result"``, ``"the record"``), ``where`` the key that
    holds it (``"Redis key 'p:q:r:t1'"``), ``problem`` what is wrong with it and ``delete``
    the command that deletes the key. The task's outcome is unknown, so its workflow's
    step fails with this error instead of a decoding error naming nothing, or a wait for
    ever; the caller logs it.
    """
    return TaskResult(task_id, "failed", error=(
        f"{what} of task {task_id!r} at {where} is malformed ({problem}); it was not written by a worker of this "
        "version of the engine (or was edited), so the task's outcome is unknown. Delete the key "
        f"({delete}) and resume the workflow to run the task again"))


def check_attempt(attempt: int, where: str) -> None:
    """Refuse a delivery whose attempt number (1-based, after counting it) is below 1.

    The count lives in the backend's own task record (``where`` names it); one below 0
    there (written by hand) would let the task run more than ``max_attempts`` times.
    Raises ``PayloadDecodeError`` whose message is the dead-letter reason.
    """
    if attempt < 1:
        raise PayloadDecodeError(
            f"malformed task: its attempt count at {where} was {attempt - 1}, below 0 (written by something other "
            "than the queue, it would let the task run more than max_attempts times), so it is not run")


def _str_field(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class ClaimedTask:
    """A task together with the lease under which one worker holds it.

    ``lease_id`` identifies this delivery; settling calls must present it.
    ``deadline`` is the wall-clock time (``time.time()``) at which the lease expires.
    ``started_at`` (``time.time()``, or None) is when the worker started running the node
    under this lease; the worker sets it before ``ack`` so the stored result carries it.
    """

    task: Task
    lease_id: str
    attempt: int
    deadline: float
    worker_id: str
    started_at: float | None = None


@quick_init  # one per task the orchestrator waits for
@dataclass(frozen=True)
class TaskResult:
    """The outcome of a task: ``succeeded`` with ``output``, or ``failed`` with ``error``.

    ``finished_at`` and ``started_at`` are seconds since the epoch. ``started_at`` is when
    the attempt that produced this result started running the node (None when unknown:
    a result from an older worker, or one the backend wrote itself, e.g. a dead letter);
    ``finished_at - started_at`` is the node's run time, without the time it waited in
    the queue or for a dead worker's lease to expire.
    """

    task_id: str
    status: Literal["succeeded", "failed"]
    output: Mapping[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    worker_id: str = ""
    finished_at: float = field(default_factory=time.time)
    started_at: float | None = None

    def __init__(self, task_id: str, status: Literal["succeeded", "failed"], output: Mapping[str, Any] | None = None,
                 error: str | None = None, attempts: int = 0, worker_id: str = "", finished_at: float = FACTORY,
                 started_at: float | None = None) -> None:
        # The fields at once (core.quick_init checks this against them).
        self.__dict__.update({
            "task_id": task_id, "status": status, "output": output, "error": error, "attempts": attempts,
            "worker_id": worker_id, "finished_at": time.time() if finished_at is FACTORY else finished_at,
            "started_at": started_at})

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a result (``started_at`` only when known: the older shape otherwise)."""
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "status": self.status,
            "output": None if self.output is None else dict(self.output),
            "error": self.error,
            "attempts": self.attempts,
            "worker_id": self.worker_id,
            "finished_at": self.finished_at,
        }
        if self.started_at is not None:
            data["started_at"] = self.started_at
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """Rebuild a result from ``to_dict`` output; raises ``ValueError`` naming the bad field.

        Results come back from the backend (a key, a done event anyone on the bus could
        publish): each field is checked, so a malformed one is refused here instead of
        failing later, elsewhere, with an unrelated error.
        """
        if type(data) is not dict and not isinstance(data, Mapping):  # (decoded JSON: a dict, checked at once)
            raise ValueError(f"a task result must be a JSON object, got {type(data).__name__}")
        try:
            task_id, status = data["task_id"], data["status"]
            output, error = data.get("output"), data.get("error")
            worker_id = data.get("worker_id", "")
            if not isinstance(task_id, str) or not isinstance(worker_id, str):
                raise ValueError("fields 'task_id' and 'worker_id' must be strings")
            if status not in ("succeeded", "failed"):
                raise ValueError(f"field 'status' must be 'succeeded' or 'failed', got {str(status)[:40]!r}")
            if output is not None and not isinstance(output, dict):
                raise ValueError("field 'output' must be an object or null")
            if error is not None and not isinstance(error, str):
                raise ValueError("field 'error' must be a string or null")
            # int(): a Lua script may write the count as a string
            attempts = int(data.get("attempts", 0))
            started_at = data.get("started_at")
            if started_at is not None and (isinstance(started_at, bool) or not isinstance(started_at, (int, float))
                                           or not math.isfinite(started_at)):
                raise ValueError(f"field 'started_at' must be a finite number (seconds since the epoch) or null, "
                                 f"got {str(started_at)[:40]!r}")
            return cls(task_id=task_id, status=status, output=output, error=error, attempts=attempts,
                       worker_id=worker_id, finished_at=float(data.get("finished_at", 0.0)),
                       started_at=None if started_at is None else float(started_at))
        except KeyError as exc:
            raise ValueError(f"task result is missing field {exc.args[0]!r}") from None
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"task result has an invalid field: {exc}") from None


@dataclass(frozen=True)
class DeadLetter:
    """A task that will not be delivered again without a ``requeue_dead_letter``.

    ``task`` is None when the bytes on the queue could not be decoded; ``raw`` then
    holds them. ``errors`` is the history, oldest first; ``reason`` is the last word. An
    adapter whose records are bounded may keep only the newest errors of a long history,
    after one entry counting the others (NATS keeps about 16 KiB: ``adapters/nats/error_history``).
    """

    task_id: str
    node_type: str
    reason: str
    errors: Sequence[str]
    attempts: int
    task: Task | None = None
    raw: bytes | None = None
    dead_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class QueueStats:
    """Counts for one node type at one moment."""

    node_type: str
    queued: int
    in_flight: int
    dead: int


class TaskQueue:
    """Port: a leased task queue. Subclasses implement every method; see module docstring.

    Attributes set by adapters: ``visibility_timeout`` (default lease seconds),
    ``max_attempts`` (default for tasks that do not set one), ``result_ttl`` seconds.
    """

    visibility_timeout: float = 30.0
    max_attempts: int = 3
    result_ttl: float = 3600.0

    async def enqueue(self, task: Task) -> bool:
        """Queue ``task``; return False (and change nothing) if its id was seen before."""
        raise NotImplementedError

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """``enqueue`` each of ``tasks``; one flag per task, in order, as ``enqueue`` returns.

        A repeated id within ``tasks`` is False after its first occurrence. The tasks of
        one call may be queued in any order among themselves (each after every task of an
        earlier call). Adapters may batch them in fewer round trips; this default runs up
        to ``ENQUEUE_CONCURRENCY`` enqueues at a time, so a networked backend overlaps
        their round trips instead of paying them in series.
        """
        first: dict[str, int] = {}
        for index, task in enumerate(tasks):
            first.setdefault(task.id, index)
        unique = [tasks[index] for index in first.values()]
        created: dict[str, bool] = {}
        for start in range(0, len(unique), ENQUEUE_CONCURRENCY):
            batch = unique[start:start + ENQUEUE_CONCURRENCY]
            for task, flag in zip(batch, await asyncio.gather(*(self.enqueue(task) for task in batch))):
                created[task.id] = flag
        return [first[task.id] == index and created[task.id] for index, task in enumerate(tasks)]

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        """Put raw bytes on the queue of ``node_type``, as a foreign producer would.

        For tooling and tests: bytes that do not decode as a task must be dead-lettered
        at claim time with the reason.
        """
        raise NotImplementedError

    async def claim(
        self,
        node_types: Collection[str],
        *,
        worker_id: str,
        max_tasks: int = 1,
        lease_seconds: float | None = None,
        wait: float = 0.0,
    ) -> list[ClaimedTask]:
        """Claim up to ``max_tasks`` ready tasks of ``node_types`` (priority, then FIFO).

        Waits up to ``wait`` seconds for at least one task when none is ready; returns
        an empty list if none came. ``lease_seconds`` defaults to ``visibility_timeout``.
        """
        raise NotImplementedError

    async def extend(self, claim: ClaimedTask, seconds: float | None = None) -> ClaimedTask:
        """Move the lease deadline to now + ``seconds``; ``LeaseLostError`` if lost."""
        raise NotImplementedError

    async def ack(self, claim: ClaimedTask, output: Mapping[str, Any] | None) -> None:
        """Store a succeeded result and remove the task, atomically; ``LeaseLostError`` if lost."""
        raise NotImplementedError

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        """Record ``error``; re-deliver after ``delay``, or dead-letter.

        The task is dead-lettered when this was its last allowed attempt, or at once
        when ``final`` is True (the node's retry policy gave up). Returns True if the
        task will be delivered again, False if it was dead-lettered. Raises
        ``LeaseLostError`` if the lease was lost.
        """
        raise NotImplementedError

    async def release(self, claim: ClaimedTask) -> None:
        """Give the task back at once without counting the attempt; ``LeaseLostError`` if lost."""
        raise NotImplementedError

    async def get_result(self, task_id: str) -> TaskResult | None:
        """The stored result of a finished task, or None (unknown, pending or expired)."""
        raise NotImplementedError

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        """Results of those ``task_ids`` that are finished.

        If none is finished yet, waits up to ``timeout`` seconds for the first; returns
        an empty dict on timeout. Adapters should wake promptly on an ack rather than poll.
        """
        raise NotImplementedError

    async def cancel(self, task_id: str) -> bool:
        """Remove a queued (not claimed) task; True if it was removed."""
        raise NotImplementedError

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one node type."""
        raise NotImplementedError

    async def requeue_dead_letter(self, task_id: str) -> bool:
        """Queue a dead-lettered task again with a fresh attempt count; False if unknown.

        Raw (undecodable) dead letters cannot be requeued and return False.
        """
        raise NotImplementedError

    async def purge_dead_letter(self, task_id: str) -> bool:
        """Delete the dead letter of ``task_id`` for good; False if there is none."""
        raise NotImplementedError

    async def stats(self, node_type: str) -> QueueStats:
        """Queued, in-flight and dead-letter counts for ``node_type``."""
        raise NotImplementedError

    async def stop_claiming(self, worker_id: str) -> None:
        """``worker_id`` claims no more (its worker stops): what its waits left on the backend
        ends now (a Redis parked registration, which would otherwise be handed new tasks until
        it ran out). Tasks handed to it that no claim took go back to the queue, their attempt
        not counted. Best effort (it runs out by itself otherwise). Default: nothing to end."""
        return None

    async def close(self) -> None:
        """Release connections. Idempotent."""
