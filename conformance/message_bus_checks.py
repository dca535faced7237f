"""Scenario checks of the MessageBus port: fan-out, order, patterns, unsubscribe, slow readers."""

from __future__ import annotations

import asyncio
import time

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session
from distributed_agents.conformance.models import channel_matches
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
    # Once the other subscriber has n=2, the leaving one has most likely buffered it: close must drop it too.
    await bus.publish("chan", {"n": 2})
    got = [m.data["n"] for m in await drain(staying, 2, session.requirements.delivery_timeout)]
    await leaving.close()
    await leaving.close()  # idempotent
    await bus.publish("chan", {"n": 3})
    got += [m.data["n"] for m in await drain(staying, 1, session.requirements.delivery_timeout)]
    expect(got == [1, 2, 3], "message_bus.fanout", f"the remaining subscriber got {got}")
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


async def _exactly(expected: list[tuple[str, Subscription, list[object]]], session: Session, clause: str) -> None:
    """Each ``(what, subscription, want)`` delivers the messages whose ``n`` is in ``want``, in order, and nothing more."""
    received = []
    for what, subscription, want in expected:
        got = [m.data.get("n") for m in await drain(subscription, len(want), session.requirements.delivery_timeout)]
        received.append(got)
    await asyncio.sleep(session.slack * 2 + 0.05)  # once for all: time for a stray extra message to arrive
    for (what, subscription, want), got in zip(expected, received):
        while (extra := await subscription.get(timeout=0)) is not None:
            got.append(extra.data.get("n"))
        expect(got == want, clause, f"{what} received {got}, expected {want}")


@conformance_check(PORT, ("message_bus.publish-many",))
async def check_publish_many_across_channels(session: Session) -> None:
    """publish_many of a batch spanning channels (and patterns) delivers like publish, in order, between publishes."""
    bus = (await session.open()).message_bus
    patterns = session.requirements.supports("pattern_subscriptions")
    names = ["ev.a", "ev.b", "other.x", "ev.日本"] + (["ev.*", "ev.>", "*.x", ">", "ev.日本.>"] if patterns else [])
    subs = {name: await bus.subscribe(name) for name in names}
    batch = [("ev.a", 1), ("ev.b", 2), ("ev.a.x", 3), ("other.x", 4), ("ev.日本", 5), ("ev.a", 6), ("nobody.here", 7),
             ("ev.日本.ü", 8), ("ev.b", 9)]
    await bus.publish("ev.a", {"n": 0})
    await bus.publish_many([(channel, {"n": n, "c": channel}) for channel, n in batch])
    await bus.publish_many([])
    await bus.publish("ev.b", {"n": 10})
    sent = [("ev.a", 0), *batch, ("ev.b", 10)]
    await _exactly([(f"subscription {name!r}", subscription, [n for channel, n in sent if channel_matches(name, channel)])
                    for name, subscription in subs.items()], session, "message_bus.publish-many")


@conformance_check(PORT, ("message_bus.overlap",))
async def check_overlapping_subscriptions_get_one_copy_each(session: Session) -> None:
    """One caller's overlapping subscriptions (same channel twice, exact and pattern) each get one copy."""
    backend = await session.open()
    bus = backend.message_bus
    patterns = session.requirements.supports("pattern_subscriptions")
    names = ["ev.a", "ev.a"] + (["ev.*", "ev.>", ">", "ev.*"] if patterns else [])
    subs = [await bus.subscribe(name) for name in names]
    await bus.publish("ev.a", {"n": 1})
    await bus.publish_many([("ev.a", {"n": 2}), ("ev.b", {"n": 3})])
    sent = [("ev.a", 1), ("ev.a", 2), ("ev.b", 3)]
    await _exactly([(f"subscription {index} to {name!r} (of {len(subs)} overlapping ones)", subscription,
                     [n for channel, n in sent if channel_matches(name, channel)])
                    for index, (name, subscription) in enumerate(zip(names, subs))], session, "message_bus.overlap")
    await subs[0].close()

    async def publish_soon() -> None:
        await asyncio.sleep(session.slack)
        await bus.publish("ev.a", {"n": 5})

    # get() without a timeout waits for the next message.
    waited, _ = await asyncio.gather(asyncio.wait_for(subs[1].get(), session.requirements.delivery_timeout), publish_soon())
    expect(waited is not None and waited.data.get("n") == 5, "message_bus.fanout", f"get() without a timeout returned {waited!r}")
    await bus.publish("ev.a", {"n": 4})
    await _exactly([("the second 'ev.a' subscription after the first was closed", subs[1], [4])], session, "message_bus.overlap")


