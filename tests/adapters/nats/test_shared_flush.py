"""Bus publishes of one event-loop pass share one flush (``message_bus.flush_shared``).

Each publish still returns only once the server has routed its message: a subscription
made afterwards on another connection never receives it, one made before always does.
A publisher cancelled while waiting does not take the shared flush down with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from support.aio import run

from .conftest import open_nats


def test_concurrent_publishes_share_flushes_and_each_is_routed_when_it_returns(nats_url: str) -> None:
    async def scenario() -> tuple[int, int, list[int], list[Any]]:
        publisher = await open_nats(nats_url)
        listener = await open_nats(nats_url, prefix=publisher.options.prefix)
        try:
            before = await listener.message_bus.subscribe("events.>")
            nc = publisher.connection.nc
            flush = nc.flush
            pings = 0

            async def counted(timeout: int = 10) -> None:
                nonlocal pings
                pings += 1
                await flush(timeout)

            nc.flush = counted  # type: ignore[method-assign]
            late: list[Any] = []

            async def publish(index: int) -> None:
                await publisher.message_bus.publish(f"events.wf.n{index}", {"i": index})
                # Routed: a subscription made now, on another connection, never gets it.
                late.append(await listener.message_bus.subscribe(f"events.wf.n{index}"))

            await asyncio.gather(*(publish(index) for index in range(200)))
            got = []
            while len(got) < 200:
                message = await before.get(timeout=10)
                assert message is not None, len(got)
                got.append(message.data["i"])
            leaked = [await subscription.get(timeout=0) for subscription in late]
            return pings, len(got), sorted(got), leaked
        finally:
            await listener.close()
            await publisher.close()

    pings, count, got, leaked = run(scenario(), 60)
    assert count == 200 and got == list(range(200))
    assert leaked == [None] * 200
    assert pings < 50, pings  # 200 publishes of a few passes: a flush per pass, not per publish


def test_a_publisher_cancelled_while_waiting_leaves_the_others_their_flush(nats_url: str) -> None:
    async def scenario() -> list[int]:
        publisher = await open_nats(nats_url)
        listener = await open_nats(nats_url, prefix=publisher.options.prefix)
        try:
            subscription = await listener.message_bus.subscribe("events.>")
            waiting = [asyncio.ensure_future(publisher.message_bus.publish(f"events.n{i}", {"i": i}))
                       for i in range(10)]
            await asyncio.sleep(0)  # every publish written, all waiting on the one flush
            waiting[0].cancel()
            await asyncio.gather(*waiting[1:])
            got = []
            for _ in range(10):
                message = await subscription.get(timeout=10)
                assert message is not None
                got.append(message.data["i"])
            await publisher.message_bus.publish("events.after", {"i": 99})  # a later flush still works
            message = await subscription.get(timeout=10)
            assert message is not None
            return [*got, message.data["i"]]
        finally:
            await listener.close()
            await publisher.close()

    assert run(scenario(), 60) == [*range(10), 99]
