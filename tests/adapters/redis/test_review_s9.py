"""Settling calls written at once by their caller (``ScriptBatcher.run_now``) and round trips whose
first attempt runs outside the retry policy, attacked on real servers.

Connections killed by the server under an ack, a script cache flushed between calls, a server
stalled past the socket timeout while an ack waits (the client sends it again), an ack cancelled
part-way (its connection must not hand its late reply to the next caller), bursts of acks
interleaved with enqueues, a server restarted mid-run, and the errors users see for a refused
connection and a read-only replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.aio import run
from support.redis_server import RedisServer
from support.server_process import free_port

from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.errors import BackendError, BackendUnavailableError, LeaseLostError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

from .conftest import OpenRedis

pytestmark = pytest.mark.timeout(60)


def _task(task_id: str, priority: int = 0, node_type: str = "n") -> Task:
    return Task(task_id, "wf", "n", node_type, {"i": task_id}, priority=priority)


# A script that keeps the server busy for ARGV[1] milliseconds (DEBUG SLEEP is refused by default).
_BUSY = """
local start = redis.call('TIME')
local t0 = start[1] * 1000 + start[2] / 1000
repeat
  local now = redis.call('TIME')
until now[1] * 1000 + now[2] / 1000 - t0 >= tonumber(ARGV[1])
return 1
"""


def _with(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


async def _kill_others(admin: aioredis.Redis) -> int:
    """CLIENT KILL every normal connection but ``admin``'s own (blocked or paused ones too); how many."""
    return int(await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))


def test_an_ack_on_a_connection_the_server_killed_lands_once_and_stats_are_exact(
        open_redis: OpenRedis, redis_url: str) -> None:
    async def scenario() -> tuple[int, Any, Any, Any]:
        backend = await open_redis()
        admin = aioredis.Redis.from_url(redis_url)
        try:
            queue = backend.task_queue
            for i in range(3):
                await queue.enqueue(_task(f"k{i}"))
            claims = await queue.claim(["n"], worker_id="w", max_tasks=3)
            assert len(claims) == 3
            await queue.ack(claims[0], {"n": 0})  # warm: the connection is held by the batcher
            killed = await _kill_others(admin)
            await queue.ack(claims[1], {"n": 1})  # the held connection is dead: reconnect, once
            await _kill_others(admin)
            await queue.nack(claims[2], "boom", final=True)
            with pytest.raises(LeaseLostError):
                await queue.ack(claims[1], {"n": 1})
            results = [await queue.get_result(f"k{i}") for i in range(3)]
            return killed, results, await queue.stats("n"), len(await queue.dead_letters("n"))
        finally:
            await admin.aclose()
            await backend.close()

    killed, results, stats, dead = run(scenario())
    assert killed >= 1
    assert [r.status for r in results] == ["succeeded", "succeeded", "failed"]
    assert results[1].output == {"n": 1}
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
    assert dead == 1


def test_settling_calls_after_a_script_flush_reload_their_scripts(open_redis: OpenRedis, redis_url: str) -> None:
    async def scenario() -> tuple[list[Any], Any]:
        backend = await open_redis()
        admin = aioredis.Redis.from_url(redis_url)
        try:
            queue = backend.task_queue
            for i in range(4):
                await queue.enqueue(_task(f"f{i}"))
            claims = await queue.claim(["n"], worker_id="w", max_tasks=4)
            await admin.script_flush()
            await queue.ack(claims[0], {"ok": 0})
            await admin.script_flush()
            assert await queue.nack(claims[1], "again") is True
            await admin.script_flush()
            await queue.release(claims[2])
            await admin.script_flush()
            # several at once: the first on its own write, the others together
            await asyncio.gather(queue.ack(claims[3], {"ok": 3}))
            again = await queue.claim(["n"], worker_id="w2", max_tasks=4)
            return sorted((c.task.id, c.attempt) for c in again), await queue.stats("n")
        finally:
            await admin.aclose()
            await backend.close()

    again, stats = run(scenario())
    # the nacked one counts its attempt, the released one does not
    assert again == [("f1", 2), ("f2", 1)]
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 2, 0)


