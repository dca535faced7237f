"""Entry point of the memory backend, registered like any third-party backend."""

from __future__ import annotations

from collections.abc import Sequence

from distributed_agents.plugins import BackendSpec, hookimpl

__all__ = ["distributed_agents_backends"]


@hookimpl
def distributed_agents_backends() -> Sequence[BackendSpec]:
    """The in-process backend, serving ``memory://``."""
    return [
        BackendSpec(
            name="memory",
            schemes=("memory",),
            factory="distributed_agents.adapters.memory.backend:open_memory_backend",
            description="in-process backend (standard library only); the default",
        )
    ]
