"""Redis round trips written at once under one timer, and lease/operation ids from a prefix and a counter, attacked.

A server that stalls past the socket timeout, connections killed by the server while
batches are in flight, and ids drawn by several queue objects, processes and restarts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.aio import run

from distributed_agents.adapters.redis.task_queue import RedisTaskQueue
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.task_queue import Task

from .conftest import OpenRedis

pytestmark = pytest.mark.timeout(60)


def _task(task_id: str, priority: int = 0) -> Task:
    return Task(task_id, "wf", "n", "n", {}, priority=priority)


def test_a_round_trip_timed_out_by_a_stalled_server_leaves_no_reply_for_the_next_call(
        open_redis: OpenRedis, redis_url: str) -> None:
    """The server holds every command (CLIENT PAUSE) past the socket timeout while a batch waits for its replies: the
    batch fails as unavailable, and every later call gets its own reply (the connection that
    still had replies coming is not reused)."""

    async def scenario() -> tuple[str, list[int], list[str]]:
        url = f"{redis_url}{'&' if '?' in redis_url else '?'}socket_timeout=0.3"
        backend = await open_redis(url)
        admin = aioredis.Redis.from_url(redis_url)
        try:
            store = backend.state_store
            for i in range(3):  # warm connections
                await store.cache_set("ns", f"k{i}", f"v{i}".encode())
            await admin.execute_command("CLIENT", "PAUSE", "800", "ALL")  # every other client's commands wait
            try:
                await asyncio.gather(*(store.cache_set("ns", f"x{i}", b"x") for i in range(5)))
                outcome = "answered"
            except BackendUnavailableError:
                outcome = "unavailable"
            except Exception as exc:
                outcome = type(exc).__name__
            await admin.execute_command("CLIENT", "UNPAUSE")
            lengths = []
            values = []
            for _ in range(3):
                got = await asyncio.gather(*(store.cache_get("ns", f"k{i}") for i in range(3)))
                values.extend((g or b"").decode() for g in got)
                lengths.append(len(got))
            return outcome, lengths, values
        finally:
            await admin.aclose()
            await backend.close()

    outcome, lengths, values = run(scenario(), 40)
    assert outcome in ("unavailable", "answered")
    assert values == ["v0", "v1", "v2"] * 3


def test_enqueues_in_flight_when_the_server_kills_the_connection_land_once_each(
        open_redis: OpenRedis, redis_url: str) -> None:
    """CLIENT KILL of every client connection while batches of enqueues are in flight: each
    enqueue either returns or raises BackendUnavailableError; enqueueing the failed ones again
    (idempotent) leaves every task queued exactly once, claimed once each."""

    async def scenario() -> tuple[int, list[str], int]:
        backend = await open_redis()
        admin = aioredis.Redis.from_url(redis_url)
        queue = backend.task_queue
        try:
            ids = [f"t{i}" for i in range(120)]
            failed: list[str] = []

            async def put(task_id: str) -> None:
                try:
                    await queue.enqueue(_task(task_id, priority=int(task_id[1:]) % 3))
                except BackendUnavailableError:
                    failed.append(task_id)

            puts = [asyncio.ensure_future(put(task_id)) for task_id in ids]
            await asyncio.sleep(0)
            await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            await asyncio.gather(*puts)
            for task_id in list(failed):
                await queue.enqueue(_task(task_id, priority=int(task_id[1:]) % 3))
            claimed: list[str] = []
            while True:
                batch = await queue.claim(["n"], worker_id="w", max_tasks=50)
                if not batch:
                    break
                for item in batch:
                    claimed.append(item.task.id)
                    await queue.ack(item, None)
            stats = await queue.stats("n")
            return len(failed), sorted(claimed), stats.queued + stats.in_flight
        finally:
            await admin.aclose()
            await backend.close()

    _, claimed, left = run(scenario(), 40)
    assert claimed == sorted(f"t{i}" for i in range(120))
    assert left == 0


def test_lease_ids_of_two_queues_in_one_process_and_of_separate_processes_never_repeat(
        open_redis: OpenRedis) -> None:
    async def scenario() -> list[str]:
        one = await open_redis()
        two = await open_redis(prefix=one.options.prefix)
        try:
            for i in range(40):
                await one.task_queue.enqueue(_task(f"a{i}"))
            leases = []
            for i in range(20):
                queue = (one.task_queue, two.task_queue)[i % 2]
                (claimed,) = await queue.claim(["n"], worker_id=f"w{i % 2}", max_tasks=1)
                leases.append(claimed.lease_id)
                await queue.nack(claimed, "again")
            return leases + [one.task_queue._new_id() for _ in range(50)] + [two.task_queue._new_id()
                                                                           for _ in range(50)]
        finally:
            await two.close()
            await one.close()

    in_process = run(scenario(), 40)
    assert len(set(in_process)) == len(in_process)
    code = ("from distributed_agents.adapters.redis.task_queue import RedisTaskQueue as Q; "
            "q = object.__new__(Q); print(' '.join(Q._new_id(q) for _ in range(200)))")
    drawn: list[str] = []
    for _ in range(2):  # separate processes, one after another (restarts)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        drawn.extend(out.stdout.split())
    assert len(drawn) == 400 and len(set(drawn) | set(in_process)) == 400 + len(in_process)
