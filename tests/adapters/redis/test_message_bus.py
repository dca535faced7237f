"""RedisMessageBus: pattern translation, shared patterns, slow subscribers, foreign bytes."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.adapters.redis import RedisMessageBus
from distributed_agents.adapters.redis.keys import bus_glob


def test_patterns_become_escaped_globs() -> None:
    assert bus_glob("da", "events.*.node") == "da:bus:events.*.node"
    assert bus_glob("da", "events.wf_1.>") == "da:bus:events.wf_1.*"
    assert bus_glob("a?b", "x[1].y") == "a\\?b:bus:x\\[1\\].y"


def _bus(url: str, prefix: str | None = None) -> RedisMessageBus:
    return RedisMessageBus(url, prefix=prefix or f"b{uuid.uuid4().hex[:8]}")


def test_exact_token_matching_on_top_of_the_glob(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        bus = _bus(redis_url)
        try:
            one = await bus.subscribe("events.*.node")
            rest = await bus.subscribe("events.wf1.>")
            literal = await bus.subscribe("odd[1].ch?")
            for channel in ["events.wf1.node", "events.wf1.x.node", "events.wf1", "events.wf2.node", "odd[1].ch?",
                            "odd1.chX"]:
                await bus.publish(channel, {"c": channel})

            async def drain(sub) -> list[str]:  # type: ignore[no-untyped-def]
                got = []
                while (message := await sub.get(0.3)) is not None:
                    got.append(message.channel)
                return got

            return await drain(one), await drain(rest), await drain(literal)
        finally:
            await bus.close()

    one, rest, literal = run(scenario(), 20)
    assert one == ["events.wf1.node", "events.wf2.node"]
    assert rest == ["events.wf1.node", "events.wf1.x.node"]
    assert literal == ["odd[1].ch?"]


def test_two_subscriptions_on_one_pattern_close_independently(redis_url: str) -> None:
    async def scenario() -> tuple[object, object, object]:
        bus = _bus(redis_url)
        try:
            first = await bus.subscribe("a.b")
            second = await bus.subscribe("a.b")
            await first.close()
            await bus.publish("a.b", {"n": 1})
            got = await second.get(1.0)
            closed = await first.get(0.1)
            await second.close()
            await bus.publish("a.b", {"n": 2})
            after = await second.get(0.2)
            return got, closed, after
        finally:
            await bus.close()

    got, closed, after = run(scenario(), 20)
    assert got is not None and got.data == {"n": 1}  # type: ignore[attr-defined]
    assert closed is None and after is None


def test_a_slow_subscriber_does_not_stall_the_publisher_and_keeps_order(redis_url: str) -> None:
    """The slow subscriber takes one message and then blocks on an event that is set only
    after the publisher has published everything: if publishing waited for it, the test
    would time out. Checked by counts and order, not by how long publishing took."""
    count = 1000

    async def scenario() -> tuple[int, list[int], list[int]]:
        publisher = _bus(redis_url)
        subscriber = _bus(redis_url, prefix=publisher.prefix)
        release = asyncio.Event()
        slow_seen: list[int] = []

        async def slow_reader() -> None:
            for _ in range(count):
                message = await slow.get(30.0)
                assert message is not None
                slow_seen.append(message.data["i"])  # type: ignore[attr-defined]
                await release.wait()  # blocked (after its first message) until publishing ended

        try:
            slow = await subscriber.subscribe("load")
            fast = await subscriber.subscribe(">")
            reader = asyncio.ensure_future(slow_reader())
            for index in range(count):
                await publisher.publish("load", {"i": index})
            taken_while_blocked = len(slow_seen)
            release.set()
            fast_seen = [(await fast.get(30.0)).data["i"] for _ in range(count)]  # type: ignore[union-attr]
            await asyncio.wait_for(reader, 60)
            return taken_while_blocked, fast_seen, slow_seen
        finally:
            await subscriber.close()
            await publisher.close()

    taken_while_blocked, fast_seen, slow_seen = run(scenario(), 100)
    # Every publish returned while the slow subscriber held its first message (or none yet).
    assert taken_while_blocked <= 1
    assert fast_seen == list(range(count)) and slow_seen == list(range(count))


def test_foreign_non_json_messages_are_dropped_and_prefixes_isolated(redis_url: str) -> None:
    async def scenario() -> tuple[object, object]:
        mine = _bus(redis_url)
        theirs = _bus(redis_url)
        raw = redis_asyncio.Redis.from_url(redis_url)
        try:
            sub = await mine.subscribe("x")
            await raw.publish(f"{mine.prefix}:bus:x", b"\xff not json")
            await raw.publish(f"{mine.prefix}:bus:x", b"[1, 2]")
            await theirs.publish("x", {"from": "other prefix"})
            await mine.publish("x", {"ok": True})
            first = await sub.get(1.0)
            extra = await sub.get(0.2)
            return first, extra
        finally:
            await raw.aclose()
            await theirs.close()
            await mine.close()

    first, extra = run(scenario(), 20)
    assert first is not None and first.data == {"ok": True}  # type: ignore[attr-defined]
    assert extra is None


def test_close_ends_iteration(redis_url: str) -> None:
    async def scenario() -> list[int]:
        bus = _bus(redis_url)
        try:
            sub = await bus.subscribe("it")
            seen: list[int] = []

            async def consume() -> None:
                async for message in sub:
                    seen.append(message.data["n"])

            consumer = asyncio.create_task(consume())
            for index in range(3):
                await bus.publish("it", {"n": index})
            while len(seen) < 3:
                await asyncio.sleep(0.01)
            await sub.close()
            await asyncio.wait_for(consumer, 2.0)
            return seen
        finally:
            await bus.close()

    assert run(scenario(), 20) == [0, 1, 2]


def test_a_second_subscriber_of_a_known_pattern_gets_nothing_published_before_it_subscribed(redis_url: str) -> None:
    # The pub/sub connection is shared: messages for the glob may already wait in its
    # socket, unread, when a second subscription joins; none of them is owed to it. A
    # blocking client publishes them while the event loop cannot read, so they wait.
    import redis as redis_sync

    async def scenario() -> tuple[list[int], int]:
        bus = _bus(redis_url)
        try:
            first = await bus.subscribe("ev.>")
            blocking = redis_sync.Redis.from_url(redis_url)
            try:
                with blocking.pipeline(transaction=False) as pipe:
                    for n in range(500):
                        pipe.publish(f"{bus.prefix}:bus:ev.a", b'{"n":%d}' % n)
                    pipe.execute()
            finally:
                blocking.close()
            second = await bus.subscribe("ev.>")
            await bus.publish("ev.a", {"n": -1})
            got = []
            while (message := await second.get(0.5)) is not None:
                got.append(message.data["n"])
            received_by_first = 0
            while (await first.get(0.2)) is not None:
                received_by_first += 1
            return got, received_by_first
        finally:
            await bus.close()

    got, received_by_first = run(scenario(), 60)
    assert got == [-1]
    assert received_by_first == 501
