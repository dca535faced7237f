"""``core.timeouts.wait_within``: a wait with a time limit that never loses the caller's cancellation
(``asyncio.wait_for`` before Python 3.12 returns normally when the caller is cancelled in the same
event-loop pass as the awaited thing finishes: CPython gh-86296), and the waits built on it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from support.aio import ends_cancelled, run

from distributed_agents.adapters.memory.message_bus import BusData, MemoryMessageBus
from distributed_agents.core.ports.message_bus import BufferedSubscription, BusMessage
from distributed_agents.core.timeouts import wait_within, within


def test_a_caller_cancelled_as_the_event_comes_is_cancelled() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()

        async def ours() -> bool:
            return await wait_within(event.wait(), 5)

        mine = await ends_cancelled(ours, passes=3, wake=event.set)
        event = asyncio.Event()

        async def theirs() -> bool:
            await asyncio.wait_for(event.wait(), 5)
            return True

        # The reason for the helper: wait_for loses this cancellation before Python 3.12.
        return mine, await ends_cancelled(theirs, passes=3, wake=event.set)

    mine, theirs = run(scenario())
    assert mine is True
    if sys.version_info < (3, 12):
        assert theirs is False


def test_it_times_out_cancelling_what_it_waited_for_and_raises_what_that_raised() -> None:
    async def scenario() -> None:
        slow = asyncio.ensure_future(asyncio.sleep(10))
        assert await wait_within(slow, 0.05) is False
        await asyncio.sleep(0)
        assert slow.cancelled()
        assert await wait_within(asyncio.sleep(0.01), 5) is True
        assert await wait_within(asyncio.sleep(0.01), None) is True

        async def fails() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await wait_within(fails(), 5)
        done = asyncio.get_running_loop().create_future()
        done.set_result(1)
        assert await wait_within(done, 0) is True
        assert await wait_within(asyncio.get_running_loop().create_future(), 0) is False

    run(scenario())


@pytest.mark.parametrize("kind", ["memory", "buffered"])
def test_a_subscription_reader_cancelled_as_a_message_comes_is_cancelled(kind: str) -> None:
    """``Subscription.get(timeout=...)`` in a reader loop: a message landing as the reader is
    cancelled must not keep the loop going (the memory bus, and the buffer the Redis and NATS
    subscriptions share: ``ports.message_bus.BufferedSubscription``)."""
    async def scenario() -> list[bool]:
        subscription: Any
        if kind == "memory":
            bus = MemoryMessageBus(BusData())
            subscription = await bus.subscribe("events.*")
        else:
            subscription = BufferedSubscription("events.*")
        outcomes = []
        for index in range(10):
            message = BusMessage("events.x", {"i": index})
            outcomes.append(await ends_cancelled(lambda: subscription.get(timeout=5), passes=3,
                                                 wake=lambda: subscription._deliver(message)))
            assert await subscription.get(timeout=0) is message  # kept for the next reader, not lost
        return outcomes

    assert run(scenario()) == [True] * 10


def test_within_is_wait_for_that_keeps_the_cancellation() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        assert await within(asyncio.sleep(0, result=7), 5) == 7
        with pytest.raises(asyncio.TimeoutError):
            await within(asyncio.sleep(10), 0.05)

        async def fails() -> None:
            raise KeyError("k")

        with pytest.raises(KeyError):
            await within(fails(), 5)
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def reader() -> str:
            return await within(queue.get(), 5)

        cancelled = await ends_cancelled(reader, passes=3, wake=lambda: queue.put_nowait("event"))
        left = [queue.get_nowait() for _ in range(queue.qsize())]
        return cancelled, left

    cancelled, _ = run(scenario())
    assert cancelled is True  # an SSE or subscription reader stops when its client goes away
