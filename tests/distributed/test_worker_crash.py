"""A worker killed with SIGKILL mid-task loses the task, not the work.

Real worker processes (the ``distributed-agents worker`` CLI) on a real server: worker A
claims the slow node and hangs; it is SIGKILLed; worker B claims the task after the
visibility timeout and the workflow completes with the same final state as a run in
which nothing was killed.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph
from distributed_agents.distributed import DistributedOrchestrator

HERE = pathlib.Path(__file__).resolve().parent
VISIBILITY = 1.5
BACKENDS = ["redis", "nats"]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def graph() -> Graph:
    g = Graph("crash_workflow")
    g.add_node("prepare").add_node("slow").add_node("finish")
    g.set_entry_point("prepare").add_edge("prepare", "slow").add_edge("slow", "finish").set_finish_point("finish")
    return g.compile()


def start_worker(url: str, prefix: str, worker_id: str, markers: pathlib.Path, *, hang: bool) -> subprocess.Popen[str]:
    """A worker process whose output goes to ``<markers>/../<worker_id>.log``."""
    env = {**os.environ, "DA_MARKER_DIR": str(markers), "DA_HANG": "1" if hang else "0",
           "PYTHONPATH": str(HERE)}
    with open(markers.parent / f"{worker_id}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "crash_app:registry",
             "--backend-url", url, "--prefix", prefix, "--worker-id", worker_id,
             "--visibility-timeout", str(VISIBILITY), "--heartbeat-interval", "0.5", "--shutdown-grace", "5"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.timeout(120)
def test_sigkilled_worker_task_is_redelivered_and_the_result_is_unchanged(
    backend_url: str, tmp_path: pathlib.Path
) -> None:
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    markers = tmp_path / "markers"
    markers.mkdir()
    orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix,
                                           visibility_timeout=VISIBILITY, worker_timeout=60)
    doomed = start_worker(backend_url, prefix, "doomed", markers, hang=True)
    survivor: subprocess.Popen[str] | None = None
    try:
        async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
            nonlocal survivor
            running = asyncio.ensure_future(orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{prefix}-1"))
            await asyncio.to_thread(wait_for, lambda: (markers / "doomed.attempt1").exists(), 30,
                                    "the doomed worker to start the slow node")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            survivor = start_worker(backend_url, prefix, "survivor", markers, hang=False)
            crashed = dict(await running)
            reference = dict(await orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{prefix}-2"))
            await orchestrator.close()
            return crashed, reference

        crashed, reference = run(scenario(), timeout=90)
        assert crashed == reference == {
            "query": "q", "prepared": "prepared q", "analysis": "analysed prepared q",
            "report": "report on analysed prepared q",
        }
        # The slow node ran twice for the crashed workflow: attempt 1 on the killed worker,
        # attempt 2 (the re-delivery) on the survivor; then once more for the reference run.
        assert sorted(p.name for p in markers.iterdir()) == ["doomed.attempt1", "survivor.attempt1",
                                                            "survivor.attempt2"]
        assert survivor is not None
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=30)
        output = (tmp_path / "survivor.log").read_text()
        assert survivor.returncode == 0, output
        assert "received SIGTERM: draining" in output
        # slow (re-delivered) and finish of the crashed workflow, then all three nodes of the reference run
        assert "stopped: 5 succeeded" in output
    finally:
        for process in (doomed, survivor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
