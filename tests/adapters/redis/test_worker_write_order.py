"""A worker on Redis writes a quick node's ack before its next claim (the claim's BLMPOP).

The claim loop gives the tasks it just started a few loop rounds (``core.worker._SETTLE_HOPS``)
before it claims again: a claim sent first would put its write, and the server's wake-up
for it, ahead of every task's result. The order is that of the writes on this side (a
pass-through recorder of the adapter's round trips), not a timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents import NodeRegistry, State, Worker
from distributed_agents.adapters.redis import batching
from distributed_agents.adapters.redis import queue_scripts as lua
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(120)
_ACK_SHA = hashlib.sha1(lua.ACK.encode()).hexdigest().encode()


def test_a_quick_nodes_ack_is_written_before_the_next_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = NodeRegistry()

    @registry.register("quick")
    async def quick(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)  # a node that awaits something quick
        return {"ok": 1}

    writes: list[str] = []
    passing = batching._round_trip

    async def recorded(connection: Any, packed: bytes, count: int) -> list[Any]:
        if b"BLMPOP" in packed:
            writes.append("claim")
        elif _ACK_SHA in packed:
            writes.append("ack")
        return await passing(connection, packed, count)

    monkeypatch.setattr(batching, "_round_trip", recorded)

    async def scenario(url: str) -> list[str]:
        prefix = f"wo{uuid.uuid4().hex[:8]}"
        options = BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600)
        worker_backend, producer = open_redis_backend(url, options), open_redis_backend(url, options)
        worker = Worker(["quick"], capacity=4, backend=worker_backend, registry=registry, worker_id="w1",
                        heartbeat_interval=300, poll_wait=3)
        serving = asyncio.ensure_future(worker.start())
        try:
            await producer.connect()
            for index in range(6):
                await asyncio.sleep(0.1)  # the worker is parked in its BLMPOP again
                writes.append("enqueued")
                task = Task(f"t{index}", "wf", "n", "quick", {"v": 1, "step": 0, "state": {}})
                await producer.task_queue.enqueue(task)
                while not await producer.task_queue.wait_results([task.id], timeout=5):
                    pass
            return list(writes)
        finally:
            await worker.stop()
            await serving
            await producer.close()
            await worker_backend.close()

    with RedisServer() as server:
        order = run(scenario(server.url), 90)
    rounds = " ".join(order).split("enqueued")[1:]
    assert len(rounds) == 6
    for each in rounds:
        steps = each.split()
        # Each task: its ack, and only then the claim that parks the worker again.
        assert steps[:2] == ["ack", "claim"], order


def test_a_quick_nodes_ack_is_written_in_the_loop_round_its_node_returned_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settling task and no batching round between a node's return and its ack's write."""
    rounds = [0]
    returned_in: list[int] = []
    acked_in: list[int] = []

    def tick() -> None:
        rounds[0] += 1
        asyncio.get_running_loop().call_soon(tick)

    registry = NodeRegistry()

    @registry.register("quick")
    async def quick(state: State) -> dict[str, Any]:
        returned_in.append(rounds[0])
        return {"ok": 1}

    passing = batching._round_trip

    async def recorded(connection: Any, packed: bytes, count: int) -> list[Any]:
        if _ACK_SHA in packed:
            acked_in.append(rounds[0])
        return await passing(connection, packed, count)

    monkeypatch.setattr(batching, "_round_trip", recorded)

    async def scenario(url: str) -> None:
        prefix = f"wr{uuid.uuid4().hex[:8]}"
        options = BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600)
        worker_backend, producer = open_redis_backend(url, options), open_redis_backend(url, options)
        worker = Worker(["quick"], capacity=4, backend=worker_backend, registry=registry, worker_id="w1",
                        heartbeat_interval=300, poll_wait=3)
        serving = asyncio.ensure_future(worker.start())
        asyncio.get_running_loop().call_soon(tick)
        try:
            await producer.connect()
            for index in range(5):  # the first loads the scripts: not counted
                await asyncio.sleep(0.1)  # the worker is idle again
                task = Task(f"t{index}", "wf", "n", "quick", {"v": 1, "step": 0, "state": {}})
                await producer.task_queue.enqueue(task)
                while not await producer.task_queue.wait_results([task.id], timeout=5):
                    pass
        finally:
            await worker.stop()
            await serving
            await producer.close()
            await worker_backend.close()

    with RedisServer() as server:
        run(scenario(server.url), 90)
    acked_in = sorted(set(acked_in))[-4:]  # (the first ack is sent twice: NOSCRIPT, then loaded)
    assert len(returned_in) == 5
    assert acked_in == returned_in[1:]
