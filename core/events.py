"""Workflow and node events, and nodes' stream chunks, published on the MessageBus off the step loop.

Event channels are ``events.<workflow_id>.<kind>`` where kind is one of
``workflow.started``, ``workflow.completed``, ``workflow.failed``,
``workflow.cancelled``, ``workflow.interrupted``, ``node.started``, ``node.completed``,
``node.failed`` and ``step.committed``; subscribe to ``events.<workflow_id>.>`` for one
workflow or ``events.>`` for all. Each event is a JSON object with ``type``,
``workflow_id``, ``time`` and, as they apply, ``step``, ``node``, ``duration``,
``attempts`` and ``error`` (a ``node.failed`` routed to an error handler also has
``on_error``: the handler's name; a ``node.completed`` whose output came from the node
cache has ``cached: true``, see ``core.cache``). ``step.committed`` is emitted once a step's checkpoint
is stored: its ``step`` is the checkpoint's and ``checkpoint`` its id; streams read the
values and writes from that checkpoint. An event from inside a subgraph carries
``namespace`` (a list of ``"<parent node>:<task id>"``, outermost first).

Stream chunks (what a node emits through its stream writer, see ``core.stream_writer``)
go to ``stream.<workflow_id>.<mode>`` (mode ``custom`` or ``messages``) through the same
publisher, so in one process chunks and events keep the order they were emitted in.
Consecutive chunks of one channel in a batch travel as one message
``{"type": "chunks", "workflow_id", "chunks": [chunk, ...]}`` (at most ``GROUP_CHUNKS``
chunks of about ``GROUP_BYTES`` in all), which saves the bus a round of work per token.
When chunks were dropped (see below), a ``stream.<workflow_id>.gap`` message
``{"type": "gap", "workflow_id", "dropped": {mode: count}, "time"}`` says how many.

Everything is queued and published in order by one background task per publisher, so a
slow bus costs the workflow nothing; ``flush`` waits until everything queued is out.
Events are never dropped (an event no subscriber could receive, as an in-process bus
can tell, is not sent at all). Chunks are fire-and-forget with a bound in bytes: beyond
``chunk_bytes`` (default ``DEFAULT_CHUNK_BYTES``, 64 MiB) of queued chunks, measured as
their approximate JSON size (a token of a few characters counts about 300 bytes with its
ids, so 64 MiB holds some 200,000 tokens; Python holds about three times that in memory
at the worst), the oldest queued chunks are dropped and the gap message above reports
them. That happens only when the bus is down or slower than the nodes for that long, or
when an ``async def`` node emits that much without ever awaiting (the publisher runs on
the same event loop, so it cannot publish before the node yields). ``chunk_limit``
optionally bounds the number of queued chunks too. Each publishing round takes
everything queued, up to ``MAX_BATCH`` items, in one ``publish_many``. ``emit_chunk`` may be
called from any thread (a plain-function node runs in one); everything else only on the
event loop the publisher runs on.

Linger: on a networked bus, a round made only of the events a step emits as it dispatches
its tasks (``workflow.started``, ``node.started``: ``LINGERING_KINDS``) is held up to
``linger`` seconds (default ``DEFAULT_LINGER``, 2 ms; as Kafka's producer ``linger.ms``),
so that it is not published while those tasks are on their way to a worker and back:
measured on a 2-core machine, publishing them at once made the publish, the server's work
on it and the worker's handling of the task compete for the cores, and the step's trigger
-> merged latency 6-9% longer (``benchmarks/distributed_benchmark.py``, alternated passes).
Nothing else waits: any other event (a node's completion, a commit), a chunk (streamed
tokens are wanted at once), a ``flush`` or ``wait_published`` (a run ending), or ``close``
has everything queued published at once, in order; so under load, where completions keep
coming, rounds go out as before. An in-process bus (one that overrides
``MessageBus.may_deliver``) has no linger: its publishes cost no other process anything.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Any

from distributed_agents.core.ports.message_bus import MessageBus
from distributed_agents.core.timeouts import wait_within

__all__ = ["DEFAULT_CHUNK_BYTES", "DEFAULT_CHUNK_LIMIT", "DEFAULT_LINGER", "EVENT_KINDS", "LINGERING_KINDS", "EventPublisher", "event_channel", "stream_channel"]

log = logging.getLogger("distributed_agents.events")

EVENT_KINDS = frozenset({
    "workflow.started", "workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.interrupted",
    "node.started", "node.completed", "node.failed", "step.committed",
})


MAX_BATCH = 5_000  # items per publish_many: a burst drains in few round trips (grouped chunks, see GROUP_*)
DEFAULT_CHUNK_LIMIT: int | None = None  # no bound on the count of queued chunks by default: see DEFAULT_CHUNK_BYTES
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024  # approximate JSON bytes of stream chunks queued before the oldest are dropped
GROUP_CHUNKS = 256  # chunks in one grouped bus message at most
GROUP_BYTES = 256 * 1024  # their approximate JSON size at most (NATS refuses messages over 1 MiB by default)
DEFAULT_LINGER = 0.002  # seconds dispatch events may wait before their round is published (networked buses)
# The events a step emits as it dispatches its tasks: the only ones a round lingers for (see the module docstring).
LINGERING_KINDS = frozenset({"workflow.started", "node.started"})

_Item = tuple[int, str, Mapping[str, Any], int]  # (sequence number, channel, data, approximate bytes)


def event_channel(workflow_id: str, kind: str) -> str:
    """The bus channel of event ``kind`` of ``workflow_id``."""
    return f"events.{workflow_id}.{kind}"


def stream_channel(workflow_id: str, mode: str) -> str:
    """The bus channel of ``workflow_id``'s stream chunks of ``mode`` (``custom``, ``messages``, ``gap``)."""
    return f"stream.{workflow_id}.{mode}"


