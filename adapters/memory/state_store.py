"""In-process StateStore: compare-and-set records, checkpoint history, fenced leases.

Records and checkpoints are kept as JSON bytes so that readers never share objects with
writers, as with a networked store. Checkpoints are stored as what changed
(``core.checkpoint_delta``: per-key deltas chained to periodic snapshots) and rebuilt
into full states on read. Expiry (``state_ttl``) is applied lazily on access.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distributed_agents.core.checkpoint_delta import ChainTip, delta_snap, entry_step, next_entry, rebuild
from distributed_agents.core.errors import (
    FencingTokenRejectedError,
    LeaseLostError,
    VersionConflictError,
    WorkflowExistsError,
)
from distributed_agents.core.ports.state_store import (
    Checkpoint,
    StateStore,
    WorkflowLease,
    WorkflowRecord,
    stored_record,
    stored_records,
)
from distributed_agents.core.record_json import record_json

__all__ = ["MemoryStateStore", "StateData"]


@dataclass
class _Workflow:
    record: bytes
    version: int
    status: str
    created_at: float
    checkpoints: list[bytes] = field(default_factory=list)
    expires_at: float | None = None
    # The newest checkpoint entry (its full state decoded from its own encoding), so the
    # next one is stored as a delta against it.
    tip: ChainTip | None = None


@dataclass
class _Lease:
    owner: str
    token: int
    deadline: float


class StateData:
    """All state of one prefix; shared by every ``MemoryStateStore`` on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.workflows: dict[str, _Workflow] = {}
        self.leases: dict[str, _Lease] = {}
        # Fencing tokens only ever grow, even across lease expiry and release.
        self.tokens: dict[str, int] = {}
        # The node cache: namespace -> key -> (value, expires_at on the store's clock or None).
        self.cache: dict[str, dict[str, tuple[bytes, float | None]]] = {}


