"""Wake-ups over Redis pub/sub, so that waiting never means polling Redis in a loop.

The queue's scripts ``PUBLISH`` ``{prefix}:q:ev:done`` when a task gets a result (ack or
dead letter): ``"<task id>\n<result JSON>"``, or the task id alone for a large result.
(Claimers do not use pub/sub: they block on wake-up token lists, so that one new task
wakes one idle worker, not every worker; see ``task_queue``.) A ``Notifier`` owns one
pub/sub connection and one reader task per queue object; it subscribes to a channel the
first time someone waits on it and stays subscribed.

Waiters register *before* they look at Redis, and wait with a bound: a message that
arrives between the look and the wait still wakes them, and a message that is lost
(pub/sub is fire-and-forget; a reconnect drops what was sent meanwhile) costs at most
the bound, after which the waiter looks again. Pub/sub is thus an accelerator, never a
correctness requirement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Collection
from typing import Any

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.errors import redis_errors

__all__ = ["Notifier", "Waiter", "liveness_interval"]

log = logging.getLogger(__name__)

# Waiters on at most this many keys are filed per key (see Notifier._slots).
_KEYED_MAX = 64
# How long to wait for the server to confirm a SUBSCRIBE before relying on polling alone.
_SUBSCRIBE_TIMEOUT = 2.0
# The reader PINGs after this long without a message, and gives the connection up after as
# long again without an answer, when the URL sets no health_check_interval.
_LIVENESS = 30.0
_PING = "da-notifier-alive"
# Replies of a subscribed connection that need nothing from the reader (any reply proves
# the connection alive); "message" and "subscribe" are acted on.
_PUBSUB_REPLIES = frozenset({"pong", "unsubscribe", "psubscribe", "punsubscribe", "pmessage",
                             "ssubscribe", "sunsubscribe", "smessage"})


def liveness_interval(client: Any) -> float:
    """Seconds of silence before the reader checks its connection: the URL's health_check_interval."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    try:
        value = float(kwargs.get("health_check_interval") or _LIVENESS)
    except (TypeError, ValueError):
        value = _LIVENESS
    return max(value, 0.1)  # the URL option is whole seconds (redis-py parses it as an int)


class Waiter:
    """Interest in some channels, optionally only in messages whose data is in ``keys``."""

    def __init__(self, channels: Collection[str], keys: Collection[str] | None) -> None:
        self.channels = tuple(channels)
        self.keys = None if keys is None else frozenset(keys)
        # Woken since the last clear(); a future (not an asyncio.Event under wait_for, which
        # costs a task per wait) is what a sleeping wait() awaits.
        self._woken = False
        self._sleeping: asyncio.Future[None] | None = None
        self._fired: list[str] = []
        self._everything = False

    def clear(self) -> None:
        """Forget earlier wake-ups; call before looking at Redis."""
        self._woken = False

    def _wake(self) -> None:
        self._woken = True
        sleeping = self._sleeping
        if sleeping is not None and not sleeping.done():
            sleeping.set_result(None)

    def notify(self, data: str) -> None:
        """Wake the waiter if ``data`` (its key, then optionally a newline and more) concerns it.

        The whole message is remembered (``take_fired``).
        """
        if self.keys is None or data.split("\n", 1)[0] in self.keys:
            self._fired.append(data)
            self._wake()

    def wake_all(self) -> None:
        """Wake the waiter without saying which key changed (events may have been missed)."""
        self._everything = True
        self._wake()

    def take_fired(self) -> list[str] | None:
        """Messages notified since the last call, or None if anything may have changed."""
        if self._everything:
            self._everything = False
            self._fired.clear()
            return None
        fired, self._fired = self._fired, []
        return fired

    async def wait(self, timeout: float) -> bool:
        """Sleep until notified or ``timeout`` seconds passed; True if notified."""
        if self._woken or timeout <= 0:
            return self._woken
        loop = asyncio.get_running_loop()
        sleeping = self._sleeping = loop.create_future()
        timer = loop.call_later(timeout, _time_up, sleeping)
        try:
            await sleeping
        finally:
            timer.cancel()
            self._sleeping = None
        return self._woken