def test_an_ack_sent_again_after_a_socket_timeout_is_applied_once(open_redis: OpenRedis, redis_url: str) -> None:
    """The server is busy past the client's socket timeout with the ack queued behind it: the
    client gives up on the reply and sends the same ack again on a new connection. Both run on
    the server; the task must end acked once, with its result, and the call must not report a
    lost lease."""

    async def scenario() -> tuple[str, Any, Any]:
        backend = await open_redis(_with(redis_url, "socket_timeout=0.3"))
        admin = aioredis.Redis.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(_task("warm"))
            [warm] = await queue.claim(["n"], worker_id="w", lease_seconds=60)
            await queue.ack(warm, {})  # the ack script is loaded: both sends below run it
            await queue.enqueue(_task("slow-ack"))
            [claim] = await queue.claim(["n"], worker_id="w", lease_seconds=60)
            sleeping = asyncio.ensure_future(admin.eval(_BUSY, 0, "800"))
            await asyncio.sleep(0.05)  # the sleep has started on the server
            try:
                await queue.ack(claim, {"v": 1})
                outcome = "acked"
            except LeaseLostError:
                outcome = "lease lost"
            except BackendUnavailableError:
                outcome = "unavailable"
            await sleeping
            return outcome, await queue.get_result("slow-ack"), await queue.stats("n")
        finally:
            await admin.aclose()
            await backend.close()

    outcome, result, stats = run(scenario())
    assert result is not None and result.status == "succeeded" and result.output == {"v": 1}
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    assert outcome in ("acked", "unavailable"), outcome


def test_an_ack_cancelled_after_its_write_leaves_no_reply_for_later_calls(open_redis: OpenRedis) -> None:
    """An ack's caller is cancelled while it waits for the reply (a worker's task cancelled after
    SETTLE_ON_STOP): its reply must not be read by the next call on that connection."""

    async def scenario() -> list[tuple[str, Any]]:
        backend = await open_redis()
        try:
            queue = backend.task_queue
            mismatches: list[tuple[str, Any]] = []
            for round_ in range(30):
                await queue.enqueue(_task(f"c{round_}"))
                [claim] = await queue.claim(["n"], worker_id="w")
                acking = asyncio.ensure_future(queue.ack(claim, {"r": round_}))
                for _ in range(round_ % 4):  # cancel at different points of the round trip
                    await asyncio.sleep(0)
                acking.cancel()
                try:
                    await acking
                except asyncio.CancelledError:
                    pass
                # Every later call gets its own reply.
                missing = await queue.get_result(f"absent{round_}")
                if missing is not None:
                    mismatches.append(("get_result(absent)", missing))
                stats = await queue.stats("n")
                if not isinstance(stats.queued, int):
                    mismatches.append(("stats", stats))
                result = await queue.get_result(f"c{round_}")
                if result is None:  # the ack never reached the server: the lease is still ours
                    await queue.ack(claim, {"r": round_})
                    result = await queue.get_result(f"c{round_}")
                if result is None or result.output != {"r": round_}:
                    mismatches.append((f"c{round_}", result))
            final = await queue.stats("n")
            if (final.queued, final.in_flight) != (0, 0):
                mismatches.append(("final stats", final))
            return mismatches
        finally:
            await backend.close()

    assert run(scenario()) == []


def test_a_burst_of_acks_among_enqueues_and_claims_keeps_every_result_and_exact_stats(open_redis: OpenRedis) -> None:
    async def scenario() -> tuple[int, int, Any, list[str]]:
        backend = await open_redis()
        try:
            queue = backend.task_queue
            await asyncio.gather(*(queue.enqueue(_task(f"b{i}", priority=i % 3)) for i in range(120)))
            claims = await queue.claim(["n"], worker_id="w", max_tasks=120)
            # Acks of one burst, some alone in their tick and some together, while enqueues run.
            ops: list[Any] = []
            for index, claim in enumerate(claims):
                ops.append(queue.ack(claim, {"i": index}))
                if index % 7 == 0:
                    ops.append(queue.enqueue(_task(f"late{index}")))
            await asyncio.gather(*ops)
            for index, claim in enumerate(claims[:40]):  # one at a time, each alone
                await asyncio.sleep(0)
            results = await asyncio.gather(*(queue.get_result(c.task.id) for c in claims))
            wrong = [c.task.id for c, r in zip(claims, results)
                     if r is None or r.status != "succeeded" or r.output != {"i": claims.index(c)}]
            again = await asyncio.gather(*(queue.enqueue(_task(c.task.id)) for c in claims))
            return len(claims), sum(again), await queue.stats("n"), wrong
        finally:
            await backend.close()

    claimed, requeued, stats, wrong = run(scenario())
    assert claimed == 120 and wrong == []
    assert requeued == 0  # a finished id is remembered while its result lives
    assert (stats.queued, stats.in_flight, stats.dead) == (len(range(0, 120, 7)), 0, 0)


def test_a_server_restart_between_claim_and_ack_is_ridden_out() -> None:
    async def scenario(server: RedisServer) -> tuple[Any, Any]:
        url = server.url
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=f"r{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        try:
            queue = backend.task_queue
            await queue.enqueue(_task("restart"))
            [claim] = await queue.claim(["n"], worker_id="w", lease_seconds=120)
            await asyncio.to_thread(server.restart)  # the script cache and every connection are gone
            for _ in range(40):
                try:
                    await queue.ack(claim, {"after": "restart"})
                    break
                except BackendUnavailableError:
                    await asyncio.sleep(0.25)
            return await queue.get_result("restart"), await queue.stats("n")
        finally:
            await backend.close()

    with RedisServer(appendonly=True) as server:
        result, stats = run(scenario(server), 50)
    assert result is not None and result.output == {"after": "restart"}
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


