"""The StateStore port: durable workflow records, checkpoints and ownership leases.

The contract (checked by ``distributed_agents.conformance``):

* A ``WorkflowRecord`` is written with compare-and-set on ``version``: ``save`` with
  ``expected_version=0`` creates it (``WorkflowExistsError`` if it exists); otherwise the
  stored version must equal ``expected_version`` or ``VersionConflictError`` is raised
  and nothing changes. A successful save stores ``version = expected_version + 1``.
* ``save`` may carry a ``Checkpoint``; record and checkpoint are written atomically (a
  step commits exactly once, or not at all).
* Everything saved reads back unchanged: every field of the record (``get`` and
  ``list_workflows``) except ``version`` and ``updated_at``, which the store sets, and
  every field of each checkpoint. Values are JSON (any Unicode text included).
* Checkpoints are append-only per workflow; ``list_checkpoints`` returns them newest
  first by step compared as a number (step 10 before step 9), at most ``limit``, only
  those with ``step < before`` when ``before`` is given.
* ``list_workflows`` returns every record (there is no page limit), oldest
  ``created_at`` first.
* ``acquire_lease`` grants a workflow lease to one owner at a time; each grant carries
  a ``fencing_token`` strictly greater than every token granted before for that
  workflow. A lease can be renewed by its holder until it expires; once expired anyone
  may acquire it. ``save(..., fencing_token=t)`` is refused with
  ``FencingTokenRejectedError`` when a lease with a greater token has been granted,
  for as long as the record lives: also after that newer lease expired or was released.
* ``list_workflows(status=)`` lists records, optionally filtered by status.
* ``delete`` removes the record, all its checkpoints and its lease: a workflow created
  again under the id starts with no history and its lease is free.
* Re-acquiring one's own live lease keeps its fencing token and moves its deadline to
  now + ``ttl``. A save refused for its fencing token writes nothing, checkpoint included.
* ``list_checkpoints(limit=0)`` returns nothing; no ``limit`` returns every checkpoint.
* Records, checkpoints and leases of a workflow expire ``state_ttl`` seconds after the
  record's last save when ``state_ttl`` is set: every save (with or without a
  checkpoint) restarts the clock of the record and of all its checkpoints.
* Two stores with different prefixes never see each other's data, also when one prefix
  is a prefix of the other (``app-1`` and ``app-12``).
* Every method accepts exactly the parameters of this class (names, kinds, defaults).
* ``create_leased`` is ``acquire_lease`` + create (``save`` with ``expected_version=0``)
  fenced by the grant, as one step: None and nothing written while another owner holds
  the lease; on ``WorkflowExistsError`` no lease it granted is kept. ``save_releasing`` is a fenced
  ``save`` that, once it succeeds, frees the lease; a refused one keeps the lease.
  ``create_leased_enqueuing`` is ``create_leased`` and, once created, ``enqueue_many`` of
  the first step's tasks on a queue (an adapter does both atomically where it can).
  (Optional: the port's defaults compose the methods above; adapters merge round trips.)
* ``get_checkpoint(workflow_id, step)`` returns the checkpoint ``list_checkpoints``
  holds for ``step`` (every field, the full state), or None when there is none (never
  written, deleted, expired). The default reads it through ``list_checkpoints``; a store
  overrides it to read one checkpoint without the rest (workers read the state a task
  names with it, see ``core.task_state``).

The node cache (``core.cache``; optional: the port's defaults keep nothing):

* ``cache_set(namespace, key, value, ttl)`` stores ``value`` (any bytes, empty
  included) under ``(namespace, key)``, replacing what was there, ttl included;
  ``cache_get`` returns exactly those bytes, or None when nothing is stored.
* With ``ttl`` (seconds > 0) the entry is gone ``ttl`` seconds after its set, not
  before; with None it stays until cleared. ``state_ttl`` does not apply to it.
* ``cache_clear(namespace)`` removes every entry of that namespace, however many, and
  nothing else. Namespaces and keys are any strings: two different ``(namespace,
  key)`` pairs never share an entry, also when one is a prefix of the other or they
  contain the adapter's separators (``:``, ``.``, ``*``, ``>``, ``/``, ``%``).
* Two stores with different prefixes never see each other's entries.
* An adapter that keeps the defaults is reported by ``implements_cache`` as having no
  cache: the engine then runs cached nodes every time (with a warning) and the
  conformance suite skips the cache checks, saying why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from distributed_agents.core.codec import REQUIRED
from distributed_agents.core.quick_init import FACTORY, quick_init

if TYPE_CHECKING:  # imported where raised at run time (core.errors is imported by code this module serves)
    from distributed_agents.core.errors import PayloadDecodeError
    from distributed_agents.core.ports.task_queue import Task, TaskQueue

__all__ = [
    "Checkpoint",
    "checkpoints_page",
    "implements_cache",
    "StateStore",
    "malformed_record",
    "stored_record",
    "stored_records",
    "WorkflowLease",
    "WorkflowRecord",
    "WorkflowStatus",
]


class WorkflowStatus:
    """The lifecycle of a workflow, as plain strings so they cross the wire unchanged."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Paused by interrupt() or a breakpoint until resumed: neither terminal nor failed.
    INTERRUPTED = "interrupted"
    TERMINAL = frozenset({"completed", "failed", "cancelled"})
    ALL = frozenset({"pending", "running", "completed", "failed", "cancelled", "interrupted"})


