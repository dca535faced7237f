"""The "done" events of one task queue: a subscription kept for the queue's life.

An ack or a dead-lettering stores the task's result (the commit), then publishes a core
NATS message on ``<p>.done``: a JSON object ``{"id": task id, "result": TaskResult}``,
the result left out when it is large (``INLINE_LIMIT`` bytes), so a waiter woken by it
needs no read. The acks settled together (the results stored by one reply read) announce
themselves in one message: a JSON array of such objects (``DoneBatch``, at most
``BATCH_LIMIT`` bytes), one message to route and read instead of one per task. Older
publishers sent one object, or the bare id; both are understood too (an older reader
takes an array for a bare id it does not know, and finds those results by its poll).

``DoneEvents`` subscribes once (before the queue's first enqueue) and keeps, for the
ids the queue enqueued itself (``expect``), the event that came for them until
``wait_results`` asks (``take``); a waiter registered with ``watch`` is woken by events
of its ids. Core NATS does not redeliver: events sent while the connection was down are
lost, so when the client reconnected (or the connection was replaced) everything kept is
dropped and the ids count as not expected, which makes ``wait_results`` read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.replies import Direct, send
from distributed_agents.adapters.nats.message_bus import flush_in_order
from distributed_agents.core.codec import decode, encode, encode_text
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.task_queue import TaskResult

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["BATCH_LIMIT", "INLINE_LIMIT", "DoneBatch", "DoneEvents", "done_payload", "done_payload_raw", "parse_done",
           "parse_done_events"]

log = logging.getLogger("distributed_agents.adapters.nats")

# Results whose JSON is longer than this go out without the result (waiters read it).
INLINE_LIMIT = 32 * 1024
# Most bytes of one batched done event (a few inline results; far under any max_payload).
BATCH_LIMIT = 64 * 1024


def done_payload(task_id: str, result: TaskResult | None) -> bytes:
    """The event announcing ``task_id``'s stored result (inline if small)."""
    if result is not None:
        raw = encode({"id": task_id, "result": result.to_dict()})
        if len(raw) <= INLINE_LIMIT:
            return raw
    return encode({"id": task_id})


def done_payload_raw(task_id: str, raw_result: bytes) -> bytes:
    """``done_payload`` for a result already encoded (``encode(result.to_dict())``): the same bytes."""
    raw = b'{"id":' + encode_text(task_id) + b',"result":' + raw_result + b"}"
    return raw if len(raw) <= INLINE_LIMIT else encode({"id": task_id})


def parse_done(data: bytes) -> tuple[str, TaskResult | None]:
    """``(task id, inline result or None)`` of a done event."""
    try:
        body = decode(data)
    except PayloadDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return data.decode("utf-8", "replace"), None  # a bare id (older publishers)
    return body["id"], _inline(body["id"], body.get("result"))


def _inline(task_id: str, result: Any) -> TaskResult | None:
    """The inline result of ``task_id``'s event, if it is one of that task (else it is read from the record:
    an event naming one task with another's result was not published by an ack)."""
    if not isinstance(result, dict):
        return None
    try:
        parsed = TaskResult.from_dict(result)
    except (KeyError, TypeError, ValueError):
        return None
    return parsed if parsed.task_id == task_id else None


def parse_done_events(data: bytes) -> list[tuple[str, TaskResult | None]]:
    """Every ``(task id, inline result or None)`` a done event carries: one for an object
    or a bare id (``parse_done``), one per object of a batched event (an array; items that
    are not events are skipped)."""
    if not data.startswith(b"["):
        return [parse_done(data)]
    try:
        body = decode(data)
    except PayloadDecodeError:
        body = None
    if not isinstance(body, list):
        return [parse_done(data)]  # a bare id that starts with "["
    events: list[tuple[str, TaskResult | None]] = []
    for item in body:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        events.append((item["id"], _inline(item["id"], item.get("result"))))
    return events


class DoneBatch:
    """Done events (``done_payload``/``done_payload_raw`` bytes) gathered while a reply read
    runs and published together once it is over (``loop.call_soon``): the acks whose
    results one read of the client stored announce them in one message (an array, split
    at ``BATCH_LIMIT`` bytes), not one each. A lone event goes out as it is.

    Best effort, as every done event (core NATS; waiters poll for a lost one): an error
    publishing (the connection closed meanwhile) is logged and the events dropped."""

    __slots__ = ("_events", "_loop", "_subject", "nc")

    def __init__(self, nc: Any, subject: str) -> None:
        self.nc, self._subject = nc, subject
        self._events: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose pass publishes ``_events``

    def add(self, event: bytes) -> None:
        """Publish ``event`` with the others added before this loop pass ends (callable from the reader)."""
        loop = asyncio.get_running_loop()
        if not self._events or self._loop is not loop:
            # (Events another loop left, stopped before its pass ended, go out with these.)
            self._loop = loop
            loop.call_soon(self.flush)
        self._events.append(event)

    def flush(self) -> None:
        """Publish the events added so far (in order), at most ``BATCH_LIMIT`` bytes a message."""
        events, self._events = self._events, []
        start = 0
        while start < len(events):
            stop, size = start + 1, len(events[start]) + 2
            while stop < len(events) and size + len(events[stop]) + 1 <= BATCH_LIMIT:
                size += len(events[stop]) + 1
                stop += 1
            payload = events[start] if stop == start + 1 else b"[" + b",".join(events[start:stop]) + b"]"
            try:
                send(self.nc, self._subject, payload)
            except Exception as error:  # waiters find those results by their poll
                log.warning("NATS: %d done event(s) not published (%s: %s); their waiters read the results at "
                            "their next poll", len(events) - start, type(error).__name__, error)
                return
            start = stop