@conformance_check(PORT, ("message_bus.burst",))
async def check_burst_reaches_everyone(session: Session) -> None:
    """A burst of thousands (publish_many, then publish) reaches a reading and a sleeping subscriber in full, in order."""
    bus = (await session.open()).message_bus
    reader = await bus.subscribe("burst.x")
    sleeper = await bus.subscribe("burst.x")
    watchers = [await bus.subscribe("burst.*")] if session.requirements.supports("pattern_subscriptions") else []
    count = 5000
    pad = "x" * 256
    await bus.publish_many([("burst.x", {"seq": seq, "pad": pad}) for seq in range(count)])
    for seq in range(count, count + 200):
        await bus.publish("burst.x", {"seq": seq})
    total = count + 200
    budget = session.requirements.delivery_timeout * 5
    for name, subscription in [("reading", reader), ("sleeping", sleeper)] + [("pattern", w) for w in watchers]:
        got = [m.data["seq"] for m in await drain(subscription, total, budget)]
        expect(len(got) == total, "message_bus.burst", f"the {name} subscriber got {len(got)} of a {total}-message burst")
        expect(got == list(range(total)), "message_bus.order", f"the {name} subscriber got the burst out of order")


@conformance_check(PORT, ("message_bus.fidelity",))
async def check_messages_arrive_as_published(session: Session) -> None:
    """None values, nesting, Unicode, big and float numbers, empty containers arrive unchanged (publish and publish_many)."""
    bus = (await session.open()).message_bus
    clause = "message_bus.fidelity"
    sub = await bus.subscribe("events.fidelity")
    data: dict[str, object] = {"none": None, "text": "naïve 日本語 ✓ \u0000end", "nested": {"a": {"b": [None, 1.5, -3, True, False, "ü"]}},
            "big": 2**53, "neg": -(2**40), "float": 0.1, "empty": {}, "empty_list": [], "": "empty key", "ключ": None}
    await bus.publish("events.fidelity", data)
    await bus.publish_many([("events.fidelity", {"many": None, "n": {"x": None}}), ("events.fidelity", data)])
    items: list[int] = [1]
    inner: dict[str, str] = {"k": "v"}
    mutable: dict[str, object] = {"list": items, "inner": inner}
    await bus.publish("events.fidelity", mutable)
    items.append(2)
    inner["k"] = "changed"
    mutable["added"] = True
    got = await drain(sub, 4, session.requirements.delivery_timeout)
    want = [data, {"many": None, "n": {"x": None}}, data, {"list": [1], "inner": {"k": "v"}}]
    expect([dict(m.data) for m in got] == want, clause, f"published {want} (the last one changed by the publisher after "
           f"publish), received {[dict(m.data) for m in got]}")


@conformance_check(PORT, ("message_bus.receive",))
async def check_get_without_waiting_sees_buffered(session: Session) -> None:
    """get(timeout=0) returns a message already delivered to the subscription instead of None."""
    bus = (await session.open()).message_bus
    clause = "message_bus.receive"
    polled = await bus.subscribe("events.poll")
    witness = await bus.subscribe("events.poll")
    expect(await polled.get(timeout=0) is None, clause, "get(timeout=0) on an empty subscription returned a message")
    await bus.publish("events.poll", {"n": 1})
    await bus.publish("events.poll", {"n": 2})
    arrived = await drain(witness, 2, session.requirements.delivery_timeout)
    expect(len(arrived) == 2, "message_bus.fanout", f"a subscriber got {len(arrived)} of 2 messages")
    got: list[object] = []
    give_up = time.monotonic() + session.requirements.delivery_timeout
    while len(got) < 2 and time.monotonic() < give_up:
        message = await polled.get(timeout=0)
        if message is None:
            await asyncio.sleep(0.02)
        else:
            got.append(dict(message.data))
    expect(got == [{"n": 1}, {"n": 2}], clause,
           f"get(timeout=0) polled for {session.requirements.delivery_timeout}s returned {got} of two delivered messages")


@conformance_check(PORT, ("message_bus.receive",))
async def check_iteration_survives_a_lull(session: Session) -> None:
    """``async for`` over a subscription keeps waiting through a silence of seconds and ends when it is closed."""
    bus = (await session.open()).message_bus
    clause = "message_bus.receive"
    sub = await bus.subscribe("events.iter")
    got: list[dict[str, object]] = []

    async def consume() -> str:
        async for message in sub:
            got.append(dict(message.data))
            if len(got) == 2:
                return "both"
        return "ended"

    reader = asyncio.ensure_future(consume())
    try:
        await bus.publish("events.iter", {"n": 1})
        give_up = time.monotonic() + session.requirements.delivery_timeout
        while not got and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        expect(got == [{"n": 1}], clause, f"async for received {got} after one publish")
        await asyncio.sleep(1.5)  # a lull longer than any poll interval an adapter might mistake for the end
        expect(not reader.done(), clause, f"async for over an open subscription ended after 1.5s of silence (received {got})")
        await bus.publish("events.iter", {"n": 2})
        done, _ = await asyncio.wait({reader}, timeout=session.requirements.delivery_timeout)
        expect(reader in done and reader.result() == "both", clause, f"after a lull async for received {got}, expected both messages")
    finally:
        if not reader.done():
            reader.cancel()
    closing = await bus.subscribe("events.iter")
    ends = asyncio.ensure_future(_count(closing))
    await asyncio.sleep(0.05)
    await closing.close()
    done, _ = await asyncio.wait({ends}, timeout=session.requirements.delivery_timeout)
    if not done:
        ends.cancel()
    expect(ends in done, clause, "async for over a subscription did not end when the subscription was closed")


async def _count(subscription: Subscription) -> str:
    count = 0
    async for _ in subscription:
        count += 1
    return f"ended after {count} messages"