class EventPublisher:
    """Publishes events and stream chunks in order, off the caller's path. Bound to one event loop."""

    def __init__(
        self, bus: MessageBus, *, chunk_limit: int | None = DEFAULT_CHUNK_LIMIT,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES, linger: float | None = None,
    ) -> None:
        """``linger``: seconds a round of dispatch events (``LINGERING_KINDS``) may wait before it
        is published (see the module docstring); None: ``DEFAULT_LINGER`` on a networked bus, 0 on an in-process
        one. ``ValueError`` for a negative or non-finite value."""
        self._bus = bus
        self.chunk_limit = chunk_limit
        self.chunk_bytes = chunk_bytes
        self._queued_bytes = 0  # approximate JSON bytes of the chunks queued
        self._lock = threading.Lock()
        self._events: deque[_Item] = deque()
        self._chunks: deque[_Item] = deque()
        self._dropped: dict[str, dict[str, int]] = {}  # workflow_id -> mode -> chunks dropped, not yet reported
        self._seq = 0  # the last sequence number handed out
        self._done = 0  # every item up to this number is published (or failed to be)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._closing = False
        self.dropped_total = 0  # chunks dropped since this publisher was made
        # A bus keeping the port's may_deliver (every networked one: always True) is not asked per event.
        self._may_deliver = None if type(bus).may_deliver is MessageBus.may_deliver else bus.may_deliver
        if linger is None:
            linger = DEFAULT_LINGER if self._may_deliver is None else 0.0
        if isinstance(linger, bool) or not (isinstance(linger, (int, float)) and 0 <= linger < math.inf):
            raise ValueError(f"EventPublisher(linger={linger!r}): seconds, a finite number >= 0")
        self.linger = float(linger)
        # The pump's wait while it lingers, resolved early by whatever wants the queue out now.
        self._lingering: asyncio.Future[None] | None = None
        self._urgent = False  # an event not of LINGERING_KINDS is queued: no linger

    def start(self) -> None:
        """Start the background task on the running loop (``emit`` does this too); idempotent."""
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._closing = False
            self._task = self._loop.create_task(self._pump())

    def emit(self, workflow_id: str, kind: str, **fields: Any) -> None:
        """Queue event ``kind`` for ``workflow_id``; never blocks, never raises for bus trouble.

        An event the bus says nobody would receive now (``MessageBus.may_deliver``: an
        in-process bus with no matching subscription) is not queued at all.
        """
        channel = event_channel(workflow_id, kind)
        if self._may_deliver is not None and not self._may_deliver(channel):
            return
        task = self._task
        if task is None or task.done():
            self.start()
        event = {"type": kind, "workflow_id": workflow_id, "time": time.time(), **fields}
        urgent = kind not in LINGERING_KINDS
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, channel, event, 0))
            # (An urgent event also ends a linger under way.)
            wake = not self._wake_pending or (urgent and self._lingering is not None)
            self._wake_pending = True
            self._urgent = self._urgent or urgent
        if wake:  # else the pump was woken already and has not taken the queue yet
            self._signal_now()  # (ends a linger under way: wake is True during one only for an urgent event)

    def emit_chunk(self, workflow_id: str, mode: str, data: Mapping[str, Any], size: int = 256) -> int:
        """Queue a stream chunk (about ``size`` bytes of JSON) from any thread; its sequence number.

        The number is for ``wait_published``.
        Never blocks. Past ``chunk_bytes`` queued (or ``chunk_limit`` chunks, if set) the
        oldest queued chunks are dropped and counted for the workflow's next gap message. Returns 0 (nothing queued) when
        the publisher is not running (never started, or closed).
        """
        loop = self._loop
        if loop is None or loop.is_closed() or self._closing:
            return 0
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._chunks.append((seq, stream_channel(workflow_id, mode), data, size))
            self._queued_bytes += size
            while len(self._chunks) > 1 and (self._queued_bytes > self.chunk_bytes or (
                    self.chunk_limit is not None and len(self._chunks) > self.chunk_limit)):
                _, channel, _, lost_size = self._chunks.popleft()
                self._queued_bytes -= lost_size
                _, lost_workflow, lost_mode = channel.split(".")  # ids have no dots: see stream_channel
                lost = self._dropped.setdefault(lost_workflow, {})
                lost[lost_mode] = lost.get(lost_mode, 0) + 1
                self.dropped_total += 1
            # A chunk is wanted at once: it also ends a linger under way.
            wake = not self._wake_pending or self._lingering is not None
            self._wake_pending = True
        if wake:
            if _on_loop(loop):
                self._signal_now()
            else:
                try:
                    loop.call_soon_threadsafe(self._signal_now)
                except RuntimeError:  # the loop closed meanwhile: nobody will publish it
                    return 0
        return seq

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _signal_now(self) -> None:
        """Wake the pump and end its linger: what is queued goes out at once."""
        self._signal()
        self._hurry()

    def _hurry(self) -> None:
        lingering = self._lingering
        if lingering is not None and not lingering.done():
            lingering.set_result(None)

    async def _linger(self) -> None:
        """Wait up to ``linger`` seconds before a round of dispatch events is published, unless
        anything else is queued, someone waits for the queue to be out, or the publisher is closing."""
        if self.linger <= 0 or self._closing or self._waiters or self._chunks or self._urgent or not self._events:
            return
        loop = asyncio.get_running_loop()
        lingering = loop.create_future()
        with self._lock:  # emit_chunk (any thread) reads it under the lock
            self._lingering = lingering
        timer = loop.call_later(self.linger, _resolve, lingering)
        try:
            await lingering
        finally:
            timer.cancel()
            with self._lock:
                self._lingering = None

    def _take(self) -> tuple[list[_Item], dict[str, dict[str, int]]]:
        """Up to MAX_BATCH queued items in sequence order, and the drops to report first."""
        with self._lock:
            self._wake_pending = False
            self._urgent = False
            dropped, self._dropped = self._dropped, {}
            if not self._chunks:
                count = min(len(self._events), MAX_BATCH)
                return [self._events.popleft() for _ in range(count)], dropped
            if not self._events:
                count = min(len(self._chunks), MAX_BATCH)
                items = [self._chunks.popleft() for _ in range(count)]
            else:
                merged = heapq.merge(self._events, self._chunks)
                items = [item for _, item in zip(range(MAX_BATCH), merged)]
                for seq, _, _, _ in items:
                    if self._events and self._events[0][0] == seq:
                        self._events.popleft()
                    else:
                        self._chunks.popleft()
            self._queued_bytes -= sum(item[3] for item in items)
            return items, dropped

    async def _pump(self) -> None:
        assert self._wake is not None
        idle = True  # nothing was published just before: a round of events may linger
        while True:
            if idle:
                await self._linger()
            items, dropped = self._take()
            if not items and not dropped:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                idle = True
                continue
            idle = False  # (events queued while a round was out go at once: they waited already)
            # Everything queued so far goes out as one batch (one round trip on Redis/NATS).
            messages: list[tuple[str, Mapping[str, Any]]] = [
                (stream_channel(workflow_id, "gap"),
                 {"type": "gap", "workflow_id": workflow_id, "dropped": counts, "time": time.time()})
                for workflow_id, counts in dropped.items()]
            if dropped:
                log.warning("stream chunks dropped by the publishing process (its queue of %d bytes was full: the "
                            "bus was slower than the nodes, or an async node emitted without awaiting): %s",
                            self.chunk_bytes,
                            ", ".join(f"{sum(c.values())} of workflow {w!r}" for w, c in dropped.items()))
            messages += _grouped(items)
            try:
                await self._bus.publish_many(messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # events are best effort; the checkpoint is the record
                log.warning("could not publish %d event(s) starting with %s: %s", len(messages), messages[0][0], exc)
            if items:
                self._done = max(self._done, items[-1][0])
            self._release_waiters()

    def _release_waiters(self) -> None:
        still = []
        for seq, future in self._waiters:
            if seq <= self._done or self._task is None:
                if not future.done():
                    future.set_result(True)
            else:
                still.append((seq, future))
        self._waiters = still

    async def wait_published(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until everything queued up to ``seq`` is published (or failed to be); False on timeout."""
        if seq <= self._done or self._task is None or self._task.done():
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        self._hurry()
        if timeout is None:  # each waiter has its own future: a cancelled one is skipped when released
            await future
            return True
        return await wait_within(future, timeout)  # not wait_for: see core.timeouts

    def flush(self) -> Awaitable[bool]:
        """Wait until every queued event and chunk has been published (or failed to be); await it (True).

        A future, not a coroutine: every workflow run waits for one as it ends, and the
        future is what it waits on anyway.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        seq = self._seq
        if seq <= self._done or self._task is None or self._task.done():
            future.set_result(True)
        else:
            self._waiters.append((seq, future))
            self._hurry()
        return future

    async def close(self) -> None:
        """Publish what is queued, then stop the background task."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._signal_now()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the pump only logs; anything here is a bug worth seeing
            log.warning("event publisher stopped with %s: %s", type(exc).__name__, exc)
        self._task = None
        self._release_waiters()
        self._loop = None
        self._closing = False


def _grouped(items: list[_Item]) -> list[tuple[str, Mapping[str, Any]]]:
    """``items`` as bus messages, in order; runs of chunks on one channel become one ``chunks`` message."""
    messages: list[tuple[str, Mapping[str, Any]]] = []
    group: list[Mapping[str, Any]] = []
    group_channel = ""
    group_bytes = 0

    def close_group() -> None:
        if len(group) == 1:
            messages.append((group_channel, group[0]))
        elif group:
            messages.append((group_channel, {"type": "chunks", "workflow_id": group_channel.split(".")[1],
                                             "chunks": list(group)}))
        group.clear()

    for _, channel, data, size in items:
        if not size:  # an event
            if group:
                close_group()
            messages.append((channel, data))
            continue
        if channel != group_channel or len(group) >= GROUP_CHUNKS or group_bytes + size > GROUP_BYTES:
            close_group()
            group_channel, group_bytes = channel, 0
        group.append(data)
        group_bytes += size
    if group:
        close_group()
    return messages


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
