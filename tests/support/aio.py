"""Run coroutines from plain pytest tests, always under a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """``asyncio.run(coro)`` that fails after ``timeout`` seconds instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def ends_cancelled(start: Callable[[], Awaitable[Any]], *, passes: int = 1,
                         wake: Callable[[], object] | None = None) -> bool:
    """Start ``start()``, let the event loop run ``passes`` passes (so it reaches its wait), then call
    ``wake`` (if given) and cancel it in that same pass: whether it ended with ``CancelledError``
    (False: it returned normally, the cancellation lost).

    With ``wake``, the awaited thing ends in the very pass the caller is cancelled, the case
    ``asyncio.wait_for`` gets wrong before Python 3.12 (``core.timeouts``)."""
    task = asyncio.ensure_future(start())
    for _ in range(passes):
        await asyncio.sleep(0)
    if wake is not None:
        wake()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


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


async def with_worker(worker: Any, body: Callable[[], Awaitable[T]]) -> T:
    """``body()`` while ``worker`` (a ``distributed_agents.Worker``) serves; the worker is
    stopped (1 s grace) and its serving task awaited on the way out, whatever ``body`` did."""
    serving = asyncio.ensure_future(worker.start())
    while not worker._serving:
        await asyncio.sleep(0.005)
    try:
        return await body()
    finally:
        await worker.stop(grace=1)
        await serving
