"""StateStore on Redis: compare-and-set records, checkpoint lists and fenced leases.

Data layout (``{p}`` is the prefix, ``{w}`` a workflow id)::

    {p}:wf:r:{w}          HASH  rec (record JSON), ver, status, created, cid (commit id),
                                ctip (id of the newest checkpoint entry), ttl (the last
                                save's state_ttl in ms, '' for none)
    {p}:wf:c:{w}          LIST  checkpoint entries, oldest first (RPUSH: append-only): full
                                snapshots and deltas chained to them (core.checkpoint_delta)
    {p}:wf:l:{w}          HASH  owner, token, deadline (ms, server time), max (the
                                highest fencing token ever granted: tokens only grow)
    {p}:wf:all            ZSET  workflow id -> created_at (list_workflows, oldest first)
    {p}:wf:status:{s}     ZSET  the same, per status (list_workflows(status=))

Atomicity: ``save`` is one Lua script that checks the fencing token against ``max``,
compares the version, writes the record, moves the id between status indexes and
appends the checkpoint; nothing is written unless every check passes. Lease acquire,
renew and release are one script each; deadlines use the server's ``TIME``, so
orchestrators with skewed clocks agree on who owns a workflow.

``state_ttl``: every save sets ``PEXPIRE`` on the record, its checkpoints and its lease
hash, and a lease granted later takes the record's remaining TTL, so the three vanish
together. Index entries of expired records are dropped lazily by ``list_workflows``.
When a record expires its lease hash goes with it, so a workflow id reused after
expiry starts its fencing tokens afresh; ``delete`` keeps the token counter. Keys can
still go one at a time (eviction under ``maxmemory``, a hand-made ``DEL`` or expiry): a
create (no record) deletes any checkpoint list left by an earlier run of the id, keeps a
lease hash left by it (its ``max``: tokens keep growing past that run's holders), and
index entries left by it are ignored and dropped by listings (the record's status decides).

Malformed records (written by something else, or edited by hand): a record key that is not a
hash, a 'rec' that is not a record's JSON, a 'ver' that is not a whole number from 1, a
'status' outside ``WorkflowStatus.ALL``, a missing one of the three, or 'ver'/'status'
disagreeing with the JSON's version/status. Reading one raises ``PayloadDecodeError`` naming
its key, the field and the value (``core.ports.state_store.malformed_record``); a save
against a bad 'ver' raises it too (its compare-and-set cannot be decided); listings and
``count_workflows`` log it and leave it out, keeping its index entries (an entry is dropped
only when its record is gone or holds another known status); ``delete`` removes it.

Checkpoints cost what changed: the store remembers the newest entry it wrote per
workflow (a bounded cache, forgotten by the save that releases the workflow's lease and
by ``delete``) and sends a delta against it; the script appends it only if
``ctip`` still names that entry, else nothing is written and the store sends a full
snapshot instead (after a restart, or when another orchestrator committed since). The
first save after a release (a later run) writes a snapshot. So a
delta's base is always the entry before it. ``list_checkpoints`` reads the wanted tail
back to its chain's snapshot (the snapshot index leads every delta entry) in one script.

A repeated ``save`` after a lost reply (the client retries on a broken connection)
recognises its own commit id and reports success instead of a false version conflict.

Round trips: ``get``, ``save`` (2 when its delta's base was replaced), ``create_leased`` (lease
grant and create, one script), ``create_leased_enqueuing`` (the same and the first step's
enqueue on a Redis queue of the same connection, one script: both or neither), ``save_releasing`` (a run's last commit and its lease release,
one script), ``list_checkpoints``,
``get_checkpoint`` (walks back from the newest entry to that step's, then to its snapshot),
each lease call: 1;
``list_workflows``: 1.

Node cache: ``{p}:cache:{namespace}:{key}`` STRING per entry (see ``keys.StateKeys.cache``),
written with ``SET ... PX`` (millisecond expiry kept by the server; no ttl: no expiry,
and a set without ttl drops an earlier one). ``cache_get``/``cache_set``: 1 round
trip. ``cache_clear`` walks the namespace with ``SCAN MATCH`` (1,000 keys a call,
never blocking the server like ``KEYS``) and ``UNLINK``s each batch (freed in the
background); entries set during a clear may survive it.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import Any

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.errors import redis_errors
from distributed_agents.adapters.redis.keys import StateKeys
from distributed_agents.adapters.redis.queue_scripts import ENQUEUE_BODY, SERVER_CLOCK
from distributed_agents.adapters.redis.task_queue import ENQUEUE_BATCH
from distributed_agents.core.checkpoint_delta import ChainTip, next_entry, rebuild
from distributed_agents.core.record_json import record_json
from distributed_agents.core.errors import (
    BackendError,
    FencingTokenRejectedError,
    PayloadDecodeError,
    LeaseLostError,
    VersionConflictError,
    WorkflowExistsError,
)
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.state_store import (
    Checkpoint,
    StateStore,
    WorkflowLease,
    WorkflowRecord,
    WorkflowStatus,
    malformed_record,
    stored_record,
)
from distributed_agents.core.ports.task_queue import Task, TaskQueue

__all__ = ["RedisStateManager"]

log = logging.getLogger("distributed_agents.state_store")  # where listings log the malformed records they leave out

_NOW = SERVER_CLOCK

# The save script without its clock (see queue_scripts.SERVER_CLOCK); _SAVE below.
_SAVE_BODY = r"""
-- KEYS: 1 record, 2 checkpoints, 3 lease, 4 index
-- ARGV: 1 prefix, 2 workflow id, 3 expected version, 4 record JSON, 5 status, 6 created_at,
--       7 checkpoint entry or '', 8 fencing token or '', 9 state_ttl ms or '', 10 commit id,
--       11 id of the entry a delta is based on ('' for a snapshot), 12 the entry's id,
--       13 owner to grant the lease to first ('' none: create_leased), 14 its ttl ms,
--       15 '1' to free the lease of token ARGV[8] after the save (save_releasing)
-- Returns {'ok', checkpoint count after the append (0 if none or a repeat), granted token,
--          deadline ms} or an error tuple ({'held'}: another owner holds the lease).
local P, id, expected = ARGV[1], ARGV[2], tonumber(ARGV[3])
local owner = ARGV[13] or ''
local cur = redis.call('HMGET', KEYS[1], 'ver', 'status', 'cid', 'created', 'ctip', 'ttl')
local token = ARGV[8]
local lease_now, grant_new = nil, false
local held = nil  -- the lease hash's owner, token, deadline and max, read once
if owner ~= '' then
  -- The grant is decided before anything is written, and written only with the record.
  lease_now = now_ms()
  held = redis.call('HMGET', KEYS[3], 'owner', 'token', 'deadline', 'max')
  if held[1] and held[1] ~= '' and tonumber(held[3]) > lease_now then
    if held[1] ~= owner then return {'held'} end
    token = held[2]
  else
    grant_new = true
    token = tostring(tonumber(held[4] or '0') + 1)
  end
