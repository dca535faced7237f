"""open_redis_backend: four ports over one connection, connect and close."""

from __future__ import annotations

import pytest
from support.aio import run
from support.redis_server import free_port

from distributed_agents import open_backend
from distributed_agents.adapters.redis.backend import RedisBackend
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.task_queue import Task


def test_the_four_ports_share_one_client_and_pool(open_redis) -> None:
    async def scenario() -> tuple[int, int]:
        backend: RedisBackend = await open_redis()
        try:
            ports = [backend.task_queue, backend.state_store, backend.worker_registry, backend.message_bus]
            connections = {id(port._connection) for port in ports}  # type: ignore[attr-defined]
            await backend.task_queue.enqueue(Task("t1", "wf", "n", "alpha", {}))
            await backend.state_store.get("w1")
            await backend.worker_registry.list_workers()
            await backend.message_bus.publish("x", {})
            pools = {id(port._connection.client().connection_pool) for port in ports}  # type: ignore[attr-defined]
            return len(connections), len(pools)
        finally:
            await backend.close()
            await backend.close()  # idempotent

    assert run(scenario(), 20) == (1, 1)


def test_connect_to_nothing_fails_with_the_url_and_no_password() -> None:
    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0"

    async def scenario() -> str:
        backend = open_backend(url)
        try:
            with pytest.raises(BackendUnavailableError) as caught:
                await backend.connect()
            return str(caught.value)
        finally:
            await backend.close()

    message = run(scenario(), 30)
    assert "topsecret" not in message and "127.0.0.1" in message and "***" in message
