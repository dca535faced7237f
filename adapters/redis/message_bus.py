"""MessageBus on Redis pub/sub: ``PUBLISH`` to ``{prefix}:bus:{channel}``, ``PSUBSCRIBE`` to globs.

Patterns use the port's NATS syntax (``*`` one token, ``>`` the trailing tokens); they
become a Redis glob that matches a superset (``keys.bus_glob``) and every message is
filtered client-side with ``pattern_matches``, so delivery is exact.

One bus object holds one pub/sub connection and one reader task. The reader moves each
message into the unbounded buffer of every matching ``RedisSubscription``: it never
waits for a consumer, so a slow subscriber cannot stall publishers (nor, through the
server's output buffer, the connection). Patterns are reference-counted: the glob is
``PUNSUBSCRIBE``d when its last subscription closes, and a closed subscription is
removed from dispatch at once, so nothing is delivered to it afterwards.

``subscribe`` returns only after the server confirmed the ``PSUBSCRIBE`` (for a glob
already subscribed: after a ``PING`` marker came back), so every message published after
it returns is delivered and none published before it. Redis delivers messages of one
connection in order, and one publisher awaits each ``PUBLISH``, so per-publisher order
holds. Messages are JSON objects; anything else on the channel is dropped with a log
line. Round trips: ``publish`` 1, ``subscribe`` 1.

Only the reader task uses the pub/sub object: redis-py asyncio connections are not safe
for concurrent use (a ``PSUBSCRIBE`` sent while the reader reconnects, or one that runs
a health-check ``PING``, reads the connection the reader is reading: "readuntil() called
while another coroutine is already waiting"). ``subscribe`` and closing a subscription
hand their command to the reader, which sends it between reads of at most
``_READ_SLICE`` seconds (redis-py resumes a read that timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.errors import acl_refusal, redis_errors
from distributed_agents.adapters.redis.keys import bus_channel, bus_glob
from distributed_agents.adapters.redis.notifier import liveness_interval
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import BackendError, BackendUnavailableError, PayloadDecodeError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.message_bus import (
    BufferedSubscription,
    BusMessage,
    MessageBus,
    Subscription,
    pattern_matches,
)
from distributed_agents.core.timeouts import within

__all__ = ["PUBLISH_SCRIPT", "RedisMessageBus", "RedisSubscription"]

log = logging.getLogger(__name__)

_SUBSCRIBE_TIMEOUT = 5.0
# Longest read of the reader before it sends the commands handed to it, in seconds.
_READ_SLICE = 0.05
_ALIVE = "da-bus-alive"  # the PING the reader sends after health_check_interval seconds of silence

# ARGV: channel, message, channel, message, ... Published in order; a refused PUBLISH (an
# ACL) does not stop the others, and the first refusal is the script's error reply.
PUBLISH_SCRIPT = """
local failed
for i = 1, #ARGV, 2 do
  local reply = redis.pcall('PUBLISH', ARGV[i], ARGV[i + 1])
  if type(reply) == 'table' and reply.err and not failed then failed = reply end
