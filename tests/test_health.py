"""``distributed_agents.health.HealthServer``: the probe endpoint's answers, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.health import HealthServer


async def _request(port: int, raw: bytes) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    return status, json.loads(body)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe/1.30\r\n\r\n".encode()


def test_answers_of_checks_and_routes() -> None:
    state: dict[str, Any] = {"ready": "draining: stopped claiming"}

    async def ready() -> str | None:
        return state["ready"]

    async def slow() -> str | None:
        await asyncio.sleep(60)
        return None

    async def queues(query: Mapping[str, str]) -> dict[str, Any]:
        if "boom" in query:
            raise RuntimeError("the backend said no")
        return {"echo": dict(query)}

    async def scenario() -> list[tuple[int, Any]]:
        server = HealthServer(0, ready=ready, routes={"/queues": queues}, host="127.0.0.1", check_timeout=0.5)
        port = await server.start()
        try:
            answers = [
                await _request(port, _get("/livez")),
                await _request(port, _get("/healthz")),
                await _request(port, _get("/readyz")),
            ]
            state["ready"] = None
            answers += [
                await _request(port, _get("/readyz/")),
                await _request(port, _get("/queues?node_types=a,b&x=1")),
                await _request(port, _get("/queues?boom=1")),
                await _request(port, _get("/metrics")),
                await _request(port, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                await _request(port, b"\r\n"),
            ]
            server._checks["/readyz"] = slow
            answers.append(await _request(port, _get("/readyz")))
            return answers
        finally:
            await server.close()

    (live, healthz, draining, ready_now, routed, failed, unknown, post, garbage, timed_out) = asyncio.run(scenario())
    assert live == healthz == (200, {"status": "ok"})
    assert draining == (503, {"status": "unavailable", "reason": "draining: stopped claiming"})
    assert ready_now == (200, {"status": "ok"})
    assert routed == (200, {"echo": {"node_types": "a,b", "x": "1"}})
    assert failed[0] == 503 and "RuntimeError: the backend said no" in failed[1]["reason"]
    assert unknown[0] == 404 and "/readyz" in unknown[1]["reason"] and "/queues" in unknown[1]["reason"]
    assert post[0] == 405 and "use GET" in post[1]["reason"]
    assert garbage[0] == 400
    assert timed_out[0] == 503 and "longer than 0.5s" in timed_out[1]["reason"]


def test_a_port_in_use_is_a_configuration_error() -> None:
    async def ready() -> str | None:
        return None

    async def scenario() -> None:
        first = HealthServer(0, ready=ready, host="127.0.0.1")
        port = await first.start()
        try:
            with pytest.raises(ConfigurationError, match=f"port {port}: .*pick a free port"):
                await HealthServer(port, ready=ready, host="127.0.0.1").start()
        finally:
            await first.close()

    asyncio.run(scenario())
