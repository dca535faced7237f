"""Review of this session's speed-ups with real worker processes and a SIGKILL.

A worker that has run some single-node workflows (its parked registration topped up by its
acks, new tasks leased to it straight from the create script) is killed while it holds
tasks; another worker finishes every workflow with the right state: no task is lost on
the dead worker's registration, none commits twice.
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


@pytest.fixture(params=["redis", "nats"])
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def _graph() -> Graph:
    g = Graph("review_s10")
    g.add_node("step").set_entry_point("step").set_finish_point("step")
    return g.compile()


def _worker(url: str, prefix: str, worker_id: str, tmp: pathlib.Path, hang_after: int) -> subprocess.Popen[str]:
    env = {**os.environ, "DA_MARKER_DIR": str(tmp), "DA_HANG_AFTER": str(hang_after), "PYTHONPATH": str(HERE)}
    with open(tmp / f"{worker_id}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "review_s10_app:registry",
             "--backend-url", url, "--prefix", prefix, "--worker-id", worker_id, "--capacity", "3",
             "--visibility-timeout", str(VISIBILITY), "--heartbeat-interval", "0.5", "--shutdown-grace", "5"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _runs(tmp: pathlib.Path) -> list[tuple[str, int, int]]:
    path = tmp / "runs"
    if not path.exists():
        return []
    return [(w, int(n), int(a)) for w, n, a in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.timeout(120)
def test_a_worker_killed_holding_handed_over_tasks_loses_no_workflow(backend_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"rv10{uuid.uuid4().hex[:8]}"
    doomed = _worker(backend_url, prefix, "doomed", tmp_path, hang_after=6)
    survivor: subprocess.Popen[str] | None = None
    orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix,
                                           visibility_timeout=VISIBILITY, worker_timeout=60)
    try:
        async def scenario() -> list[dict[str, Any]]:
            nonlocal survivor
            graph = _graph()
            # One at a time first: the doomed worker parks, acks, is handed the next one.
            first = [dict(await orchestrator.execute(graph, {"n": n}, workflow_id=f"{prefix}-{n}")) for n in range(6)]
            rest = [asyncio.ensure_future(orchestrator.execute(graph, {"n": n}, workflow_id=f"{prefix}-{n}"))
                    for n in range(6, 16)]
            deadline = time.monotonic() + 60
            while sum(1 for w, _, _ in _runs(tmp_path) if w == "doomed") < 9:  # 6 done, 3 hanging
                assert time.monotonic() < deadline, _runs(tmp_path)
                await asyncio.sleep(0.05)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            survivor = _worker(backend_url, prefix, "survivor", tmp_path, hang_after=-1)
            try:
                return first + [dict(await each) for each in rest]
            finally:
                await orchestrator.close()

        states = run(scenario(), 100)
    finally:
        for process in (doomed, survivor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert states == [{"n": n, "out": 2 * n} for n in range(16)]
    runs = _runs(tmp_path)
    survived = {n for w, n, _ in runs if w == "survivor"}
    hung = {n for w, n, _ in runs if w == "doomed"} - set(range(6))
    assert len(hung) == 3 and hung <= survived, runs  # the killed worker's tasks ran again
    assert sorted(n for w, n, _ in runs if w == "survivor") == sorted(survived)  # once each there


@pytest.fixture(params=["redis", "nats"])
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server"), request.param


@pytest.mark.timeout(120)
def test_an_ack_whose_connection_was_reset_is_retried_and_lands_once(server: Any) -> None:
    """A worker's connections are reset (TCP RST) while its node runs, so the ack's own first
    attempt meets a dead connection: it is retried once the backend answers again, and the
    task ends succeeded on its first attempt, acked once (no lost lease, no dead letter)."""
    from support.fault_proxy import FaultProxy

    from distributed_agents import NodeRegistry, State, Worker
    from distributed_agents.core.ports.task_queue import Task
    from distributed_agents.plugins import open_backend

    engine, scheme = server
    registry = NodeRegistry()
    started = asyncio.Event()
    go_on = asyncio.Event()

    @registry.register("held")
    async def held(state: State) -> dict[str, Any]:
        started.set()
        await go_on.wait()
        return {"ok": state["n"]}

    async def scenario(proxy: FaultProxy) -> tuple[Any, Any, list[Any]]:
        prefix = f"rst{uuid.uuid4().hex[:8]}"
        worker = Worker(["held"], capacity=2, backend=f"{proxy.url(scheme)}?prefix={prefix}", registry=registry,
                        worker_id="w", heartbeat_interval=10, poll_wait=1, lease_seconds=30)
        serving = asyncio.ensure_future(worker.start())
        producer = open_backend(f"{engine.url}?prefix={prefix}")
        await producer.connect()
        try:
            await producer.task_queue.enqueue(Task("t1", "wf", "n", "held", {"v": 1, "step": 0, "state": {"n": 1}}))
            await asyncio.wait_for(started.wait(), 30)
            proxy.reset()  # every connection of the worker dies; the node is still running
            go_on.set()
            found: dict[str, Any] = {}
            while not found:
                found = await producer.task_queue.wait_results(["t1"], timeout=5)
            return found["t1"], worker.stats, await producer.task_queue.dead_letters("held")
        finally:
            await worker.stop()
            await serving
            await producer.close()

    with FaultProxy(engine.port) as proxy:
        result, stats, letters = run(scenario(proxy), 100)
    assert (result.status, result.output, result.attempts) == ("succeeded", {"ok": 1}, 1)
    assert (stats.succeeded, stats.lost_leases, stats.failed) == (1, 0, 0), stats
    assert letters == []


@pytest.mark.timeout(120)
def test_a_sigkilled_parked_workers_registration_runs_out_as_documented(redis_url: str, tmp_path: pathlib.Path) -> None:
    """A Redis worker process that ran tasks while parked (its registration kept live by its
    acks) is SIGKILLed while parked: tasks enqueued later than ``min(poll_cap, 5 s) + 0.2 s``
    (1.2 s by default) after its death are not leased to it; they wait in the queue. (The
    bound is the server's: the test only waits longer than it, so a slow machine cannot fail it.)"""
    from distributed_agents.core.ports.task_queue import Task
    from distributed_agents.plugins import open_backend

    prefix = f"kp{uuid.uuid4().hex[:8]}"
    doomed = _worker(redis_url, prefix, "doomed", tmp_path, hang_after=-1)
    try:
        async def scenario() -> Any:
            producer = open_backend(f"{redis_url}?prefix={prefix}")
            await producer.connect()
            queue = producer.task_queue
            try:
                for i in range(8):
                    task = Task(f"a{i}", "wf", "n", "step", {"v": 1, "step": 0, "state": {"n": i}})
                    await queue.enqueue(task)
                    found: dict[str, Any] = {}
                    while not found:
                        found = await queue.wait_results([task.id], timeout=10)
                await asyncio.sleep(0.1)  # parked again, waiting
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(timeout=10)
                await asyncio.sleep(2.5)  # over 1.2 s: its registration ran out, whatever its acks did
                await queue.enqueue(Task("late", "wf", "n", "step", {"v": 1, "step": 0, "state": {"n": 99}}))
                return await queue.stats("step")
            finally:
                await producer.close()

        stats = run(scenario(), 100)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)
    assert (stats.queued, stats.in_flight) == (1, 0), stats
