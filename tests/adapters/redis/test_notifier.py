"""The queue notifier's pub/sub reader, against a real server.

The reader takes replies off its connection itself (every reply already received in one
go), so these check what ``PubSub.get_message`` used to guarantee: messages arrive
complete and in order however the bytes are cut into reads, on RESP2 and RESP3 and
with ``decode_responses``; a silent connection is PINGed; a killed connection wakes
every waiter and the reader subscribes again on a new one. No timed assertions: waits
poll a condition under the test's overall bound.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import uuid
from collections.abc import Callable

import pytest
import redis
from support.aio import run
from support.fault_proxy import FaultProxy
from support.redis_server import RedisServer

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.notifier import Notifier


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the caller's ``run`` bound ends a wait that never succeeds)."""
    while not condition():
        await asyncio.sleep(0.01)
    assert condition(), what


def _calls(profile: cProfile.Profile, name: str | None = None) -> int:
    """How many Python calls (of functions named ``name``, or all) ran while ``profile`` ran."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return sum(row[1] for (_, _, function), row in stats.items() if name is None or function == name)


@pytest.mark.parametrize("options", ["", "?protocol=2", "?protocol=3", "?socket_read_size=64", "unix"])
def test_messages_arriving_together_are_all_delivered_in_order(redis_server: RedisServer, options: str) -> None:
    """Hundreds of messages published while the reader cannot run reach it in one socket
    read; every one is delivered, in order, to the listener and to its key's waiter.
    With 64-byte reads, replies are cut at every place; "unix": over a unix socket."""
    if options == "unix":
        with RedisServer(unix_socket=True) as server:
            _many_at_once(server, server.unix_url, check_reads=True)
    else:
        if "socket_read_size" in options:
            from redis.asyncio.connection import parse_url

            if not isinstance(parse_url(redis_server.url + options)["socket_read_size"], int):
                pytest.skip("this redis-py passes socket_read_size from a URL on as a string; newer redis-py parses it")
        _many_at_once(redis_server, redis_server.url + options, check_reads="socket_read_size" not in options)


def _many_at_once(redis_server: RedisServer, url: str, check_reads: bool) -> None:
    channel = f"n{uuid.uuid4().hex[:8]}:done"
    count = 300

    async def scenario() -> tuple[list[str], list[str] | None, int, int]:
        notifier = Notifier(RedisConnection(url))
        got: list[str] = []
        notifier.listen(channel, got.append, lambda: None)
        publisher = redis.Redis.from_url(redis_server.url)
        try:
            async with notifier.watch([channel], ["t7"]) as waiter:
                assert notifier.subscribed(channel)
                waiter.clear()
                # Synchronous: the event loop (and so the reader) is blocked meanwhile.
                pipe = publisher.pipeline(transaction=False)
                for n in range(count):
                    pipe.publish(channel, f"t{n}\n{{\"n\": {n}}}")
                pipe.execute()
                publisher.ping()  # a later server round: the messages are in our socket now
                profile = cProfile.Profile()
                profile.enable()
                await until(lambda: len(got) >= count, "every message to arrive")
                profile.disable()
                assert await waiter.wait(0)
                return got, waiter.take_fired(), _calls(profile, "read_from_socket"), _calls(profile)
        finally:
            publisher.close()
            await notifier.close()

    got, fired, reads, calls = run(scenario(), 60)
    assert got == [f"t{n}\n{{\"n\": {n}}}" for n in range(count)]
    assert fired == ["t7\n{\"n\": 7}"]
    if check_reads:  # taken in one go, not a read per message (about 15 KB: one read, a few at most)
        assert reads <= 3, reads
        # Python function calls per message, event loop included (cProfile counts them
        # deterministically): about 11; through PubSub.get_message it was about 100.
        assert calls <= 30 * count, calls / count


def test_a_message_split_across_reads_arrives_whole_between_its_neighbours(redis_server: RedisServer) -> None:
    """A message larger than one socket read (redis-py reads 64 KB at a time) is put
    together from several reads; the small ones around it keep their order."""
    channel = f"n{uuid.uuid4().hex[:8]}:done"
    big = "b\n" + "x" * 300_000

    async def scenario() -> list[str]:
        notifier = Notifier(RedisConnection(redis_server.url))
        got: list[str] = []
        notifier.listen(channel, got.append, lambda: None)
        publisher = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await notifier.ensure([channel])
            assert notifier.subscribed(channel)
            for data in ("a\n1", big, "c\n3"):
                await publisher.publish(channel, data)
            await until(lambda: len(got) >= 3, "the three messages")
            pipe = publisher.pipeline(transaction=False)
            for data in (big, "d\n4", big):
                pipe.publish(channel, data)
            await pipe.execute()
            await until(lambda: len(got) >= 6, "the next three")
            return got
        finally:
            await publisher.aclose()
            await notifier.close()

    assert run(scenario(), 60) == ["a\n1", big, "c\n3", big, "d\n4", big]


def _client(server: RedisServer, name: str) -> dict[str, str] | None:
    """CLIENT LIST's fields of the connection named ``name`` (URL ``client_name``), or None."""
    with redis.Redis.from_url(server.url) as admin:
        for client in admin.client_list():
            if client.get("name") == name:
                return {k: str(v) for k, v in client.items()}
    return None


