"""Script calls of one event-loop tick go to Redis in one write, each with its own reply or error."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.core.errors import BackendError

_ECHO = "return ARGV[1]"
_FAIL = "return redis.error_reply('refused ' .. ARGV[1])"


def test_calls_of_one_tick_share_a_pipeline_and_keep_their_own_replies() -> None:
    async def scenario(url: str) -> tuple[list[object], list[str], int, object, int]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url)
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            try:  # loads the script
                await connection.run_script("fail", _FAIL, [], ["warm"], "warm up")
            except BackendError:
                pass
            assert connection._batcher is not None
            writes = connection._batcher.round_trips
            before = int((await meter.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))
            calls = [connection.run_script("echo", _ECHO, [], [str(i)], f"echo {i}") for i in range(50)]
            calls.insert(7, connection.run_script("fail", _FAIL, [], ["x"], "the failing call"))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            after = int((await meter.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))
            # The server lost its scripts: the next batch loads them again and still answers.
            await meter.script_flush()
            batches = connection._batcher.round_trips - writes
            again = await asyncio.gather(*(connection.run_script("echo", _ECHO, [], [str(i)], "echo") for i in range(3)))
            replies = [o.decode() if isinstance(o, bytes) else o for o in outcomes]
            return replies, [x.decode() for x in again], after - before, outcomes[7], batches
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        replies, again, evalshas, failed, batches = run(scenario(server.url), 60)
    assert replies[:7] == [str(i) for i in range(7)] and replies[8:] == [str(i) for i in range(7, 50)]
    assert isinstance(failed, BackendError) and "refused x" in str(failed) and "the failing call" in str(failed)
    assert evalshas == 51 and batches == 1  # one per call (the failing one included), in one write
    assert again == ["0", "1", "2"]


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    async def scenario(url: str) -> list[object]:
        connection = RedisConnection(url)
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            calls = [asyncio.ensure_future(connection.run_script("echo", _ECHO, [], [str(i)], "echo")) for i in range(5)]
            await asyncio.sleep(0)  # queued, not yet sent
            calls[2].cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            return [type(d).__name__ if isinstance(d, BaseException) else d.decode() for d in done]
        finally:
            await connection.close()

    with RedisServer() as server:
        assert run(scenario(server.url), 60) == ["0", "1", "CancelledError", "3", "4"]


def test_an_unreachable_server_fails_each_caller_instead_of_leaving_it_waiting() -> None:
    async def scenario() -> list[str]:
        # A port nothing listens on: every call of the batch gets the connection error.
        connection = RedisConnection("redis://127.0.0.1:1/0?socket_connect_timeout=0.5")
        try:
            calls = [connection.run_script("echo", _ECHO, [], [str(i)], f"echo {i}") for i in range(3)]
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
            return [type(o).__name__ for o in outcomes]
        finally:
            await connection.close()

    assert run(scenario(), 90) == ["BackendUnavailableError"] * 3


def test_a_call_issued_just_before_close_is_answered_and_leaves_no_client_open() -> None:
    """Calls issued in the tick of ``close`` (a claim and a shutdown racing) go out on the
    client being closed and get their replies; nothing opens a new client afterwards
    (that one's socket would never be closed: an unclosed-socket warning, an error here)."""

    async def scenario(url: str) -> tuple[list[object], object, int]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url, client_name="meter")
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            calls = [asyncio.ensure_future(connection.run_script("echo", _ECHO, [], [str(i)], "echo")) for i in range(3)]
            await asyncio.sleep(0)  # the calls are issued: waiting for this tick's pipeline
            await connection.close()
            replies = await asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.1)  # a send that outlived close would have connected by now
            clients = [c for c in await meter.client_list() if c.get("name") != "meter"]
            return [r.decode() if isinstance(r, bytes) else r for r in replies], connection._client, len(clients)
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        replies, client, others = run(scenario(server.url), 60)
    assert replies == ["0", "1", "2"]
    assert client is None and others == 0


def test_a_connection_killed_between_batches_is_replaced_and_the_batch_answered() -> None:
    """The server drops the pooled connection (CLIENT KILL): the next batch fails to send or read,
    and is sent again on a new connection (the scripts are safe to repeat)."""

    async def scenario(url: str) -> list[str]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url, client_name="meter")
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            await meter.execute_command("CLIENT", "KILL", "SKIPME", "yes")
            replies = await asyncio.gather(*(connection.run_script("echo", _ECHO, [], [str(i)], "echo") for i in range(4)))
            return [r.decode() for r in replies]
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        assert run(scenario(server.url), 60) == ["0", "1", "2", "3"]


