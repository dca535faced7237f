"""A parked worker's registration under traffic: its acks give it back its slots and keep it
live, so it registers once instead of after every ``capacity`` tasks and every second.

Counted by the server: the claim scripts (``EVALSHA`` of ``queue_scripts.CLAIM``) in its slow
log, every top-level command logged (``slowlog-log-slower-than 0``). The bounds are counts,
not timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents import NodeRegistry, State, Worker
from distributed_agents.adapters.redis import queue_scripts as lua
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.ports.backend import Backend, BackendOptions
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(120)
_CLAIM_SHA = hashlib.sha1(lua.CLAIM.encode()).hexdigest().encode()


def _backend(url: str, prefix: str, poll_cap: float | None = None) -> Backend:
    backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600))
    if poll_cap is not None:
        backend.task_queue.poll_cap = poll_cap  # type: ignore[attr-defined]
    return backend


async def _top_level(meter: redis_asyncio.Redis) -> list[str]:
    """Top-level commands of other clients since the last reset: ``CLAIM`` for the claim
    script, else the command's name."""
    names = []
    for entry in reversed(await meter.execute_command("SLOWLOG", "GET", -1)):
        if entry[4] == b"?:0" or entry[5] == b"meter":  # inside a script, or the meter itself
            continue
        command = entry[3]
        names.append("CLAIM" if command[0].upper() == b"EVALSHA" and command[1] == _CLAIM_SHA
                     else command[0].decode().upper())
    return names


@pytest.mark.parametrize("gap", [0.0, 0.05])
def test_a_busy_workers_registration_is_kept_by_its_acks(gap: float) -> None:
    """40 tasks one after another to a worker of capacity 4 (its registration has room for 4):
    before acks gave the slots back, it registered again after every 4 tasks (10 claim scripts
    and as many extra waits); with gaps (the tasks span 2 s, a registration lasts 1.2 s after
    the last claim) it also ran out. Now the worker's first claim registers it, and no other."""
    registry = NodeRegistry()

    @registry.register("quick")
    async def quick(state: State) -> dict[str, Any]:
        return {"ok": state["i"]}

    async def scenario(url: str) -> tuple[list[str], list[int]]:
        prefix = f"keep{uuid.uuid4().hex[:8]}"
        worker_backend, producer = _backend(url, prefix), _backend(url, prefix)
        worker = Worker(["quick"], capacity=4, backend=worker_backend, registry=registry, worker_id="w1",
                        heartbeat_interval=300, poll_wait=1)
        serving = asyncio.ensure_future(worker.start())
        meter = redis_asyncio.Redis.from_url(url, client_name="meter")
        outputs = []
        try:
            await producer.connect()

            async def one(i: int) -> None:
                task = Task(f"t{i}", "wf", "n", "quick", {"v": 1, "step": 0, "state": {"i": i}})
                await producer.task_queue.enqueue(task)
                found: dict[str, Any] = {}
                while not found:
                    found = await producer.task_queue.wait_results([task.id], timeout=5)
                outputs.append(found[task.id].output["ok"])

            for i in range(3):  # warm-up: scripts loaded, the worker parked
                await one(i)
            await meter.config_set("slowlog-log-slower-than", 0)
            await meter.config_set("slowlog-max-len", 100000)
            await meter.slowlog_reset()
            for i in range(3, 43):
                await asyncio.sleep(gap)
                await one(i)
            return await _top_level(meter), outputs
        finally:
            await meter.aclose()
            await worker.stop()
            await serving
            await producer.close()
            await worker_backend.close()

    with RedisServer() as server:
        commands, outputs = run(scenario(server.url), 90)
    assert outputs == list(range(43))
    # (One registration may still run out where the machine stalled for half a second between
    # two acks: at most one claim script and one wait more.)
    assert commands.count("CLAIM") <= 1, commands
    assert commands.count("BLMPOP") <= 40 + 2, commands


def test_a_registration_whose_claimer_stopped_claiming_runs_out_though_it_acks() -> None:
    """Acks keep a registration live only as long after the claimer's last claim call as a
    registration lasts (poll_cap 0.5 s: 0.7 s), not that long after the ack: a worker that
    drains (acks, claims no more) is not handed new tasks after that."""

    async def scenario(url: str) -> tuple[int, int, list[Any]]:
        prefix = f"out{uuid.uuid4().hex[:8]}"
        producer, consumer = _backend(url, prefix), _backend(url, prefix, poll_cap=0.5)
        meter = redis_asyncio.Redis.from_url(url)
        await producer.connect()
        await consumer.connect()
        queue, claimer = producer.task_queue, consumer.task_queue
        try:
            await queue.enqueue_many([Task(f"a{i}", "wf", "n", "alpha", {}) for i in range(3)])
            held = await claimer.claim(["alpha"], worker_id="w", max_tasks=3)
            assert len(held) == 3
            waiting = asyncio.ensure_future(claimer.claim(["alpha"], worker_id="w", wait=5, max_tasks=2))
            await asyncio.sleep(0.1)  # it parks, with room for 2
            await queue.enqueue(Task("t0", "wf", "n", "alpha", {}))
            held += await asyncio.wait_for(waiting, 30)  # its last claim call returns: it lasts 0.7 s more at most
            assert len(held) == 4
            await asyncio.sleep(0.45)
            for claim in held:  # (an ack counting from itself would keep it 0.7 s from here)
                await claimer.ack(claim, None)
            await asyncio.sleep(0.4)
            await queue.enqueue(Task("t1", "wf", "n", "alpha", {}))
            stats = await queue.stats("alpha")
            parks = [await meter.hgetall(key) async for key in meter.scan_iter(f"{prefix}:q:park:*")]
            return stats.queued, stats.in_flight, parks
        finally:
            await meter.aclose()
            await producer.close()
            await consumer.close()

    with RedisServer() as server:
        queued, in_flight, parks = run(scenario(server.url), 60)
    assert (queued, in_flight) == (1, 0), parks  # t1 waits in the queue, handed to nobody