end
if cur[1] and tonumber(cur[1]) == expected + 1 and cur[3] == ARGV[10] then return {'ok', 0, token, 0} end
if token ~= '' and not grant_new then
  if held == nil then held = redis.call('HMGET', KEYS[3], 'owner', 'token', 'deadline', 'max') end
  local max = tonumber(held[4] or '0')
  if tonumber(token) < max then return {'fenced', max} end
end
if expected == 0 then
  if cur[1] then return {'exists'} end
else
  if not cur[1] or tonumber(cur[1]) ~= expected then return {'conflict', cur[1] or false} end
end
local base = ARGV[11] or ''
if base ~= '' and cur[5] ~= base then return {'rebase'} end
local deadline = 0
if owner ~= '' then
  deadline = lease_now + tonumber(ARGV[14])
  if grant_new then
    redis.call('HSET', KEYS[3], 'max', token, 'owner', owner, 'token', token, 'deadline', deadline)
  else
    redis.call('HSET', KEYS[3], 'deadline', deadline)
  end
end
if ARGV[15] == '1' then
  -- (The token the lease hash holds now: the one just granted, or as read above.)
  local holder
  if grant_new then
    holder = token
  elseif held then
    holder = held[2]
  else
    holder = redis.call('HGET', KEYS[3], 'token')
  end
  if holder == token then redis.call('HSET', KEYS[3], 'owner', '', 'deadline', 0) end
end
-- The indexes are written only when the record is new, its created_at (their score) changes
-- or its status moves: most saves leave them as they are (an entry a listing dropped belonged
-- to a record gone or moved, which comes back through here).
if expected ~= 0 and cur[2] ~= ARGV[5] then redis.call('ZREM', P .. ':wf:status:' .. cur[2], id) end
if expected == 0 or cur[4] ~= ARGV[6] then
  redis.call('ZADD', KEYS[4], ARGV[6], id)
  redis.call('ZADD', P .. ':wf:status:' .. ARGV[5], ARGV[6], id)
elseif cur[2] ~= ARGV[5] then
  redis.call('ZADD', P .. ':wf:status:' .. ARGV[5], ARGV[6], id)
end
-- A new record starts a new run of the id: a checkpoint list left by an earlier run (its record
-- expired, was evicted or deleted first) is not this run's history. The lease hash stays: its
-- 'max' keeps fencing tokens growing past the earlier run's holders.
if not cur[1] then redis.call('DEL', KEYS[2]) end
local count = 0
local ttl = ARGV[9]
if ARGV[7] ~= '' then
  count = redis.call('RPUSH', KEYS[2], ARGV[7])
  redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'ver', expected + 1, 'status', ARGV[5], 'created', ARGV[6],
             'cid', ARGV[10], 'ttl', ttl, 'ctip', ARGV[12] or '')
else
  redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'ver', expected + 1, 'status', ARGV[5], 'created', ARGV[6],
             'cid', ARGV[10], 'ttl', ttl)
