"""WorkerRegistry on a JetStream KV bucket (``<p>_workers``), one key per worker.

Liveness is decided from the stored ``last_heartbeat`` against ``heartbeat_ttl``, exactly
as the memory backend does; each write also carries a per-message TTL a little longer
than ``heartbeat_ttl`` so the server forgets crashed workers by itself. ``heartbeat`` is
a get plus a CAS on the revision, so it cannot resurrect a worker that was deregistered
concurrently. Round trips: register 1, heartbeat 2, list 1 (a watch over the bucket).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Any

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.adapters.nats.naming import token, untoken
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.worker_registry import WorkerInfo, WorkerRegistry, readable_workers, stored_worker

__all__ = ["NatsWorkerRegistry"]


class NatsWorkerRegistry(WorkerRegistry):
    """WorkerRegistry over JetStream KV; see the module docstring."""

    def __init__(self, conn: NatsConnection, *, heartbeat_ttl: float = 30.0) -> None:
        self._conn = conn
        self.heartbeat_ttl = heartbeat_ttl

    @property
    def _kv(self) -> Any:
        return self._conn.bucket(self._conn.names.worker_bucket)

    @property
    def _ttl(self) -> float:
        return self.heartbeat_ttl + 1.0

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return nats_errors(self._conn.url, action)

    def _where(self, key: str) -> str:
        return f"key {key!r} of JetStream KV bucket {self._conn.names.worker_bucket!r}"

    def _entry(self, entry: kv.Entry, now: float) -> tuple[str, str | None, Any]:
        worker_id = untoken(entry.key[2:])
        if worker_id is None:
            return self._where(entry.key), None, ValueError("its key names no worker id this engine writes")
        try:
            info = stored_worker(entry.value, self._where(entry.key), worker_id)
        except PayloadDecodeError:
            return self._where(entry.key), worker_id, entry.value  # readable_workers reports it
        if info.last_heartbeat > now + self.heartbeat_ttl:
            return self._where(entry.key), worker_id, ValueError(
                "its last_heartbeat is dated more than heartbeat_ttl ahead of this clock, which no worker writes")
        return self._where(entry.key), worker_id, info

    def _alive(self, info: WorkerInfo, now: float) -> bool:
        return now - info.last_heartbeat < self.heartbeat_ttl

    async def register(self, info: WorkerInfo) -> None:
        stored = replace(info, last_heartbeat=time.time())
        with self._errors(f"register worker {info.worker_id!r}"):
            await kv.put(self._conn.js, self._kv, f"w.{token(info.worker_id)}", encode(stored.to_dict()), ttl=self._ttl)

    async def heartbeat(self, worker_id: str) -> bool:
        key = f"w.{token(worker_id)}"
        with self._errors(f"heartbeat worker {worker_id!r}"):
            for _ in range(5):
                entry = await kv.get(self._kv, key)
                now = time.time()
                if entry is None:
                    return False
                try:
                    info = stored_worker(entry.value, self._where(key), worker_id)
                except PayloadDecodeError:  # not a record this worker wrote: it registers again over it
                    return False
                if not self._alive(info, now):
                    await kv.remove(self._conn.js, self._kv, key)
                    return False
                fresh = replace(info, last_heartbeat=now)
                if await kv.cas(self._conn.js, self._kv, key, encode(fresh.to_dict()), last=entry.revision, ttl=self._ttl):
                    return True
        return False

    async def deregister(self, worker_id: str) -> None:
        with self._errors(f"deregister worker {worker_id!r}"):
            await kv.remove(self._conn.js, self._kv, f"w.{token(worker_id)}")

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        with self._errors("list workers"):
            entries = await kv.scan(self._conn.js, self._kv, "w.*")
        now = time.time()
        workers = readable_workers([self._entry(e, now) for e in entries])
        live = [w for w in workers if self._alive(w, now) and (node_type is None or node_type in w.node_types)]
        return sorted(live, key=lambda w: w.worker_id)