def test_an_ack_gives_the_registration_its_slot_back_once() -> None:
    """A claimer parked with room for 2 is handed one task (room 1) and acks it: room 2 again,
    with no claim script, so two new tasks are handed over together and its next wait returns
    both (with room 1, one would be handed over and the other claimed: a claim script more).
    A repeated ack of the same delivery (refused: the lease is gone) gives nothing back."""

    async def scenario(url: str) -> tuple[list[bytes | None], list[str], list[str]]:
        prefix = f"room{uuid.uuid4().hex[:8]}"
        # (Registrations lasting 5 s: this one outlasts the test however slow the machine is.)
        producer, consumer = _backend(url, prefix), _backend(url, prefix, poll_cap=10)
        meter = redis_asyncio.Redis.from_url(url, client_name="meter")
        await producer.connect()
        await consumer.connect()
        queue, claimer = producer.task_queue, consumer.task_queue
        try:
            await queue.enqueue(Task("warm", "wf", "n", "beta", {}))  # scripts loaded
            waiting = asyncio.ensure_future(claimer.claim(["alpha"], worker_id="w", wait=10, max_tasks=2))
            await asyncio.sleep(0.2)  # parked
            await queue.enqueue(Task("b0", "wf", "n", "alpha", {}))
            [first] = await asyncio.wait_for(waiting, 30)
            [park] = [key async for key in meter.scan_iter(f"{prefix}:q:park:*")]
            rooms = [await meter.hget(park, "m")]
            await claimer.ack(first, None)
            rooms.append(await meter.hget(park, "m"))
            with pytest.raises(LeaseLostError):
                await claimer.ack(first, None)
            rooms.append(await meter.hget(park, "m"))
            await meter.config_set("slowlog-log-slower-than", 0)
            await meter.config_set("slowlog-max-len", 100000)
            await meter.slowlog_reset()
            waiting = asyncio.ensure_future(claimer.claim(["alpha"], worker_id="w", wait=10, max_tasks=2))
            await asyncio.sleep(0.2)  # blocked in its wait again, with the same registration
            await queue.enqueue_many([Task(f"c{i}", "wf", "n", "alpha", {}) for i in range(2)])
            got = await asyncio.wait_for(waiting, 30)
            return rooms, await _top_level(meter), [c.task.id for c in got]
        finally:
            await meter.aclose()
            await producer.close()
            await consumer.close()

    with RedisServer() as server:
        rooms, commands, got = run(scenario(server.url), 60)
    assert rooms == [b"1", b"2", b"2"]
    assert got == ["c0", "c1"]
    assert commands == ["EVALSHA", "BLMPOP"], commands  # the enqueue, and one wait: no claim script


def test_a_new_task_is_not_handed_over_ahead_of_a_due_task_of_higher_priority() -> None:
    """A lone new task goes straight to a parked claimer only when nothing of its types is
    ready once time is applied: a retry of higher priority that came due meanwhile (no script
    applied time to it yet) is handed over first, and the new task waits its turn."""

    async def scenario(url: str) -> tuple[list[str], int]:
        prefix = f"due{uuid.uuid4().hex[:8]}"
        producer, other, claimer = (_backend(url, prefix), _backend(url, prefix),
                                    _backend(url, prefix, poll_cap=10))
        for backend in (producer, other, claimer):
            await backend.connect()
        queue = producer.task_queue
        try:
            await queue.enqueue(Task("retry", "wf", "n", "alpha", {}, priority=5))
            [held] = await other.task_queue.claim(["alpha"], worker_id="x")
            assert await other.task_queue.nack(held, "boom", delay=0.3)  # due in 0.3 s
            # A registration (room 1, 5 s) whose claimer is not waiting: nothing wakes it when
            # the retry comes due.
            assert await claimer.task_queue.claim(["alpha"], worker_id="c", wait=0.05) == []
            await asyncio.sleep(0.5)
            await queue.enqueue(Task("new", "wf", "n", "alpha", {}))
            got = await claimer.task_queue.claim(["alpha"], worker_id="c", wait=5)
            return [c.task.id for c in got], (await queue.stats("alpha")).queued
        finally:
            for backend in (producer, other, claimer):
                await backend.close()

    with RedisServer() as server:
        got, queued = run(scenario(server.url), 60)
    assert got == ["retry"]
    assert queued == 1  # the new task


def test_an_ack_after_its_lease_ran_out_is_refused_though_nothing_applied_time_before_it() -> None:
    """The settling scripts read the task before applying time to its type, and again when that
    moved a task: an ack that is the first script to see the lease run out is refused, and the
    task is queued again (not acked)."""

    async def scenario(url: str) -> tuple[bool, int, int, Any]:
        prefix = f"late{uuid.uuid4().hex[:8]}"
        backend = _backend(url, prefix)
        await backend.connect()
        queue = backend.task_queue
        try:
            await queue.enqueue(Task("t0", "wf", "n", "alpha", {}))
            [claim] = await queue.claim(["alpha"], worker_id="w", lease_seconds=0.2)
            await asyncio.sleep(0.5)
            try:
                await queue.ack(claim, {"late": True})
                refused = False
            except LeaseLostError:
                refused = True
            stats = await queue.stats("alpha")
            return refused, stats.queued, stats.in_flight, await queue.get_result("t0")
        finally:
            await backend.close()

    with RedisServer() as server:
        refused, queued, in_flight, result = run(scenario(server.url), 60)
    assert refused and (queued, in_flight) == (1, 0) and result is None
