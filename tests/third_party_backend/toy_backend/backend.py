"""The factory: ``open_toy_backend(url, options)`` returns an unconnected ``Backend``."""

from __future__ import annotations

from distributed_agents.adapters.memory import MemoryMessageBus, MemoryStateStore, MemoryTaskQueue, MemoryWorkerRegistry
from distributed_agents.adapters.memory.backend import MemorySpace
from distributed_agents.core.ports.backend import Backend, BackendOptions

_spaces: dict[str, MemorySpace] = {}


def open_toy_backend(url: str, options: BackendOptions) -> Backend:
    """All toy:// backends of one process and prefix share their data."""
    space = _spaces.setdefault(options.prefix, MemorySpace())
    return Backend(
        url=url,
        options=options,
        task_queue=MemoryTaskQueue(space.queue, visibility_timeout=options.visibility_timeout,
                                   max_attempts=options.max_attempts, result_ttl=options.result_ttl),
        state_store=MemoryStateStore(space.state, state_ttl=options.state_ttl),
        worker_registry=MemoryWorkerRegistry(space.registry, heartbeat_ttl=options.heartbeat_ttl),
        message_bus=MemoryMessageBus(space.bus),
    )
