"""The WorkerRegistry port: who is serving which node types, right now.

The contract (checked by ``distributed_agents.conformance``):

* ``register`` records a worker (replacing an earlier record with the same id), every
  field as given (metadata, ``started_at``...), and counts as a heartbeat: the
  registry sets ``last_heartbeat`` to now, whatever the caller's info says.
* ``heartbeat`` refreshes a registered worker; it returns False when the worker is not
  registered (never registered, deregistered or expired), telling it to register again.
* Only workers whose last heartbeat is within ``heartbeat_ttl`` seconds are listed. A
  heartbeat just before ``heartbeat_ttl`` runs out succeeds and keeps the worker listed
  for another full ``heartbeat_ttl``; one just after it returns False.
* ``deregister`` removes a worker at once.
* ``list_workers(node_type=)`` filters by a node type the worker serves (compared
  exactly), and lists every live worker sorted by id as exact strings (code points,
  case-sensitive; no page limit).
* Two registries with different prefixes never see each other's workers, also when
  one prefix extends the other by a key separator (``app`` and ``app:eu``, ``app.eu``).
* Every method accepts exactly the parameters of this class (names, kinds, defaults).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerInfo", "WorkerRegistry"]


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker tells the registry about itself."""

    worker_id: str
    node_types: frozenset[str]
    capacity: int = 1
    host: str = ""
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the record."""
        return {
            "worker_id": self.worker_id,
            "node_types": sorted(self.node_types),
            "capacity": self.capacity,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        """Rebuild a record from ``to_dict`` output."""
        return cls(
            worker_id=data["worker_id"],
            node_types=frozenset(data.get("node_types", ())),
            capacity=int(data.get("capacity", 1)),
            host=data.get("host", ""),
            pid=int(data.get("pid", 0)),
            started_at=float(data.get("started_at", 0.0)),
            last_heartbeat=float(data.get("last_heartbeat", 0.0)),
            metadata=data.get("metadata") or {},
        )


class WorkerRegistry:
    """Port: live worker discovery. Subclasses implement every method; see module docstring."""

    heartbeat_ttl: float = 30.0

    async def register(self, info: WorkerInfo) -> None:
        """Record ``info`` as live now."""
        raise NotImplementedError

    async def heartbeat(self, worker_id: str) -> bool:
        """Refresh ``worker_id``; False if it is not registered (it should register again)."""
        raise NotImplementedError

    async def deregister(self, worker_id: str) -> None:
        """Remove ``worker_id``; no error if it is unknown."""
        raise NotImplementedError

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        """Live workers, optionally only those serving ``node_type``, sorted by id."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections. Idempotent."""
