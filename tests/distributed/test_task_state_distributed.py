"""Bytes written to Redis for a 1,000-way fan-out over a 1 MB state: tasks name the state, they do not carry it.

Counted by the server (``INFO stats`` ``total_net_input_bytes``: every byte clients sent
it) on a private server, so other tests' traffic stays out. Before tasks named the
state, each of the thousand tasks carried it: about 1 GB. The figure is a count, not a
timing.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import END, START, Graph, Orchestrator, Send, State, Worker
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
WIDTH = 1000
LIMIT = 20 * MB  # the goal of issue 14's table
THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"


def fan_out(shape: str) -> Graph:
    """``start`` writes a 1 MB ``doc``; then ``WIDTH`` worker tasks: static edges to as many nodes, or a Send each."""
    graph = Graph(f"bytes-{shape}")
    graph.add_node("start", lambda s: {"doc": "d" * MB, "items": list(range(WIDTH))})
    graph.add_edge(START, "start")
    if shape == "static":
        names = [f"n{i}" for i in range(WIDTH)]
        for name in names:
            graph.add_node(name, node_type="reader")
            graph.add_edge("start", name)
        graph.add_node("done", lambda s: None)
        graph.add_edge(names, "done").add_edge("done", END)
    else:
        graph.add_node("square", node_type="square")
        graph.add_conditional_edge("start", lambda s: [Send("square", {"item": i}) for i in s["items"]], ["square"])
        graph.add_edge("square", END)
    return graph.compile()


async def _input_bytes(meter: redis_asyncio.Redis) -> int:
    return int((await meter.info("stats"))["total_net_input_bytes"])


@pytest.mark.parametrize("shape", [
    "static",
    # Send tasks carried only their argument already; the memory variant (tests/core) covers them by default.
    pytest.param("send", marks=pytest.mark.skipif(not THOROUGH, reason="one shape by default: DA_TEST_PROFILE=thorough")),
])
def test_a_thousand_way_fan_out_over_a_1_mb_state_writes_at_most_20_mb(shape: str) -> None:
    seen: list[Any] = []

    async def scenario(url: str) -> tuple[int, State, int]:
        options = BackendOptions.from_url(url, prefix=f"tb{uuid.uuid4().hex[:6]}", max_payload_bytes=8 * MB)
        worker_backend, orchestrator_backend = open_redis_backend(url, options), open_redis_backend(url, options)
        worker = Worker(["reader", "square"], capacity=64, backend=worker_backend, poll_wait=0.2)

        @worker.register("reader")
        def reader(state: State) -> dict[str, Any]:
            seen.append(len(state["doc"]))
            return {}

        @worker.register("square")
        def square(state: State) -> dict[str, Any]:
            seen.append(sorted(state))
            return {}

        serving = asyncio.ensure_future(worker.start())
        meter = redis_asyncio.Redis.from_url(url)
        orchestrator = Orchestrator(backend=orchestrator_backend, wait_for_workers=True)
        try:
            while not worker._serving:
                await asyncio.sleep(0.01)
            graph = fan_out(shape)
            before = await _input_bytes(meter)
            result = await orchestrator.execute(graph, {})
            written = await _input_bytes(meter) - before
            return written, result, worker.state_cache.fetches
        finally:
            await orchestrator.close()
            await worker.stop(grace=5)
            await serving
            await meter.aclose()
            await orchestrator_backend.close()
            await worker_backend.close()

    with RedisServer() as server:
        written, result, fetches = run(scenario(server.url), 110)
    assert len(result["doc"]) == MB
    if shape == "static":
        assert seen == [MB] * WIDTH  # every node read the whole state...
        assert fetches == 1  # ...which the worker read once
    else:
        assert seen == [["item"]] * WIDTH  # a Send's node gets its argument only
        assert fetches == 0
    print(f"{shape} fan-out of {WIDTH} over a 1 MB state: {written / MB:.1f} MB written to Redis")
    assert written <= LIMIT, f"{written:,} bytes written to Redis"


@pytest.mark.parametrize("backend", [
    # Redis's reads are covered in this process above; NATS reads through the port's default get_checkpoint.
    pytest.param("redis_url", marks=pytest.mark.skipif(not THOROUGH, reason="one backend by default: "
                                                                             "DA_TEST_PROFILE=thorough")),
    "nats_url",
])
def test_worker_processes_run_each_fan_out_on_the_state_its_step_committed(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """Two worker processes, two fan-outs over a 200 KB state that changes in between: every task reads
    (through the backend's get_checkpoint) the state of its own step."""
    url = str(request.getfixturevalue(backend))
    prefix = f"tsp{uuid.uuid4().hex[:8]}"
    app = load_test_app("task_state_app")
    workers = WorkerProcesses(url, prefix, tmp_path, "task_state_app:registry")

    async def scenario() -> State:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            return await orchestrator.execute(app.fan_twice_graph(), {})
        finally:
            await orchestrator.close()

    workers.start("w1", "--capacity", "4")
    workers.start("w2", "--capacity", "4")
    try:
        result = run(scenario(), timeout=100)
    finally:
        workers.close()
    width, size = app.WIDTH, app.DOC_BYTES
    assert [entry[:2] for entry in result["read"]] == [[size, "a"]] * width + [[size, "b"]] * width
