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
* A stored record this engine did not write (not JSON, a field of the wrong type, a key
  of another type, a record under another worker's key) is left out of ``list_workers``
  and logged once, naming its key and how to remove it: one bad entry never makes the
  listing, and so the workflows and commands that read it, fail. ``stored_worker`` is
  the one check every backend that parses records uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed_agents.core.codec import REQUIRED

__all__ = ["WorkerInfo", "WorkerRegistry", "readable_workers", "stored_worker"]

log = logging.getLogger("distributed_agents.worker_registry")


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


# name -> (JSON types allowed, default when absent or null): codec.checked_object's shape
_WORKER_SHAPE: dict[str, tuple[tuple[type, ...], Any]] = {
    "worker_id": ((str,), REQUIRED),
    "node_types": ((list,), []),
    "capacity": ((int,), 1),
    "host": ((str,), ""),
    "pid": ((int,), 0),
    "started_at": ((int, float), 0.0),
    "last_heartbeat": ((int, float), 0.0),
    "metadata": ((dict,), {}),
}


def stored_worker(raw: bytes | str | Any, where: str, worker_id: str | None = None) -> WorkerInfo:
    """The worker record a registry read at ``where`` (its key), checked.

    ``raw`` is the stored bytes (or text, or an already decoded value). Accepted: a JSON
    object of ``WorkerInfo.to_dict``'s shape -- ``worker_id`` a non-empty string (equal to
    ``worker_id`` when given: the id the key names), ``node_types`` a list of strings,
    ``capacity`` an integer >= 1, ``pid`` an integer >= 0, times finite numbers (seconds),
    ``metadata`` an object. Raises ``PayloadDecodeError`` naming ``where``, the problem and
    how to remove the entry otherwise.
    """
    from distributed_agents.core.codec import checked_object
    from distributed_agents.core.errors import PayloadDecodeError

    try:
        values = checked_object(raw, _WORKER_SHAPE, "a worker record")
        if not values["worker_id"]:
            raise ValueError("field 'worker_id' is empty")
        if worker_id is not None and values["worker_id"] != worker_id:
            raise ValueError(f"it names worker {values['worker_id'][:80]!r}, not the key's {worker_id[:80]!r}")
        if not all(isinstance(t, str) for t in values["node_types"]):
            raise ValueError("field 'node_types' holds something other than strings")
        if values["capacity"] < 1:
            raise ValueError(f"field 'capacity' is {values['capacity']}, not >= 1")
        if values["pid"] < 0:
            raise ValueError(f"field 'pid' is {values['pid']}, not >= 0")
        return WorkerInfo(
            worker_id=values["worker_id"], node_types=frozenset(values["node_types"]),
            capacity=values["capacity"], host=values["host"], pid=values["pid"],
            started_at=float(values["started_at"]), last_heartbeat=float(values["last_heartbeat"]),
            metadata=values["metadata"],
        )
    except (PayloadDecodeError, ValueError, OverflowError) as exc:
        raise malformed_worker(where, str(exc)) from None


def malformed_worker(where: str, problem: str) -> Exception:
    """The error for a worker-registry entry at ``where`` this engine did not write: the one wording."""
    from distributed_agents.core.errors import PayloadDecodeError

    return PayloadDecodeError(
        f"the worker-registry entry at {where} is malformed ({problem}); it was not written by a worker of this "
        "version of the engine (or was edited). It is left out of the worker listing; delete it there to stop "
        "this message (a live worker writes its entry again on its next heartbeat)"
    )


_warned: set[tuple[str, str]] = set()  # (where, problem) already logged: a listing runs every step


def readable_workers(entries: list[tuple[str, str | None, Any]]) -> list[WorkerInfo]:
    """``stored_worker`` of each ``(where, worker id or None, raw)``; a bad one is logged once and left out.

    ``raw`` may also be an ``Exception`` a backend met reading the entry (a Redis key of
    another type), logged the same way, or a ``WorkerInfo`` it checked already (taken as
    it is). Used by every registry's ``list_workers``.
    """
    workers = []
    for where, worker_id, raw in entries:
        if isinstance(raw, WorkerInfo):
            workers.append(raw)
            continue
        try:
            if isinstance(raw, Exception):
                raise malformed_worker(where, str(raw))
            workers.append(stored_worker(raw, where, worker_id))
        except Exception as exc:  # PayloadDecodeError
            key = (where, str(exc))
            if key not in _warned:
                if len(_warned) > 10_000:  # bounded, whatever keeps appearing
                    _warned.clear()
                _warned.add(key)
                log.warning("%s", exc)
    return workers


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
