"""The in-process backend: four memory ports over data shared by name and prefix.

``memory://`` names the process-wide default space; ``memory://other`` a separate one.
Every ``Backend`` opened on the same name and prefix sees the same queue, store,
registry and bus, so an ``Orchestrator`` and a ``Worker`` created independently in one
process find each other, as they would through Redis.
"""

from __future__ import annotations

import threading
from dataclasses import fields

from distributed_agents.adapters.memory.message_bus import BusData, MemoryMessageBus
from distributed_agents.adapters.memory.state_store import MemoryStateStore, StateData
from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue, QueueData
from distributed_agents.adapters.memory.worker_registry import MemoryWorkerRegistry, RegistryData
from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.ports.backend import Backend, BackendOptions, split_backend_url
from distributed_agents.core.redaction import redact_url

__all__ = ["MemorySpace", "open_memory_backend", "reset_memory_spaces"]


class MemorySpace:
    """The shared data of one ``memory://name`` and prefix."""

    def __init__(self) -> None:
        self.queue = QueueData()
        self.state = StateData()
        self.registry = RegistryData()
        self.bus = BusData()


_spaces_lock = threading.Lock()
_spaces: dict[tuple[str, str], MemorySpace] = {}


def _space(name: str, prefix: str) -> MemorySpace:
    with _spaces_lock:
        space = _spaces.get((name, prefix))
        if space is None:
            space = _spaces[(name, prefix)] = MemorySpace()
        return space


def reset_memory_spaces() -> None:
    """Forget every memory space (for tests that need a clean process-wide backend)."""
    with _spaces_lock:
        _spaces.clear()


def open_memory_backend(url: str, options: BackendOptions) -> Backend:
    """Backend factory for ``memory://[name]``.

    Takes only the options every backend shares (``BackendOptions``); any other
    (``options.extra``: a typo, or a Redis/NATS setting) raises ``BackendConfigError``
    naming it, as the other adapters refuse what they do not know.
    """
    if options.extra:
        known = sorted(f.name for f in fields(BackendOptions) if f.name != "extra")
        raise BackendConfigError(
            f"unknown option(s) {', '.join(map(repr, sorted(options.extra)))} for {redact_url(url)!r}: the memory "
            f"backend takes only {', '.join(known)}")
    _, rest = split_backend_url(url)
    name = rest.split("?", 1)[0].strip("/") or "default"
    space = _space(name, options.prefix)
    return Backend(
        url=url,
        options=options,
        task_queue=MemoryTaskQueue(
            space.queue,
            visibility_timeout=options.visibility_timeout,
            max_attempts=options.max_attempts,
            result_ttl=options.result_ttl,
        ),
        state_store=MemoryStateStore(space.state, state_ttl=options.state_ttl),
        worker_registry=MemoryWorkerRegistry(space.registry, heartbeat_ttl=options.heartbeat_ttl),
        message_bus=MemoryMessageBus(space.bus),
    )