def test_plain_commands_share_the_write_and_an_unsendable_argument_fails_only_its_caller() -> None:
    async def scenario(url: str) -> tuple[list[object], object, list[object]]:
        connection = RedisConnection(url)
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            assert connection._batcher is not None
            writes = connection._batcher.round_trips
            together = await asyncio.gather(
                connection.run_commands([["SET", "k", "v"], ["GET", "k"], ["INCR", "n"]], "set, get, incr"),
                connection.run_script("echo", _ECHO, [], ["s"], "echo"))
            shared = connection._batcher.round_trips - writes
            mixed = await asyncio.gather(connection.run_script("echo", _ECHO, [], [None], "a None argument"),
                                         connection.run_script("echo", _ECHO, [], ["ok"], "echo"),
                                         return_exceptions=True)
            return [*together, shared], mixed[0], [mixed[1]]
        finally:
            await connection.close()

    with RedisServer() as server:
        together, refused, kept = run(scenario(server.url), 60)
    assert together == [[b"OK", b"v", 1], b"s", 1]  # raw replies
    assert isinstance(refused, TypeError) and kept == [b"ok"]


def test_the_python_packer_writes_what_hiredis_writes() -> None:
    from distributed_agents.adapters.redis import batching

    command = ["EVALSHA", "ab" * 20, 2, "k:1", "k:2", b"\x00\xffraw", 0, -12, 3.25, "é", ""]
    packed = batching._pack_python(command)
    assert packed.startswith(b"*11\r\n$7\r\nEVALSHA\r\n") and b"$2\r\n\xc3\xa9\r\n$0\r\n\r\n" in packed
    if batching._hiredis_pack is not None:
        assert packed == batching._hiredis_pack(tuple(command))


def test_a_cold_start_loads_each_script_once_and_sends_its_calls_again_together() -> None:
    """Fifty calls of two scripts the server does not know: two SCRIPT LOADs, and one more
    write for all fifty (not three round trips per call)."""

    async def scenario(url: str) -> tuple[list[str], int, int, int]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url)
        try:
            await meter.config_resetstat()
            calls = [connection.run_script("echo", _ECHO, [], [str(i)], "echo") for i in range(25)]
            calls += [connection.run_script("echo2", _ECHO + " ", [], [str(i)], "echo") for i in range(25, 50)]
            replies = await asyncio.gather(*calls)
            stats = await meter.info("commandstats")
            loads = int(stats.get("cmdstat_script|load", stats.get("cmdstat_script", {})).get("calls", 0))
            evalshas = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
            assert connection._batcher is not None
            return [r.decode() for r in replies], loads, evalshas, connection._batcher.round_trips
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        replies, loads, evalshas, writes = run(scenario(server.url), 60)
    assert replies == [str(i) for i in range(50)]
    assert loads == 2 and evalshas == 100 and writes == 1


def test_sequential_round_trips_reuse_one_connection_kept_out_of_the_pool() -> None:
    async def scenario(url: str) -> tuple[int, int, list[str]]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url)
        try:
            await connection.run_commands([["ECHO", "warm"]], "warm up")
            before = int((await meter.info("stats"))["total_connections_received"])
            replies = []
            for i in range(30):
                replies += await connection.run_commands([["ECHO", str(i)]], f"echo {i}")
            opened = int((await meter.info("stats"))["total_connections_received"]) - before
            pool = connection.client().connection_pool
            return opened, len(pool._in_use_connections), [r.decode() for r in replies]
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        opened, in_use, replies = run(scenario(server.url), 60)
    assert replies == [str(i) for i in range(30)]
    assert opened == 0  # the warm-up's connection served all 30 round trips
    assert in_use == 1  # kept checked out between them (given back to the pool on close)


def test_a_round_trip_stopped_mid_read_leaves_no_stale_reply_for_the_next() -> None:
    from distributed_agents.adapters.redis.batching import HeldConnections, execute

    async def scenario(url: str) -> tuple[object, int]:
        client = redis_asyncio.Redis.from_url(url)
        meter = redis_asyncio.Redis.from_url(url)
        held = HeldConnections()
        try:
            await execute(client, [["PING"]], held)  # the connection is now held
            blocked = asyncio.ensure_future(execute(client, [["BLPOP", "stale-key", "5"]], held))
            await asyncio.sleep(0.2)
            blocked.cancel()
            await asyncio.gather(blocked, return_exceptions=True)
            # Were the blocked connection reused, the server would hand this value to its BLPOP
            # and the next round trip would read that reply instead of its own.
            await meter.rpush("stale-key", "value")
            reply = (await execute(client, [["ECHO", "fresh"]], held))[0]
            return reply, int(await meter.llen("stale-key"))
        finally:
            await held.release_all()
            await meter.aclose()
            await client.aclose()

    with RedisServer() as server:
        reply, left = run(scenario(server.url), 60)
    assert reply == b"fresh"
    assert left == 1


def test_connections_are_kept_only_from_a_pool_with_room_for_its_other_users() -> None:
    """At most an eighth of the pool's connections stay checked out between round trips."""
    from distributed_agents.adapters.redis.batching import HeldConnections

    class Pool:
        def __init__(self, max_connections: int) -> None:
            self.max_connections = max_connections

    kept = []
    for size in (2, 7, 8, 16, 64):
        held, pool = HeldConnections(keep=4), Pool(size)
        kept.append(sum(held.give_back(pool, object()) for _ in range(10)))
    assert kept == [0, 0, 1, 2, 4]