class _Waiter:
    """The events of ``ids`` that came since ``take_fired``; ``wait`` for the next one.

    A future and a timer per wait, set by ``fire`` from the reader: ``asyncio.wait_for``
    around an ``asyncio.Event`` made a task, a timer and their callbacks per wait, a few
    percent of an orchestrator's CPU on a stream of single-node workflows."""

    def __init__(self, ids: Collection[str]) -> None:
        self.ids = set(ids)
        self.fired: list[tuple[str, TaskResult | None]] = []
        self._future: asyncio.Future[None] | None = None

    def fire(self, task_id: str, result: TaskResult | None) -> None:
        self.fired.append((task_id, result))
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether an event came (before this call, since ``take_fired``, or within ``timeout`` seconds)."""
        if self.fired or timeout <= 0:
            return bool(self.fired)
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = loop.call_later(timeout, _time_up, future)
        try:
            await future
        finally:
            timer.cancel()
            self._future = None
        return bool(self.fired)

    def take_fired(self) -> list[tuple[str, TaskResult | None]]:
        fired, self.fired = self.fired, []
        return fired


class _Watch:
    """``DoneEvents.watch``'s context: ``waiter`` registered for the block (a class: one per
    wait of every step, where a generator-based one costs a generator and its wrapper)."""

    __slots__ = ("waiter", "waiters")

    def __init__(self, waiters: list[_Waiter], waiter: _Waiter) -> None:
        self.waiters, self.waiter = waiters, waiter

    async def __aenter__(self) -> _Waiter:
        self.waiters.append(self.waiter)
        return self.waiter

    async def __aexit__(self, *_: object) -> None:
        self.waiters.remove(self.waiter)


def _time_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DoneEvents:
    """Done events kept for ids this queue enqueued; waiters woken by their ids' events."""

    def __init__(self, conn: NatsConnection, limit: int = 20_000) -> None:
        self._conn = conn
        self._limit = limit
        # id -> (event came, its inline result)
        self._entries: OrderedDict[str, tuple[bool, TaskResult | None]] = OrderedDict()
        self._waiters: list[_Waiter] = []
        self._sub: Any = None
        self._client: Any = None
        self._reconnects = 0
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None  # the loop ``_lock`` serves

    async def ensure(self) -> None:
        """Subscribe (once per client) and drop what was kept if events may have been lost."""
        nc = self._conn.nc
        if self._client is nc and self._sub is not None:
            reconnects = int(nc.stats.get("reconnects", 0))
            if reconnects != self._reconnects:
                self._reconnects = reconnects
                self._entries.clear()
            return
        if self._lock_loop is not asyncio.get_running_loop():
            # A lock waited on in another event loop is bound to it: this loop's callers share a new one.
            self._lock, self._lock_loop = asyncio.Lock(), asyncio.get_running_loop()
        async with self._lock:
            if self._client is nc and self._sub is not None:
                return
            self._entries.clear()
            self._sub = await nc.subscribe(self._conn.names.done_subject, future=Direct(self._on_message))
            # The server knows the subscription before any enqueue that follows is acked.
            await flush_in_order(nc)
            self._client = nc
            self._reconnects = int(nc.stats.get("reconnects", 0))

    def expect(self, task_id: str) -> None:
        self._entries[task_id] = (False, None)
        self._entries.move_to_end(task_id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def expecting(self, task_id: str) -> bool:
        return task_id in self._entries

    def forget(self, ids: Collection[str]) -> None:
        for task_id in ids:
            self._entries.pop(task_id, None)

    def take(self, ids: Collection[str]) -> tuple[dict[str, TaskResult], list[str]]:
        """Results whose events came, and ids whose event came without the result (to read)."""
        found: dict[str, TaskResult] = {}
        bare: list[str] = []
        for task_id in ids:
            entry = self._entries.get(task_id)
            if entry is None or not entry[0]:
                continue
            del self._entries[task_id]
            if entry[1] is None:
                bare.append(task_id)
            else:
                found[task_id] = entry[1]
        return found, bare

    def watch(self, ids: Collection[str]) -> _Watch:
        """``async with watch(ids) as waiter``: ``waiter`` is woken by the events of ``ids`` that come
        while the block runs."""
        return _Watch(self._waiters, _Waiter(ids))

    def _on_message(self, msg: Msg) -> None:
        for task_id, result in parse_done_events(msg.data):
            self.record(task_id, result)

    def wants(self, task_id: str) -> bool:
        """Whether ``record(task_id, ...)`` would keep or hand on anything (an expected id, a waiter's)."""
        return task_id in self._entries or (bool(self._waiters) and any(task_id in w.ids for w in self._waiters))

    def record(self, task_id: str, result: TaskResult | None) -> None:
        """An event came (or this process stored the result itself: its own event is then
        kept at once, so a wait that follows its ack never misses it)."""
        if task_id in self._entries:
            self._entries[task_id] = (True, result)
        for waiter in self._waiters:
            if task_id in waiter.ids:
                waiter.fire(task_id, result)

    async def close(self) -> None:
        sub, self._sub, self._client = self._sub, None, None
        self._entries.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
