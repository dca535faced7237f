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
from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.limits import limit_below
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
        self._bulk_checked = False
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
                max_payload_bytes=options.max_payload_bytes,
            ),
            state_store=RedisStateManager(url, prefix=options.prefix, state_ttl=options.state_ttl, connection=connection),
            worker_registry=RedisNodeRegistry(
                url, prefix=options.prefix, heartbeat_ttl=options.heartbeat_ttl, connection=connection
            ),
            message_bus=RedisMessageBus(url, prefix=options.prefix, connection=connection),
        )

    async def connect(self) -> None:
        """Create the client and ping the server. Idempotent.

        A configured ``max_payload_bytes`` that the server could not store (over its
        ``proto-max-bulk-len``, 512 MB by default, less the envelope) is refused with
        ``BackendConfigError``; a server that does not allow ``CONFIG GET`` is trusted.
        """
        await self.connection.ping()
        configured = self.options.max_payload_bytes
        if configured is None or self._bulk_checked:
            return
        self._bulk_checked = True
        try:
            reply = await self.connection.client().config_get("proto-max-bulk-len")
            values = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in dict(reply).items()}
            server_max = int(values.get("proto-max-bulk-len") or 0)
        except Exception:  # CONFIG is often disabled on managed Redis: nothing to compare with
            return
        if server_max and configured > limit_below(server_max):
            raise BackendConfigError(
                f"max_payload_bytes={configured} is more than Redis at {self.connection.masked_url} can store: its "
                f"proto-max-bulk-len is {server_max} bytes, which leaves {limit_below(server_max)} for a result or "
                "state; lower max_payload_bytes, or raise proto-max-bulk-len in redis.conf"
            )

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
    return RedisBackend(url=url, options=options, connection=RedisConnection(url, options.extra))
