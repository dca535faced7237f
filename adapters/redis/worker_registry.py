"""WorkerRegistry on Redis: one expiring key per worker and a ZSET of heartbeats.

Data layout (``{p}`` is the prefix)::

    {p}:w:i:{id}   STRING  the worker's ``WorkerInfo`` JSON, PX heartbeat_ttl: the key
                           exists exactly while the worker is live
    {p}:w:beats    ZSET    worker id -> last heartbeat (ms, server time), for listing
                           without SCAN; PX heartbeat_ttl so an abandoned registry
                           cleans itself up

``register`` and ``heartbeat`` are one script each (set or refresh both, reading the
server's ``TIME`` so that heartbeats from machines with skewed clocks compare fairly);
``list_workers`` is one script that drops stale ZSET entries and returns the live
records with their last heartbeat. Round trips: 1 per call.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.keys import WorkerKeys
from distributed_agents.adapters.redis.queue_scripts import SERVER_CLOCK
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.worker_registry import WorkerInfo, WorkerRegistry, readable_workers

__all__ = ["RedisNodeRegistry"]

log = logging.getLogger("distributed_agents.worker_registry")

_NOW = SERVER_CLOCK

_REGISTER = _NOW + r"""
-- KEYS: 1 info, 2 beats. ARGV: 1 worker id, 2 info JSON, 3 ttl ms. Returns 1 if it replaced a
-- beats key of another type, else 0.
local now = now_ms()
local kind = redis.call('TYPE', KEYS[2]).ok
local replaced = 0
if kind ~= 'zset' and kind ~= 'none' then  -- written below the engine: every worker's listing needs it
  redis.call('DEL', KEYS[2])
  replaced = 1
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return replaced
"""

_HEARTBEAT = _NOW + r"""
-- KEYS: 1 info, 2 beats. ARGV: 1 worker id, 2 ttl ms. Returns 1, or 0 if not registered (or
-- its entry is not its record: written over below the engine), telling it to register again.
local now = now_ms()
local info = redis.pcall('GET', KEYS[1])
local ok, record = false, nil
if type(info) == 'string' then ok, record = pcall(cjson.decode, info) end
local kind = redis.call('TYPE', KEYS[2]).ok
if not ok or type(record) ~= 'table' or record['worker_id'] ~= ARGV[1] or (kind ~= 'zset' and kind ~= 'none')
    or redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then
  redis.pcall('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

_LIST = _NOW + r"""
-- KEYS: 1 beats. ARGV: 1 prefix, 2 ttl ms. Returns {id, info JSON, heartbeat ms, ...};
-- a key of another type comes back as "\0" .. its type, a beat dated ahead as "\1", for the
-- caller to report.
local now = now_ms()
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then return {'\0' .. kind} end  -- written below the engine: reported
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local out = {}
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local key = ARGV[1] .. ':w:i:' .. entries[i]
  local info = redis.pcall('GET', key)
  if type(info) == 'table' and info.err then
    info = '\0' .. redis.call('TYPE', key).ok
  elseif info and tonumber(entries[i + 1]) > now + tonumber(ARGV[2]) then
    info = '\1'  -- a heartbeat dated past the ttl ahead: no worker writes one (it would be listed for ever)
  end
  if info then
    out[#out + 1] = entries[i]
    out[#out + 1] = info
    out[#out + 1] = entries[i + 1]
  else
    redis.call('ZREM', KEYS[1], entries[i])
  end
end
return out
"""

_DEREGISTER = r"""
-- KEYS: 1 info, 2 beats. ARGV: 1 worker id.
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisNodeRegistry(WorkerRegistry):
    """Live workers on Redis; see the module docstring.

    ``RedisNodeRegistry(redis_url, heartbeat_ttl=, prefix=)`` opens its own connection
    on first use; a ``RedisBackend`` passes its shared ``connection`` instead.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        heartbeat_ttl: float | None = None,
        prefix: str | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        options = BackendOptions.from_url(redis_url, prefix=prefix, heartbeat_ttl=heartbeat_ttl)
        self.prefix = options.prefix
        self.heartbeat_ttl = options.heartbeat_ttl
        self._owns_connection = connection is None
        self._connection = connection or RedisConnection(redis_url)
        self._keys = WorkerKeys(self._connection.key_prefix(self.prefix))  # {prefix} on a cluster

    async def _script(self, name: str, source: str, keys: list[str], args: list[Any], action: str) -> Any:
        return await self._connection.run_script(name, source, keys, args, action)

    async def register(self, info: WorkerInfo) -> None:
        """Record ``info`` as live now (replacing an earlier record of the same id).

        A heartbeat index (``{p}:w:beats``) of another type, written below the engine, is
        replaced (logged): every listing needs it.
        """
        replaced = await self._script(
            "registry_register", _REGISTER, [self._keys.info(info.worker_id), self._keys.beats],
            [info.worker_id, encode(info.to_dict()), _ms(self.heartbeat_ttl)],
            f"register worker {info.worker_id!r}",
        )
        if replaced == 1:
            log.warning("worker %r: the worker registry's heartbeat index at Redis key %r was not a sorted set "
                        "(written below the engine); it was replaced", info.worker_id, self._keys.beats)

    async def heartbeat(self, worker_id: str) -> bool:
        """Refresh ``worker_id``; False if it is not registered (or expired)."""
        alive = await self._script(
            "registry_heartbeat", _HEARTBEAT, [self._keys.info(worker_id), self._keys.beats],
            [worker_id, _ms(self.heartbeat_ttl)], f"heartbeat worker {worker_id!r}",
        )
        return bool(alive)

    async def deregister(self, worker_id: str) -> None:
        """Remove ``worker_id`` at once; no error if unknown."""
        await self._script(
            "registry_deregister", _DEREGISTER, [self._keys.info(worker_id), self._keys.beats], [worker_id],
            f"deregister worker {worker_id!r}",
        )

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        """Live workers (heartbeat within ``heartbeat_ttl``), sorted by id."""
        reply = await self._script(
            "registry_list", _LIST, [self._keys.beats], [self._keys.prefix, _ms(self.heartbeat_ttl)], "list workers"
        )
        if len(reply) == 1 and isinstance(reply[0], bytes) and reply[0].startswith(b"\0"):
            raise PayloadDecodeError(
                f"the worker registry's heartbeat index at Redis key {self._keys.beats!r} is a Redis "
                f"{reply[0][1:].decode(errors='replace')}, not a sorted set: it was not written by this engine; "
                "delete it there (live workers write it again on their next heartbeat)")
        entries: list[tuple[str, str | None, Any]] = []
        beats: dict[str, float] = {}
        for index in range(0, len(reply), 3):
            worker_id = _text(reply[index])
            raw = reply[index + 1]
            if isinstance(raw, bytes) and raw.startswith(b"\0"):
                raw = ValueError(f"a Redis {raw[1:].decode(errors='replace')}, not a string")
            elif raw == b"\1":
                raw = ValueError(f"its heartbeat in {self._keys.beats!r} is dated more than heartbeat_ttl ahead of the "
                                 "server's clock, which no worker writes")
            entries.append((f"Redis key {self._keys.info(worker_id)!r}", worker_id, raw))
            beats[worker_id] = float(reply[index + 2]) / 1000.0
        workers = [
            replace(info, last_heartbeat=beats[info.worker_id])
            for info in readable_workers(entries)
            if node_type is None or node_type in info.node_types
        ]
        return sorted(workers, key=lambda w: w.worker_id)

    async def close(self) -> None:
        """Close the connection if this registry opened it. Idempotent."""
        if self._owns_connection:
            await self._connection.close()

    def __repr__(self) -> str:
        return f"<RedisNodeRegistry {self._connection.masked_url} prefix={self.prefix!r}>"