def test_a_round_trip_on_a_live_connection_writes_in_the_callers_loop_round() -> None:
    """The write is not handed to a task of its own (redis-py's send does so under
    ``wait_for`` on Python < 3.12): the command is on the socket before the round trip's
    first await; a connection that is not connected, or whose health check is due, is
    still sent through redis-py (which connects, or PINGs first)."""
    from distributed_agents.adapters.redis.batching import HeldConnections, execute

    async def scenario(url: str) -> tuple[int, bool, int, list[object]]:
        client = redis_asyncio.Redis.from_url(url, health_check_interval=30)
        held = HeldConnections(keep=1)
        sends = 0
        try:
            await execute(client, [["PING"]], held)  # connected, and now held
            [connection] = held._idle
            original = connection.send_packed_command

            async def counted(command: object, *args: object, **kwargs: object) -> None:
                nonlocal sends
                sends += b"ECHO" in (command if isinstance(command, bytes) else b"")  # not its own PING, HELLO...
                await original(command, *args, **kwargs)

            connection.send_packed_command = counted
            written = connection._writer.transport.get_write_buffer_size
            on_socket: list[bool] = []
            connection._writer.transport.get_write_buffer_size = lambda: (on_socket.append(True), written())[1]
            replies = await execute(client, [["ECHO", "a"], ["ECHO", "b"]], held)
            direct = bool(on_socket) and sends == 0
            connection.next_health_check = -1.0  # due: redis-py's send checks the connection first
            replies += await execute(client, [["ECHO", "c"]], held)
            await connection.disconnect()  # not connected: redis-py's send connects
            replies += await execute(client, [["ECHO", "d"]], held)
            return sends, direct, len(on_socket), replies
        finally:
            await held.release_all()
            await client.aclose()

    with RedisServer() as server:
        sends, direct, direct_writes, replies = run(scenario(server.url), 60)
    assert replies == [b"a", b"b", b"c", b"d"]
    assert direct and direct_writes == 1
    assert sends == 2  # the one with a health check due, and the one that reconnected


def test_a_batch_larger_than_the_socket_buffer_is_written_whole() -> None:
    async def scenario(url: str) -> tuple[int, int]:
        connection = RedisConnection(url)
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up")
            value = "x" * 20_000
            replies = await asyncio.gather(*(connection.run_script("echo", _ECHO, [], [f"{i}:{value}"], "echo")
                                             for i in range(200)))  # ~4 MB in one write
            good = sum(1 for i, reply in enumerate(replies) if reply == f"{i}:{value}".encode())
            assert connection._batcher is not None
            return good, connection._batcher.round_trips
        finally:
            await connection.close()

    with RedisServer() as server:
        good, round_trips = run(scenario(server.url), 60)
    assert good == 200
    assert round_trips == 2  # the warm-up, then the 200 calls in one write


def test_a_call_sent_now_on_an_idle_connection_is_written_in_its_callers_loop_round(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``run_script(now=True)``: a lone call (a worker's ack) is written by the call itself, not a
    loop round later; calls of the same tick made while it is under way share the next write."""
    from distributed_agents.adapters.redis import batching

    rounds = [0]
    written_in: list[int] = []
    passing = batching._round_trip

    async def recorded(connection, packed, count):  # type: ignore[no-untyped-def]
        written_in.append(rounds[0])
        return await passing(connection, packed, count)

    monkeypatch.setattr(batching, "_round_trip", recorded)

    def tick() -> None:
        rounds[0] += 1
        asyncio.get_running_loop().call_soon(tick)

    async def scenario(url: str) -> tuple[list[str], list[int], int, list[str]]:
        connection = RedisConnection(url)
        meter = redis_asyncio.Redis.from_url(url)
        try:
            await connection.run_script("echo", _ECHO, [], ["warm"], "warm up", now=True)
            asyncio.get_running_loop().call_soon(tick)
            await asyncio.sleep(0)
            written_in.clear()
            assert connection._batcher is not None
            writes = connection._batcher.round_trips
            now = rounds[0]
            lone = await connection.run_script("echo", _ECHO, [], ["lone"], "a lone call", now=True)
            assert written_in == [now]  # written before the loop ran again
            burst = await asyncio.gather(*(connection.run_script("echo", _ECHO, [], [str(i)], "echo", now=True)
                                           for i in range(10)))
            batches = connection._batcher.round_trips - writes
            await meter.script_flush()  # the server lost its scripts: a call sent now loads it again
            again = await connection.run_script("echo", _ECHO, [], ["again"], "after a flush", now=True)
            return ([lone.decode(), *(b.decode() for b in burst)], written_in[:3], batches,
                    [again.decode()])
        finally:
            await meter.aclose()
            await connection.close()

    with RedisServer() as server:
        replies, written, batches, again = run(scenario(server.url), 60)
    assert replies == ["lone", *map(str, range(10))]
    # The lone call, then the burst: its first call alone, the other nine together.
    assert batches == 3
    assert written[2] == written[1] + 1  # the first call of the burst at once, the rest in the next round
    assert again == ["again"]
