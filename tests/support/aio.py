"""Run coroutines from plain pytest tests, always under a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """``asyncio.run(coro)`` that fails after ``timeout`` seconds instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def connect_failure(url: str, timeout: float = 30) -> BaseException:
    """The error ``connect()`` of the backend at ``url`` raises (the backend is closed either way);
    ``AssertionError`` if it connects."""
    from distributed_agents.plugins import open_backend

    async def attempt() -> BaseException:
        backend = open_backend(url)
        try:
            await backend.connect()
        except BaseException as exc:
            return exc
        finally:
            await backend.close()
        raise AssertionError(f"{url} connected")

    return run(attempt(), timeout)
