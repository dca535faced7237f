"""One redis-py asyncio client per backend (or per standalone port), created lazily.

``RedisConnection`` turns a backend URL into a redis-py client: ``redis://``,
``rediss://`` (TLS) and ``unix://`` URLs with username, password and database number
are handled by redis-py's ``from_url``; the query options that are ours
(``BackendOptions`` fields such as ``prefix``) are stripped first because redis-py
would pass unknown query keys to the socket layer.

The client retries a command that failed on a broken or refused connection, with
exponential backoff (about 1.5 s in all), then raises; ``redis_errors`` turns that into
``BackendUnavailableError``. Every script and command of this adapter is safe to
repeat after a lost reply (see ``task_queue``), which is what makes that retry sound.

Lua scripts are registered once per connection (redis-py ``Script`` objects compute
the SHA locally and call ``EVALSHA``, loading the script only on ``NOSCRIPT``).

The client binds to the event loop of its first command; ``client()`` makes a new one
when it is used from another loop (test harnesses run one loop per test).
"""

from __future__ import annotations

import asyncio
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from distributed_agents.adapters.redis.errors import load_redis, mask_url, redis_errors
from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.ports.backend import BackendOptions

__all__ = ["RedisConnection", "redis_client_url"]

_OUR_OPTIONS = frozenset(f.name for f in fields(BackendOptions))
_SCHEMES = ("redis", "rediss", "unix")

# Backoff per retry: 0.05, 0.1, 0.2, 0.4, 0.5, 0.5 s -> gives up after ~1.75 s.
_RETRIES = 6
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 0.5
# Pool defaults; ?max_connections= and ?timeout= in the URL override them.
_MAX_CONNECTIONS = 64
_POOL_TIMEOUT = 20.0


def redis_client_url(url: str) -> str:
    """``url`` without our own query options, as redis-py's ``from_url`` should see it."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES:
        raise BackendConfigError(f"{mask_url(url)} is not a Redis URL; use redis://, rediss:// or unix://")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OUR_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(query)))


class RedisConnection:
    """A lazily created redis-py client for one URL, shared by the ports that use it."""

    def __init__(self, url: str) -> None:
        load_redis()  # MissingExtraError with the install command, before anything else
        self.url = url
        self._client_url = redis_client_url(url)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def masked_url(self) -> str:
        """The URL with its password masked."""
        return mask_url(self.url)

    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client of the running loop (created on first use)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            redis_asyncio = load_redis()
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError, TimeoutError

            try:
                # A client of a previous, now finished, loop is dropped, not closed:
                # its sockets belong to that loop and cannot be closed from this one.
                # A blocking pool makes a burst of concurrent calls queue for a
                # connection instead of failing with "Too many connections".
                # Keyword defaults; settings in the URL's query string take precedence.
                pool = redis_asyncio.BlockingConnectionPool.from_url(
                    self._client_url,
                    max_connections=_MAX_CONNECTIONS,
                    timeout=_POOL_TIMEOUT,
                    socket_connect_timeout=5,
                    socket_timeout=10,
                    health_check_interval=30,
                    retry=Retry(ExponentialBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), _RETRIES),
                    retry_on_error=[ConnectionError, TimeoutError],
                )
                # Building (not connecting) one connection object rejects unknown query
                # options now, instead of on the first command.
                pool.connection_class(**pool.connection_kwargs)
                self._client = redis_asyncio.Redis.from_pool(pool)
            except (TypeError, ValueError) as exc:
                raise BackendConfigError(
                    f"invalid Redis URL {self.masked_url}: {exc}; query options are ours "
                    f"({', '.join(sorted(_OUR_OPTIONS - {'extra'}))}) or redis-py connection settings"
                ) from exc
            self._loop = loop
            self._scripts.clear()
        return self._client

    def script(self, name: str, source: str) -> Any:
        """The registered redis-py ``AsyncScript`` for ``source`` (registered once per client)."""
        client = self.client()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script

    async def run_script(self, name: str, source: str, keys: list[str], args: list[Any], action: str) -> Any:
        """Run a Lua script with ``EVALSHA`` (one round trip once the server knows it)."""
        script = self.script(name, source)
        with redis_errors(self.url, action):
            return await script(keys=keys, args=args, client=self._client)

    async def ping(self) -> None:
        """Round trip to the server; ``BackendUnavailableError`` if it cannot be reached."""
        with redis_errors(self.url, "connect"):
            await self.client().ping()

    async def close(self) -> None:
        """Close the client and its pool. Idempotent."""
        client, self._client = self._client, None
        loop, self._loop = self._loop, None
        self._scripts.clear()
        if client is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            with redis_errors(self.url, "close the connection"):
                await client.aclose()

    def __repr__(self) -> str:
        return f"<RedisConnection {self.masked_url}>"
