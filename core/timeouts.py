"""Waiting with a time limit without losing the caller's cancellation.

``asyncio.wait_for`` on Python before 3.12 returns normally when the caller is cancelled
in the same event-loop pass as the awaited thing finishes (CPython gh-86296, fixed in
3.12): the cancellation is lost, and a loop around the wait (a stream consumer, a
subscription reader, a benchmark pass) goes on as if nothing had asked it to stop. That
pass is not rare where events come often: a message, a stream chunk or a result landing
as a Ctrl-C or a ``task.cancel()`` does. ``wait_within`` waits with ``asyncio.wait``
instead, which never swallows a cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["wait_within", "within"]

T = TypeVar("T")


async def wait_within(awaitable: Awaitable[Any], timeout: float | None) -> bool:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: no limit).

    Returns True once it finished (raising its exception if it raised one), False when the
    time ran out (it is then cancelled, as ``asyncio.wait_for`` cancels it). A cancellation
    of the caller cancels it too and always raises ``asyncio.CancelledError`` here, even when
    it finished in the same event-loop pass (its result is then dropped). ``timeout`` at or
    below 0 gives it no time: True only if it is already done.
    """
    inner = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({inner}, timeout=None if timeout is None else max(timeout, 0.0))
    except asyncio.CancelledError:
        _abandon(inner)
        raise
    if not done:
        _abandon(inner)
        return False
    inner.result()
    return True


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for(awaitable, timeout)`` without its loss of the caller's cancellation: the
    result of ``awaitable``, or ``asyncio.TimeoutError`` once ``timeout`` seconds have passed (it is
    cancelled then); its own exception is raised as it is."""
    inner = asyncio.ensure_future(awaitable)
    if not await wait_within(inner, timeout):
        raise asyncio.TimeoutError
    return inner.result()


def _abandon(inner: asyncio.Future[Any]) -> None:
    """Cancel what the caller no longer waits for; an outcome it still reaches is read (never reported
    as "exception was never retrieved")."""
    inner.cancel()
    inner.add_done_callback(lambda done: None if done.cancelled() else done.exception())