def test_a_refused_connection_is_reported_as_unavailable_naming_the_action_and_masked_url() -> None:
    port = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"

    async def scenario() -> tuple[BaseException, BaseException]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="refused"))
        try:
            try:
                await backend.connect()
                raise AssertionError("connected to a closed port")
            except Exception as exc:
                first = exc
            try:
                await backend.task_queue.enqueue(_task("x"))
                raise AssertionError("enqueued on a closed port")
            except Exception as exc:
                second = exc
            return first, second
        finally:
            await backend.close()

    first, second = run(scenario(), 45)
    for error in (first, second):
        assert isinstance(error, BackendUnavailableError), repr(error)
        text = str(error)
        assert f"127.0.0.1:{port}" in text and "s3cret-pw" not in text, text
    assert "enqueue task 'x'" in str(second), str(second)


def test_a_read_only_replica_refuses_settling_with_a_backend_error_naming_the_action() -> None:
    async def scenario(server: RedisServer) -> tuple[BaseException | None, BaseException | None, Any]:
        url = server.url
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=f"ro{uuid.uuid4().hex[:8]}"))
        admin = aioredis.Redis.from_url(url)
        await backend.connect()
        try:
            queue = backend.task_queue
            await queue.enqueue(_task("ro"))
            [claim] = await queue.claim(["n"], worker_id="w", lease_seconds=120)
            # A replica of a primary that is not there: it keeps its data and refuses writes.
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            acked: BaseException | None = None
            try:
                await queue.ack(claim, {"x": 1})
            except BaseException as exc:  # noqa: BLE001 - the error is what is checked
                acked = exc
            enqueued: BaseException | None = None
            try:
                await queue.enqueue(_task("ro2"))
            except BaseException as exc:  # noqa: BLE001
                enqueued = exc
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await queue.ack(claim, {"x": 1})  # a primary again: the lease is still held
            return acked, enqueued, await queue.get_result("ro")
        finally:
            await admin.aclose()
            await backend.close()

    with RedisServer() as server:
        acked, enqueued, result = run(scenario(server), 45)
    assert isinstance(acked, BackendError), repr(acked)
    assert "ack task 'ro'" in str(acked) and "read only" in str(acked).lower(), str(acked)
    assert isinstance(enqueued, BackendError) and "enqueue task 'ro2'" in str(enqueued), repr(enqueued)
    assert result is not None and result.output == {"x": 1}


def test_a_cancelled_lone_ack_logs_no_unretrieved_future_error(open_redis: OpenRedis) -> None:
    async def scenario() -> list[str]:
        reported: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
        backend = await open_redis()
        try:
            queue = backend.task_queue
            for round_ in range(3):
                await queue.enqueue(_task(f"u{round_}"))
                [claim] = await queue.claim(["n"], worker_id="w")
                acking = asyncio.ensure_future(queue.ack(claim, {"r": round_}))
                await asyncio.sleep(0)  # the ack is written; its reply is awaited
                acking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acking
                del acking
                gc.collect()
                await asyncio.sleep(0)
            return reported
        finally:
            await backend.close()

    assert run(scenario()) == []


def test_an_ack_whose_connection_is_killed_while_the_server_holds_it_lands_once(
        open_redis: OpenRedis, redis_url: str) -> None:
    """The server holds writes (CLIENT PAUSE WRITE) with the ack queued on it, and the ack's connection is
    killed meanwhile: the ack is sent again on a new connection and lands once."""

    async def scenario() -> tuple[str, Any, Any, int]:
        backend = await open_redis()
        admin = aioredis.Redis.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue(_task("w0"))
            [warm] = await queue.claim(["n"], worker_id="w", lease_seconds=60)
            await queue.ack(warm, {})
            await queue.enqueue(_task("held"))
            [claim] = await queue.claim(["n"], worker_id="w", lease_seconds=60)
            await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            acking = asyncio.ensure_future(queue.ack(claim, {"v": "held"}))
            await asyncio.sleep(0.2)  # written, held by the server
            killed = await _kill_others(admin)
            try:
                await acking
                outcome = "acked"
            except LeaseLostError:
                outcome = "lease lost"
            except BackendUnavailableError:
                outcome = "unavailable"
            return outcome, await queue.get_result("held"), await queue.stats("n"), killed
        finally:
            with contextlib.suppress(Exception):
                await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()
            await backend.close()

    outcome, result, stats, killed = run(scenario())
    assert killed >= 1
    assert result is not None and result.output == {"v": "held"}
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    assert outcome in ("acked", "unavailable"), outcome