end
if failed then return failed end
return #ARGV / 2
"""


class RedisSubscription(BufferedSubscription):
    """One subscriber's buffer; filled by its bus's reader task."""

    def __init__(self, bus: RedisMessageBus, pattern: str, glob: str) -> None:
        super().__init__(pattern)
        self._bus = bus
        self.glob = glob

    async def _on_close(self) -> None:
        await self._bus._forget(self)


class RedisMessageBus(MessageBus):
    """Publish/subscribe over Redis; see the module docstring."""

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        prefix: str | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        self.prefix = BackendOptions.from_url(redis_url, prefix=prefix).prefix
        self._owns_connection = connection is None
        self._connection = connection or RedisConnection(redis_url)
        self._channel_prefix = self._connection.key_prefix(self.prefix)  # {prefix} on a cluster
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, list[RedisSubscription]] = {}
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._joining: dict[str, RedisSubscription] = {}  # PING token -> subscription waiting for its pong
        self._lock: asyncio.Lock | None = None
        # Commands for the reader to send: (future, method name, argument).
        self._commands: deque[tuple[asyncio.Future[None], str, str]] = deque()

    async def _command(self, method: str, argument: str) -> None:
        """Have the reader send ``method(argument)`` on the pub/sub connection; returns once sent."""
        loop = asyncio.get_running_loop()
        if self._pubsub is None:
            self._pubsub = self._connection.client().pubsub()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(), name="redis-message-bus")
        sent: asyncio.Future[None] = loop.create_future()
        self._commands.append((sent, method, argument))
        await sent

    async def _send_commands(self) -> None:
        while self._commands:
            sent, method, argument = self._commands.popleft()
            if sent.done():
                continue
            try:
                await getattr(self._pubsub, method)(argument)
            except asyncio.CancelledError:
                sent.cancel()
                raise
            except Exception as exc:
                sent.set_exception(exc)
            else:
                sent.set_result(None)

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        """Send ``data`` (a JSON object) to every current subscriber of ``channel``."""
        payload = encode(dict(data))
        with redis_errors(self._connection.url, f"publish to {channel!r}"):
            await self._connection.client().publish(bus_channel(self._channel_prefix, channel), payload)

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Publish in order: one round trip for the whole batch (sent with the other
        publishes of this tick, on a connection of their own: ``RedisConnection.run_script``'s
        ``lane``).

        On one server the batch is one script (``PUBLISH_SCRIPT``): one command and one
        reply for the whole batch, where a pipeline costs a command, a reply and a waiting
        future per message. It publishes every message even if one is refused, then
        raises the first refusal. A cluster pipelines ``PUBLISH`` commands to the primary
        serving the prefix (a script there would run on whichever node its key routes to).
        """
        if not messages:
            return
        prefix = self._channel_prefix
        if not self._connection.cluster:
            args: list[Any] = []
            for channel, data in messages:
                args += (bus_channel(prefix, channel), encode(data if type(data) is dict else dict(data)))
            await self._connection.run_script("bus_publish", PUBLISH_SCRIPT, [], args,
                                              f"publish {len(messages)} messages", lane="bus")
            return
        await self._connection.run_commands(
            [["PUBLISH", bus_channel(prefix, channel), encode(data if type(data) is dict else dict(data))]
             for channel, data in messages],
            f"publish {len(messages)} messages")

    async def subscribe(self, pattern: str) -> Subscription:
        """Subscribe to a channel or pattern; returns once the server confirmed it."""
        # One glob for the whole prefix when a Redis ACL must list it (see connection).
        glob = bus_glob(self._channel_prefix, ">" if self._connection.bus_subscribe == "prefix" else pattern)
        subscription = RedisSubscription(self, pattern, glob)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._subscriptions.get(glob):
                await self._join_known_glob(subscription, loop)
                return subscription
            confirmed = self._confirm[glob] = loop.create_future()
            self._subscriptions[glob] = [subscription]
            try:
                with redis_errors(self._connection.url, f"subscribe to {pattern!r}"):
                    await self._command("psubscribe", glob)
            except BaseException:
                self._subscriptions.pop(glob, None)
                raise
            try:
                await within(confirmed, _SUBSCRIBE_TIMEOUT)
            except BackendError:  # refused (ACL)
                self._subscriptions.pop(glob, None)
                self._confirm.pop(glob, None)
                raise
            except asyncio.TimeoutError:
                self._subscriptions.pop(glob, None)
                raise BackendUnavailableError(
                    f"Redis at {self._connection.masked_url} did not confirm the subscription to {pattern!r} "
                    f"within {_SUBSCRIBE_TIMEOUT}s"
                ) from None
        return subscription

    async def _join_known_glob(self, subscription: RedisSubscription, loop: asyncio.AbstractEventLoop) -> None:
        """Add ``subscription`` to its glob's group at a point of the server's stream.

        The pub/sub connection may already hold messages for this glob that were published
        before ``subscribe`` was called; they must not reach the new subscriber. A ``PING``
        with a unique token marks the point: the reader adds the subscription when the
        token's ``pong`` comes back, in stream order, so it gets exactly what follows.
        """
        token = f"join-{uuid.uuid4().hex}"
        joined = self._confirm[token] = loop.create_future()
        self._joining[token] = subscription
        try:
            with redis_errors(self._connection.url, f"subscribe to {subscription.pattern!r}"):
                await self._command("ping", token)
            await within(joined, _SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            raise BackendUnavailableError(
                f"Redis at {self._connection.masked_url} did not answer the subscription to "
                f"{subscription.pattern!r} within {_SUBSCRIBE_TIMEOUT}s"
            ) from None
        finally:
            self._joining.pop(token, None)
            self._confirm.pop(token, None)

    async def _forget(self, subscription: RedisSubscription) -> None:
        if self._lock is None:
            return
        async with self._lock:
            await self._forget_locked(subscription)

    async def _forget_locked(self, subscription: RedisSubscription) -> None:
        group = self._subscriptions.get(subscription.glob)
        if group is None or subscription not in group:
            return
        group.remove(subscription)
        if group or self._pubsub is None:
            return
        del self._subscriptions[subscription.glob]
        with contextlib.suppress(Exception):  # the glob only costs server-side filtering now
            await self._command("punsubscribe", subscription.glob)

    async def _read(self) -> None:
        pause = 0.05
        loop = asyncio.get_running_loop()
        quiet = liveness_interval(self._connection.client())
        heard, pinged = loop.time(), False
        while True:
            try:
                await self._send_commands()
                message = await self._pubsub.get_message(timeout=_READ_SLICE)
                if message is not None:
                    heard, pinged = loop.time(), False
                elif loop.time() - heard > quiet:
                    # Silent for a while: ask, and if no answer comes either, the connection is
                    # dead (half-open: no FIN or RST ever arrives). Dropping it makes the next
                    # read connect again, and redis-py re-subscribes the patterns on connect.
                    if pinged:
                        log.warning("message bus on %s: no answer to PING within %gs; connecting again",
                                    self._connection.masked_url, quiet)
                        connection = self._pubsub.connection
                        if connection is not None:
                            await connection.disconnect()
                        heard, pinged = loop.time(), False
                    else:
                        await self._pubsub.ping(_ALIVE)
                        heard, pinged = loop.time(), True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost connection: redis-py reconnects and re-subscribes
                refused = acl_refusal(exc, self._connection.url, "subscribe")
                if refused is not None:  # a PSUBSCRIBE the user's ACL does not allow: its caller says so
                    for future in self._confirm.values():
                        if not future.done():
                            future.set_exception(refused)
                    continue
                log.warning("message bus on %s lost its connection: %s", self._connection.masked_url, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            pause = 0.05
            if message is None:
                continue
            kind = message.get("type")
            glob = _text(message.get("pattern"))
            if kind == "psubscribe":
                future = self._confirm.pop(_text(message.get("channel")), None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == "pong":
                token = _text(message.get("data"))
                joining = self._joining.pop(token, None)
                future = self._confirm.pop(token, None)
                if joining is not None and future is not None and not future.done():
                    self._subscriptions.setdefault(joining.glob, []).append(joining)
                    future.set_result(None)
            elif kind == "pmessage":
                self._dispatch(glob, _text(message.get("channel")), message.get("data"))

    def _dispatch(self, glob: str, redis_channel: str, raw: Any) -> None:
        group = self._subscriptions.get(glob)
        if not group:
            return
        head = f"{self._channel_prefix}:bus:"
        if not redis_channel.startswith(head):
            return
        channel = redis_channel[len(head):]
        targets = [s for s in group if pattern_matches(s.pattern, channel)]
        if not targets:
            return
        try:
            data = decode(raw)
        except PayloadDecodeError as exc:
            log.warning("dropped a message on %r that is not JSON: %s", channel, exc)
            return
        if not isinstance(data, dict):
            log.warning("dropped a message on %r that is not a JSON object", channel)
            return
        for subscription in targets:
            # Each subscriber gets its own copy so that none can change another's message.
            subscription._deliver(BusMessage(channel, data if len(targets) == 1 else decode(raw)))

    async def close(self) -> None:
        """Close every subscription, the reader and the pub/sub connection. Idempotent."""
        for group in list(self._subscriptions.values()):
            for subscription in list(group):
                subscription._closed = True
                subscription._buffer.clear()
                subscription._ready.set()
        self._subscriptions.clear()
        self._confirm.clear()
        self._joining.clear()
        for sent, _, _ in self._commands:
            sent.cancel()
        self._commands.clear()
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        self._lock = None
        if self._owns_connection:
            await self._connection.close()

    def __repr__(self) -> str:
        return f"<RedisMessageBus {self._connection.masked_url} prefix={self.prefix!r}>"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
