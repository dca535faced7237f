"""Entry point of the Redis backend, registered like any third-party backend.

Importing this module never imports the Redis client library; the factory module is
imported only when a URL of its scheme is opened.
"""

from __future__ import annotations

from collections.abc import Sequence

from distributed_agents.plugins import BackendSpec, hookimpl

__all__ = ["distributed_agents_backends"]


@hookimpl
def distributed_agents_backends() -> Sequence[BackendSpec]:
    """The Redis backend."""
    return [
        BackendSpec(
            name="redis",
            schemes=("redis", "rediss", "unix"),
            factory="distributed_agents.adapters.redis.backend:open_redis_backend",
            install_hint="pip install 'distributed-agents[redis]' (from a checkout: pip install '.[redis]')",
            description="Redis coordination backend",
        )
    ]
