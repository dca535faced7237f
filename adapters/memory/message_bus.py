"""In-process MessageBus: every subscription has its own unbounded buffer.

Publishing copies the message once (through JSON, so subscribers never share objects
with the publisher) and appends it to each matching subscription; it never waits for a
subscriber, so a slow one cannot stall publishers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.ports.message_bus import BusMessage, MessageBus, Subscription, pattern_matches
from distributed_agents.adapters.memory.waiters import WaiterSet

__all__ = ["BusData", "MemoryMessageBus", "MemorySubscription"]


class BusData:
    """All subscriptions of one prefix; shared by every ``MemoryMessageBus`` on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: list[MemorySubscription] = []
        self.waiters = WaiterSet()


class MemorySubscription(Subscription):
    """One subscriber's buffer of messages."""

    def __init__(self, data: BusData, pattern: str) -> None:
        self._data = data
        self.pattern = pattern
        self._buffer: deque[BusMessage] = deque()
        self._closed = False

    def _deliver(self, message: BusMessage) -> None:
        self._buffer.append(message)
        self._data.waiters.notify(id(self))

    async def get(self, timeout: float | None = None) -> BusMessage | None:
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                return None
            remaining = 3600.0 if give_up is None else give_up - time.monotonic()
            if remaining <= 0:
                return None
            await self._data.waiters.wait([id(self)], remaining)

    async def close(self) -> None:
        with self._data.lock:
            if self in self._data.subscriptions:
                self._data.subscriptions.remove(self)
        self._closed = True
        self._buffer.clear()
        self._data.waiters.notify(id(self))


class MemoryMessageBus(MessageBus):
    """MessageBus over ``BusData``; see the port's docstring for the contract."""

    def __init__(self, data: BusData) -> None:
        self._data = data
        self._own: list[MemorySubscription] = []

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        message = BusMessage(channel, decode(encode(dict(data))))
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if pattern_matches(s.pattern, channel)]
        for subscription in targets:
            subscription._deliver(message)

    def may_deliver(self, channel: str) -> bool:
        if not self._data.subscriptions:  # read without the lock: a list's length is read atomically
            return False
        with self._data.lock:
            return any(pattern_matches(s.pattern, channel) for s in self._data.subscriptions)

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = MemorySubscription(self._data, pattern)
        with self._data.lock:
            self._data.subscriptions.append(subscription)
        self._own.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._own:
            await subscription.close()
        self._own.clear()