end
-- 'ttl' keeps this save's state_ttl: after a save without one no key of the three has an
-- expiry (each save sets or removes all three; a lease takes the record's), so the next save
-- without one removes none. A new record and its new list have none; a lease hash left by an
-- earlier run of the id may have one.
if ttl ~= '' then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
elseif cur[6] ~= '' then  -- the last save set one, or is not known (a record written before 'ttl' was kept)
  for i = cur[1] and 1 or 3, 3 do redis.call('PERSIST', KEYS[i]) end
end
return {'ok', count, token, deadline}
"""
_SAVE = _NOW + _SAVE_BODY

# A new workflow's create (the save script, granting the lease) and its first step's enqueue
# (the queue's enqueue script) in one script: both or neither (no crash between them leaves
# a workflow whose tasks are not queued). Each runs as a function whose parameters KEYS and
# ARGV stand for its own (Lua locals shadow the globals).
# KEYS: the save's 4, then the enqueue's. ARGV: 1 how many of the save's arguments follow,
# those, then the enqueue's. Returns the save's reply, with the enqueue's reply (one flag per
# task) appended as a fifth item when the save says 'ok'; else the save's refusal alone.
_CREATE_ENQUEUE = (
    _NOW  # one reading of the server's time for both (the lease's deadline, the task's)
    + "local function save(KEYS, ARGV)\n" + _SAVE_BODY + "\nend\n"
    + "local function enqueue(KEYS, ARGV)\n" + ENQUEUE_BODY + "\nend\n"
    + r"""
local n = tonumber(ARGV[1])
local save_args, enqueue_args = {}, {}
for i = 2, n + 1 do save_args[#save_args + 1] = ARGV[i] end
for i = n + 2, #ARGV do enqueue_args[#enqueue_args + 1] = ARGV[i] end
local saved = save({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, save_args)
if saved[1] == 'ok' then saved[5] = enqueue({KEYS[5]}, enqueue_args) end
return saved
""")

_CHECKPOINTS = r"""
-- KEYS: 1 checkpoints. ARGV: 1 how many newest entries are wanted (0: all).
-- Returns {index of the first entry returned, entries...}: the wanted tail, extended back
-- to the snapshot its first entry's chain starts at.
local n = redis.call('LLEN', KEYS[1])
local start = 0
if tonumber(ARGV[1]) > 0 then start = math.max(0, n - tonumber(ARGV[1])) end
if start > 0 then
  local first = redis.call('LINDEX', KEYS[1], start)
  local snap = first and string.match(first, '^{"delta":{"base":"[0-9a-f]*","snap":([0-9]+)')
  -- A snapshot index past the entry is damage: the entry is returned and rebuild reports it.
  if snap and tonumber(snap) < start then start = tonumber(snap) end
end
local out = redis.call('LRANGE', KEYS[1], start, -1)
table.insert(out, 1, start)
return out
"""

_CHECKPOINT_AT = r"""
-- KEYS: 1 checkpoints. ARGV: 1 the step wanted.
-- Walks back from the newest entry (entries are in step order) to the one of that step.
-- Returns {index of the first entry returned, entries...}: that entry and the entries back to
-- its chain's snapshot; {-1} if no entry has the step; {-2} if an entry's step could not be read.
local want = tonumber(ARGV[1])
local i = redis.call('LLEN', KEYS[1]) - 1
while i >= 0 do
  local e = redis.call('LINDEX', KEYS[1], i)
  local step
  if string.sub(e, 1, 9) == '{"delta":' then
    local ok, item = pcall(cjson.decode, e)
    if not ok or type(item) ~= 'table' then return {-2} end
    step = tonumber(item['step'])
  else
    -- A snapshot leads with its workflow id and step (core.checkpoint_delta.SNAPSHOT_STEP_PATTERN).
    step = tonumber(string.match(e, '^{"workflow_id":".-","step":(%d+)'))
  end
  if not step then return {-2} end
  if step == want then
    local start = i
    local snap = string.match(e, '^{"delta":{"base":"[0-9a-f]*","snap":([0-9]+)')
    if snap and tonumber(snap) < start then start = tonumber(snap) end
    local out = redis.call('LRANGE', KEYS[1], start, i)
    table.insert(out, 1, start)
    return out
  end
  if step < want then return {-1} end
  i = i - 1
end
return {-1}
"""

_ACQUIRE = _NOW + r"""
-- KEYS: 1 lease, 2 record. ARGV: 1 owner, 2 ttl ms. Returns {token, deadline} or {}.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'owner', 'token', 'deadline')
local deadline = now + tonumber(ARGV[2])
local token
if f[1] and f[1] ~= '' and tonumber(f[3]) > now then
  if f[1] ~= ARGV[1] then return {} end
  token = tonumber(f[2])
  redis.call('HSET', KEYS[1], 'deadline', deadline)
else
  token = redis.call('HINCRBY', KEYS[1], 'max', 1)
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'deadline', deadline)
end
-- A lease lives no longer than its record (state_ttl).
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return {token, deadline}
"""

_RENEW = _NOW + r"""
-- KEYS: 1 lease, 2 record. ARGV: 1 token, 2 ttl ms. Returns the new deadline or -1 if lost.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'owner', 'token', 'deadline')
if not f[1] or f[1] == '' or f[2] ~= ARGV[1] or tonumber(f[3]) <= now then return -1 end
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'deadline', deadline)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return deadline
"""

_RELEASE = r"""
-- KEYS: 1 lease. ARGV: 1 token. Frees the lease if that token still holds it.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and (redis.call('HGET', KEYS[1], 'owner') or '') ~= '' then
  redis.call('HSET', KEYS[1], 'owner', '', 'deadline', 0)
  return 1
