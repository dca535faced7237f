"""The event publisher's batches go on a lane of their own, never in the write of a tick's step scripts."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from support.aio import run

from distributed_agents.adapters.redis import RedisMessageBus
from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.core.ports.message_bus import Subscription

_ECHO = "return ARGV[1]"


async def _drain(subscription, timeout: float = 1.0) -> list[int]:  # type: ignore[no-untyped-def]
    got = []
    while (message := await subscription.get(timeout)) is not None:
        got.append(int(message.data["n"]))
    return got


@contextlib.asynccontextmanager
async def _publishing(url: str) -> AsyncIterator[tuple[RedisConnection, RedisMessageBus, Subscription]]:
    """A connection, a bus on it that has published once (event -1), and a subscription on another bus
    to every event; all closed on the way out (each close is idempotent)."""
    prefix = f"l{uuid.uuid4().hex[:8]}"
    connection = RedisConnection(url)
    bus = RedisMessageBus(url, prefix=prefix, connection=connection)
    listener = RedisMessageBus(url, prefix=prefix)
    try:
        subscription = await listener.subscribe("events.>")
        await bus.publish_many([("events.warm", {"n": -1})])
        yield connection, bus, subscription
    finally:
        await bus.close()
        await listener.close()
        await connection.close()


def test_publishes_and_step_scripts_of_one_tick_are_two_writes(redis_url: str) -> None:
    async def scenario() -> tuple[int, int, list[object], list[int]]:
        async with _publishing(redis_url) as (connection, bus, subscription):
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            assert connection._batcher is not None and connection._bus_batcher is not None
            steps, publishes = connection._batcher.round_trips, connection._bus_batcher.round_trips
            # One tick: three step scripts and a batch of 300 events, issued in between them.
            replies = await asyncio.gather(
                connection.run_script("echo", _ECHO, [], ["a"], "echo a"),
                bus.publish_many([(f"events.wf.{n}", {"n": n}) for n in range(300)]),
                connection.run_script("echo", _ECHO, [], ["b"], "echo b"),
                connection.run_script("echo", _ECHO, [], ["c"], "echo c"),
            )
            received = await _drain(subscription)
            return (connection._batcher.round_trips - steps, connection._bus_batcher.round_trips - publishes,
                    replies, received)

    steps, publishes, replies, received = run(scenario(), 30)
    assert steps == 1 and publishes == 1  # each lane one write: the publishes were not in the scripts' write
    assert replies == [b"a", None, b"b", b"c"]
    assert received == [-1, *range(300)]  # every event, in order


def test_close_sends_what_the_bus_lane_holds(redis_url: str) -> None:
    async def scenario() -> list[int]:
        async with _publishing(redis_url) as (connection, bus, subscription):
            # Issued, not yet written (the lane writes on the loop's next round), then the connection closes.
            sending = asyncio.ensure_future(bus.publish_many([(f"events.wf.{n}", {"n": n}) for n in range(50)]))
            await asyncio.sleep(0)
            await connection.close()
            # close waited for the send under way (not left running to reopen a client after it)
            assert sending.done() and sending.exception() is None
            return await _drain(subscription)

    assert run(scenario(), 30) == [-1, *range(50)]


def test_an_unknown_lane_is_refused(redis_url: str) -> None:
    async def scenario() -> None:
        connection = RedisConnection(redis_url)
        try:
            with pytest.raises(ValueError, match="unknown lane 'fast': expected 'steps' or 'bus'"):
                await connection.run_script("echo", _ECHO, [], ["x"], "echo", lane="fast")
        finally:
            await connection.close()

    run(scenario(), 20)
