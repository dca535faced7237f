"""The README's distributed blocks run as written against a real Redis.

The only change is the server address: the README says ``redis://localhost:6379/0``;
the test server listens on a free port. The worker block runs in its own process,
the orchestrator block in this one.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from support.aio import run
from support.readme import python_blocks, run_block

from distributed_agents import Graph
from distributed_agents.adapters.redis import RedisNodeRegistry, RedisStateManager, RedisTaskQueue
from distributed_agents.distributed import DistributedWorker

README_URL = "redis://localhost:6379/0"
TESTS = pathlib.Path(__file__).resolve().parents[1]


def quick_start_graph() -> Graph:
    graph = Graph(name="research_workflow")
    graph.add_node("researcher")
    graph.add_node("writer")
    graph.set_entry_point("researcher")
    graph.add_edge("researcher", "writer")
    graph.set_finish_point("writer")
    return graph.compile()


@pytest.mark.timeout(90)
def test_distributed_execution_blocks_run_in_separate_processes(redis_url: str, tmp_path: pathlib.Path) -> None:
    orchestrator_block, worker_block = python_blocks("Distributed Execution")
    assert README_URL in orchestrator_block and README_URL in worker_block
    runner = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(TESTS)!r})
        from support.readme import python_blocks, run_block
        block = python_blocks("Distributed Execution")[1].replace({README_URL!r}, {redis_url!r})
        asyncio.run(run_block(block, {{}}))
    """)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "-c", runner], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        namespace: dict[str, Any] = {"graph": quick_start_graph()}

        async def orchestrate() -> Any:
            await run_block(orchestrator_block.replace(README_URL, redis_url), namespace)
            await namespace["orchestrator"].close()
            return namespace["result"]

        result = run(orchestrate(), timeout=60)
        assert result.get("report") == "Report with 1 findings"
        assert result.get("findings") == ["Finding about AI trends"]
        worker.send_signal(signal.SIGTERM)  # drains, deregisters and exits cleanly
        assert worker.wait(timeout=30) == 0, log_path.read_text()
        async def live_workers() -> list[Any]:
            registry = RedisNodeRegistry(redis_url)
            try:
                return await registry.list_workers("researcher")
            finally:
                await registry.close()

        assert run(live_workers()) == [], "the drained worker should have deregistered"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)


def test_worker_configuration_block(redis_url: str) -> None:
    (block,) = python_blocks("Worker Configuration")
    namespace: dict[str, Any] = {"DistributedWorker": DistributedWorker}
    run(run_block(block.replace(README_URL, redis_url), namespace))
    worker = namespace["worker"]
    assert (worker.worker_id, worker.node_types, worker.capacity, worker.heartbeat_interval) == (
        "worker-1", frozenset({"researcher"}), 4, 10.0)
    assert worker.backend.url == redis_url
    run(worker.backend.close())


def test_redis_connection_block(redis_url: str) -> None:
    (block,) = python_blocks("Redis Connection")
    namespace: dict[str, Any] = {"RedisStateManager": RedisStateManager, "RedisNodeRegistry": RedisNodeRegistry,
                                 "RedisTaskQueue": RedisTaskQueue}
    run(run_block(block.replace(README_URL, redis_url), namespace))
    assert namespace["state_manager"].state_ttl == 86400
    assert namespace["registry"].heartbeat_ttl == 30
    assert namespace["queue"].result_ttl == 3600

    async def use() -> None:
        from distributed_agents.core.ports import WorkerInfo

        registry = namespace["registry"]
        await registry.register(WorkerInfo(f"readme-{time.time()}", frozenset({"readme"})))
        assert [w.node_types for w in await registry.list_workers("readme")] == [frozenset({"readme"})]
        for port in (namespace["state_manager"], registry, namespace["queue"]):
            await port.close()

    run(use())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["redis", "nats"])
def test_distributed_example_runs_end_to_end(backend: str, request: pytest.FixtureRequest) -> None:
    """``python examples/distributed_workflow.py --backend-url URL``, as the README says."""
    url = request.getfixturevalue(f"{backend}_url")
    example = TESTS.parent / "examples" / "distributed_workflow.py"
    done = subprocess.run([sys.executable, str(example), "--backend-url", url], capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Report with 2 findings"
    orchestrator_pid = int(lines[1].rsplit(" ", 1)[1])
    assert f"pid {orchestrator_pid}," not in lines[1]  # the nodes ran in worker processes
