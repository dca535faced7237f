"""Fixtures for the Redis adapter tests: connected backends on fresh prefixes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from distributed_agents.adapters.redis.backend import RedisBackend, open_redis_backend
from distributed_agents.core.ports.backend import BackendOptions

OpenRedis = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
def open_redis(redis_url: str) -> OpenRedis:
    """``await open_redis(**options)``: a connected backend on a fresh prefix unless given.

    The caller closes it (inside the same event loop).
    """

    async def opener(url: str | None = None, **options: Any) -> RedisBackend:
        target = url or redis_url
        options.setdefault("prefix", f"t{uuid.uuid4().hex[:10]}")
        backend = open_redis_backend(target, BackendOptions.from_url(target, **options))
        assert isinstance(backend, RedisBackend)
        await backend.connect()
        return backend

    return opener
