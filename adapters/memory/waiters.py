"""Wake-ups that work across event loops and threads, for the in-process backend.

The memory backend is shared by everything in a process, including code running in
different event loops (each ``asyncio.run``) and threads, so it cannot hold loop-bound
primitives such as ``asyncio.Condition``. Waiters are futures of the caller's own loop,
resolved thread-safely.
"""

from __future__ import annotations

import asyncio
import threading
from distributed_agents.core.timeouts import wait_within
from collections.abc import Hashable

__all__ = ["WaiterSet"]


class WaiterSet:
    """Futures waiting on keys; ``notify(key)`` wakes every waiter of that key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Hashable, set[asyncio.Future[None]]] = {}

    def add(self, keys: list[Hashable] | tuple[Hashable, ...]) -> asyncio.Future[None]:
        """A future of the running loop, resolved by the next ``notify`` of any of ``keys``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, set()).add(future)
        return future

    def discard(self, keys: list[Hashable] | tuple[Hashable, ...], future: asyncio.Future[None]) -> None:
        """Forget ``future`` (after it fired or timed out)."""
        with self._lock:
            for key in keys:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[key]

    def notify(self, key: Hashable) -> None:
        """Wake every waiter of ``key``."""
        with self._lock:
            waiting = self._waiters.pop(key, None)
        for future in waiting or ():
            try:
                future.get_loop().call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed; nobody is waiting any more
                pass

    async def wait(self, keys: list[Hashable] | tuple[Hashable, ...], timeout: float) -> None:
        """Sleep until a ``notify`` of one of ``keys`` or ``timeout`` seconds, whichever first."""
        future = self.add(keys)
        try:
            await wait_within(future, timeout)  # not wait_for: see core.timeouts
        finally:
            self.discard(keys, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
