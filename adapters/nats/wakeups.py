"""Wake-ups of waiting claimers: core NATS subjects ``<p>.wake.<type>``, subscribed once.

A producer publishes one message per node type that got ready tasks (no round trip). A
queue subscribes to a type's subject the first time it claims that type and keeps the
subscription, so a wake-up that comes between two claims is not lost (a subscription
made per wait would miss one sent before it reached the server). Each type has a
``Wake`` (an event) that a wake-up sets and replaces: a claimer takes the current events
*before* looking for tasks and waits on them after finding none, so a wake-up during
its look ends the wait at once. Lost wake-ups (reconnects) cost a waiting claimer one
poll interval, which the caller bounds. A wait is one future and one timer, which a
wake-up completes from the client's reader (``asyncio.wait`` over an ``asyncio.Event``
per type made a task per type and its bookkeeping on every waiting claim).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.replies import Direct
from distributed_agents.adapters.nats.message_bus import flush_in_order

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["Wake", "Wakeups"]


class Wake:
    """One wake-up of a node type to come: ``set`` once it came; the waits on it end then."""

    __slots__ = ("_set", "waiters")

    def __init__(self) -> None:
        self._set = False
        self.waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


def _time_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Wakeups:
    """Per node type: one subscription and the event of the next wake-up."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._subs: dict[str, Any] = {}
        self._events: dict[str, Wake] = {}
        self._client: Any = None

    async def ensure(self, node_types: Sequence[str]) -> None:
        """Subscribe to the types not subscribed yet; the server knows them when this returns."""
        nc = self._conn.nc
        if self._client is not nc:
            self._subs.clear()  # a new client: the old one's subscriptions are gone with it
            # and its events too (a new client may serve another event loop).
            self._events.clear()
            self._client = nc
        missing = [t for t in node_types if t not in self._subs]
        for node_type in missing:
            self._events.setdefault(node_type, Wake())

            def on_wake(_msg: Msg, node_type: str = node_type) -> None:
                self._fire(node_type)

            self._subs[node_type] = await nc.subscribe(self._conn.names.wake_subject(node_type), future=Direct(on_wake))
        if missing:
            await flush_in_order(nc)

    def _fire(self, node_type: str) -> None:
        event = self._events.get(node_type)
        if event is not None:
            event.set()
        self._events[node_type] = Wake()

    def events(self, node_types: Sequence[str]) -> list[Wake]:
        """The events the next wake-up of any of ``node_types`` sets (take them before looking)."""
        events = self._events
        return [events[t] if t in events else events.setdefault(t, Wake()) for t in node_types]

    @staticmethod
    async def wait(events: Sequence[Wake], timeout: float) -> None:
        """Until one of ``events`` is set (maybe already), or ``timeout`` seconds."""
        if timeout <= 0 or any(event.is_set() for event in events):
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        for event in events:
            event.waiters.append(future)
        timer = loop.call_later(timeout, _time_up, future)
        try:
            await future
        finally:
            timer.cancel()
            for event in events:
                if future in event.waiters:
                    event.waiters.remove(future)

    async def close(self) -> None:
        subs, self._subs, self._client = list(self._subs.values()), {}, None
        self._events.clear()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
