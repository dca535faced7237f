"""StateStore on a JetStream KV bucket (``<p>_state``), compare-and-set on revisions.

Keys (workflow ids and steps escaped into key tokens):

* ``wf.<id>``: the ``WorkflowRecord`` as JSON plus private fields: ``_cp``, the key
  of the newest committed checkpoint, and ``_fence``, the greatest fencing token seen.
  Our ``version`` lives inside the record; every write is a CAS on the key's KV
  revision (``Nats-Expected-Last-Subject-Sequence``), read in the same call, so version
  and revision move together.
* ``cp.<id>.<step>.<nonce>``: one checkpoint *entry* (``core.checkpoint_delta``): a
  snapshot (the full checkpoint) or a delta against the entry before it, with ``_prev``
  naming the entry committed before it. The newest entries, while small (at most
  ``_INLINE_KEEP`` of them, ``_INLINE_MAX`` bytes together), are held in the record
  itself instead: the newest as ``_cp_inline`` (named ``_cp`` all the same), older ones
  as ``_cp_more``, [key, entry] pairs, oldest first (``_snap_inline`` if one of them is a
  snapshot). A save whose new entry would overflow that first writes the oldest held
  entries to their keys (together, one round-trip latency), then CASes the record
  holding the rest and its own entry: a workflow of a few small steps writes no entry
  key at all.
* ``lease.<id>``: owner, fencing token and deadline. Never removed, so tokens only grow.
  A run's last commit releases its lease in the same record CAS (``save_releasing``): the
  record's ``_released`` names the released token, and every reader of the lease
  (``acquire_lease``, ``create_leased``, ``renew_lease``'s read, ``lease_holder``) reads
  lease and record together and takes a lease whose token the record names as free.
  Later saves keep the marker; a new grant has a new token, which no marker names.

Checkpoints store what changed. The record also keeps ``_cp_n`` (entries written: the
next entry's position) and ``_snap_seq``, the stream sequence at which the newest
snapshot was written. A store remembers the tip of the chains it wrote (a bounded
cache) and writes a delta against it while the record it CASes still names that tip
(``_cp``), else a snapshot; ``next_entry`` starts a new snapshot once the deltas add up
to the state's size or ``MAX_CHAIN`` entries. Reading the newest checkpoints is one
batched direct get of the workflow's entries from ``_snap_seq`` on (rewrites only move an
entry to a later sequence, so this is a lower bound), walked back from ``_cp`` through
``_prev`` (entries of writers that lost their CAS are never on the walk) and rebuilt;
older ones (``before``, no ``limit``, a chain shorter than ``limit``) read every entry of
the workflow the same way. So a restore reads at most about twice the state's size.

Atomicity of record + checkpoint. KV has no multi-key transaction. A small entry is
written with the record, in its CAS: atomic. The entries moved out of the record are
committed ones: written to their keys first, they are where they belong whether the CAS
then wins or loses. A large entry is written first under a key no other writer can use (a fresh
nonce), then the record CASed to point at it: a writer that loses the CAS leaves an
orphan (removed best effort) that no record points to. Readers walk the chain from the
record's ``_cp`` (its own entry first) through ``_prev``, so they see exactly the
checkpoints of committed saves, in commit order: it looks atomic.

(JetStream's atomic batch publish, nats-server 2.12+, would write several keys in one
request, but a stream with one replica stages each batch in a file store of its own
(a directory made, synced and removed per batch): about 3 ms of server CPU per batch
here against 0.1 ms for a publish, so it is not used.)

Round trips. A store remembers the record (and revision) of its own last write per
workflow (a bounded cache): a save whose expected version matches it CASes against that
revision without reading (1 round trip; 2 with a checkpoint when the record held
the previous one, or the entry is large); a CAS that fails because
anyone else wrote meanwhile (a new lease holder raises ``_fence`` in the record, so a
stale holder always fails here) drops the cached copy and takes the full path: read the
record (and the lease, with a fencing token), check, CAS. A create (expected version 0)
reads the lease when fenced. It remembers its own leases the same way: renewing and
releasing CAS against the cached revision first. ``acquire_lease`` reads lease and record
in one batched read. ``create_leased`` (the port's merged create) first tries an id it
has not seen as new, unread: the first lease CASed as absent, then the record created
under it; when a key exists it reads lease and record in one batched read, grants the
lease and creates the record under the new token without reading again. A single-node
workflow costs the orchestrator 3 state round trips (grant, create holding its
checkpoint, commit holding both checkpoints and releasing the lease).

Replicas. A direct get (``kv.get``, ``kv.get_many``, ``kv.get_range``) may be answered by a
replica behind the stream's leader (nats-server issue 4162: one just restarted answers with
keys as they were). A write after a read is a CAS on the revision read, so a stale read only
makes it lose; reads that decide without such a write go to the leader (``from_leader``):
a refusal (a version conflict, an existing id, a lease held by another owner) is confirmed
there before it is reported, a grant taking over a live lease (its record gone or releasing
it) is decided there, reads after a lost CAS are made there (a lagging replica would answer
every retry the same), a new grant's fence confirms "no record" there, ``renew_lease`` and
``release_lease`` read there when they read at all (not their own last write), and so does
``delete``; a checkpoint entry a batched read or a scan did not return is looked up there
before a chain walk stops at it. ``get``, ``list_checkpoints`` and ``lease_holder`` read
the leader when the direct get answered a revision older than this store's own last write
of the key, or than the revision it deleted, released or lost a CAS against (read-your-writes,
for the last 4,096 workflows this store touched; another process's writes are not covered).

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

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from collections import OrderedDict

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.adapters.nats.naming import token, untoken
from distributed_agents.core.checkpoint_delta import ChainTip, damaged_checkpoints, delta_snap, next_entry, rebuild
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.random_ids import random_hex
from distributed_agents.core.record_json import record_json
from distributed_agents.core.errors import (
    FencingTokenRejectedError,
    LeaseLostError,
    PayloadDecodeError,
    VersionConflictError,
    WorkflowExistsError,
)
from distributed_agents.core.ports.state_store import (
    Checkpoint,
    StateStore,
    WorkflowLease,
    WorkflowRecord,
    malformed_record,
    stored_record,
)

__all__ = ["NatsStateStore"]


# Seconds of safety between the record's expiry and the first checkpoint's (clock, rounding).
_CP_MARGIN = 1.0
# Workflows whose last written record, lease and checkpoint tip a store remembers.
_KEPT = 256
# Workflows whose read-your-writes revisions (``_floors``: two ints each) a store remembers.
_FLOORS_KEPT = 4096
# The newest checkpoint entries ride in the record while they add up to at most this many
# bytes, and at most ``_INLINE_KEEP`` of them.
_INLINE_MAX = 32 * 1024
_INLINE_KEEP = 4


log = logging.getLogger("distributed_agents.state_store")
# A token KV allows in a key (and nats-py's key check), without wildcards or empty tokens.
_KEY_TOKEN = re.compile(r"[-/_=A-Za-z0-9]+(?:\.[-/_=A-Za-z0-9]+)*")


def _bounded_put(cache: OrderedDict[str, Any], key: str, value: Any, kept: int = _KEPT) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > kept:
        cache.popitem(last=False)


class _Body:
    """A record to write, as JSON: ``raw``, its own fields (``core.record_json``: the engine's
    encoding, made to check the commit's size, is reused rather than encoded again); ``state_raw``,
    its state's JSON when the checkpoint saved with it holds that very state (the checkpoint
    entry splices it in, not encoding the state again), else None; ``version``, its version.
    ``TypeError``/``ValueError`` if a field is not JSON."""

    __slots__ = ("raw", "state_raw", "version")

    def __init__(self, record: WorkflowRecord, checkpoint: Checkpoint | None) -> None:
        self.raw, state_raw = record_json(record)
        self.state_raw = state_raw if checkpoint is not None and checkpoint.state is record.state else None
        self.version = record.version


def _with_prev(entry: bytes, prev: str | None) -> bytes:
    """``entry`` (a JSON object) with ``"_prev": prev`` added as its last field."""
    return entry[:-1] + b',"_prev":' + encode(prev) + b"}"


class NatsStateStore(StateStore):
    """StateStore over JetStream KV; see the module docstring for the layout."""

    def __init__(self, conn: NatsConnection, *, state_ttl: float | None = None) -> None:
        self._conn = conn
        self.state_ttl = state_ttl
        # workflow -> (stored record body, KV revision) of this store's own last write.
        self._records: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        # workflow -> (lease body, KV revision) of this store's own last lease write.
        self._leases: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        # workflow -> the token of the lease this store's last save_releasing released.
        self._released_here: OrderedDict[str, int] = OrderedDict()
        # workflow -> (tip of the newest checkpoint entry this store wrote, its key).
        self._tips: OrderedDict[str, tuple[ChainTip, str]] = OrderedDict()
        # workflow -> (record, lease) revisions a read must reach to be no older than what this
        # store wrote or saw last (kept after _records/_leases forget it: a delete, a release or
        # a lost CAS), for read-your-writes against a lagging replica. Two ints each, so many
        # more workflows are kept than in the caches above.
        self._floors: OrderedDict[str, tuple[int, int]] = OrderedDict()

    @property
    def _kv(self) -> Any:
        return self._conn.bucket(self._conn.names.state_bucket)

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return nats_errors(self._conn.url, action)

    async def _entry(self, key: str, from_leader: bool) -> kv.Entry | None:
        """``key``'s entry: a direct get (any replica answers), or the stream leader's with ``from_leader``."""
        if from_leader:
            return await kv.get_from_leader(self._conn.js, self._kv, key)
        return await kv.get(self._kv, key)

    def _behind_own(self, workflow_id: str, record_revision: int, lease_revision: int | None = None) -> bool:
        """Whether a read answered a revision of the record (or lease) older than this store's
        own last write of it, or than one it deleted, released or lost a CAS against
        (``_floors``): a lagging replica's, so the leader is read again."""
        own_record, own_lease = self._records.get(workflow_id), self._leases.get(workflow_id)
        floor_record, floor_lease = self._floors.get(workflow_id, (0, 0))
        if own_record is not None:
            floor_record = max(floor_record, own_record[1])
        if own_lease is not None:
            floor_lease = max(floor_lease, own_lease[1])
        return record_revision < floor_record or (lease_revision is not None and lease_revision < floor_lease)

    def _wrote_lease(self, workflow_id: str, lease: dict[str, Any], revision: int) -> None:
        """Remember this store's own write of ``workflow_id``'s lease (body and revision)."""
        _bounded_put(self._leases, workflow_id, (lease, revision))
        self._raise_floor(workflow_id, lease=revision)

    def _raise_floor(self, workflow_id: str, *, record: int = 0, lease: int = 0) -> None:
        """A read of ``workflow_id`` answering a record revision below ``record`` (or a lease
        revision below ``lease``) is stale from now on."""
        old_record, old_lease = self._floors.get(workflow_id, (0, 0))
        _bounded_put(self._floors, workflow_id, (max(old_record, record), max(old_lease, lease)), _FLOORS_KEPT)

    async def _record(self, workflow_id: str, *, from_leader: bool = False) -> tuple[dict[str, Any] | None, int]:
        """The live record (None if absent or expired) and the key's revision for a CAS."""
        entry = await self._entry(f"wf.{token(workflow_id)}", from_leader)
        if entry is None:
            return None, 0
        stored = _decoded_or_raw(entry.value)
        if not isinstance(stored, dict) or not isinstance(stored.get("version", 0), int):
            # Not a record this engine wrote: PayloadDecodeError naming the key, for this workflow only.
            stored_record(stored, f"{self._conn.names.state_bucket} wf.{token(workflow_id)}", workflow_id)
        # The server's TTL has whole-second resolution; expire exactly here.
        if _expired(stored, time.time()):
            return None, entry.revision
        return stored, entry.revision

    async def _lease(self, workflow_id: str, *, from_leader: bool = False) -> tuple[dict[str, Any] | None, int]:
        entry = await self._entry(f"lease.{token(workflow_id)}", from_leader)
        return (None, 0) if entry is None else (decode(entry.value), entry.revision)

    async def _foreign(self, workflow_id: str) -> str | None:
        """The key ``wf.<workflow_id>`` if ``workflow_id`` is a key token this adapter never writes
        (``token`` of no id gives it, as ``bad_key`` or ``a.b``) and an entry is there: a record
        written by hand under a key named like the id. None otherwise; reads only for such ids."""
        if untoken(workflow_id) is not None or not _KEY_TOKEN.fullmatch(workflow_id):
            return None
        key = f"wf.{workflow_id}"
        return key if await kv.get(self._kv, key) is not None else None

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        """The record, or None; ``PayloadDecodeError`` for a malformed one, also a record under
        ``wf.<workflow_id>`` when that is a key no id escapes to (``delete`` removes either)."""
        with self._errors(f"read workflow {workflow_id!r}"):
            stored, revision = await self._record(workflow_id)
            if self._behind_own(workflow_id, revision):
                stored, _ = await self._record(workflow_id, from_leader=True)
            foreign = None if stored is not None else await self._foreign(workflow_id)
        if foreign is not None:
            raise malformed_record(
                f"{self._conn.names.state_bucket} {foreign}", workflow_id,
                f"it is stored under key {foreign!r}, which this adapter never writes (the record of id "
                f"{workflow_id!r} would be at 'wf.{token(workflow_id)}'): written by hand or by another tool")
        return None if stored is None else stored_record(stored, f"{self._conn.names.state_bucket} wf.{token(workflow_id)}", workflow_id)

    async def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> WorkflowRecord:
        return await self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                                fencing_token=fencing_token)

    async def save_releasing(
        self, record: WorkflowRecord, *, expected_version: int, lease: WorkflowLease,
        checkpoint: Checkpoint | None = None,
    ) -> WorkflowRecord:
        """``save`` fenced by ``lease`` and the lease's release in one write: the record CAS
        carries ``_released`` (the released token), which every reader of the lease checks
        (see the module docstring). A save that fails writes nothing: the lease stays."""
        saved = await self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                                 fencing_token=lease.fencing_token, released=lease.fencing_token)
        own = self._leases.get(lease.workflow_id)
        if own is not None and int(own[0].get("token", 0)) == lease.fencing_token:
            self._leases.pop(lease.workflow_id, None)  # released: renewals read the lease again
            self._raise_floor(lease.workflow_id, lease=own[1])
        # A renewal already on its way (read before this commit) must not report the lease held.
        _bounded_put(self._released_here, lease.workflow_id, lease.fencing_token)
        return saved

    async def _save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None,
        fencing_token: int | None,
        released: int | None = None,
    ) -> WorkflowRecord:
        workflow_id = record.workflow_id
        new = record.evolve(version=expected_version + 1, updated_at=time.time())
        body = _Body(new, checkpoint)  # not JSON: fail before writing anything
        with self._errors(f"save workflow {workflow_id!r}"):
            cached = self._cached_record(workflow_id, expected_version, fencing_token)
            if cached is not None and await self._write(workflow_id, body, checkpoint, fencing_token, *cached,
                                                        released=released):
                return new
            stored, revision = await self._record(workflow_id)
            if not _version_is(stored, expected_version):
                # About to refuse (conflict, exists): on the leader's record, not a lagging replica's.
                stored, revision = await self._record(workflow_id, from_leader=True)
            fence = fencing_token
            if fencing_token is not None or stored is None:
                # A create carries the newest token in ``_fence`` even without one of its
                # own: a grant made before the record existed had no record to fence.
                newest = await self._check_fence(workflow_id, stored, fencing_token)
                fence = max(fencing_token or 0, newest) or None
            self._check_version(workflow_id, stored, expected_version)
            if await self._write(workflow_id, body, checkpoint, fence, stored, revision, released=released):
                return new
            stored, _ = await self._record(workflow_id, from_leader=True)  # what beat us, not a replica's past
            if fencing_token is not None:
                await self._check_fence(workflow_id, stored, fencing_token)
            self._check_version(workflow_id, stored, expected_version)
            raise self._conflict(workflow_id, expected_version, None if stored is None else int(stored["version"]))

    def _cached_record(
        self, workflow_id: str, expected_version: int, fencing_token: int | None
    ) -> tuple[dict[str, Any], int] | None:
        """This store's own last write of the record, if a save may CAS against it unread."""
        cached = self._records.get(workflow_id)
        if cached is None or expected_version == 0:
            return None
        stored, _ = cached
        if int(stored["version"]) != expected_version:
            return None
        if fencing_token is not None and fencing_token < int(stored.get("_fence", 0)):
            return None
        expires_at = stored.get("_expires_at")
        if expires_at is not None and float(expires_at) <= time.time() + _CP_MARGIN:
            return None  # about to expire: the full path decides
        return cached

    async def _write(
        self,
        workflow_id: str,
        body: _Body,
        checkpoint: Checkpoint | None,
        fencing_token: int | None,
        stored: dict[str, Any] | None,
        revision: int,
        *,
        released: int | None = None,
    ) -> bool:
        """Write the checkpoint entry (if any), then CAS the record at ``revision``: the commit.

        ``released``: the token of the lease this commit releases (``save_releasing``); else
        the record keeps the token it names as released. ``body``: the record's own fields
        as JSON (spliced before the private ones).
        False if the CAS lost (the entry is removed again, the caches of the workflow dropped).
        """
        cp_key = None if stored is None else stored.get("_cp")
        cp_n = 0 if stored is None else int(stored.get("_cp_n") or 0)
        snap_seq = None if stored is None else stored.get("_snap_seq")
        held = _held_entries(stored)
        cp_ttl = None if self.state_ttl is None else self.state_ttl * 2
        cp_until = None if stored is None else stored.get("_cp_until")
        if cp_ttl is not None and cp_key is not None and self.state_ttl is not None:
            now = time.time()
            if cp_until is None or float(cp_until) <= now + self.state_ttl + _CP_MARGIN:
                # The entries held in the record live as long as the record: the chain behind them.
                behind = cp_key if not held else self._prev(workflow_id, held[0][0], held[0][1])
                if behind:
                    await self._refresh_checkpoints(workflow_id, behind, cp_ttl)
                cp_until = now + cp_ttl
        new_tip: ChainTip | None = None
        orphan: str | None = None
        if checkpoint is not None:
            known = self._tips.get(workflow_id)
            # A delta only against the entry the record we CAS names (and at the position it says).
            tip = known[0] if known is not None and known[1] == cp_key and known[0].index == cp_n - 1 else None
            entry, new_tip = next_entry(checkpoint, tip, index=cp_n, state_raw=body.state_raw)
            written = f"cp.{token(workflow_id)}.{checkpoint.step:012d}.{random_hex(6)}"
            raw_entry = _with_prev(entry, cp_key)
            small = len(raw_entry) <= _INLINE_MAX
            keep = [*held, (written, raw_entry)] if small else list(held)
            # The oldest held entries move to keys of their own (all of them before a large entry):
            # committed entries, where they belong whether the CAS below wins or loses.
            moving: list[tuple[str, bytes]] = []
            while keep and (not small or len(keep) > _INLINE_KEEP
                            or sum(len(raw) for _, raw in keep) > _INLINE_MAX):
                moving.append(keep.pop(0))
                if small and len(keep) == 1:
                    break  # the new entry itself always fits (small)
            if moving:
                seqs = await kv.put_many(self._conn.js, self._kv, moving, ttl=cp_ttl)
                for (_, raw), seq in zip(moving, seqs):
                    if delta_snap(raw) is None:
                        snap_seq = seq  # the newest snapshot moved out so far
                if cp_ttl is not None and cp_until is None:
                    cp_until = time.time() + cp_ttl
            if not small:
                # Too large to ride in the record: its own key first (removed if the CAS loses).
                seq = await kv.put(self._conn.js, self._kv, written, raw_entry, ttl=cp_ttl)
                if new_tip.depth == 0:
                    snap_seq = seq
                if cp_ttl is not None and cp_until is None:
                    cp_until = time.time() + cp_ttl
                orphan = written
            held = keep
            cp_key, cp_n = written, cp_n + 1
        snap_inline = any(delta_snap(raw) is None for _, raw in held)
        private = {
            "_cp": cp_key,
            "_cp_n": cp_n,
            "_snap_seq": snap_seq,
            "_snap_inline": snap_inline,
            "_fence": max(int((stored or {}).get("_fence", 0)), fencing_token or 0),
            "_expires_at": None if self.state_ttl is None else time.time() + self.state_ttl,
            "_cp_until": cp_until,
            "_released": released if released is not None else (stored or {}).get("_released"),
        }
        # ``body`` (the record's fields) has no key starting with "_": the objects join as bytes.
        raw = body.raw[:-1] + b"," + encode(private)[1:]
        inline = held[-1][1] if held else None
        if held:
            # The newest entry under ``_cp_inline`` (its key is ``_cp``); older ones as [key, entry] pairs.
            more = b",".join(b'["' + key.encode() + b'",' + entry_raw + b"]" for key, entry_raw in held[:-1])
            raw = raw[:-1] + (b',"_cp_more":[' + more + b"]" if more else b"") + b',"_cp_inline":' + held[-1][1] + b"}"
        key = f"wf.{token(workflow_id)}"
        new_revision = await kv.cas(self._conn.js, self._kv, key, raw, last=revision, ttl=self.state_ttl)
        if new_revision is None:
            # The key moved past ``revision`` (written, or removed): an answer at or below it is stale.
            self._raise_floor(workflow_id, record=revision + 1)
            self._forget(workflow_id)
            if orphan is not None:
                with contextlib.suppress(Exception):
                    await kv.remove(self._conn.js, self._kv, orphan)
            return False
        _bounded_put(self._records, workflow_id,
                     ({"version": body.version, **private, "_cp_inline": inline, "_cp_more": held[:-1]},
                      new_revision))
        self._raise_floor(workflow_id, record=new_revision)  # outlives _records' entry
        if new_tip is not None:
            _bounded_put(self._tips, workflow_id, (new_tip, cp_key))
        return True

    def _forget(self, workflow_id: str) -> None:
        self._records.pop(workflow_id, None)
        self._tips.pop(workflow_id, None)

    async def _refresh_checkpoints(self, workflow_id: str, head: str, ttl: float) -> None:
        """Rewrite the checkpoint chain ending at ``head`` with a fresh per-message ``ttl``
        (an entry the scan missed is read from the leader: one not rewritten would expire
        while its record lives)."""
        entries = {e.key: e.value for e in await kv.scan(self._conn.js, self._kv, f"cp.{token(workflow_id)}.>")}
        for key, raw in (await self._walk(workflow_id, head, entries, confirm=True))[0]:
            await kv.put(self._conn.js, self._kv, key, raw, ttl=ttl)

    async def _check_fence(self, workflow_id: str, stored: dict[str, Any] | None, fencing_token: int | None) -> int:
        """The newest token (lease or record); ``FencingTokenRejectedError`` if ``fencing_token`` is older.

        A lagging replica's lease has an older token, so a refusal on it is right; an acceptance
        is then decided by the record's CAS (its ``_fence``), except for a create (no record
        yet): its lease is read from the leader."""
        lease, _ = await self._lease(workflow_id, from_leader=stored is None and fencing_token is not None)
        newest = max(int((stored or {}).get("_fence", 0)), int((lease or {}).get("token", 0)))
        if fencing_token is not None and fencing_token < newest:
            raise FencingTokenRejectedError(
                f"workflow {workflow_id!r}: write with fencing token {fencing_token} refused; "
                f"a newer owner holds token {newest}"
            )
        return newest

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
        if limit is not None and limit <= 0:
            return []
        with self._errors(f"list checkpoints of workflow {workflow_id!r}"):
            stored, revision = await self._record(workflow_id)
            if self._behind_own(workflow_id, revision):
                stored, _ = await self._record(workflow_id, from_leader=True)
            if stored is None or not stored.get("_cp"):
                return []
            snap_seq = stored.get("_snap_seq")
            snap_inline = bool(stored.get("_snap_inline")) and _inline_entry(stored) is not None
            if limit is not None and (snap_seq or snap_inline):
                # The newest chain first: from its snapshot on, usually all that is wanted
                # (nothing to read when the record holds that snapshot).
                chain, complete = await self._chain(workflow_id, stored, None if snap_inline else int(snap_seq))
                if complete:
                    return self._rebuild(workflow_id, chain, limit, before)
                with contextlib.suppress(PayloadDecodeError):
                    found = self._rebuild(workflow_id, chain, limit, before)
                    if len(found) == limit:
                        return found
            chain, _ = await self._chain(workflow_id, stored, 1, confirm=True)
        return self._rebuild(workflow_id, chain, limit, before)

    async def _chain(self, workflow_id: str, stored: dict[str, Any], start: int | None, *,
                     confirm: bool = False) -> tuple[list[tuple[int, bytes]], bool]:
        """The committed entries stored from sequence ``start`` on (None: only the one the
        record holds), oldest first, with their positions; and whether that is the whole
        chain (it reached the first entry).

        ``confirm``: an entry the batched direct get did not answer is read from the leader
        before the walk stops there: a replica behind it (nats-server issue 4162) may not hold
        the newest entries yet, which would cut the history short. Where the history really
        ends (expired entries) this is one read more."""
        entries = {} if start is None else {
            e.key: e.value for e in await kv.get_range(self._kv, f"cp.{token(workflow_id)}.>", start=start)}
        # The newest entries, held in the record.
        entries.update(_held_entries(stored))
        walked, complete = await self._walk(workflow_id, stored.get("_cp"), entries, confirm=confirm)
        chain = [raw for _, raw in reversed(walked)]
        head = int(stored.get("_cp_n") or 0) - 1
        first = head - len(chain) + 1
        return [(first + offset, raw) for offset, raw in enumerate(chain)], complete

    async def _walk(self, workflow_id: str, head: str | None, entries: dict[str, bytes], *,
                    confirm: bool) -> tuple[list[tuple[str, bytes]], bool]:
        """The chain of entries from key ``head`` back through ``_prev``, newest first, as
        (key, bytes), taken from ``entries`` (the entries read); and whether it reached the
        first entry. ``confirm``: an entry missing from ``entries`` is read from the leader
        before the walk stops there (a replica behind it may not hold the newest entries yet)."""
        chain: list[tuple[str, bytes]] = []
        key, seen = head, set[str]()
        while key and key not in seen:  # a damaged chain cannot loop
            raw = entries.get(key)
            if raw is None:
                ours = confirm and key.startswith(f"cp.{token(workflow_id)}.") and _KEY_TOKEN.fullmatch(key)
                found = await kv.get_from_leader(self._conn.js, self._kv, key) if ours else None
                if found is None:
                    break
                raw = found.value
            seen.add(key)
            chain.append((key, raw))
            key = self._prev(workflow_id, key, raw)
        return chain, not key

    def _prev(self, workflow_id: str, key: str, raw: bytes) -> str | None:
        """The key of the entry before the entry ``raw`` stored at ``key`` (its ``_prev``), None for the first.

        ``PayloadDecodeError`` (``damaged_checkpoints``) naming the workflow and the key if
        ``raw`` is not an entry this store wrote.
        """
        try:
            item = decode(raw)
        except PayloadDecodeError as exc:
            raise damaged_checkpoints(workflow_id, f"{self._conn.names.state_bucket} {key}", str(exc)) from None
        prev = item.get("_prev") if isinstance(item, dict) else 0
        if prev is not None and not isinstance(prev, str):
            raise damaged_checkpoints(workflow_id, f"{self._conn.names.state_bucket} {key}",
                                      "the entry is not an object naming the entry before it ('_prev')")
        return prev

    def _rebuild(self, workflow_id: str, chain: list[tuple[int, bytes]], limit: int | None,
                 before: int | None) -> list[Checkpoint]:
        # Deltas whose snapshot was not read (expired, or before the range) cannot be rebuilt.
        while chain and delta_snap(chain[0][1]) is not None:
            chain = chain[1:]
        if not chain:
            return []
        return rebuild([raw for _, raw in chain], chain[0][0], limit=limit, before=before, workflow_id=workflow_id,
                       where=f"{self._conn.names.state_bucket} cp.{token(workflow_id)}.*")

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        """Records, oldest first. A malformed one is left out and logged naming its key and the id
        to delete it by: also one under a key this adapter never writes (written by hand), listed
        by the key's token (``delete`` of that token removes it), and one holding another id.

        With ``status``, a record whose head (as this adapter writes it: ``_RECORD_HEAD``) names
        another status is passed over undecoded: the recovery loop lists the running workflows
        every ``recovery_interval`` among every record kept, finished ones included (such a
        record malformed further on is then not logged by this listing, only by others)."""
        with self._errors("list workflows"):
            # "wf.>", not "wf.*": a key written by hand may hold dots (wf.a.b), and must list as malformed.
            entries = await kv.scan(self._conn.js, self._kv, "wf.>")
        now = time.time()
        records = []
        wanted = None if status is None else status.encode()
        for entry in entries:
            if wanted is not None:
                head = _RECORD_HEAD.match(entry.value)
                if head is not None and head.group(1) != wanted:
                    continue
            body = _decoded_or_raw(entry.value)
            if isinstance(body, dict) and _expired(body, now):
                continue
            where, name = f"{self._conn.names.state_bucket} {entry.key}", entry.key[3:]
            workflow_id = untoken(name)
            try:
                if workflow_id is None:
                    raise malformed_record(where, name, f"its key is not one this adapter writes (no workflow id "
                                                        f"escapes to {name!r}): written by hand or by another tool")
                records.append(stored_record(body, where, workflow_id))
            except PayloadDecodeError as exc:
                log.error("left out of the listing: %s", exc)
        records = [r for r in records if status is None or r.status == status]
        records.sort(key=lambda r: r.created_at)
        return records

    async def delete(self, workflow_id: str) -> bool:
        """Remove the record, checkpoints and lease (the token kept); True if there was a record.

        A malformed record is removed too, and so is one written by hand under
        ``wf.<workflow_id>`` when no id escapes to that key (the listing names it so).
        """
        with self._errors(f"delete workflow {workflow_id!r}"):
            deleted = 0
            try:  # from the leader: whether there was a record is the answer
                stored, deleted = await self._record(workflow_id, from_leader=True)
            except PayloadDecodeError:  # a malformed record can still be deleted
                stored = {}
            foreign = None if stored is not None else await self._foreign(workflow_id)
            if foreign is not None:  # written by hand under a key named like the id: nothing else is its
                await kv.remove(self._conn.js, self._kv, foreign)
                return True
            await self._conn.js.purge_stream(f"KV_{self._conn.names.state_bucket}",
                                             subject=f"$KV.{self._conn.names.state_bucket}.cp.{token(workflow_id)}.>")
            await kv.remove(self._conn.js, self._kv, f"wf.{token(workflow_id)}")
            own = self._records.get(workflow_id)
            # The record's revisions up to the one removed are gone: a replica answering one is stale.
            self._raise_floor(workflow_id, record=max(deleted, own[1] if own else 0) + 1)
            self._forget(workflow_id)
            self._leases.pop(workflow_id, None)
            lease, revision = await self._lease(workflow_id, from_leader=True)
            if lease is not None and lease.get("owner"):
                # Keep the token (tokens only grow), drop the holder.
                freed = {**lease, "owner": None, "deadline": 0.0}
                freed_revision = await kv.cas(self._conn.js, self._kv, f"lease.{token(workflow_id)}",
                                              encode(freed), last=revision)
                self._raise_floor(workflow_id, lease=freed_revision or revision + 1)
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
        with self._errors(f"acquire the lease of workflow {workflow_id!r}"):
            granted = await self._grant(workflow_id, owner, ttl, creating=False)
            if granted is None:
                return None
            new, current, _ = granted
            if int(new["token"]) != int((current or {}).get("token", 0)):  # a new grant
                await self._raise_fence(workflow_id, int(new["token"]))
            return WorkflowLease(workflow_id, owner, int(new["token"]), float(new["deadline"]))

    async def _grant(
        self, workflow_id: str, owner: str, ttl: float, *, creating: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None, int] | None:
        """The lease CASed for ``owner`` (``_next_lease``), remembered as this store's own:
        (lease written, lease read before, the record's revision read), or None if another
        owner holds a live one. ``creating``: ``WorkflowExistsError`` if a record exists,
        before any grant.

        The first read is a direct get; a decision that no CAS checks is made on the
        leader's keys instead: a refusal (another owner, an existing record) and a grant
        over a live lease (its record gone, or releasing it), as is every read after a
        lost CAS (a lagging replica would answer each retry the same)."""
        key = f"lease.{token(workflow_id)}"
        from_leader = False
        while True:
            (current, revision), (stored, stored_revision) = await self._lease_and_record(
                workflow_id, from_leader=from_leader)
            new = self._next_lease(current, stored, owner, ttl)
            if not from_leader and (new is None or _takes_over(current, new) or (creating and stored is not None)):
                from_leader = True
                continue
            if new is None:
                return None
            if creating:
                self._check_version(workflow_id, stored, 0)  # exists: refused before any grant
            new_revision = await kv.cas(self._conn.js, self._kv, key, encode(new), last=revision)
            if new_revision is not None:
                self._wrote_lease(workflow_id, new, new_revision)
                return new, current, stored_revision
            from_leader = True

    @staticmethod
    def _next_lease(
        current: dict[str, Any] | None, stored: dict[str, Any] | None, owner: str, ttl: float
    ) -> dict[str, Any] | None:
        """The lease to CAS for ``owner``: a new grant (next token) or its own live lease
        extended; None if another owner holds a live one."""
        now = time.time()
        # A lease taken on an existing record ends with it (state_ttl, delete).
        orphaned = current is not None and bool(current.get("bound")) and stored is None
        if current is not None and current.get("owner") and float(current["deadline"]) > now and not orphaned \
                and not _released(current, stored):
            if current["owner"] != owner:
                return None
            return {**current, "deadline": now + ttl}
        return {"owner": owner, "token": int((current or {}).get("token", 0)) + 1, "deadline": now + ttl,
                "bound": stored is not None}

    async def create_leased(
        self, record: WorkflowRecord, *, owner: str, ttl: float, checkpoint: Checkpoint | None = None
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """As the port's. An id this store has not seen is most likely new: the first lease
        (token 1) is CASed as absent, unread, then the create (checkpoint entry, record
        CAS "absent") follows under it, unread: 3 round trips. Otherwise, or when a lease
        key exists (the CAS lost: nothing written) or a record does (the grant is given
        back): lease and record read together (one round trip), the lease CAS, then the
        create fenced by the new token, unread."""
        workflow_id = record.workflow_id
        new = record.evolve(version=1, updated_at=time.time())
        body = _Body(new, checkpoint)  # not JSON: fail before writing anything
        with self._errors(f"create workflow {workflow_id!r}"):
            if workflow_id not in self._leases and workflow_id not in self._records:
                created = await self._create_unread(workflow_id, new, body, owner, ttl, checkpoint)
                if created is not None:
                    return created
            granted = await self._grant(workflow_id, owner, ttl, creating=True)
            if granted is None:
                return None
            lease_body, _, stored_revision = granted
            lease = WorkflowLease(workflow_id, owner, int(lease_body["token"]), float(lease_body["deadline"]))
            try:
                if await self._write(workflow_id, body, checkpoint, lease.fencing_token, None, stored_revision):
                    return new, lease
                # Created meanwhile (by an older holder, say): fence it, then report it.
                await self._raise_fence(workflow_id, lease.fencing_token)
                stored, _ = await self._record(workflow_id, from_leader=True)
                self._check_version(workflow_id, stored, 0)
                raise self._conflict(workflow_id, 0, None)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.release_lease(lease)
                raise

    async def _create_unread(
        self, workflow_id: str, new: WorkflowRecord, body: _Body, owner: str, ttl: float,
        checkpoint: Checkpoint | None,
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """``create_leased``'s first try, for an id with no lease key and no record: the
        stored record and the lease, or None when either key exists (nothing kept then:
        a grant made is given back, so the full path decides on what is stored)."""
        first = self._next_lease(None, None, owner, ttl)
        assert first is not None  # no current lease: always a grant
        revision = await kv.cas(self._conn.js, self._kv, f"lease.{token(workflow_id)}", encode(first), last=0)
        if revision is None:
            return None
        self._wrote_lease(workflow_id, first, revision)
        lease = WorkflowLease(workflow_id, owner, int(first["token"]), float(first["deadline"]))
        try:
            if await self._write(workflow_id, body, checkpoint, lease.fencing_token, None, 0):
                return new, lease
        except BaseException:
            with contextlib.suppress(Exception):
                await self.release_lease(lease)
            raise
        # A record exists (saved without a lease, or expired and awaiting its removal).
        await self.release_lease(lease)
        return None

    async def _lease_and_record(
        self, workflow_id: str, *, from_leader: bool = False
    ) -> tuple[tuple[dict[str, Any] | None, int], tuple[dict[str, Any] | None, int]]:
        """``_lease`` and ``_record`` in one batched direct get, or (``from_leader``) the
        leader's two entries, read concurrently (one round-trip latency)."""
        lease_key, record_key = f"lease.{token(workflow_id)}", f"wf.{token(workflow_id)}"
        if from_leader:
            lease_entry, record_entry = await asyncio.gather(
                kv.get_from_leader(self._conn.js, self._kv, lease_key),
                kv.get_from_leader(self._conn.js, self._kv, record_key))
        else:
            entries = await kv.get_many(self._kv, [lease_key, record_key])
            lease_entry, record_entry = entries.get(lease_key), entries.get(record_key)
        lease = (None, 0) if lease_entry is None else (decode(lease_entry.value), lease_entry.revision)
        if record_entry is None:
            return lease, (None, 0)
        stored = decode(record_entry.value)
        expires_at = stored.get("_expires_at")
        if expires_at is not None and float(expires_at) <= time.time():
            return lease, (None, record_entry.revision)
        return lease, (stored, record_entry.revision)

    def _own_lease(self, lease: WorkflowLease) -> tuple[dict[str, Any], int] | None:
        """The lease as this store last wrote it, if that write granted or renewed ``lease``."""
        cached = self._leases.get(lease.workflow_id)
        if cached is None or not cached[0].get("owner") or int(cached[0].get("token", 0)) != lease.fencing_token:
            return None
        return cached

    async def _raise_fence(self, workflow_id: str, fence: int) -> None:
        """Record a new token in the record so that older holders lose their next CAS.

        A direct get first; "no record" is confirmed on the leader and every read after a
        lost CAS is made there: a lagging replica answering no record, or an older revision
        (every CAS then lost), would leave the record unfenced and an older holder's next
        CAS (against its own last write) winning. (A replica's record never holds a greater
        ``_fence`` than the leader's, so "already fenced" needs no confirming.)"""
        key = f"wf.{token(workflow_id)}"
        from_leader = False
        for _ in range(10):
            stored, revision = await self._record(workflow_id, from_leader=from_leader)
            if stored is None and not from_leader:
                from_leader = True
                continue
            if stored is None or int(stored.get("_fence", 0)) >= fence:
                return
            if await kv.cas(self._conn.js, self._kv, key, encode({**stored, "_fence": fence}), last=revision,
                            ttl=self.state_ttl) is not None:
                return
            from_leader = True

    async def lease_holder(self, workflow_id: str) -> WorkflowLease | None:
        with self._errors(f"read the lease of workflow {workflow_id!r}"):
            (current, lease_revision), (stored, record_revision) = await self._lease_and_record(workflow_id)
            if self._behind_own(workflow_id, record_revision, lease_revision):
                (current, _), (stored, _) = await self._lease_and_record(workflow_id, from_leader=True)
        if current is None or not current.get("owner") or float(current["deadline"]) <= time.time() \
                or _released(current, stored):
            return None
        return WorkflowLease(workflow_id, str(current["owner"]), int(current.get("token", 0)), float(current["deadline"]))

    async def renew_lease(self, lease: WorkflowLease, ttl: float) -> WorkflowLease:
        key = f"lease.{token(lease.workflow_id)}"
        with self._errors(f"renew the lease of workflow {lease.workflow_id!r}"):
            own = self._own_lease(lease)
            for _ in range(10 if self._released_here.get(lease.workflow_id) != lease.fencing_token else 0):
                # First against this store's own last write (no read); a lost CAS reads (the
                # record too: a commit may have released the lease, see ``save_releasing``),
                # from the leader: a lagging replica's older lease would be reported lost.
                current: dict[str, Any] | None
                if own is not None:
                    (current, revision), released = own, False
                else:
                    (current, revision), (stored, _) = await self._lease_and_record(lease.workflow_id, from_leader=True)
                    released = _released(current, stored)
                now = time.time()
                if (
                    current is None
                    or not current.get("owner")
                    or int(current["token"]) != lease.fencing_token
                    or float(current["deadline"]) <= now
                    or released
                ):
                    if own is not None:
                        own = None
                        continue  # decided on the stored lease, not our copy
                    break
                own = None
                new = {**current, "deadline": now + ttl}
                new_revision = await kv.cas(self._conn.js, self._kv, key, encode(new), last=revision)
                if new_revision is not None:
                    if self._released_here.get(lease.workflow_id) == lease.fencing_token:
                        break  # a commit of this store released it meanwhile: the marker decides
                    self._wrote_lease(lease.workflow_id, new, new_revision)
                    return WorkflowLease(lease.workflow_id, lease.owner, lease.fencing_token, float(new["deadline"]))
        raise LeaseLostError(
            f"workflow {lease.workflow_id!r}: lease of {lease.owner!r} (token {lease.fencing_token}) "
            "expired or was taken over; stop driving this workflow"
        )

    async def release_lease(self, lease: WorkflowLease) -> None:
        key = f"lease.{token(lease.workflow_id)}"
        with self._errors(f"release the lease of workflow {lease.workflow_id!r}"):
            own = self._leases.pop(lease.workflow_id, None)
            if own is not None:
                self._raise_floor(lease.workflow_id, lease=own[1])
            if own is not None and int(own[0].get("token", 0)) != lease.fencing_token:
                own = None
            for _ in range(10):
                # First against this store's own last write (no read); a lost CAS reads, from the
                # leader: a lagging replica's older lease (another token) would leave it held.
                current, revision = own if own is not None else await self._lease(lease.workflow_id, from_leader=True)
                own = None
                if current is None or not current.get("owner") or int(current["token"]) != lease.fencing_token:
                    return
                freed = {**current, "owner": None, "deadline": 0.0}
                freed_revision = await kv.cas(self._conn.js, self._kv, key, encode(freed), last=revision)
                if freed_revision is not None:
                    self._raise_floor(lease.workflow_id, lease=freed_revision)
                    return


def _version_is(stored: dict[str, Any] | None, expected_version: int) -> bool:
    """Whether a save expecting ``expected_version`` (0: absent) may CAS on ``stored``."""
    if expected_version == 0:
        return stored is None
    return stored is not None and stored.get("version") == expected_version


def _takes_over(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether granting ``new`` replaces a lease ``current`` whose key still names a live owner
    (freed by its record: gone, or releasing it): decided on the record, which no CAS of the lease checks."""
    return (current is not None and bool(current.get("owner")) and float(current.get("deadline", 0)) > time.time()
            and int(new["token"]) != int(current.get("token", 0)))


def _released(lease: dict[str, Any] | None, stored: dict[str, Any] | None) -> bool:
    """Whether the record ``stored`` says the lease ``lease`` (its token) was released by a
    commit (``save_releasing``): then it is free, whatever owner and deadline its key holds."""
    if lease is None or stored is None:
        return False
    marker = stored.get("_released")
    return type(marker) is int and marker == int(lease.get("token", 0))


def _held_entries(stored: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    """The checkpoint entries a record holds, oldest first, as (key, bytes): ``_cp_more``'s
    [key, entry] pairs, then ``_cp_inline`` under ``_cp``. Pairs of another shape (a record
    written by hand) are left out: the chain walk then stops short of them, as at a missing key."""
    if stored is None:
        return []
    held: list[tuple[str, bytes]] = []
    for pair in stored.get("_cp_more") or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str):
            held.append((pair[0], pair[1] if isinstance(pair[1], bytes) else encode(pair[1])))
    inline = _inline_entry(stored)
    if inline is not None and isinstance(stored.get("_cp"), str):
        held.append((stored["_cp"], inline))
    return held


def _inline_entry(stored: dict[str, Any] | None) -> bytes | None:
    """The checkpoint entry a record holds (``_cp_inline``: bytes as this store keeps it,
    a decoded object as read), as bytes; None if it holds none."""
    value = None if stored is None else stored.get("_cp_inline")
    if value is None or isinstance(value, bytes):
        return value
    return encode(value)


# The first fields of a record as ``_write`` stores it (``WorkflowRecord.to_dict``'s order,
# compact JSON): its status, read without decoding the rest. Anything else (written by hand,
# spaced, reordered) does not match and is decoded.
_RECORD_HEAD = re.compile(rb'\{"workflow_id":"(?:[^"\\]|\\.)*","graph_name":"(?:[^"\\]|\\.)*","status":"([a-z_]+)"')


def _decoded_or_raw(value: bytes | None) -> Any:
    """The decoded JSON, or the bytes themselves when they are not JSON (``stored_records`` reports them)."""
    try:
        return decode(value or b"")
    except PayloadDecodeError:
        return value or b""


def _expired(body: dict[str, Any], now: float) -> bool:
    expires_at = body.get("_expires_at")
    return isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool) and expires_at <= now
