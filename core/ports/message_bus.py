"""The MessageBus port: fire-and-forget events to every current subscriber.

The contract (checked by ``distributed_agents.conformance``):

* Channels are dot-separated tokens (``events.wf_123.node``). A pattern may use ``*``
  for exactly one token and ``>`` as its last token for one or more tokens (the NATS
  convention; adapters translate it to their engine).
* Every subscription that exists when a message is published receives it, in publish
  order per publisher. There is no replay for later subscribers.
* A slow subscriber never stalls a publisher: each subscription buffers on its own.
* After ``Subscription.close()`` no further messages are delivered to it.
* Messages are JSON objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BusMessage", "MessageBus", "Subscription", "pattern_matches"]


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


class MessageBus:
    """Port: publish/subscribe. Subclasses implement every method; see module docstring."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        """Send ``data`` to every current subscriber of a matching channel or pattern."""
        raise NotImplementedError

    async def subscribe(self, pattern: str) -> Subscription:
        """Subscribe to a channel or pattern; delivery starts before this returns."""
        raise NotImplementedError

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
