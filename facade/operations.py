"""What the operator commands and the dashboard read from a backend, as JSON-ready data.

One implementation for both front ends: ``distributed-agents workers``, ``queues`` and
``dead-letters`` print these shapes, and the dashboard renders them.

* a worker (``worker_json``): ``worker_id``, ``node_types`` (sorted), ``capacity``,
  ``in_flight``, ``busy_abandoned``, ``host``, ``pid``, ``heartbeat_age`` (seconds, one decimal);
* a queue (``queue_stats``): ``QueueStats`` per node type (``node_type``, ``queued``,
  ``in_flight``, ``dead``);
* a dead letter in a list (``letter_summary_json``): ``task_id``, ``node_type``,
  ``attempts``, ``reason`` (its first line), ``workflow_id``; in full (``letter_json``):
  also ``node``, ``dead_at``, the whole ``reason``, ``errors`` (oldest first, with
  tracebacks), ``task`` and ``raw`` (base64, for a payload that did not decode).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from typing import Any

from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.task_queue import DeadLetter, QueueStats, task_to_dict
from distributed_agents.core.ports.worker_registry import WorkerInfo

__all__ = ["all_dead_letters", "find_dead_letters", "known_node_types", "letter_json", "letter_summary_json",
           "queue_stats", "worker_json"]

DEAD_LETTER_PAGE = 1000


def worker_json(info: WorkerInfo, now: float | None = None, ttl: float | None = None) -> dict[str, Any]:
    """A live worker as JSON (see the module docstring); ``now`` in ``time.time()`` seconds.

    With the registry's heartbeat ``ttl`` (seconds) it also has ``status``: ``online``,
    ``late`` (no heartbeat for over half the TTL: workers beat at least twice per TTL, so one
    was missed) or ``offline`` (none for the whole TTL; the registry drops it soon).
    """
    now = time.time() if now is None else now
    age = max(0.0, now - info.last_heartbeat)
    found = {
        "worker_id": info.worker_id, "node_types": sorted(info.node_types), "capacity": info.capacity,
        "in_flight": info.metadata.get("in_flight"), "busy_abandoned": info.metadata.get("busy_abandoned"),
        "host": info.host, "pid": info.pid, "heartbeat_age": round(age, 1),
    }
    if ttl is not None:
        found["status"] = "offline" if age >= ttl else "late" if age > ttl / 2 else "online"
    return found


async def known_node_types(backend: Backend, extra: Iterable[str] = ()) -> list[str]:
    """Every node type a live worker serves or a dead letter has, plus ``extra``; sorted."""
    types: set[str] = set(extra)
    for info in await backend.worker_registry.list_workers():
        types.update(info.node_types)
    types.update(letter.node_type for letter in await backend.task_queue.dead_letters(None, limit=DEAD_LETTER_PAGE))
    return sorted(types)


async def queue_stats(backend: Backend, node_types: Sequence[str] | None = None) -> list[QueueStats]:
    """Queued, in-flight and dead counts of ``node_types`` (default: ``known_node_types``), by type name."""
    types = sorted(set(node_types)) if node_types else await known_node_types(backend)
    return [await backend.task_queue.stats(node_type) for node_type in types]


def letter_summary_json(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter of a listing: its id, node type, attempts, first line of the reason, workflow."""
    return {
        "task_id": letter.task_id, "node_type": letter.node_type, "attempts": letter.attempts,
        "reason": letter.reason.splitlines()[0] if letter.reason else "",
        "workflow_id": letter.task.workflow_id if letter.task else None,
    }


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """Everything stored about a dead letter (see the module docstring)."""
    return {
        "task_id": letter.task_id,
        "node_type": letter.node_type,
        "node": letter.task.node if letter.task else None,
        "workflow_id": letter.task.workflow_id if letter.task else None,
        "attempts": letter.attempts,
        "dead_at": letter.dead_at,
        "reason": letter.reason,
        "errors": list(letter.errors),
        "task": task_to_dict(letter.task) if letter.task else None,
        "raw": base64.b64encode(letter.raw).decode() if letter.raw is not None else None,
    }


async def find_dead_letters(backend: Backend, task_ids: Sequence[str]) -> dict[str, DeadLetter]:
    """The dead letters among ``task_ids`` (by id), read through the port's listing."""
    wanted = set(task_ids)
    found: dict[str, DeadLetter] = {}
    limit = DEAD_LETTER_PAGE
    while True:
        letters = await backend.task_queue.dead_letters(None, limit=limit)
        found = {letter.task_id: letter for letter in letters if letter.task_id in wanted}
        if len(found) == len(wanted) or len(letters) < limit:
            return found
        limit *= 10


async def all_dead_letters(backend: Backend, node_type: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of ``node_type``, if given), oldest first, read in growing pages."""
    letters: list[DeadLetter] = []
    while True:
        page = await backend.task_queue.dead_letters(node_type, limit=len(letters) + DEAD_LETTER_PAGE)
        if len(page) <= len(letters):
            return letters
        letters = page
