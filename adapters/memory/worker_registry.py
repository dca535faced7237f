"""In-process WorkerRegistry: worker records with heartbeat expiry."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from distributed_agents.core.ports.worker_registry import WorkerInfo, WorkerRegistry

__all__ = ["MemoryWorkerRegistry", "RegistryData"]


class RegistryData:
    """All workers of one prefix; shared by every ``MemoryWorkerRegistry`` on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.workers: dict[str, WorkerInfo] = {}


class MemoryWorkerRegistry(WorkerRegistry):
    """WorkerRegistry over ``RegistryData``; see the port's docstring for the contract."""

    def __init__(self, data: RegistryData, *, heartbeat_ttl: float = 30.0) -> None:
        self._data = data
        self.heartbeat_ttl = heartbeat_ttl

    def _alive(self, info: WorkerInfo, now: float) -> bool:
        return now - info.last_heartbeat < self.heartbeat_ttl

    async def register(self, info: WorkerInfo) -> None:
        with self._data.lock:
            self._data.workers[info.worker_id] = replace(info, last_heartbeat=time.time())

    async def heartbeat(self, worker_id: str) -> bool:
        with self._data.lock:
            now = time.time()
            info = self._data.workers.get(worker_id)
            if info is None or not self._alive(info, now):
                self._data.workers.pop(worker_id, None)
                return False
            self._data.workers[worker_id] = replace(info, last_heartbeat=now)
            return True

    async def deregister(self, worker_id: str) -> None:
        with self._data.lock:
            self._data.workers.pop(worker_id, None)

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        with self._data.lock:
            now = time.time()
            live = [
                info
                for info in self._data.workers.values()
                if self._alive(info, now) and (node_type is None or node_type in info.node_types)
            ]
        return sorted(live, key=lambda info: info.worker_id)
