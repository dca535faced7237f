"""The Redis backend (needs the ``[redis]`` extra: ``pip install 'distributed-agents[redis]'``).

Importing this package never imports redis-py: the public classes are loaded on first
attribute access, and using them without redis-py raises ``MissingExtraError`` with the
install command. Ports: ``RedisTaskQueue``, ``RedisStateManager`` (the StateStore),
``RedisNodeRegistry`` (the WorkerRegistry), ``RedisMessageBus``; ``open_redis_backend``
bundles them over one connection pool.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "RedisBackend",
    "RedisMessageBus",
    "RedisNodeRegistry",
    "RedisStateManager",
    "RedisTaskQueue",
    "open_redis_backend",
]

_WHERE = {
    "RedisBackend": "backend",
    "RedisMessageBus": "message_bus",
    "RedisNodeRegistry": "worker_registry",
    "RedisStateManager": "state_store",
    "RedisTaskQueue": "task_queue",
    "open_redis_backend": "backend",
}

if TYPE_CHECKING:
    from distributed_agents.adapters.redis.backend import RedisBackend, open_redis_backend
    from distributed_agents.adapters.redis.message_bus import RedisMessageBus
    from distributed_agents.adapters.redis.state_store import RedisStateManager
    from distributed_agents.adapters.redis.task_queue import RedisTaskQueue
    from distributed_agents.adapters.redis.worker_registry import RedisNodeRegistry


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
