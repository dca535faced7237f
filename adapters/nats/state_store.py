"""StateStore on a JetStream KV bucket (``<p>_state``), compare-and-set on revisions.

Keys (workflow ids and steps escaped into key tokens):

* ``wf.<id>``: the ``WorkflowRecord`` as JSON plus private fields: ``_cp``, the key
  of the newest committed checkpoint, and ``_fence``, the greatest fencing token seen.
  Our ``version`` lives inside the record; every write is a CAS on the key's KV
  revision (``Nats-Expected-Last-Subject-Sequence``), read in the same call, so version
  and revision move together.
* ``cp.<id>.<step>.<nonce>``: one checkpoint, with ``_prev`` naming the checkpoint
  committed before it.
* ``lease.<id>``: owner, fencing token and deadline. Never removed, so tokens only grow.

Atomicity of record + checkpoint. KV has no multi-key transaction, so ``save`` writes
the checkpoint first under a key no other writer can use (a fresh nonce), then CASes
the record to point at it. The record CAS is the commit: a writer that loses it leaves
an orphan checkpoint (removed best effort) that no record points to. Readers walk the
chain from the record's ``_cp`` through ``_prev``, so they see exactly the checkpoints
of committed saves, in commit order: it looks atomic. Round trips: ``save`` 2 (get,
CAS), 3 with a checkpoint, +1 with a fencing token (lease read).

Fencing. ``save(fencing_token=t)`` compares ``t`` with the newest lease token and the
record's ``_fence``; granting a new lease CASes ``_fence`` into the record before
returning, so a stale holder that read the old lease still loses its record CAS.

TTL. With ``state_ttl``, record and checkpoints are written with a per-message TTL
(``Nats-TTL``, nats-server 2.11+, whole seconds, at least 1). Readers ignore checkpoints
of a record that is gone. As the port requires, every save restarts the clock of all the
record's checkpoints, without rewriting the whole history on every save: checkpoints are
written with twice ``state_ttl``, the record keeps (``_cp_until``) the earliest moment
one of them may vanish, and a save that would let the record outlive that moment first
rewrites the chain with a fresh TTL (once per ``state_ttl`` or so of a workflow's life).
A checkpoint so outlives its record by at most ``state_ttl``, unread.

Node cache: ``cache.<namespace>.<key>`` in the same bucket (both escaped into one token,
so ``cache.<namespace>.>`` matches exactly one namespace: ``cache_clear`` is one
subject-filtered purge). A KV bucket's own TTL (``max_age``) is one for the whole
bucket, so an entry's ``ttl`` is a per-message TTL instead (the ``Nats-TTL`` header of
nats-server 2.11+, which the bucket's stream allows): whole seconds, rounded up, after
which the server removes the entry. For exact expiry the value starts with the moment
it expires (``time.time()`` of the writer, then a newline; empty without ``ttl``),
checked on read: an entry is a miss from ``ttl`` after its set on, whatever the
server's rounding (clocks of writer and reader are assumed to agree within the
rounding second).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import decode, encode
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
    checkpoints_page,
)

__all__ = ["NatsStateStore"]


# Seconds of safety between the record's expiry and the first checkpoint's (clock, rounding).
_CP_MARGIN = 1.0


class NatsStateStore(StateStore):
    """StateStore over JetStream KV; see the module docstring for the layout."""

    def __init__(self, conn: NatsConnection, *, state_ttl: float | None = None) -> None:
        self._conn = conn
        self.state_ttl = state_ttl

    @property
    def _kv(self) -> Any:
        return self._conn.bucket(self._conn.names.state_bucket)

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return nats_errors(self._conn.url, action)

    async def _record(self, workflow_id: str) -> tuple[dict[str, Any] | None, int]:
        """The live record (None if absent or expired) and the key's revision for a CAS."""
        entry = await kv.get(self._kv, f"wf.{token(workflow_id)}")
        if entry is None:
            return None, 0
        stored = decode(entry.value)
        # The server's TTL has whole-second resolution; expire exactly here.
        expires_at = stored.get("_expires_at")
        if expires_at is not None and float(expires_at) <= time.time():
            return None, entry.revision
        return stored, entry.revision

    async def _lease(self, workflow_id: str) -> tuple[dict[str, Any] | None, int]:
        entry = await kv.get(self._kv, f"lease.{token(workflow_id)}")
        return (None, 0) if entry is None else (decode(entry.value), entry.revision)

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        with self._errors(f"read workflow {workflow_id!r}"):
            stored, _ = await self._record(workflow_id)
        return None if stored is None else WorkflowRecord.from_dict(stored)

    async def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> WorkflowRecord:
        workflow_id = record.workflow_id
        new = record.evolve(version=expected_version + 1, updated_at=time.time())
        body = new.to_dict()
        cp_body = None if checkpoint is None else checkpoint.to_dict()
        encode(body)  # not JSON: fail before writing anything
        with self._errors(f"save workflow {workflow_id!r}"):
            stored, revision = await self._record(workflow_id)
            if fencing_token is not None:
                await self._check_fence(workflow_id, stored, fencing_token)
            self._check_version(workflow_id, stored, expected_version)
            cp_key = None if stored is None else stored.get("_cp")
            cp_ttl = None if self.state_ttl is None else self.state_ttl * 2
            cp_until = None if stored is None else stored.get("_cp_until")
            if cp_ttl is not None and cp_key is not None and self.state_ttl is not None:
                now = time.time()
                if cp_until is None or float(cp_until) <= now + self.state_ttl + _CP_MARGIN:
                    await self._refresh_checkpoints(workflow_id, cp_key, cp_ttl)
                    cp_until = now + cp_ttl
            if cp_body is not None:
                assert checkpoint is not None
                new_key = f"cp.{token(workflow_id)}.{checkpoint.step:012d}.{uuid.uuid4().hex[:12]}"
                await kv.put(self._conn.js, self._kv, new_key, encode({**cp_body, "_prev": cp_key}), ttl=cp_ttl)
                if cp_ttl is not None and cp_until is None:
                    cp_until = time.time() + cp_ttl
                cp_key = new_key
            fence = max(int((stored or {}).get("_fence", 0)), fencing_token or 0)
            expires_at = None if self.state_ttl is None else time.time() + self.state_ttl
            raw = encode({**body, "_cp": cp_key, "_fence": fence, "_expires_at": expires_at, "_cp_until": cp_until})
            key = f"wf.{token(workflow_id)}"
            if await kv.cas(self._conn.js, self._kv, key, raw, last=revision, ttl=self.state_ttl) is None:
                if cp_body is not None and cp_key is not None:
                    with contextlib.suppress(Exception):
                        await kv.remove(self._conn.js, self._kv, cp_key)
                stored, _ = await self._record(workflow_id)
                if fencing_token is not None:
                    await self._check_fence(workflow_id, stored, fencing_token)
                self._check_version(workflow_id, stored, expected_version)
                raise self._conflict(workflow_id, expected_version, None if stored is None else int(stored["version"]))
        return new

    async def _refresh_checkpoints(self, workflow_id: str, head: str, ttl: float) -> None:
        """Rewrite the checkpoint chain ending at ``head`` with a fresh per-message ``ttl``."""
        entries = {e.key: e.value for e in await kv.scan(self._conn.js, self._kv, f"cp.{token(workflow_id)}.>")}
        key: str | None = head
        while key and key in entries:
            raw = entries[key]
            await kv.put(self._conn.js, self._kv, key, raw, ttl=ttl)
            key = decode(raw).get("_prev")

    async def _check_fence(self, workflow_id: str, stored: dict[str, Any] | None, fencing_token: int) -> None:
        lease, _ = await self._lease(workflow_id)
        newest = max(int((stored or {}).get("_fence", 0)), int((lease or {}).get("token", 0)))
        if fencing_token < newest:
            raise FencingTokenRejectedError(
                f"workflow {workflow_id!r}: write with fencing token {fencing_token} refused; "
                f"a newer owner holds token {newest}"
            )

    def _check_version(self, workflow_id: str, stored: dict[str, Any] | None, expected_version: int) -> None:
        if expected_version == 0:
            if stored is not None:
                raise WorkflowExistsError(f"workflow {workflow_id!r} already exists; choose another workflow_id")
            return
        actual = None if stored is None else int(stored["version"])
        if actual != expected_version:
            raise self._conflict(workflow_id, expected_version, actual)

    def _conflict(self, workflow_id: str, expected: int, actual: int | None) -> VersionConflictError:
        return VersionConflictError(
            f"workflow {workflow_id!r}: expected version {expected}, found {actual}; "
            "another writer committed first: reload and retry",
            expected=expected,
            actual=actual,
        )

    async def list_checkpoints(
        self, workflow_id: str, *, limit: int | None = None, before: int | None = None
    ) -> list[Checkpoint]:
        with self._errors(f"list checkpoints of workflow {workflow_id!r}"):
            stored, _ = await self._record(workflow_id)
            if stored is None or not stored.get("_cp"):
                return []
            if limit is not None and limit >= 0 and before is None:  # the newest few: read only those
                return await self._chain_head(stored["_cp"], limit)
            entries = {e.key: decode(e.value) for e in await kv.scan(self._conn.js, self._kv, f"cp.{token(workflow_id)}.>")}
        chain: list[Checkpoint] = []
        key = stored.get("_cp")
        while key and key in entries:
            chain.append(Checkpoint.from_dict(entries[key]))
            key = entries[key].get("_prev")
        chain.reverse()  # oldest first, as checkpoints_page expects
        return checkpoints_page(chain, limit=limit, before=before)

    async def _chain_head(self, head: str, limit: int) -> list[Checkpoint]:
        """The newest ``limit`` checkpoints, read one key at a time from ``head`` (no scan of the rest)."""
        newest: list[Checkpoint] = []
        key: str | None = head
        while key and len(newest) < limit:
            entry = await kv.get(self._kv, key)
            if entry is None:  # expired: the chain ends here, as it does for a scan
                break
            body = decode(entry.value)
            newest.append(Checkpoint.from_dict(body))
            key = body.get("_prev")
        return newest

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        with self._errors("list workflows"):
            entries = await kv.scan(self._conn.js, self._kv, "wf.*")
        now = time.time()
        bodies = [decode(e.value) for e in entries]
        records = [WorkflowRecord.from_dict(b) for b in bodies if b.get("_expires_at") is None or float(b["_expires_at"]) > now]
        records = [r for r in records if status is None or r.status == status]
        records.sort(key=lambda r: r.created_at)
        return records

    async def delete(self, workflow_id: str) -> bool:
        with self._errors(f"delete workflow {workflow_id!r}"):
            stored, _ = await self._record(workflow_id)
            await self._conn.js.purge_stream(f"KV_{self._conn.names.state_bucket}",
                                             subject=f"$KV.{self._conn.names.state_bucket}.cp.{token(workflow_id)}.>")
            await kv.remove(self._conn.js, self._kv, f"wf.{token(workflow_id)}")
            lease, revision = await self._lease(workflow_id)
            if lease is not None and lease.get("owner"):
                # Keep the token (tokens only grow), drop the holder.
                freed = {**lease, "owner": None, "deadline": 0.0}
                await kv.cas(self._conn.js, self._kv, f"lease.{token(workflow_id)}", encode(freed), last=revision)
        return stored is not None

    # -- node cache --------------------------------------------------------------------
    def _cache_key(self, namespace: str, key: str) -> str:
        return f"cache.{token(namespace)}.{token(key)}"

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        with self._errors(f"read node cache entry {namespace!r}/{key!r}"):
            entry = await kv.get(self._kv, self._cache_key(namespace, key))
        if entry is None:
            return None
        stamp, newline, value = entry.value.partition(b"\n")
        if not newline:
            return None  # not written by cache_set
        try:
            expired = bool(stamp) and float(stamp) <= time.time()
        except ValueError:
            return None  # not written by cache_set
        return None if expired else value  # an expired entry: the server removes it within the second

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        stamp = b"" if ttl is None else repr(time.time() + ttl).encode()
        with self._errors(f"write node cache entry {namespace!r}/{key!r}"):
            await kv.put(self._conn.js, self._kv, self._cache_key(namespace, key), stamp + b"\n" + bytes(value),
                         ttl=ttl)

    async def cache_clear(self, namespace: str) -> None:
        bucket = self._conn.names.state_bucket
        with self._errors(f"clear node cache namespace {namespace!r}"):
            await self._conn.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.cache.{token(namespace)}.>")

    # -- leases ------------------------------------------------------------------------
    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        key = f"lease.{token(workflow_id)}"
        with self._errors(f"acquire the lease of workflow {workflow_id!r}"):
            while True:
                current, revision = await self._lease(workflow_id)
                stored, _ = await self._record(workflow_id)
                now = time.time()
                # A lease taken on an existing record ends with it (state_ttl, delete).
                orphaned = current is not None and bool(current.get("bound")) and stored is None
                if current is not None and current.get("owner") and float(current["deadline"]) > now and not orphaned:
                    if current["owner"] != owner:
                        return None
                    new = {**current, "deadline": now + ttl}
                    granted = False
                else:
                    new = {"owner": owner, "token": int((current or {}).get("token", 0)) + 1, "deadline": now + ttl,
                           "bound": stored is not None}
                    granted = True
                if await kv.cas(self._conn.js, self._kv, key, encode(new), last=revision) is None:
                    continue
                if granted:
                    await self._raise_fence(workflow_id, int(new["token"]))
                return WorkflowLease(workflow_id, owner, int(new["token"]), float(new["deadline"]))

    async def _raise_fence(self, workflow_id: str, fence: int) -> None:
        """Record a new token in the record so that older holders lose their next CAS."""
        key = f"wf.{token(workflow_id)}"
        for _ in range(10):
            stored, revision = await self._record(workflow_id)
            if stored is None or int(stored.get("_fence", 0)) >= fence:
                return
            if await kv.cas(self._conn.js, self._kv, key, encode({**stored, "_fence": fence}), last=revision,
                            ttl=self.state_ttl) is not None:
                return

    async def lease_holder(self, workflow_id: str) -> WorkflowLease | None:
        with self._errors(f"read the lease of workflow {workflow_id!r}"):
            current, _ = await self._lease(workflow_id)
        if current is None or not current.get("owner") or float(current["deadline"]) <= time.time():
            return None
        return WorkflowLease(workflow_id, str(current["owner"]), int(current.get("token", 0)), float(current["deadline"]))

    async def renew_lease(self, lease: WorkflowLease, ttl: float) -> WorkflowLease:
        key = f"lease.{token(lease.workflow_id)}"
        with self._errors(f"renew the lease of workflow {lease.workflow_id!r}"):
            for _ in range(10):
                current, revision = await self._lease(lease.workflow_id)
                now = time.time()
                if (
                    current is None
                    or not current.get("owner")
                    or int(current["token"]) != lease.fencing_token
                    or float(current["deadline"]) <= now
                ):
                    break
                new = {**current, "deadline": now + ttl}
                if await kv.cas(self._conn.js, self._kv, key, encode(new), last=revision) is not None:
                    return WorkflowLease(lease.workflow_id, lease.owner, lease.fencing_token, float(new["deadline"]))
        raise LeaseLostError(
            f"workflow {lease.workflow_id!r}: lease of {lease.owner!r} (token {lease.fencing_token}) "
            "expired or was taken over; stop driving this workflow"
        )

    async def release_lease(self, lease: WorkflowLease) -> None:
        key = f"lease.{token(lease.workflow_id)}"
        with self._errors(f"release the lease of workflow {lease.workflow_id!r}"):
            for _ in range(10):
                current, revision = await self._lease(lease.workflow_id)
                if current is None or not current.get("owner") or int(current["token"]) != lease.fencing_token:
                    return
                freed = {**current, "owner": None, "deadline": 0.0}
                if await kv.cas(self._conn.js, self._kv, key, encode(freed), last=revision) is not None:
                    return
