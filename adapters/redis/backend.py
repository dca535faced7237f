"""``open_redis_backend``: the four Redis ports over one shared connection pool.

The plugin (``plugin.py``) names this module's factory as a string, so redis-py is
imported only when a ``redis://``, ``rediss://`` or ``unix://`` URL is opened. Query
options that are ours (``?prefix=app&max_attempts=5``) arrive parsed in
``BackendOptions`` and are stripped from the URL given to redis-py; the rest of the
query (e.g. ``ssl_cert_reqs=none``) is passed to redis-py.
"""

from __future__ import annotations

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.errors import load_redis
from distributed_agents.adapters.redis.message_bus import RedisMessageBus
from distributed_agents.adapters.redis.state_store import RedisStateManager
from distributed_agents.adapters.redis.task_queue import RedisTaskQueue
from distributed_agents.adapters.redis.worker_registry import RedisNodeRegistry
from distributed_agents.core.ports.backend import Backend, BackendOptions

__all__ = ["RedisBackend", "open_redis_backend"]


class RedisBackend(Backend):
    """The Redis ports sharing one ``RedisConnection`` (one client, one pool).

    ``connect()`` creates the client and checks the server answers (raising
    ``BackendUnavailableError`` naming the URL, password masked, if not); ``close()``
    closes the ports' pub/sub connections, then the client and its pool.
    """

    def __init__(self, *, url: str, options: BackendOptions, connection: RedisConnection) -> None:
        self.connection = connection
        super().__init__(
            url=url,
            options=options,
            task_queue=RedisTaskQueue(
                url,
                prefix=options.prefix,
                result_ttl=options.result_ttl,
                visibility_timeout=options.visibility_timeout,
                max_attempts=options.max_attempts,
                connection=connection,
            ),
            state_store=RedisStateManager(url, prefix=options.prefix, state_ttl=options.state_ttl, connection=connection),
            worker_registry=RedisNodeRegistry(
                url, prefix=options.prefix, heartbeat_ttl=options.heartbeat_ttl, connection=connection
            ),
            message_bus=RedisMessageBus(url, prefix=options.prefix, connection=connection),
        )

    async def connect(self) -> None:
        """Create the client and ping the server. Idempotent."""
        await self.connection.ping()

    async def close(self) -> None:
        """Close every port, then the shared client. Idempotent."""
        try:
            await super().close()
        finally:
            await self.connection.close()

    def __repr__(self) -> str:
        return f"<RedisBackend {self.connection.masked_url} prefix={self.options.prefix!r}>"


def open_redis_backend(url: str, options: BackendOptions) -> Backend:
    """Backend factory for ``redis://``, ``rediss://`` and ``unix://`` URLs (not yet connected)."""
    load_redis()  # fail here, with the install hint, rather than on first use
    return RedisBackend(url=url, options=options, connection=RedisConnection(url))
