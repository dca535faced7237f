"""Wake-ups of waiting claimers: core NATS subjects ``<p>.wake.<type>``, subscribed once.

A producer publishes one message per node type that got ready tasks (no round trip). A
queue subscribes to a type's subject the first time it claims that type and keeps the
subscription, so a wake-up that comes between two claims is not lost (a subscription
made per wait would miss one sent before it reached the server). Each type has an
``asyncio.Event`` that a wake-up sets and replaces: a claimer takes the current events
*before* looking for tasks and waits on them after finding none, so a wake-up during
its look ends the wait at once. Lost wake-ups (reconnects) cost a waiting claimer one
poll interval, which the caller bounds.
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

__all__ = ["Wakeups"]


class Wakeups:
    """Per node type: one subscription and the event of the next wake-up."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._subs: dict[str, Any] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._client: Any = None

    async def ensure(self, node_types: Sequence[str]) -> None:
        """Subscribe to the types not subscribed yet; the server knows them when this returns."""
        nc = self._conn.nc
        if self._client is not nc:
            self._subs.clear()  # a new client: the old one's subscriptions are gone with it
            # and its events too: one waited on in another event loop (the client's) is bound
            # to it, and waiting on it here fails at once, so a claim would poll without pause.
            self._events.clear()
            self._client = nc
        missing = [t for t in node_types if t not in self._subs]
        for node_type in missing:
            self._events.setdefault(node_type, asyncio.Event())

            def on_wake(_msg: Msg, node_type: str = node_type) -> None:
                self._fire(node_type)

            self._subs[node_type] = await nc.subscribe(self._conn.names.wake_subject(node_type), future=Direct(on_wake))
        if missing:
            await flush_in_order(nc)

    def _fire(self, node_type: str) -> None:
        event = self._events.get(node_type)
        if event is not None:
            event.set()
        self._events[node_type] = asyncio.Event()

    def events(self, node_types: Sequence[str]) -> list[asyncio.Event]:
        """The events the next wake-up of any of ``node_types`` sets (take them before looking)."""
        return [self._events.setdefault(t, asyncio.Event()) for t in node_types]

    @staticmethod
    async def wait(events: Sequence[asyncio.Event], timeout: float) -> None:
        """Until one of ``events`` is set (maybe already), or ``timeout`` seconds."""
        if any(event.is_set() for event in events) or timeout <= 0:
            return
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def close(self) -> None:
        subs, self._subs, self._client = list(self._subs.values()), {}, None
        self._events.clear()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
