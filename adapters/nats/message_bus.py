"""MessageBus on core NATS subjects: ``<p>.bus.<channel>``, wildcards as they are.

The port already uses NATS pattern syntax (``*`` one token, ``>`` the rest), so a
pattern maps to a subject unchanged under the prefix. Each subscription copies incoming
messages into its own unbounded buffer from nats-py's callback, so a slow reader never
makes nats-py drop messages or stall the connection, and publishers never wait for
subscribers. ``subscribe`` flushes, so the server knows the subscription before it
returns; ``publish`` flushes, so the server has routed the message before it returns
(one round trip, like Redis PUBLISH; the publishes of one event-loop pass share it). Core NATS keeps publish order per publisher connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats import replies
from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.message_bus import BufferedSubscription, BusMessage, MessageBus, Subscription

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["NatsMessageBus", "NatsSubscription", "flush_in_order", "flush_shared", "replace_abandoned_pongs"]


async def flush_in_order(nc: Any) -> None:
    """Return once the server has processed every command sent so far on ``nc``.

    nats-py's ``flush()`` writes its PING straight to the socket while earlier PUB/SUB
    commands may still sit in the client's pending buffer, so the PONG can come back
    before the server saw them (seen under CPU load: a subscription that missed
    messages published after ``subscribe`` returned). Pushing the pending buffer out
    first restores the order ``flush`` promises (``_flush_now``).

    Cancelling the caller ends its wait at once (``CancelledError``) and leaves the flush
    to finish on its own: nats-py swallows a cancellation that lands while it pushes its
    buffer (``_flush_pending`` catches ``CancelledError``), so a caller awaiting it directly
    could not be cancelled there, and a PONG waiter it cancels half-way breaks its read loop
    when the PONG comes (``replace_abandoned_pongs``). Raises what the flush raises
    (``nats.errors.FlushTimeoutError``, ``ConnectionClosedError``).
    """
    flushing = asyncio.ensure_future(_flush_now(nc))
    try:
        await asyncio.shield(flushing)
    except asyncio.CancelledError:
        if not flushing.done():
            flushing.add_done_callback(_retrieved)
        raise


def _retrieved(flushing: asyncio.Future[None]) -> None:
    """A flush its caller stopped waiting for: its outcome is read, so none is reported as never retrieved."""
    if not flushing.cancelled():
        flushing.exception()


async def _flush_now(nc: Any) -> None:
    """The flush of ``flush_in_order``, awaited in a task of its own (``flush_in_order``, ``_start_flush``)."""
    push_pending = getattr(nc, "_flush_pending", None)
    if push_pending is not None:
        await push_pending(force_flush=True)
    try:
        await nc.flush()
    except BaseException:  # a timeout (stalled connection) or a cancellation
        replace_abandoned_pongs(nc)
        raise


# Per client: the future of the coalesced flush that the current event-loop pass will send.
_NEXT_FLUSH: weakref.WeakKeyDictionary[Any, asyncio.Future[None]] = weakref.WeakKeyDictionary()


async def flush_shared(nc: Any) -> None:
    """``flush_in_order``, shared by every caller of the same event-loop pass: one PING (one
    round trip) for all of them, sent once the pass's callers have written their commands.

    Each caller's commands were written before the PING (the flush starts in a callback
    scheduled after them), so the PONG proves the server processed them, as a flush of
    its own would. A caller cancelled while waiting leaves the flush to the others; an
    error of the flush (a timeout, a closed connection) is raised to every one of them.
    """
    future = _NEXT_FLUSH.get(nc)
    if future is None or future.done():
        future = asyncio.get_running_loop().create_future()
        _NEXT_FLUSH[nc] = future
        future.get_loop().call_soon(_start_flush, nc, future)
    await asyncio.shield(future)


def _start_flush(nc: Any, future: asyncio.Future[None]) -> None:
    if _NEXT_FLUSH.get(nc) is future:
        del _NEXT_FLUSH[nc]  # callers from now on wait for the next PING: this one may be written already

    def settle(flushing: asyncio.Task[None]) -> None:
        if future.done():
            return
        if flushing.cancelled():
            future.cancel()
        elif flushing.exception() is not None:
            future.set_exception(flushing.exception())  # type: ignore[arg-type]
        else:
            future.set_result(None)

    asyncio.ensure_future(_flush_now(nc)).add_done_callback(settle)


def replace_abandoned_pongs(nc: Any) -> None:
    """Put a fresh future in place of each PONG waiter nats-py's ``flush()`` gave up on.

    ``flush()`` queues a future per PING and cancels it on a timeout, but leaves it in
    the queue: the PONG that comes late (a stalled connection flowing again) then sets
    the result of a cancelled future, which raises ``InvalidStateError`` in nats-py's
    read loop, logs a traceback and stops reading, so the connection hears nothing until
    its pings time out. A fresh future takes that PONG instead; the queue keeps its
    order, so later PONGs still answer their own PINGs.
    """
    pongs = getattr(nc, "_pongs", None)
    if isinstance(pongs, list) and any(future.done() for future in pongs):
        loop = asyncio.get_running_loop()
        pongs[:] = [loop.create_future() if future.done() else future for future in pongs]


class NatsSubscription(BufferedSubscription):
    """One subscription with its own buffer."""

    def __init__(self, pattern: str, root: str) -> None:
        super().__init__(pattern)
        self._root = root
        self._sub: Any = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            data = decode(msg.data)
        except PayloadDecodeError:
            return  # not one of ours: a bus carries JSON objects only
        if isinstance(data, dict):
            self._deliver(BusMessage(msg.subject[len(self._root):], data))

    async def _on_close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await sub.unsubscribe()


class NatsMessageBus(MessageBus):
    """MessageBus over core NATS; see the module docstring."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._own: list[NatsSubscription] = []

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        raw = encode(dict(data))
        with nats_errors(self._conn.url, f"publish to {channel!r}"):
            replies.send(self._conn.nc, self._conn.names.bus_subject(channel), raw)
            # Flush, so that when publish returns the server has routed the message: a
            # subscription made afterwards (on any connection) never receives it, and
            # one that existed before always does - the same as Redis PUBLISH. One flush
            # serves every publish of the same event-loop pass (``flush_shared``).
            await flush_shared(self._conn.nc)

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Publish in order with one flush (one round trip) for the whole batch."""
        if not messages:
            return
        with nats_errors(self._conn.url, f"publish {len(messages)} messages"):
            nc, subject = self._conn.nc, self._conn.names.bus_subject
            for channel, data in messages:
                replies.send(nc, subject(channel), encode(dict(data)))
            await flush_shared(self._conn.nc)

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = NatsSubscription(pattern, self._conn.names.bus_root)
        with nats_errors(self._conn.url, f"subscribe to {pattern!r}"):
            subscription._sub = await self._conn.nc.subscribe(
                self._conn.names.bus_subject(pattern), cb=subscription._on_message
            )
            await flush_in_order(self._conn.nc)
        self._own.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._own:
            await subscription.close()
        self._own.clear()
