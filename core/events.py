"""Workflow and node events, published on the MessageBus without slowing the step loop.

Channels are ``events.<workflow_id>.<kind>`` where kind is one of
``workflow.started``, ``workflow.completed``, ``workflow.failed``,
``workflow.cancelled``, ``node.started``, ``node.completed``, ``node.failed``; subscribe
to ``events.<workflow_id>.>`` for one workflow or ``events.>`` for all. Each event is
a JSON object with ``type``, ``workflow_id``, ``time`` and, as they apply, ``step``,
``node``, ``duration``, ``attempts`` and ``error`` (a ``node.failed`` routed to an
error handler also has ``on_error``: the handler's name).

Events are queued and published in order by one background task per publisher, so a
slow bus costs the workflow nothing; ``flush`` waits until everything queued is out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distributed_agents.core.ports.message_bus import MessageBus

__all__ = ["EVENT_KINDS", "EventPublisher", "event_channel"]

log = logging.getLogger("distributed_agents.events")

EVENT_KINDS = frozenset({
    "workflow.started", "workflow.completed", "workflow.failed", "workflow.cancelled",
    "node.started", "node.completed", "node.failed",
})


MAX_BATCH = 500


def event_channel(workflow_id: str, kind: str) -> str:
    """The bus channel of event ``kind`` of ``workflow_id``."""
    return f"events.{workflow_id}.{kind}"


class EventPublisher:
    """Publishes events in order, off the caller's path. Bound to one event loop."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def emit(self, workflow_id: str, kind: str, **fields: Any) -> None:
        """Queue event ``kind`` for ``workflow_id``; never blocks, never raises for bus trouble."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._pump(self._queue))
        event = {"type": kind, "workflow_id": workflow_id, "time": time.time(), **fields}
        self._queue.put_nowait((event_channel(workflow_id, kind), event))

    async def _pump(self, queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]) -> None:
        while True:
            # Everything queued so far goes out as one batch (one round trip on Redis/NATS).
            items = [await queue.get()]
            while not queue.empty() and len(items) < MAX_BATCH:
                items.append(queue.get_nowait())
            events = [item for item in items if item is not None]
            try:
                if events:
                    await self._bus.publish_many(events)
            except Exception as exc:  # events are best effort; the checkpoint is the record
                log.warning("could not publish %d event(s) starting with %s: %s", len(events), events[0][0], exc)
            finally:
                for _ in items:
                    queue.task_done()
            if len(events) < len(items):
                return

    async def flush(self) -> None:
        """Wait until every queued event has been published (or failed to be)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Publish what is queued, then stop the background task."""
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._queue = None
            self._task = None
