"""Scenario checks of the MessageBus port: fan-out, order, patterns, unsubscribe, slow readers."""

from __future__ import annotations

import asyncio
import time

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session
from distributed_agents.core.ports.message_bus import BusMessage, Subscription

PORT = "message_bus"


async def drain(subscription: Subscription, count: int, timeout: float) -> list[BusMessage]:
    """Up to ``count`` messages, waiting at most ``timeout`` seconds in all."""
    got: list[BusMessage] = []
    give_up = time.monotonic() + timeout
    while len(got) < count:
        message = await subscription.get(timeout=max(0.0, give_up - time.monotonic()))
        if message is None:
            break
        got.append(message)
    return got


@conformance_check(PORT, ("message_bus.fanout", "message_bus.order"))
async def check_every_subscriber_gets_every_message_in_order(session: Session) -> None:
    """Three subscribers on two connections each get all messages of two publishers, in order."""
    first = await session.open()
    second = await session.open(prefix=first.options.prefix) if session.requirements.supports("shared_prefix") else first
    subs = [await first.message_bus.subscribe("events.wf1"), await second.message_bus.subscribe("events.wf1"),
            await first.message_bus.subscribe("events.wf1")]
    publishers = {"p1": first.message_bus, "p2": second.message_bus}
    for seq in range(20):
        for name, bus in publishers.items():
            await bus.publish("events.wf1", {"pub": name, "seq": seq})
    for index, sub in enumerate(subs):
        got = await drain(sub, 40, session.requirements.delivery_timeout)
        expect(len(got) == 40, "message_bus.fanout", f"subscriber {index + 1} of 3 got {len(got)} of 40 messages")
        for name in publishers:
            seqs = [m.data["seq"] for m in got if m.data.get("pub") == name]
            expect(seqs == list(range(20)), "message_bus.order", f"subscriber {index + 1} got {name}'s messages as {seqs}")
        expect(all(m.channel == "events.wf1" for m in got), "message_bus.fanout", "a message names the wrong channel")


@conformance_check(PORT, ("message_bus.patterns",), requires=("pattern_subscriptions",))
async def check_pattern_subscriptions(session: Session) -> None:
    """'*' matches one token, '>' one or more trailing tokens; exact channels match only themselves."""
    bus = (await session.open()).message_bus
    patterns = ["events.wf1.>", "events.*.done", "events.wf1", "events.>", "other.*"]
    subs = {p: await bus.subscribe(p) for p in patterns}
    channels = ["events.wf1", "events.wf1.node.a", "events.wf2.done", "events.wf1.done", "other.x", "other.x.y", "eventsx.wf1"]
    for channel in channels:
        await bus.publish(channel, {"c": channel})
    expected = {
        "events.wf1.>": ["events.wf1.node.a", "events.wf1.done"],
        "events.*.done": ["events.wf2.done", "events.wf1.done"],
        "events.wf1": ["events.wf1"],
        "events.>": ["events.wf1", "events.wf1.node.a", "events.wf2.done", "events.wf1.done"],
        "other.*": ["other.x"],
    }
    for pattern, want in expected.items():
        got = [m.channel for m in await drain(subs[pattern], len(want), session.requirements.delivery_timeout)]
        extra = await subs[pattern].get(timeout=session.slack * 2 + 0.05)
        if extra is not None:
            got.append(extra.channel)
        expect(got == want, "message_bus.patterns", f"subscription {pattern!r} got {got}, expected {want}")


@conformance_check(PORT, ("message_bus.unsubscribe",))
async def check_unsubscribe_stops_delivery(session: Session) -> None:
    """After close a subscription yields nothing more, while others keep receiving."""
    bus = (await session.open()).message_bus
    leaving = await bus.subscribe("chan")
    staying = await bus.subscribe("chan")
    await bus.publish("chan", {"n": 1})
    expect(len(await drain(leaving, 1, session.requirements.delivery_timeout)) == 1, "message_bus.fanout", "first message lost")
    await leaving.close()
    await leaving.close()  # idempotent
    await bus.publish("chan", {"n": 2})
    got = [m.data["n"] for m in await drain(staying, 2, session.requirements.delivery_timeout)]
    expect(got == [1, 2], "message_bus.fanout", f"the remaining subscriber got {got}")
    after = await leaving.get(timeout=session.slack * 2 + 0.05)
    expect(after is None, "message_bus.unsubscribe", f"a closed subscription delivered {after!r}")


@conformance_check(PORT, ("message_bus.slow-subscriber",))
async def check_slow_subscriber_does_not_block(session: Session) -> None:
    """A subscriber that never reads neither stalls the publisher nor starves a fast subscriber."""
    bus = (await session.open()).message_bus
    sleeper = await bus.subscribe("firehose")
    reader = await bus.subscribe("firehose")
    count = 2000
    budget = session.requirements.delivery_timeout * 5

    async def publish_all() -> None:
        for seq in range(count):
            await bus.publish("firehose", {"seq": seq, "pad": "x" * 64})

    try:
        await asyncio.wait_for(publish_all(), budget)
    except asyncio.TimeoutError:
        expect(False, "message_bus.slow-subscriber", f"publishing {count} messages took over {budget}s while one subscriber did not read")
    got = [m.data["seq"] for m in await drain(reader, count, budget)]
    expect(len(got) == count, "message_bus.slow-subscriber", f"the reading subscriber got {len(got)} of {count} messages")
    expect(got == list(range(count)), "message_bus.order", "the reading subscriber got the firehose out of order")
    del sleeper