class _Watch:
    """``Notifier.watch``'s context: the waiter is filed on entry (before anything awaits) and
    unfiled on exit. (A class, not a generator-based context manager: it is entered on every
    wait for a result.)"""

    __slots__ = ("_notifier", "_waiter", "_slots")

    def __init__(self, notifier: Notifier, waiter: Waiter) -> None:
        self._notifier = notifier
        self._waiter = waiter
        self._slots: list[str] = []

    async def __aenter__(self) -> Waiter:
        notifier, waiter = self._notifier, self._waiter
        self._slots = notifier._file(waiter)
        try:
            missing = [c for c in waiter.channels if c not in notifier._subscribed]
            if missing:
                await notifier._subscribe(missing)
        except BaseException:
            notifier._unfile(waiter, self._slots)
            raise
        return waiter

    async def __aexit__(self, *exc_info: object) -> None:
        self._notifier._unfile(self._waiter, self._slots)


def _time_up(sleeping: asyncio.Future[None]) -> None:
    if not sleeping.done():
        sleeping.set_result(None)


class Notifier:
    """One pub/sub connection dispatching channel messages to in-process ``Waiter``s.

    Only the reader task touches the redis-py ``PubSub`` object (subscribes, reads,
    reconnects): an asyncio connection read by two coroutines at once fails with
    "readuntil() called while another coroutine is already waiting", and a SUBSCRIBE
    sent while the reader reconnects would do just that (its connect reads the
    handshake replies). A channel not subscribed yet makes the reader start over on a
    fresh pub/sub connection (cancelling a read would leave its connection mid-reply).

    A subscription confirmed again for a channel confirmed before means the connection
    was re-made (redis-py re-subscribes after a reconnect) and messages may have been
    lost meanwhile: ``on_lost`` runs and every waiter is woken to look at Redis, as when
    the connection breaks for good.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._reader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._wanted: set[str] = set()  # channels the reader subscribes to
        self._reading: frozenset[str] = frozenset()  # channels the running reader subscribes to
        self._subscribed: set[str] = set()  # confirmed on the current connection
        self._confirmed_once: set[str] = set()  # confirmed at least once (a repeat means a reconnect)
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._waiters: dict[str, set[Waiter]] = {}  # by channel, or by "channel\nkey"
        # Messages of a channel reach its listener too, waiter or not (see ``listen``).
        self._listeners: dict[str, Callable[[str], None]] = {}
        self._on_lost: Callable[[], None] | None = None
        # Counts the moments messages may have been missed (see ``generation``).
        self._generation = 0

    @property
    def generation(self) -> int:
        """Changes whenever messages may have been missed; compare values taken before and
        after an operation to know whether its events can all have arrived."""
        return self._generation

    def listen(self, channel: str, callback: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        """Give every message of ``channel`` to ``callback`` (from the reader task), waiters or not.

        ``on_lost`` is called whenever messages may have been missed (the pub/sub
        connection broke, was re-made or was reset), before any waiter is woken.
        """
        self._listeners[channel] = callback
        self._on_lost = on_lost

    def subscribed(self, channel: str) -> bool:
        """Whether the server has confirmed the subscription to ``channel`` on the current
        connection (messages arrive now); False while the connection is being re-made."""
        return channel in self._subscribed

    async def ensure(self, channels: Collection[str]) -> None:
        """Subscribe to ``channels`` now if not yet (without a waiter), waiting a bounded time
        for the confirmation; never raises for an outage (waiting then polls)."""
        await self._subscribe([c for c in channels if c not in self._subscribed])

    def watch(self, channels: Collection[str], keys: Collection[str] | None = None) -> _Watch:
        """A ``Waiter`` registered on ``channels`` for the duration of an ``async with`` block."""
        return _Watch(self, Waiter(channels, keys))

    def _file(self, waiter: Waiter) -> list[str]:
        slots = self._slots(waiter)
        for slot in slots:
            self._waiters.setdefault(slot, set()).add(waiter)
        return slots

    def _unfile(self, waiter: Waiter, slots: list[str]) -> None:
        for slot in slots:
            group = self._waiters.get(slot)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[slot]

    @staticmethod
    def _slots(waiter: Waiter) -> list[str]:
        """Where a waiter is filed: under ``channel\nkey`` for each of a few keys, so that a
        message reaches only the waiters of its key (many workflows wait at once); under
        the channel for any key, or for many (one big fan-out: filing costs per key)."""
        if waiter.keys is None or len(waiter.keys) > _KEYED_MAX:
            return list(waiter.channels)
        return [f"{channel}\n{key}" for channel in waiter.channels for key in waiter.keys]

    async def _subscribe(self, channels: list[str]) -> None:
        """Have the reader subscribe to ``channels``; wait up to ``_SUBSCRIBE_TIMEOUT`` for it."""
        if not channels:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is None:
                await self._reset()
            else:  # a previous loop's reader and sockets went with that loop
                self._forget()
            self._loop = loop
            self._lock = asyncio.Lock()
        assert self._lock is not None
        confirmations = []
        for channel in channels:
            future = self._confirm.get(channel)
            if future is None or future.done():
                future = self._confirm[channel] = loop.create_future()
            confirmations.append(future)
        async with self._lock:
            self._wanted.update(channels)
            if self._reader is None or self._reader.done() or not self._wanted <= self._reading:
                await self._stop_reader()
                self._reading = frozenset(self._wanted)
                self._reader = loop.create_task(self._read(self._reading), name="redis-queue-notifier")
        await asyncio.wait(confirmations, timeout=_SUBSCRIBE_TIMEOUT)

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        self._subscribed.clear()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, channels: frozenset[str]) -> None:
        """The reader task: the only user of its pub/sub object, which it closes on exit.

        redis-py makes the connection, subscribes and PINGs (URL options, TLS, ACL, unix
        sockets, the cluster's failover pool, its retry). Replies are read off the
        connection below ``PubSub.get_message``, whose retry, health-check and
        message-dict layers cost about ten times the Python work of a message here: with
        hiredis (the ``redis`` extra installs it) one socket read feeds the parser's
        hiredis reader and every whole reply it completed is taken in one go
        (``_drain``) before the socket is awaited again; with another parser, one
        ``read_response`` per reply. Silence for ``health_check_interval`` seconds
        sends a PING; as long again without any reply gives the connection up.
        """
        pause = 0.05
        pubsub: Any = None
        connection: Any = None
        pinged = False
        quiet = liveness_interval(self._connection.client())
        none_buffered = _not_enough_data()
        try:
            while True:
                try:
                    if pubsub is None:
                        pinged = False
                        pubsub = self._connection.client().pubsub()
                        with redis_errors(self._connection.url, "subscribe to queue events"):
                            await pubsub.subscribe(*sorted(channels))
                        connection = pubsub.connection
                    parser = connection._parser
                    if _buffered_reader(parser) is not None:
                        # Await bytes (the parser feeds them to its hiredis reader), then
                        # take every whole reply they completed.
                        heard = await _read_socket(parser, quiet)
                        reply = True if heard else None
                    else:
                        # disconnect_on_error=False: an error is handled below by closing
                        # the whole pub/sub object; push_request: a RESP3 message is the reply.
                        reply = await connection.read_response(timeout=quiet, disconnect_on_error=False,
                                                               push_request=True)
                    if reply is None:  # silence (no reply is ever nil on a subscribed connection)
                        # Nothing for a while: ask. A half-open connection (the peer gone, no
                        # FIN or RST) would otherwise leave this reader waiting for ever.
                        if pinged:
                            raise ConnectionError(f"no answer to PING within {quiet:g}s (health_check_interval): "
                                                  "the pub/sub connection is dead")
                        with redis_errors(self._connection.url, "check the queue events connection"):
                            await pubsub.ping(_PING)
                        pinged = True
                        continue
                    pinged = False
                    if reply is not True:
                        self._take(reply)  # redis-py's parser has seen it (push handlers)
                    other = self._drain(parser, none_buffered)
                    while other is not None:  # a push that is not pub/sub: redis-py's to handle
                        await parser.handle_push_response(other)
                        other = self._drain(parser, none_buffered)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # connection lost: wake everyone to look, then start over
                    log.debug("queue notifier lost its connection: %s", exc)
                    self._subscribed.difference_update(channels)
                    self._gap()
                    old, pubsub, connection = pubsub, None, None
                    if old is not None:
                        with contextlib.suppress(Exception):
                            await old.aclose()
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                pause = 0.05
        finally:
            if pubsub is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pubsub.aclose())

    def _drain(self, parser: Any, none_buffered: Any) -> Any:
        """Take every reply the connection's hiredis reader has parsed already, in order.

        Returns None when none is left, or a RESP3 push that is not pub/sub (a client-side
        caching or maintenance notification), which the caller hands to redis-py's parser
        as its ``read_response`` would have, before draining on. Without hiredis nothing
        is drained: every reply goes through ``read_response``.
        """
        reader = _buffered_reader(parser)
        if reader is None:
            return None
        gets = reader.gets
        reply = gets()
        # False, or redis-py's NOT_ENOUGH_DATA (``none_buffered``; newer redis-py sets it so
        # that a RESP3 false is a reply): no whole reply buffered. Neither is a pub/sub reply.
        while reply is not False and reply is not none_buffered:
            if isinstance(reply, Exception):  # an error reply (hiredis returns it as a value)
                raise reply
            if not self._take(reply) and hasattr(parser, "handle_push_response"):
                return reply
            reply = gets()
        return None

    def _take(self, reply: Any) -> bool:
        """Act on one reply of the subscribed connection; False if it is not pub/sub's.

        A channel message is dispatched, a subscribe confirmation recorded; a PING answer
        or an unsubscribe confirmation only proved the connection alive. Replies are
        bytes, or str with ``decode_responses``; RESP2 arrays and RESP3 pushes alike.
        """
        if not isinstance(reply, list):
            return True  # a PING answer (RESP3 answers it as a plain string)
        if not reply:
            return False
        kind = reply[0]
        if isinstance(kind, Exception):
            raise kind
        if kind == b"message" or kind == "message":
            channel = reply[1]
            if type(channel) is bytes:
                channel = channel.decode("utf-8", "replace")
            data = reply[2]
            if type(data) is bytes:
                data = data.decode("utf-8", "replace")
            elif type(data) is not str:
                data = str(data)
            listener = self._listeners.get(channel)
            if listener is not None:
                listener(data)
            if self._waiters:
                group = self._waiters.get(channel)
                if group:
                    for waiter in tuple(group):
                        waiter.notify(data)
                group = self._waiters.get(f"{channel}\n{data.partition(chr(10))[0]}")
                if group:
                    for waiter in tuple(group):
                        waiter.notify(data)
            return True
        if kind == b"subscribe" or kind == "subscribe":
            channel = _text(reply[1])
            if channel in self._confirmed_once:
                # A re-subscription: the connection was re-made (by redis-py's retry of a
                # PING, or by us) and messages sent meanwhile are lost.
                self._gap()
            self._confirmed_once.add(channel)
            self._subscribed.add(channel)
            future = self._confirm.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
            return True
        return _text(kind).lower() in _PUBSUB_REPLIES

    def _gap(self) -> None:
        """Messages may have been missed: tell the listener, then wake every waiter to look."""
        self._lost()
        for group in list(self._waiters.values()):
            for waiter in list(group):
                waiter.wake_all()

    def _lost(self) -> None:
        self._generation += 1
        if self._on_lost is not None:
            self._on_lost()

    async def _reset(self) -> None:
        self._lost()
        await self._stop_reader()
        self._wanted.clear()
        self._reading = frozenset()
        self._confirmed_once.clear()
        self._confirm.clear()

    async def close(self) -> None:
        """Stop the reader and close the pub/sub connection. Idempotent."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            await self._reset()
        else:  # that loop is gone; its sockets went with it
            self._forget()
        self._loop = None
        self._lock = None

    def _forget(self) -> None:
        """Drop the state of a previous event loop without touching its tasks or sockets."""
        self._reader = None
        self._lost()
        self._subscribed.clear()
        self._wanted.clear()
        self._reading = frozenset()
        self._confirmed_once.clear()
        self._confirm.clear()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _not_enough_data() -> Any:
    """redis-py's marker for "no whole reply buffered" in its hiredis readers (False before 7)."""
    try:
        from redis._parsers import hiredis as parser
    except ImportError:  # redis-py not installed (the module is only used with it)
        return False
    return getattr(parser, "NOT_ENOUGH_DATA", False)


def _buffered_reader(parser: Any) -> Any:
    """The ``hiredis.Reader`` of a redis-py asyncio hiredis parser, or None (another parser).

    The parser's ``_reader`` (its hiredis reader, re-made on each connect) and
    ``read_from_socket()`` (read once from the stream, feed the reader) have been there
    since redis-py 5.0 (and before); any other parser is read through ``read_response``.
    """
    reader = getattr(parser, "_reader", None)
    if (reader is None or type(reader).__module__.split(".", 1)[0] != "hiredis"
            or not callable(getattr(parser, "read_from_socket", None))):
        return None
    return reader


if sys.version_info >= (3, 11, 3):  # as redis-py chooses (it depends on async-timeout before)
    _timeout = asyncio.timeout
else:  # pragma: no cover
    from async_timeout import timeout as _timeout


async def _read_socket(parser: Any, seconds: float) -> bool:
    """Wait up to ``seconds`` for bytes and feed them to ``parser``'s reader; False on silence.

    Raises redis-py's ``ConnectionError`` when the peer closed the connection, ``OSError``
    when the socket failed. A read cut short by the timeout loses nothing: the stream
    keeps what it has not handed over.
    """
    if not getattr(parser, "_connected", True):  # redis-py disconnected it (as its read_response checks)
        raise ConnectionError("the pub/sub connection was closed")
    try:
        async with _timeout(seconds):
            await parser.read_from_socket()
    except asyncio.TimeoutError:
        return False
    return True
