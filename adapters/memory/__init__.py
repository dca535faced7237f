"""The in-process backend: the default, standard library only, shared per process."""

from __future__ import annotations

from distributed_agents.adapters.memory.backend import MemorySpace, open_memory_backend, reset_memory_spaces
from distributed_agents.adapters.memory.message_bus import MemoryMessageBus
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue
from distributed_agents.adapters.memory.worker_registry import MemoryWorkerRegistry

__all__ = [
    "MemoryMessageBus",
    "MemorySpace",
    "MemoryStateStore",
    "MemoryTaskQueue",
    "MemoryWorkerRegistry",
    "open_memory_backend",
    "reset_memory_spaces",
]
