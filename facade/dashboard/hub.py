"""The dashboard's live events: one bus subscription fanned out to every open page.

``EventHub`` subscribes to ``events.>`` on the backend's message bus (the channels of
``core.events``) once, keeps the most recent events of each workflow (for the step
timeline: worker, duration and attempts are only in events), and hands each event to
every listener (a Server-Sent Events stream of one page). A listener that falls far
behind loses its oldest events and is told so (``{"type": "gap"}``), so a stalled
browser never grows the dashboard's memory. ``close`` ends every listener's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from distributed_agents.core.ports.message_bus import MessageBus, Subscription

__all__ = ["CLOSED", "EventHub"]

log = logging.getLogger("distributed_agents.dashboard")

CLOSED: Mapping[str, Any] = {"type": "closed"}  # the last item a listener gets
LISTENER_BUFFER = 1000  # events a listener may lag behind before its oldest are dropped
EVENTS_PER_WORKFLOW = 2000  # recent events kept per workflow for its timeline
WORKFLOWS_KEPT = 2000  # workflows whose events are kept (least recently active dropped first)


class EventHub:
    """Fans the bus's workflow events out to listeners; remembers recent events per workflow."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._subscription: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: set[asyncio.Queue[Mapping[str, Any]]] = set()
        self._recent: OrderedDict[str, deque[Mapping[str, Any]]] = OrderedDict()
        self.closed = False

    async def start(self) -> None:
        """Subscribe to ``events.>`` and start delivering (idempotent)."""
        if self._subscription is None:
            self._subscription = await self.bus.subscribe("events.>")
            self._reader = asyncio.ensure_future(self._read(self._subscription))

    async def _read(self, subscription: Subscription) -> None:
        async for message in subscription:
            self.publish(message.data)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Record ``event`` and pass it to every listener (also used for the dashboard's own notices)."""
        workflow_id = str(event.get("workflow_id", ""))
        if workflow_id and event.get("type") != "notice":
            kept = self._recent.pop(workflow_id, None) or deque(maxlen=EVENTS_PER_WORKFLOW)
            kept.append(event)
            self._recent[workflow_id] = kept
            while len(self._recent) > WORKFLOWS_KEPT:
                self._recent.popitem(last=False)
        for queue in list(self._listeners):
            if queue.full():  # a stalled page: drop its oldest event, and say so once it reads again
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait({"type": "gap"})
            queue.put_nowait(event)

    def events_of(self, workflow_id: str) -> list[Mapping[str, Any]]:
        """The recent events of ``workflow_id`` this dashboard saw, oldest first."""
        return list(self._recent.get(workflow_id, ()))

    def listen(self) -> asyncio.Queue[Mapping[str, Any]]:
        """A new listener's queue of events; ``CLOSED`` comes last. Call ``unlisten`` when done."""
        queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=LISTENER_BUFFER + 2)
        if self.closed:
            queue.put_nowait(CLOSED)
        else:
            self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[Mapping[str, Any]]) -> None:
        self._listeners.discard(queue)

    def end_streams(self) -> None:
        """End every listener's stream (the server is stopping); new listeners end at once."""
        self.closed = True
        for queue in list(self._listeners):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)
        self._listeners.clear()

    async def close(self) -> None:
        """End the streams and the bus subscription."""
        self.end_streams()
        if self._subscription is not None:
            await self._subscription.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self._subscription = self._reader = None
