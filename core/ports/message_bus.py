"""The MessageBus port: fire-and-forget events to every current subscriber.

The contract (checked by ``distributed_agents.conformance``):

* Channels are dot-separated tokens (``events.wf_123.node``). A pattern may use ``*``
  for exactly one token and ``>`` as its last token for one or more tokens (the NATS
  convention; adapters translate it to their engine).
* Every subscription that exists when a message is published receives it, in publish
  order per publisher. There is no replay for later subscribers.
* Subscriptions are independent: a message whose channel matches several subscriptions
  (say ``events.wf1`` and ``events.*`` made by the same caller on the same bus) is
  delivered once to each of them, so that caller gets one copy per subscription.
* ``publish_many`` is ``publish`` of each pair in order: every message reaches every
  matching subscription, whatever mix of channels the batch holds, in batch order.
* Delivery never drops: a burst of any size reaches every subscriber in full (buffers
  are unbounded, or the engine applies back-pressure without losing messages).
* A slow subscriber never stalls a publisher: each subscription buffers on its own.
* After ``Subscription.close()`` no further messages are delivered to it.
* Messages are JSON objects and arrive exactly as published (``None`` values, nesting,
  Unicode and numbers included).
* ``Subscription.get(timeout=0)`` returns a message already delivered to the
  subscription (None only when there is none); ``async for`` over a subscription
  waits through silences of any length and ends only when it is closed.
* Every method accepts exactly the parameters of this class (names, kinds, defaults).
"""

from __future__ import annotations

import asyncio
from distributed_agents.core.timeouts import wait_within
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BufferedSubscription", "BusMessage", "MessageBus", "Subscription", "pattern_matches"]


@dataclass(frozen=True)
class BusMessage:
    """One delivered message: the concrete channel it was published on and its data."""

    channel: str
    data: Mapping[str, Any]


class Subscription:
    """An open subscription; iterate it (``async for``) or call ``get``; ``close`` to stop."""

    pattern: str = ""

    async def get(self, timeout: float | None = None) -> BusMessage | None:
        """The next message, or None if ``timeout`` passed or the subscription is closed."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop delivery. Idempotent."""
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[BusMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[BusMessage]:
        while True:
            message = await self.get()
            if message is None:
                return
            yield message


class BufferedSubscription(Subscription):
    """A subscription whose engine callback appends to its own unbounded buffer.

    Adapters call ``_deliver`` from their reader (never blocking, so a slow consumer
    cannot stall anything upstream) and override ``_on_close`` to stop the engine-side
    subscription. Bound to the event loop it is used on.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._buffer: deque[BusMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def _deliver(self, message: BusMessage) -> None:
        if not self._closed:
            self._buffer.append(message)
            self._ready.set()

    async def get(self, timeout: float | None = None) -> BusMessage | None:
        """The next message, or None on timeout or once closed."""
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                return None
            self._ready.clear()
            remaining = None if give_up is None else give_up - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            if not await wait_within(self._ready.wait(), remaining):  # not wait_for: see core.timeouts
                return None

    async def close(self) -> None:
        """Stop delivery at once and drop buffered messages. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._ready.set()
        await self._on_close()

    async def _on_close(self) -> None:
        """Release the engine-side subscription."""


class MessageBus:
    """Port: publish/subscribe. Subclasses implement every method; see module docstring."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        """Send ``data`` to every current subscriber of a matching channel or pattern."""
        raise NotImplementedError

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Publish ``(channel, data)`` pairs in order; adapters may batch them in one round trip."""
        for channel, data in messages:
            await self.publish(channel, data)

    async def subscribe(self, pattern: str) -> Subscription:
        """Subscribe to a channel or pattern; delivery starts before this returns."""
        raise NotImplementedError

    def may_deliver(self, channel: str) -> bool:
        """False only if a message published on ``channel`` now would reach no subscriber.

        Lets a publisher skip building what nobody would receive. An adapter that cannot
        tell without a round trip (any networked bus) keeps this default: True.
        """
        return True

    async def close(self) -> None:
        """Close all subscriptions and connections. Idempotent."""


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern`` under the ``*`` / ``>`` token rules."""
    pattern_tokens = pattern.split(".")
    channel_tokens = channel.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">" and index == len(pattern_tokens) - 1:
            return len(channel_tokens) > index
        if index >= len(channel_tokens):
            return False
        if token != "*" and token != channel_tokens[index]:
            return False
    return len(channel_tokens) == len(pattern_tokens)