@dataclass(frozen=True)
class WorkflowRecord:
    """Everything needed to continue a workflow in any process.

    ``state`` is the full state after ``step`` committed steps; ``frontier`` is the
    engine's opaque description of what runs next (triggered nodes, join progress);
    ``error`` is set when the workflow failed; ``graph`` identifies the graph
    (name and a hash of its spec).
    """

    workflow_id: str
    graph_name: str
    status: str
    state: Mapping[str, Any]
    step: int = 0
    version: int = 0
    frontier: Mapping[str, Any] = field(default_factory=dict)
    error: Mapping[str, Any] | None = None
    graph: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def evolve(self, **changes: Any) -> WorkflowRecord:
        """A copy with ``changes`` applied (``TypeError`` for a name that is not a field)."""
        if not _RECORD_FIELDS.issuperset(changes):
            return replace(self, **changes)  # raises, naming the field
        # The step loop evolves its record twice a step: a copy of the fields costs a fraction
        # of dataclasses.replace, which runs __init__ and a setattr per field.
        copied = object.__new__(type(self))
        object.__getattribute__(copied, "__dict__").update(self.__dict__, **changes)
        return copied

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the record."""
        return {
            "workflow_id": self.workflow_id,
            "graph_name": self.graph_name,
            "status": self.status,
            "state": dict(self.state),
            "step": self.step,
            "version": self.version,
            "frontier": dict(self.frontier),
            "error": None if self.error is None else dict(self.error),
            "graph": None if self.graph is None else dict(self.graph),
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowRecord:
        """Rebuild a record from ``to_dict`` output."""
        return cls(
            workflow_id=data["workflow_id"],
            graph_name=data.get("graph_name", ""),
            status=data["status"],
            state=data.get("state") or {},
            step=int(data.get("step", 0)),
            version=int(data.get("version", 0)),
            frontier=data.get("frontier") or {},
            error=data.get("error"),
            graph=data.get("graph"),
            metadata=data.get("metadata") or {},
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
        )


_RECORD_FIELDS = frozenset(f.name for f in fields(WorkflowRecord))
log = logging.getLogger("distributed_agents.state_store")
# name -> (JSON types allowed, default when absent or null): codec.checked_object's shape
_RECORD_SHAPE: dict[str, tuple[tuple[type, ...], Any]] = {
    "workflow_id": ((str,), REQUIRED),
    "status": ((str,), REQUIRED),
    "graph_name": ((str,), ""),
    "state": ((dict,), {}),
    "step": ((int,), 0),
    "version": ((int,), 0),
    "frontier": ((dict,), {}),
    "error": ((dict,), None),
    "graph": ((dict,), None),
    "metadata": ((dict,), {}),
    "created_at": ((int, float), 0.0),
    "updated_at": ((int, float), 0.0),
}


def stored_record(raw: bytes | str | Any, where: str, workflow_id: str | None = None) -> WorkflowRecord:
    """The workflow record a store read at ``where`` (its key or subject), checked.

    ``raw`` is the stored bytes (or text, or an already decoded value). Nothing but JSON
    is accepted, and only a record of this shape: every field of the right JSON type,
    ``workflow_id`` equal to ``workflow_id`` when given. Raises ``PayloadDecodeError``
    naming ``where`` and the problem otherwise (bytes written by something else, a
    truncated or hand-edited record), so the one workflow fails with that error and
    nothing else does.
    """
    from distributed_agents.core.codec import checked_object
    from distributed_agents.core.errors import PayloadDecodeError

    try:
        values = checked_object(raw, _RECORD_SHAPE, "a record")
        if workflow_id is not None and values["workflow_id"] != workflow_id:
            raise ValueError(f"it holds workflow {values['workflow_id'][:80]!r}")
        values["created_at"] = float(values["created_at"])
        values["updated_at"] = float(values["updated_at"])
        return WorkflowRecord(**values)
    except (PayloadDecodeError, ValueError, OverflowError) as exc:
        raise malformed_record(where, workflow_id, str(exc)) from None


def malformed_record(where: str, workflow_id: str | None, problem: str) -> PayloadDecodeError:
    """The error for a workflow record at ``where`` that is not one this engine wrote: the one wording.

    ``problem`` says what is wrong (not JSON, a field of the wrong type, a Redis key of
    another type). Used by ``stored_record`` and by stores that find the damage before
    there are bytes to check.
    """
    from distributed_agents.core.errors import PayloadDecodeError

    what = f"workflow {workflow_id!r}" if workflow_id is not None else "a workflow"
    return PayloadDecodeError(
        f"the record of {what} at {where} is malformed ({problem}); it was not written by this version of "
        "the engine (or was truncated or edited). Inspect it there, and delete the workflow "
        "(distributed-agents delete) to free its id"
    )


def stored_records(raws: Iterable[tuple[str, bytes | str | Any]]) -> list[WorkflowRecord]:
    """``stored_record`` of each ``(where, raw)``; a malformed one is logged (naming it) and left out.

    A listing (the status page, an orchestrator looking for workflows to resume) must
    not fail because of one bad record: the others are listed, and reading the bad one
    by its id raises the error.
    """
    records = []
    for where, raw in raws:
        try:
            records.append(stored_record(raw, where))
        except Exception as exc:  # PayloadDecodeError
            log.error("left out of the listing: %s", exc)
    return records


@quick_init  # made every step
@dataclass(frozen=True)
class Checkpoint:
    """The committed result of one step.

    ``state`` is the full state after the step; ``frontier`` what the next step runs
    (so a resumed workflow knows its pending tasks); ``writes`` maps each node that ran
    in the step to the updates it returned. ``metadata`` (JSON, empty for a step the
    engine ran) says how a checkpoint written otherwise came about, e.g.
    ``{"source": "update", "as_node": ...}`` or ``{"source": "fork", "parent": ...}``
    (see ``core.history``); a store keeps it like every other field.
    """

    workflow_id: str
    step: int
    state: Mapping[str, Any]
    frontier: Mapping[str, Any] = field(default_factory=dict)
    writes: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, workflow_id: str, step: int, state: Mapping[str, Any], frontier: Mapping[str, Any] = FACTORY,
                 writes: Mapping[str, Any] = FACTORY, created_at: float = FACTORY,
                 metadata: Mapping[str, Any] = FACTORY) -> None:
        # One per step: the fields at once (core.quick_init checks this against them).
        self.__dict__.update({
            "workflow_id": workflow_id, "step": step, "state": state,
            "frontier": {} if frontier is FACTORY else frontier, "writes": {} if writes is FACTORY else writes,
            "created_at": time.time() if created_at is FACTORY else created_at,
            "metadata": {} if metadata is FACTORY else metadata})

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the checkpoint."""
        return {
            "workflow_id": self.workflow_id,
            "step": self.step,
            "state": dict(self.state),
            "frontier": dict(self.frontier),
            "writes": dict(self.writes),
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Rebuild a checkpoint from ``to_dict`` output (a ``created_at`` that is null or absent reads as 0.0)."""
        created = data.get("created_at")  # null as absent, as checkpoint_delta.checked_entry accepts it
        return cls(
            workflow_id=data["workflow_id"],
            step=int(data["step"]),
            state=data.get("state") or {},
            frontier=data.get("frontier") or {},
            writes=data.get("writes") or {},
            created_at=0.0 if created is None else float(created),
            metadata=data.get("metadata") or {},
        )


@dataclass(frozen=True)
class WorkflowLease:
    """Ownership of one workflow by one owner until ``deadline`` (``time.time()``)."""

    workflow_id: str
    owner: str
    fencing_token: int
    deadline: float


class StateStore:
    """Port: durable workflow state. Subclasses implement every method; see module docstring."""

    state_ttl: float | None = None

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        """The stored record, or None."""
        raise NotImplementedError

    async def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> WorkflowRecord:
        """Compare-and-set ``record``; returns it as stored (with the new version)."""
        raise NotImplementedError

    async def list_checkpoints(
        self, workflow_id: str, *, limit: int | None = None, before: int | None = None
    ) -> list[Checkpoint]:
        """Checkpoints newest first; ``before`` keeps those with ``step < before``."""
        raise NotImplementedError

    async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
        """The checkpoint of ``workflow_id`` after ``step`` committed steps (full state), or None.

        LangGraph's ``checkpointer.get_tuple`` with a checkpoint id. The default finds it
        with ``list_checkpoints(limit=1, before=step + 1)``.
        """
        found = await self.list_checkpoints(workflow_id, limit=1, before=step + 1)
        return found[0] if found and found[0].step == step else None

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        """Records, optionally only those with ``status``, oldest first."""
        raise NotImplementedError

    async def count_workflows(self) -> dict[str, int]:
        """How many workflows have each status: every ``WorkflowStatus.ALL`` key, 0 when none.

        What the metrics' ``workflows{status}`` gauge polls every few seconds. The default
        reads every record with ``list_workflows``; an adapter should count without
        sending the records (the Redis one counts inside the server).
        """
        counts = dict.fromkeys(sorted(WorkflowStatus.ALL), 0)
        for record in await self.list_workflows():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    async def delete(self, workflow_id: str) -> bool:
        """Remove a workflow's record, checkpoints and lease; True if it existed."""
        raise NotImplementedError

    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        """Grant the lease to ``owner`` if it is free or expired (or already ``owner``'s).

        Returns None if another owner holds an unexpired lease. Every grant to a new
        holder issues a strictly greater fencing token; re-acquiring one's own live
        lease keeps the token and extends the deadline.
        """
        raise NotImplementedError

    async def renew_lease(self, lease: WorkflowLease, ttl: float) -> WorkflowLease:
        """Extend a live lease; ``LeaseLostError`` if it expired or another holds it."""
        raise NotImplementedError

    async def release_lease(self, lease: WorkflowLease) -> None:
        """Give the lease up if still held (no error if it was already lost)."""
        raise NotImplementedError

    # -- merged operations (optional: the defaults compose the methods above) ------------

    async def create_leased(
        self, record: WorkflowRecord, *, owner: str, ttl: float, checkpoint: Checkpoint | None = None
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """Acquire the lease of a new workflow for ``owner`` and create ``record`` under it.

        As ``acquire_lease(record.workflow_id, owner, ttl)`` followed by ``save(record,
        expected_version=0, checkpoint=checkpoint, fencing_token=<the grant's token>)``:
        returns the stored record and the lease, or None (nothing written) if another
        owner holds a live lease. ``WorkflowExistsError`` if the record exists; then a lease
        this call granted is not kept (another owner can acquire it). Adapters may do it in one round
        trip; this default makes two (three when the create is refused).
        """
        lease = await self.acquire_lease(record.workflow_id, owner, ttl)
        if lease is None:
            return None
        try:
            saved = await self.save(record, expected_version=0, checkpoint=checkpoint,
                                    fencing_token=lease.fencing_token)
        except BaseException:
            await _release_quietly(self, lease)
            raise
        return saved, lease

    async def create_leased_enqueuing(
        self, record: WorkflowRecord, *, owner: str, ttl: float, checkpoint: Checkpoint | None = None,
        queue: TaskQueue, tasks: Sequence[Task],
    ) -> tuple[WorkflowRecord, WorkflowLease, bool] | None:
        """``create_leased``, then ``queue.enqueue_many(tasks)`` (the first step's tasks) once created.

        Returns the stored record, the lease and whether ``tasks`` are queued (then by this
        call, or before by an earlier try of it); None as ``create_leased`` (nothing written,
        nothing queued). Raises what ``create_leased`` raises. An adapter may do both in one
        atomic step (one round trip): a crash then leaves neither or both. This default makes
        the two calls; an enqueue that fails (or a crash between the two) leaves the workflow
        created with its tasks not queued, which its first step queues, as for any step.
        """
        made = await self.create_leased(record, owner=owner, ttl=ttl, checkpoint=checkpoint)
        if made is None:
            return None
        try:
            await queue.enqueue_many(tasks)
        except Exception:  # the first step enqueues them (and reports a lasting failure there)
            return made[0], made[1], False
        return made[0], made[1], True

    async def save_releasing(
        self, record: WorkflowRecord, *, expected_version: int, lease: WorkflowLease,
        checkpoint: Checkpoint | None = None,
    ) -> WorkflowRecord:
        """``save`` fenced by ``lease``, then give ``lease`` up: a workflow's last commit of a run.

        Raises what ``save`` raises, and then the lease stays as it was. After a successful
        save the lease is released (an adapter does both in one round trip; this default
        releases after the save, and a release that fails leaves the lease to lapse at its
        deadline rather than failing a commit that landed).
        """
        saved = await self.save(record, expected_version=expected_version, checkpoint=checkpoint,
                                fencing_token=lease.fencing_token)
        await _release_quietly(self, lease)
        return saved

    async def lease_holder(self, workflow_id: str) -> WorkflowLease | None:
        """The unexpired lease on ``workflow_id`` (owner, token, deadline), or None if free.

        For messages only (how long a lease left by a dead process lasts): never use it to
        decide ownership. The default says None (unknown) for stores that do not tell.
        """
        return None

    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- node cache (see the module docstring; the defaults keep nothing) ---------------

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        """The bytes stored under ``(namespace, key)``, or None if absent or expired."""
        return None

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``(namespace, key)`` for ``ttl`` seconds (None: until cleared)."""

    async def cache_clear(self, namespace: str) -> None:
        """Remove every entry of ``namespace``."""


async def _release_quietly(store: StateStore, lease: WorkflowLease) -> None:
    """``release_lease``, ignoring failures: an unreleased lease lapses at its deadline."""
    try:
        await store.release_lease(lease)
    except Exception:  # noqa: BLE001 - the lease runs out on its own
        pass


def implements_cache(store: StateStore) -> bool:
    """Whether ``store``'s class overrides the port's no-op node cache (``cache_get`` and ``cache_set``)."""
    kind = type(store)
    return kind.cache_get is not StateStore.cache_get and kind.cache_set is not StateStore.cache_set


def checkpoints_page(
    items: Sequence[Checkpoint], *, limit: int | None, before: int | None
) -> list[Checkpoint]:
    """Apply the ``list_checkpoints`` ordering and filters to checkpoints stored oldest first."""
    selected = [cp for cp in reversed(items) if before is None or cp.step < before]
    return selected if limit is None else selected[:limit]