class MemoryStateStore(StateStore):
    """StateStore over ``StateData``; see the port's docstring for the contract."""

    def __init__(self, data: StateData, *, state_ttl: float | None = None) -> None:
        self._data = data
        self.state_ttl = state_ttl
        # What node cache entries expire by (``time.time`` unless a test moves time on itself).
        self.clock: Callable[[], float] = time.time

    def _live(self, workflow_id: str) -> _Workflow | None:
        stored = self._data.workflows.get(workflow_id)
        if stored is not None and stored.expires_at is not None and stored.expires_at <= time.time():
            del self._data.workflows[workflow_id]
            self._data.leases.pop(workflow_id, None)
            return None
        return stored

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        with self._data.lock:
            stored = self._live(workflow_id)
            raw = None if stored is None else stored.record
        return None if raw is None else stored_record(raw, f"memory record {workflow_id!r}", workflow_id)

    async def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> WorkflowRecord:
        now = time.time()
        new = record.evolve(version=expected_version + 1, updated_at=now)
        # The state is encoded once, for the record and for a checkpoint of the same state (and
        # the engine's encoding of the record, made to check its size, is reused: core.record_json).
        raw, state_raw = record_json(new)
        workflow_id = record.workflow_id
        with self._data.lock:
            stored = self._live(workflow_id)
            if fencing_token is not None and fencing_token < self._data.tokens.get(workflow_id, 0):
                raise FencingTokenRejectedError(
                    f"workflow {workflow_id!r}: write with fencing token {fencing_token} refused; "
                    f"a newer owner holds token {self._data.tokens[workflow_id]}"
                )
            if expected_version == 0:
                if stored is not None:
                    raise WorkflowExistsError(f"workflow {workflow_id!r} already exists; choose another workflow_id")
            else:
                actual = None if stored is None else stored.version
                if stored is None or actual != expected_version:
                    raise VersionConflictError(
                        f"workflow {workflow_id!r}: expected version {expected_version}, found {actual}; "
                        "another writer committed first: reload and retry",
                        expected=expected_version,
                        actual=actual,
                    )
            # Encoded before anything changes, so a state that is not JSON writes nothing.
            entry = None
            if checkpoint is not None:
                entry, tip = next_entry(checkpoint, None if stored is None else stored.tip,
                                        index=0 if stored is None else len(stored.checkpoints),
                                        state_raw=state_raw if checkpoint.state is record.state else None)
            if stored is None:
                stored = _Workflow(raw, 1, new.status, new.created_at)
                self._data.workflows[workflow_id] = stored
            else:
                stored.record, stored.version, stored.status = raw, new.version, new.status
            if entry is not None:
                stored.checkpoints.append(entry)
                stored.tip = tip
            stored.expires_at = None if self.state_ttl is None else now + self.state_ttl
        return new

    async def list_checkpoints(
        self, workflow_id: str, *, limit: int | None = None, before: int | None = None
    ) -> list[Checkpoint]:
        with self._data.lock:
            stored = self._live(workflow_id)
            raws = [] if stored is None else list(stored.checkpoints)
        start = 0
        if limit is not None and before is None and 0 < limit < len(raws):
            # Only the newest few: rebuild from the snapshot their chain starts at.
            start = len(raws) - limit
            snap = delta_snap(raws[start])
            start = start if snap is None or snap >= start else snap  # past it: damage, rebuild reports it
        return rebuild(raws[start:], start, limit=limit, before=before, workflow_id=workflow_id,
                       where=f"memory checkpoints of {workflow_id!r}")

    async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
        """The checkpoint of ``step``, rebuilt from its chain's snapshot only (entries are in step order)."""
        with self._data.lock:
            stored = self._live(workflow_id)
            raws = [] if stored is None else list(stored.checkpoints)
        where = f"memory checkpoints of {workflow_id!r}"
        position = len(raws) - 1
        while position >= 0 and entry_step(raws[position], workflow_id=workflow_id, where=where) > step:
            position -= 1
        if position < 0 or entry_step(raws[position], workflow_id=workflow_id, where=where) != step:
            return None
        snap = delta_snap(raws[position])
        start = position if snap is None or snap > position else snap
        found = rebuild(raws[start:position + 1], start, limit=1, workflow_id=workflow_id, where=where)
        return found[0] if found else None

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        with self._data.lock:
            raws = []
            for workflow_id in list(self._data.workflows):
                stored = self._live(workflow_id)
                if stored is not None and (status is None or stored.status == status):
                    raws.append((stored.created_at, stored.record))
        raws.sort(key=lambda item: item[0])
        return stored_records((f"memory record at {created_at}", raw) for created_at, raw in raws)

    async def delete(self, workflow_id: str) -> bool:
        with self._data.lock:
            self._data.leases.pop(workflow_id, None)
            return self._data.workflows.pop(workflow_id, None) is not None

    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        with self._data.lock:
            self._live(workflow_id)  # an expired record takes its lease with it (state_ttl)
            now = time.time()
            lease = self._data.leases.get(workflow_id)
            if lease is not None and lease.deadline > now:
                if lease.owner != owner:
                    return None
                lease.deadline = now + ttl
            else:
                token = self._data.tokens.get(workflow_id, 0) + 1
                self._data.tokens[workflow_id] = token
                lease = _Lease(owner, token, now + ttl)
                self._data.leases[workflow_id] = lease
            return WorkflowLease(workflow_id, owner, lease.token, lease.deadline)

    async def lease_holder(self, workflow_id: str) -> WorkflowLease | None:
        with self._data.lock:
            lease = self._data.leases.get(workflow_id)
            if lease is None or lease.deadline <= time.time():
                return None
            return WorkflowLease(workflow_id, lease.owner, lease.token, lease.deadline)

    async def renew_lease(self, lease: WorkflowLease, ttl: float) -> WorkflowLease:
        with self._data.lock:
            now = time.time()
            held = self._data.leases.get(lease.workflow_id)
            if held is None or held.token != lease.fencing_token or held.deadline <= now:
                raise LeaseLostError(
                    f"workflow {lease.workflow_id!r}: lease of {lease.owner!r} (token {lease.fencing_token}) "
                    "expired or was taken over; stop driving this workflow"
                )
            held.deadline = now + ttl
            return WorkflowLease(lease.workflow_id, lease.owner, held.token, held.deadline)

    async def release_lease(self, lease: WorkflowLease) -> None:
        with self._data.lock:
            held = self._data.leases.get(lease.workflow_id)
            if held is not None and held.token == lease.fencing_token:
                del self._data.leases[lease.workflow_id]

    # -- node cache ----------------------------------------------------------------------

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        with self._data.lock:
            entries = self._data.cache.get(namespace, {})
            found = entries.get(key)
            if found is None:
                return None
            value, expires_at = found
            if expires_at is not None and expires_at <= self.clock():
                del entries[key]
                return None
            return value

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        expires_at = None if ttl is None else self.clock() + ttl
        with self._data.lock:
            self._data.cache.setdefault(namespace, {})[key] = (bytes(value), expires_at)

    async def cache_clear(self, namespace: str) -> None:
        with self._data.lock:
            self._data.cache.pop(namespace, None)