def test_a_silent_connection_is_pinged_and_still_delivers(redis_server: RedisServer) -> None:
    """With health_check_interval=1, a second without messages makes the reader PING on
    its pub/sub connection (the server's CLIENT LIST shows it); messages still arrive."""
    channel = f"n{uuid.uuid4().hex[:8]}:done"

    async def scenario() -> list[str]:
        name = f"n{uuid.uuid4().hex[:8]}"
        notifier = Notifier(RedisConnection(redis_server.url + f"?health_check_interval=1&client_name={name}"))
        got: list[str] = []
        notifier.listen(channel, got.append, lambda: None)
        publisher = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await notifier.ensure([channel])
            generation = notifier.generation

            def pinged() -> bool:
                client = _client(redis_server, name)
                return client is not None and client.get("cmd") == "ping"

            await until(pinged, "the reader to PING its silent connection")
            await publisher.publish(channel, "after\nping")
            await until(lambda: bool(got), "a message after the PING")
            assert notifier.generation == generation  # the answered PING kept the connection
            return got
        finally:
            await publisher.aclose()
            await notifier.close()

    assert run(scenario(), 60) == ["after\nping"]


def test_a_half_open_connection_is_given_up_and_subscribed_again(redis_server: RedisServer) -> None:
    """No answer to the PING (the proxy forwards nothing, closes nothing): the reader drops
    the connection, wakes its waiters, and subscribes again on a new one."""
    channel = f"n{uuid.uuid4().hex[:8]}:done"
    with FaultProxy(redis_server.port) as proxy:
        async def scenario() -> tuple[list[str], list[str] | None]:
            url = proxy.url("redis", "/0?health_check_interval=1&socket_timeout=2")
            notifier = Notifier(RedisConnection(url))
            got: list[str] = []
            notifier.listen(channel, got.append, lambda: None)
            publisher = redis.asyncio.Redis.from_url(redis_server.url)
            try:
                async with notifier.watch([channel], ["k"]) as waiter:
                    waiter.clear()
                    generation = notifier.generation
                    assert proxy.half_open() >= 1
                    await until(lambda: notifier.generation != generation and notifier.subscribed(channel),
                                "the reader to give the dead connection up and subscribe again")
                    woken = waiter.take_fired()
                    await publisher.publish(channel, "k\nagain")
                    await until(lambda: bool(got), "a message on the new connection")
                    return got, woken
            finally:
                await publisher.aclose()
                await notifier.close()

        got, woken = run(scenario(), 90)
    assert got == ["k\nagain"]
    assert woken is None  # woken "anything may have changed", not with a message


def test_a_killed_connection_wakes_waiters_and_the_reader_recovers(redis_server: RedisServer) -> None:
    """CLIENT KILL of the pub/sub connection: on_lost runs, every waiter wakes (to look at
    Redis), the reader subscribes again, later messages arrive, and a channel subscribed
    after the reconnect is confirmed."""
    channel = f"n{uuid.uuid4().hex[:8]}:done"
    other = channel + "2"

    async def scenario() -> tuple[list[str], int, bool, list[str] | None]:
        name = f"n{uuid.uuid4().hex[:8]}"
        notifier = Notifier(RedisConnection(redis_server.url + f"?client_name={name}"))
        got: list[str] = []
        lost: list[int] = []
        notifier.listen(channel, got.append, lambda: lost.append(1))
        publisher = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            async with notifier.watch([channel], ["k"]) as waiter:
                waiter.clear()
                before = len(lost)
                victim = _client(redis_server, name)
                assert victim is not None and int(victim["sub"]) == 1
                await publisher.client_kill_filter(_id=victim["id"])
                assert await waiter.wait(3600)  # only the wake-up ends this wait
                assert waiter.take_fired() is None
                await until(lambda: notifier.subscribed(channel), "the reader to subscribe again")
                waiter.take_fired()  # (the confirmation on the new connection may have woken it again)
                waiter.clear()
                await publisher.publish(channel, "k\nafter")
                assert await waiter.wait(3600)
                fired = waiter.take_fired()
            await notifier.ensure([other])
            confirmed = notifier.subscribed(other)
            return got, len(lost) - before, confirmed, fired
        finally:
            await publisher.aclose()
            await notifier.close()

    got, lost, confirmed, fired = run(scenario(), 60)
    assert lost >= 1
    assert fired == ["k\nafter"]
    assert got == ["k\nafter"]
    assert confirmed


def test_the_reader_takes_buffered_replies_from_hiredis(redis_server: RedisServer) -> None:
    """The installed redis-py and hiredis offer what the reader's fast path reads (the
    parser's hiredis reader and its socket read); were they renamed, the reader would
    silently fall back to one ``read_response`` per message, which this catches."""
    from distributed_agents.adapters.redis.notifier import _buffered_reader

    async def scenario() -> bool:
        client = RedisConnection(redis_server.url).client()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("anything")
            return _buffered_reader(pubsub.connection._parser) is not None
        finally:
            await pubsub.aclose()
            await client.aclose()

    assert run(scenario(), 30)