end
return 0
"""

# The statuses a record hash's 'status' field may hold, as a Lua table (a set): an index entry
# whose record has another status is moved only if that status is one of these; any other
# value (or a missing field) is damage, reported, and its entry kept.
_KNOWN_STATUSES = "local KNOWN = {" + ", ".join(f"{s}=true" for s in sorted(WorkflowStatus.ALL)) + "}\n"

_LIST = _KNOWN_STATUSES + r"""
-- KEYS: 1 the index to read (all or one status). ARGV: 1 prefix, 2 status or ''.
-- Returns id, record JSON, status, version, id, ... oldest first (a missing field: nil, for
-- the caller to report); drops index entries of expired records (no field left) and, reading
-- one status, of records moved to another known status. A record key that is not a hash
-- (written by something else) gives NUL and the server's error instead of the JSON: only that
-- record is left out.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.pcall('HMGET', ARGV[1] .. ':wf:r:' .. id, 'rec', 'status', 'ver')
  if f.err then
    out[#out + 1] = id
    out[#out + 1] = '\0' .. f.err
    out[#out + 1] = false
    out[#out + 1] = false
  elseif not f[1] and not f[2] and not f[3] then
    redis.call('ZREM', KEYS[1], id)
  elseif ARGV[2] ~= '' and f[2] ~= ARGV[2] and KNOWN[f[2]] then
    redis.call('ZREM', KEYS[1], id)
  else
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
  end
end
return out
"""

_COUNT = _KNOWN_STATUSES + r"""
-- KEYS: the status indexes to count. ARGV: 1 prefix, then the status of each index.
-- Returns one count per index, then id, index number, what its record's status field holds
-- ('' missing, NUL and the server's error for a key that is not a hash) for each entry whose
-- record is malformed (not counted, kept); drops entries of expired or moved records, as _LIST does.
local out, bad = {}, {}
for i, index in ipairs(KEYS) do
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local key = ARGV[1] .. ':wf:r:' .. id
    local status = redis.pcall('HGET', key, 'status')
    if status == ARGV[i + 1] then
      n = n + 1
    elseif type(status) == 'table' then
      bad[#bad + 1] = id; bad[#bad + 1] = i; bad[#bad + 1] = '\0' .. status.err
    elseif status and KNOWN[status] then
      redis.call('ZREM', index, id)
    elseif status then
      bad[#bad + 1] = id; bad[#bad + 1] = i; bad[#bad + 1] = status
    elseif redis.call('EXISTS', key) == 1 then
      bad[#bad + 1] = id; bad[#bad + 1] = i; bad[#bad + 1] = ''
    else
      redis.call('ZREM', index, id)
    end
  end
  out[i] = n
end
for _, item in ipairs(bad) do out[#out + 1] = item end
return out
"""

_DELETE = _KNOWN_STATUSES + r"""
-- KEYS: 1 record, 2 checkpoints, 3 lease, 4 index. ARGV: 1 prefix, 2 workflow id.
-- Returns 1 if there was a record key (of any type or content), else 0.
local status = redis.pcall('HGET', KEYS[1], 'status')
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], 'owner', 'token', 'deadline')  -- 'max' stays: tokens only grow
redis.call('ZREM', KEYS[4], ARGV[2])
if type(status) == 'string' and KNOWN[status] then
  redis.call('ZREM', ARGV[1] .. ':wf:status:' .. status, ARGV[2])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  -- Malformed (not a hash, or its status missing or unknown): which index holds it is not known.
  for s in pairs(KNOWN) do redis.call('ZREM', ARGV[1] .. ':wf:status:' .. s, ARGV[2]) end
end
return redis.call('DEL', KEYS[1])
"""


# Workflows whose newest checkpoint entry a store remembers (each holds one full state).
_TIPS_KEPT = 256


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStateManager(StateStore):
    """Workflow records, checkpoints and leases on Redis; see the module docstring.

    ``RedisStateManager(redis_url, prefix=, state_ttl=)`` opens its own connection on
    first use; a ``RedisBackend`` passes its shared ``connection`` instead.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        prefix: str | None = None,
        state_ttl: float | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        options = BackendOptions.from_url(redis_url, prefix=prefix, state_ttl=state_ttl)
        self.prefix = options.prefix
        self.state_ttl = options.state_ttl
        self._owns_connection = connection is None
        self._connection = connection or RedisConnection(redis_url)
        self._keys = StateKeys(self._connection.key_prefix(self.prefix), cache_prefix=self.prefix)
        # Per workflow this store drives (most recent last): the newest checkpoint entry it wrote,
        # and the record's created_at with its text (a float's repr is ~1 us: once per workflow).
        self._tips: OrderedDict[str, tuple[ChainTip, float, str]] = OrderedDict()

    def _script(self, name: str, source: str, keys: list[str], args: list[Any], action: str) -> Awaitable[Any]:
        # The connection's coroutine itself, awaited by the caller: no coroutine of its own in between.
        return self._connection.run_script(name, source, keys, args, action)

    def _workflow_keys(self, workflow_id: str) -> list[str]:
        k = self._keys
        return [k.record(workflow_id), k.checkpoints(workflow_id), k.lease(workflow_id), k.index]

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        """The stored record, or None (one round trip)."""
        key = self._keys.record(workflow_id)
        try:
            with redis_errors(self._connection.url, f"read workflow {workflow_id!r}"):
                raw, status, version = await self._connection.client().hmget(key, "rec", "status", "ver")
        except BackendError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise malformed_record(key, workflow_id, _not_a_hash(str(exc.__cause__ or exc))) from None
        if raw is None and status is None and version is None:
            return None
        return _checked_record(key, workflow_id, raw, status, version)

    async def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> WorkflowRecord:
        """Compare-and-set ``record`` (and append ``checkpoint``, as a delta when possible) in one script."""
        saved, _ = await self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                                    fencing_token=fencing_token)
        return saved

    async def create_leased(
        self, record: WorkflowRecord, *, owner: str, ttl: float, checkpoint: Checkpoint | None = None
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """Grant the lease and create the record in one script (one round trip); see the port."""
        try:
            saved, reply = await self._save(record, expected_version=0, checkpoint=checkpoint, fencing_token=None,
                                            owner=owner, ttl_ms=_ms(ttl))
        except _LeaseHeld:
            return None
        return saved, WorkflowLease(record.workflow_id, owner, int(reply[2]), int(reply[3]) / 1000.0)

    async def save_releasing(
        self, record: WorkflowRecord, *, expected_version: int, lease: WorkflowLease,
        checkpoint: Checkpoint | None = None,
    ) -> WorkflowRecord:
        """A fenced save that frees ``lease`` once it succeeds, in one script (one round trip)."""
        saved, _ = await self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                                    fencing_token=lease.fencing_token, release=True)
        return saved

    async def _save(
        self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None,
        fencing_token: int | None, owner: str = "", ttl_ms: int = 0, release: bool = False,
    ) -> tuple[WorkflowRecord, Any]:
        new, raw_record, state_raw = self._encoded(record, expected_version)
        workflow_id = record.workflow_id
        same_state = checkpoint is not None and checkpoint.state is record.state
        commit_id = _commit_id()
        kept = None if expected_version == 0 else self._tips.get(workflow_id)
        tip, created = (None, None) if kept is None else (kept[0], kept[2] if kept[1] == new.created_at else None)
        while True:
            args, new_tip = self._save_args(new, raw_record, state_raw if same_state else None, expected_version,
                                            checkpoint, tip, fencing_token, commit_id, owner, ttl_ms, release,
                                            created)
            reply = await self._script("state_save", _SAVE, self._workflow_keys(workflow_id), args,
                                       f"save workflow {workflow_id!r}")
            if _text(reply[0]) != "rebase":
                break
            # Another writer appended since this store's last checkpoint: send a snapshot.
            tip = None
            self._tips.pop(workflow_id, None)
        if release:
            # The lease is freed: whoever drives the workflow next may append first (the tip would
            # be stale, a rebase round trip), and a finished workflow needs none. A later save writes
            # a snapshot.
            self._tips.pop(workflow_id, None)
            new_tip = None
        self._saved(reply, workflow_id, expected_version, fencing_token, new_tip, args[5])
        return new, reply

    async def create_leased_enqueuing(
        self, record: WorkflowRecord, *, owner: str, ttl: float, checkpoint: Checkpoint | None = None,
        queue: TaskQueue, tasks: Sequence[Task],
    ) -> tuple[WorkflowRecord, WorkflowLease, bool] | None:
        """Grant the lease, create the record and queue ``tasks`` in one script (one round trip,
        all or nothing) when ``queue`` is a Redis queue on this store's connection; see the port."""
        along = getattr(queue, "enqueue_along", None)
        if not tasks or along is None or getattr(queue, "_connection", None) is not self._connection or \
                len(tasks) > ENQUEUE_BATCH:
            return await super().create_leased_enqueuing(record, owner=owner, ttl=ttl, checkpoint=checkpoint,
                                                         queue=queue, tasks=tasks)
        new, raw_record, state_raw = self._encoded(record, 0)
        workflow_id = record.workflow_id
        same_state = checkpoint is not None and checkpoint.state is record.state
        args, new_tip = self._save_args(new, raw_record, state_raw if same_state else None, 0, checkpoint, None,
                                        None, _commit_id(), owner, _ms(ttl), False, None)
        keys = self._workflow_keys(workflow_id)
        # A partial, not a closure: fewer GC-tracked objects per workflow (see core.engine's helpers).
        reply = await along(tasks, functools.partial(self._create_enqueue, keys, args, workflow_id))
        if _text(reply[0]) == "held":
            return None
        self._saved(reply, workflow_id, 0, None, new_tip, args[5])
        return new, WorkflowLease(workflow_id, owner, int(reply[2]), int(reply[3]) / 1000.0), True

    async def _create_enqueue(
        self, keys: list[str], args: list[Any], workflow_id: str, queue_keys: list[str], queue_args: list[Any]
    ) -> tuple[Any, Any]:
        """``create_leased_enqueuing``'s script with the queue's keys and arguments; (reply, the queue's part)."""
        reply = await self._script("state_create_enqueue", _CREATE_ENQUEUE, keys + queue_keys,
                                   [len(args), *args, *queue_args], f"start workflow {workflow_id!r}")
        return reply, (reply[4] if _text(reply[0]) == "ok" else None)

    def _encoded(self, record: WorkflowRecord, expected_version: int) -> tuple[WorkflowRecord, bytes, bytes]:
        """The record a save of ``record`` stores, its JSON and its state's JSON."""
        new = record.evolve(version=expected_version + 1, updated_at=time.time())
        # The state is encoded once, for the record and a checkpoint of the same state, and the
        # engine's encoding of the record (made to check its size) is reused: core.record_json.
        raw_record, state_raw = record_json(new)
        return new, raw_record, state_raw

    def _save_args(
        self, new: WorkflowRecord, raw_record: bytes, state_raw: bytes | None, expected_version: int,
        checkpoint: Checkpoint | None, tip: ChainTip | None, fencing_token: int | None, commit_id: str,
        owner: str, ttl_ms: int, release: bool, created: str | None,
    ) -> tuple[list[Any], ChainTip | None]:
        """The save script's ARGV for ``new`` (and ``checkpoint``, a delta on ``tip`` when it can be), and the new tip.

        ``created`` is ``new.created_at``'s text when known (else it is made here: ARGV[6]).
        """
        entry, new_tip = (b"", None) if checkpoint is None else next_entry(
            checkpoint, tip, index=-1 if tip is None else tip.index + 1, state_raw=state_raw)
        base = "" if (tip is None or new_tip is None or new_tip.depth == 0) else tip.entry_id
        return [
            self._keys.prefix,
            new.workflow_id,
            int(expected_version),
            raw_record,
            new.status,
            repr(float(new.created_at)) if created is None else created,
            entry,
            "" if fencing_token is None else int(fencing_token),
            "" if self.state_ttl is None else _ms(self.state_ttl),
            commit_id,
            base,
            "" if new_tip is None else new_tip.entry_id,
            owner,
            ttl_ms,
            "1" if release else "",
        ], new_tip

    def _saved(self, reply: Any, workflow_id: str, expected_version: int, fencing_token: int | None,
               new_tip: ChainTip | None, created: str) -> None:
        """Raise for a save script's refusal in ``reply``; else remember the checkpoint it appended."""
        outcome = _text(reply[0])
        if outcome == "held":
            raise _LeaseHeld()
        if outcome == "fenced":
            raise FencingTokenRejectedError(
                f"workflow {workflow_id!r}: write with fencing token {fencing_token} refused; "
                f"a newer owner holds token {int(reply[1])}"
            )
        if outcome == "exists":
            raise WorkflowExistsError(f"workflow {workflow_id!r} already exists; choose another workflow_id")
        if outcome == "conflict":
            # The 'ver' field found (nil: no record, or no such field, which reading the record reports).
            actual = reply[1] if len(reply) > 1 else None
            found = None if actual is None else _checked_version(self._keys.record(workflow_id), workflow_id, actual)
            raise VersionConflictError(
                f"workflow {workflow_id!r}: expected version {expected_version}, found {found}; "
                "another writer committed first: reload and retry",
                expected=expected_version,
                actual=found,
            )
        if expected_version == 0:
            self._tips.pop(workflow_id, None)  # a new run of the id: an earlier run's tip is no base of its deltas
        self._remember(workflow_id, new_tip, int(reply[1]) if len(reply) > 1 else 0, created)

    def _remember(self, workflow_id: str, tip: ChainTip | None, count: int, created: str) -> None:
        """Keep the tip of the checkpoint just appended (``count`` entries now) for the next delta,
        with the text of the record's created_at (``created``, as sent)."""
        if tip is None:
            return  # no checkpoint in this save: the newest entry is unchanged
        if count <= 0:
            self._tips.pop(workflow_id, None)  # a repeated save: where its entry sits is unknown
            return
        index = count - 1
        snap = index if tip.depth == 0 else tip.snap
        self._tips[workflow_id] = (ChainTip(tip.entry_id, index, snap, tip.depth, tip.delta_bytes, tip.state_raw,
                                            tip.state), float(created), created)
        self._tips.move_to_end(workflow_id)
        while len(self._tips) > _TIPS_KEPT:
            self._tips.popitem(last=False)

    async def list_checkpoints(
        self, workflow_id: str, *, limit: int | None = None, before: int | None = None
    ) -> list[Checkpoint]:
        """Checkpoints newest first, full states (one round trip; only the tail back to its snapshot
        is read when possible)."""
        if limit == 0:
            return []
        tail = limit if (limit is not None and before is None) else 0
        reply = await self._script("state_checkpoints", _CHECKPOINTS, [self._keys.checkpoints(workflow_id)], [tail],
                                   f"read checkpoints of {workflow_id!r}")
        entries = [raw if isinstance(raw, bytes) else str(raw).encode() for raw in reply[1:]]
        return rebuild(entries, int(reply[0]), limit=limit, before=before, workflow_id=workflow_id,
                       where=self._keys.checkpoints(workflow_id))

    async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
        """The checkpoint of ``step`` (one round trip: its entry and its chain back to the snapshot)."""
        reply = await self._script("state_checkpoint_at", _CHECKPOINT_AT, [self._keys.checkpoints(workflow_id)],
                                   [int(step)], f"read checkpoint {step} of {workflow_id!r}")
        first = int(reply[0])
        if first == -1:
            return None
        if first < 0:  # an entry the script could not read: the generic path reports or reads it
            return await super().get_checkpoint(workflow_id, step)
        entries = [raw if isinstance(raw, bytes) else str(raw).encode() for raw in reply[1:]]
        found = rebuild(entries, first, limit=1, workflow_id=workflow_id, where=self._keys.checkpoints(workflow_id))
        return found[0] if found and found[0].step == step else None

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        """Records (optionally of one status), oldest first (one round trip)."""
        index = self._keys.index if status is None else self._keys.status_index(status)
        reply = await self._script("state_list", _LIST, [index], [self._keys.prefix, status or ""], "list workflows")
        records = []
        for n in range(0, len(reply), 4):
            workflow_id, raw, found_status, version = _text(reply[n]), reply[n + 1], reply[n + 2], reply[n + 3]
            key = self._keys.record(workflow_id)
            try:
                if raw is not None and raw[:1] == b"\0":  # not a hash: HMGET's error, from the server
                    raise malformed_record(key, workflow_id, _not_a_hash(raw[1:]))
                # (Its id is the index's: a record holding another id is malformed, as get() says.)
                records.append(_checked_record(key, workflow_id, raw, found_status, version))
            except PayloadDecodeError as exc:
                log.error("left out of the listing: %s", exc)
        return records

    async def count_workflows(self) -> dict[str, int]:
        """Workflows per status, counted inside the server from the status indexes (one round trip).

        No record is sent back: each index entry costs the server one field read.
        """
        statuses = sorted(WorkflowStatus.ALL)
        reply = await self._script("state_count", _COUNT, [self._keys.status_index(s) for s in statuses],
                                   [self._keys.prefix, *statuses], "count workflows by status")
        for n in range(len(statuses), len(reply), 3):  # entries of malformed records: kept, reported
            workflow_id, index, found = _text(reply[n]), int(reply[n + 1]), reply[n + 2]
            key = self._keys.record(workflow_id)
            problem = _not_a_hash(found[1:]) if found[:1] == b"\0" else _status_problem(found or None)
            log.error("left out of the count of %r workflows: %s", statuses[index - 1],
                      malformed_record(key, workflow_id, problem or "its 'status' field does not match its index"))
        return {status: int(count) for status, count in zip(statuses, reply)}

    async def delete(self, workflow_id: str) -> bool:
        """Remove record, checkpoints and lease (the fencing counter stays)."""
        self._tips.pop(workflow_id, None)
        removed = await self._script(
            "state_delete", _DELETE, self._workflow_keys(workflow_id), [self._keys.prefix, workflow_id],
            f"delete workflow {workflow_id!r}",
        )
        return bool(removed)

    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        """Grant the lease if free, expired or already ``owner``'s; None otherwise."""
        reply = await self._script(
            "state_acquire", _ACQUIRE, [self._keys.lease(workflow_id), self._keys.record(workflow_id)],
            [owner, _ms(ttl)], f"acquire the lease of workflow {workflow_id!r}",
        )
        if not reply:
            return None
        token, deadline = reply
        return WorkflowLease(workflow_id, owner, int(token), int(deadline) / 1000.0)

    async def lease_holder(self, workflow_id: str) -> WorkflowLease | None:
        """The live lease as stored (its deadline is by the server's clock: close to this one's)."""
        with redis_errors(self._connection.url, f"read the lease of workflow {workflow_id!r}"):
            owner, fence, deadline = await self._connection.client().hmget(
                self._keys.lease(workflow_id), "owner", "token", "deadline")
        if not owner or deadline is None or int(deadline) / 1000.0 <= time.time():
            return None
        text = owner.decode() if isinstance(owner, bytes) else str(owner)
        return WorkflowLease(workflow_id, text, int(fence or 0), int(deadline) / 1000.0)

    async def renew_lease(self, lease: WorkflowLease, ttl: float) -> WorkflowLease:
        """Extend a live lease; ``LeaseLostError`` if it expired or was taken over."""
        deadline = int(
            await self._script(
                "state_renew", _RENEW, [self._keys.lease(lease.workflow_id), self._keys.record(lease.workflow_id)],
                [lease.fencing_token, _ms(ttl)], f"renew the lease of workflow {lease.workflow_id!r}",
            )
        )
        if deadline < 0:
            raise LeaseLostError(
                f"workflow {lease.workflow_id!r}: lease of {lease.owner!r} (token {lease.fencing_token}) "
                "expired or was taken over; stop driving this workflow"
            )
        return WorkflowLease(lease.workflow_id, lease.owner, lease.fencing_token, deadline / 1000.0)

    async def release_lease(self, lease: WorkflowLease) -> None:
        """Free the lease if ``lease`` still holds it; no error otherwise."""
        await self._script(
            "state_release", _RELEASE, [self._keys.lease(lease.workflow_id)], [lease.fencing_token],
            f"release the lease of workflow {lease.workflow_id!r}",
        )

    # -- node cache ----------------------------------------------------------------------

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        """The entry's bytes, or None (one round trip; the server drops expired entries)."""
        with redis_errors(self._connection.url, f"read node cache entry {namespace!r}/{key!r}"):
            raw = await self._connection.client().get(self._keys.cache(namespace, key))
        return None if raw is None else bytes(raw)

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """``SET`` the entry, with ``PX`` when ``ttl`` is given (one round trip)."""
        with redis_errors(self._connection.url, f"write node cache entry {namespace!r}/{key!r}"):
            await self._connection.client().set(self._keys.cache(namespace, key), bytes(value),
                                                px=None if ttl is None else _ms(ttl))

    async def cache_clear(self, namespace: str) -> None:
        """``SCAN`` the namespace's keys and ``UNLINK`` them, a batch at a time."""
        client = self._connection.client()
        with redis_errors(self._connection.url, f"clear node cache namespace {namespace!r}"):
            batch: list[Any] = []
            async for key in client.scan_iter(match=self._keys.cache_glob(namespace), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.unlink(*batch)
                    batch = []
            if batch:
                await client.unlink(*batch)

    async def close(self) -> None:
        """Close the connection if this store opened it. Idempotent."""
        if self._owns_connection:
            await self._connection.close()

    def __repr__(self) -> str:
        return f"<RedisStateManager {self._connection.masked_url} prefix={self.prefix!r}>"


def _commit_id() -> str:
    # Unique among this workflow's commits is enough (it tells a retried commit from
    # another): no system call per commit, and the random module reseeds itself in a forked child.
    return f"{random.getrandbits(128):032x}"


class _LeaseHeld(Exception):
    """``create_leased`` found the lease held by another owner: nothing was written."""


def _not_a_hash(error: bytes | str) -> str:
    """What to say of a record key holding another Redis type (the server's WRONGTYPE ``error``)."""
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
    return f"the key is not a Redis hash ({text.strip()[:120]}); check it with TYPE and remove it with DEL"


# The fields of a record hash read besides 'rec' (its JSON, core.ports.state_store.stored_record):
# 'ver' by the save script's compare-and-set, 'status' by the index upkeep of the scripts. A
# value this adapter never writes (a hand edit, another program) makes the record malformed:
# PayloadDecodeError naming the key, the field and the value, as for a bad 'rec'. ('cid',
# 'created', 'ctip' and 'ttl' are only compared with what a save sends: any value is safe.)
_SHOWN = 60  # characters of a bad value quoted in the error


def _shown(value: bytes | str) -> str:
    text = _text(value)
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}... ({len(text)} characters)"


def _version_problem(value: bytes | str | None) -> str | None:
    """What is wrong with a record hash's 'ver' field, or None (a whole number from 1, as saves write)."""
    if value is None:
        return "its 'ver' field is missing"
    text = _text(value)
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        return f"its 'ver' field holds {_shown(value)}, not a version number (a whole number from 1)"
    return None


def _status_problem(value: bytes | str | None) -> str | None:
    """What is wrong with a record hash's 'status' field, or None (one of WorkflowStatus.ALL)."""
    if value is None:
        return "its 'status' field is missing"
    if _text(value) not in WorkflowStatus.ALL:
        known = ", ".join(sorted(WorkflowStatus.ALL))
        return f"its 'status' field holds {_shown(value)}, not a workflow status ({known})"
    return None


def _checked_version(key: str, workflow_id: str, value: bytes | str | None) -> int:
    """The record's 'ver' field as a number; ``PayloadDecodeError`` (naming ``key``) if it is none."""
    problem = _version_problem(value)
    if problem is not None:
        raise malformed_record(key, workflow_id, problem)
    return int(_text(value))


def _checked_record(key: str, workflow_id: str, raw: bytes | str | None, status: bytes | str | None,
                    version: bytes | str | None) -> WorkflowRecord:
    """The record of the hash at ``key`` whose 'rec', 'status' and 'ver' fields are given, all checked:
    each readable and the three in agreement (a save writes them together), else ``PayloadDecodeError``."""
    if raw is None:
        raise malformed_record(key, workflow_id, "its 'rec' field (the record's JSON) is missing")
    record = stored_record(raw, key, workflow_id)
    problem = _status_problem(status)
    if problem is None and status is not None and _text(status) != record.status:
        problem = f"its 'status' field holds {_shown(status)} but its record says {_shown(record.status)}"
    if problem is None:
        found = _checked_version(key, workflow_id, version)
        if found != record.version:
            problem = f"its 'ver' field holds {_shown(version or b'')} but its record says version {record.version}"
    if problem is not None:
        raise malformed_record(key, workflow_id, problem)
    return record


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
