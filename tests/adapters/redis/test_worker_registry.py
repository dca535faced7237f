"""RedisNodeRegistry: the seed's constructor, heartbeat expiry by server time, lookup by type."""

from __future__ import annotations

import asyncio
import time
import uuid

from support.aio import run

from distributed_agents.adapters.redis import RedisNodeRegistry
from distributed_agents.core.ports.worker_registry import WorkerInfo


def test_register_heartbeat_expire_and_reregister(redis_url: str) -> None:
    async def scenario() -> dict[str, object]:
        registry = RedisNodeRegistry(redis_url=redis_url, heartbeat_ttl=0.4, prefix=f"r{uuid.uuid4().hex[:8]}")
        seen: dict[str, object] = {}
        try:
            await registry.register(WorkerInfo("w1", frozenset({"researcher"}), capacity=4, host="h", pid=7))
            await registry.register(WorkerInfo("w2", frozenset({"writer"})))
            seen["researchers"] = [w.worker_id for w in await registry.list_workers("researcher")]
            [first] = await registry.list_workers("researcher")
            seen["capacity"] = (first.capacity, first.host, first.pid)
            seen["fresh"] = abs(first.last_heartbeat - time.time()) < 2
            await asyncio.sleep(0.25)
            seen["beat"] = await registry.heartbeat("w1")
            await asyncio.sleep(0.25)  # w2 is now past its ttl, w1 is not
            seen["live"] = [w.worker_id for w in await registry.list_workers()]
            seen["late"] = await registry.heartbeat("w2")
            await registry.deregister("w1")
            await registry.deregister("nobody")
            seen["after"] = [w.worker_id for w in await registry.list_workers()]
            seen["gone"] = await registry.heartbeat("w1")
            return seen
        finally:
            await registry.close()

    seen = run(scenario(), 20)
    assert seen["researchers"] == ["w1"]
    assert seen["capacity"] == (4, "h", 7)
    assert seen["fresh"] is True
    assert seen["beat"] is True
    assert seen["live"] == ["w1"]
    assert seen["late"] is False  # it must register again
    assert seen["after"] == [] and seen["gone"] is False
