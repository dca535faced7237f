"""A second SIGTERM or SIGINT hurries a draining worker (``core.worker``: a cold stop).

The first signal drains: running nodes get ``--shutdown-grace`` to finish. A second one
while it drains stops the worker within a few seconds (``HURRIED_CLEANUP``), whatever the
grace, with its nodes cancelled and given back; when the backend is gone, or a node's
thread cannot be interrupted, too. Real worker processes (the CLI), real servers.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.aio import run
from support.crash_workers import crash_workers, single
from support.worker_processes import WorkerProcesses
from support.redis_server import RedisServer

from distributed_agents import Graph
from distributed_agents.core.timeouts import wait_within
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)

# The grace the first signal gives: far longer than any bound below, so a worker that ends
# within one was hurried, not drained.
GRACE = "120"
# How long a hurried worker may take to exit: HURRIED_CLEANUP (2 s) plus the interpreter's
# exit, on a loaded machine.
HURRIED_EXIT = 20.0


@pytest.fixture(params=["redis", "nats"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """The URL of a real Redis or NATS server."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def _graph(node: str) -> Graph:
    return single(node)


def _wait_for(path: pathlib.Path, process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the worker exited (status {process.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout:g}s"
        time.sleep(0.05)


def _wait_for_line(workers: WorkerProcesses, worker_id: str, process: subprocess.Popen[str], text: str,
                   timeout: float = 30.0) -> None:
    """Until ``text`` is in the log of worker ``worker_id`` (``process``, which must keep running)."""
    deadline = time.monotonic() + timeout
    while text not in workers.log(worker_id):
        assert time.monotonic() < deadline and process.poll() is None, workers.log(worker_id)
        time.sleep(0.05)


def _stop_twice(process: subprocess.Popen[str], sig: signal.Signals) -> float:
    """Send ``sig``, check the worker drains (still running a second later), send it again;
    when (``time.monotonic``) the second went out."""
    process.send_signal(sig)
    time.sleep(1.5)
    assert process.poll() is None, "one signal should drain (the node is given --shutdown-grace), not stop at once"
    process.send_signal(sig)
    return time.monotonic()


async def _stopped_then_finished(url: str, prefix: str, graph: Graph, state: dict[str, Any], tmp: pathlib.Path,
                                 worker: subprocess.Popen[str], healthy: WorkerProcesses,
                                 stop: Callable[[], float]) -> tuple[float, Any]:
    """Run ``graph`` until ``worker`` (id w1) runs its node, ``stop`` it (a blocking call
    sending signals, returning when its last went out), then start a healthy worker (w2)
    and finish the workflow; the seconds from the last signal until ``worker`` exited, and
    the workflow's result."""
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
    try:
        running = asyncio.ensure_future(orchestrator.execute(graph, state, workflow_id=f"{prefix}-1"))
        await asyncio.to_thread(_wait_for, tmp / "w1.attempt1", worker)
        last = await asyncio.to_thread(stop)
        await asyncio.to_thread(worker.wait, HURRIED_EXIT)
        took = time.monotonic() - last
        # Given back (the backend answers): another worker runs it now, not after the
        # visibility timeout (300 s by default).
        healthy.start("w2")
        return took, await running
    finally:
        await orchestrator.close()


def _signals(process: subprocess.Popen[str], *plan: tuple[float, signal.Signals]) -> Callable[[], float]:
    """A ``stop`` for ``_stopped_then_finished``: each (pause in seconds, signal) of ``plan`` in turn."""
    def stop() -> float:
        for pause, sig in plan:
            time.sleep(pause)
            process.send_signal(sig)
        return time.monotonic()
    return stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_a_draining_worker_and_its_task_runs_on_another(
    shared_url: str, tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    hanging = crash_workers(shared_url, prefix, tmp_path, DA_HANG="1")
    healthy = crash_workers(shared_url, prefix, tmp_path)
    first = hanging.start("w1", "--shutdown-grace", GRACE)
    try:
        graph = (Graph("cold").add_node("prepare").add_node("slow").set_entry_point("prepare")
                 .add_edge("prepare", "slow").set_finish_point("slow").compile())
        took, result = run(_stopped_then_finished(shared_url, prefix, graph, {"query": "q"}, tmp_path, first, healthy,
                                                  lambda: _stop_twice(first, sig)), timeout=110)
        assert first.returncode == 0
        assert took < HURRIED_EXIT
        assert result["analysis"] == "analysed prepared q"
        assert (tmp_path / "w2.attempt1").exists(), "the released task should run again as attempt 1 (release gives the attempt back)"
        log = hanging.log("w1")
        assert f"received {sig.name}: draining" in log
        assert f"received {sig.name} while stopping: stopping now" in log
        assert "1 released" in log
    finally:
        hanging.close()
        healthy.close()


async def _run_until_stopped(url: str, prefix: str, node: str, marker: pathlib.Path, worker: subprocess.Popen[str],
                             before_stopping: Any = None) -> float:
    """Run a one-node workflow of ``node`` until ``worker`` runs it (``marker``), call
    ``before_stopping``, stop the worker twice (``_stop_twice``); the seconds the second stop took."""
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
    running = asyncio.ensure_future(orchestrator.execute(_graph(node), {"query": "q"}, workflow_id=f"{prefix}-1"))
    try:
        await asyncio.to_thread(_wait_for, marker, worker)
        if before_stopping is not None:
            before_stopping()
        last = await asyncio.to_thread(_stop_twice, worker, signal.SIGTERM)
        await asyncio.to_thread(worker.wait, HURRIED_EXIT)
        return time.monotonic() - last
    finally:
        running.cancel()
        await wait_within(asyncio.gather(running, return_exceptions=True), 10)
        await wait_within(orchestrator.close(), 10)


def test_a_second_signal_stops_a_worker_whose_backend_is_gone(tmp_path: pathlib.Path) -> None:
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    with RedisServer() as server:
        workers = crash_workers(server.url, prefix, tmp_path, DA_HANG="1")
        worker = workers.start("w1", "--shutdown-grace", GRACE)
        try:
            took = run(_run_until_stopped(server.url, prefix, "slow", tmp_path / "w1.attempt1", worker,
                                          before_stopping=server.stop), timeout=110)
            assert worker.returncode == 0
            assert took < HURRIED_EXIT
            log = workers.log("w1")
            assert "while stopping: stopping now" in log
            assert "stopped:" in log and "0 released" in log  # its stop ran through; the release could not land
            assert "Traceback" not in log
        finally:
            workers.close()


@pytest.mark.parametrize("node, expected", [
    # A plain function's thread (time.sleep) cannot be interrupted: left behind, not waited
    # for; its task was given back all the same.
    ("blocking", ["exiting without waiting for 1 node thread(s) and 0 node task(s) still running", "1 released"]),
    # An async node that ignores every cancellation: named, and left to its lease (it cannot be
    # given back while its node runs on).
    ("stubborn", ["1 node(s) did not stop when cancelled; their tasks are left to their leases", "(node 'stubborn')",
                  "exiting without waiting for 0 node thread(s) and 1 node task(s) still running"]),
])
def test_a_second_signal_does_not_wait_for_a_node_that_will_not_stop(
    shared_url: str, tmp_path: pathlib.Path, node: str, expected: list[str]
) -> None:
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    workers = crash_workers(shared_url, prefix, tmp_path, DA_HANG="1")
    worker = workers.start("w1", "--shutdown-grace", GRACE)
    try:
        took = run(_run_until_stopped(shared_url, prefix, node, tmp_path / "w1.attempt1", worker), timeout=110)
        assert worker.returncode == 0
        assert took < HURRIED_EXIT
        log = workers.log("w1")
        for line in expected:
            assert line in log, log
    finally:
        workers.close()


def test_a_second_signal_while_a_claim_waits_on_a_paused_backend_exits_cleanly(tmp_path: pathlib.Path) -> None:
    # An idle worker's claim is under way when the server stops answering (SIGSTOP: the
    # connection stays up, nothing comes back): the hurried stop abandons that claim.
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    with RedisServer() as server:
        workers = crash_workers(server.url, prefix, tmp_path)
        worker = workers.start("w1", "--shutdown-grace", GRACE)
        try:
            _wait_for_line(workers, "w1", worker, "serving")
            time.sleep(0.5)
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(0.5)
                last = _stop_twice(worker, signal.SIGTERM)
                worker.wait(timeout=HURRIED_EXIT)
                took = time.monotonic() - last
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert worker.returncode == 0, workers.log("w1")
            assert took < HURRIED_EXIT
            log = workers.log("w1")
            assert "stopping now" in log and "stopped:" in log
            assert "Traceback" not in log and "InvalidStateError" not in log, log
        finally:
            workers.close()


def test_one_signal_does_not_wait_past_the_grace_for_a_node_thread(shared_url: str, tmp_path: pathlib.Path) -> None:
    # A warm stop: the grace (1 s) ends, the task is given back, and the process exits
    # although the node's thread, which nothing can interrupt, still runs.
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    hanging = crash_workers(shared_url, prefix, tmp_path, DA_HANG="1")
    healthy = crash_workers(shared_url, prefix, tmp_path)
    worker = hanging.start("w1", "--shutdown-grace", "1")


    try:
        took, result = run(_stopped_then_finished(shared_url, prefix, _graph("blocking"), {"query": "q"}, tmp_path,
                                                  worker, healthy, _signals(worker, (0, signal.SIGTERM))), timeout=110)
        assert worker.returncode == 0
        assert took < HURRIED_EXIT
        assert result["analysis"] == "analysed q in a thread"
        assert (tmp_path / "w2.attempt1").exists()  # given back: attempt 1 again, on w2
        log = hanging.log("w1")
        assert "1 released" in log
        assert "exiting without waiting for 1 node thread(s) and 0 node task(s) still running" in log
    finally:
        hanging.close()
        healthy.close()


def test_a_signal_before_the_backend_answers_stops_the_waiting_worker(tmp_path: pathlib.Path) -> None:
    # Nothing listens at the URL yet: the worker waits for its backend, and SIGTERM ends that
    # wait with a line saying so (it used to end by the signal's default action, status -15).
    with RedisServer() as server:
        url = server.url
    workers = crash_workers(url, f"cold{uuid.uuid4().hex[:8]}", tmp_path)
    worker = workers.start("w1")
    try:
        _wait_for_line(workers, "w1", worker, "backend unavailable")
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=HURRIED_EXIT)
        assert worker.returncode == 0, workers.log("w1")
        log = workers.log("w1")
        assert "received SIGTERM before it served: stopping" in log
        assert "stopped before it served (the backend had not answered yet)" in log
    finally:
        workers.close()


@pytest.mark.parametrize("gap", [0.01, 0.3])
def test_a_quick_second_signal_gives_the_task_back_without_running_it_again(
    shared_url: str, tmp_path: pathlib.Path, gap: float
) -> None:
    # A free slot means a claim is under way when the signals come: on Redis it can take back
    # the very task the stop just released. That task goes back again, it is not run here.
    prefix = f"cold{uuid.uuid4().hex[:8]}"
    runs_log = tmp_path / "runs.log"
    hanging = crash_workers(shared_url, prefix, tmp_path, DA_HANG="1", DA_RUNS_LOG=str(runs_log))
    healthy = crash_workers(shared_url, prefix, tmp_path, DA_RUNS_LOG=str(runs_log))
    worker = hanging.start("w1", "--shutdown-grace", GRACE, "--capacity", "8")


    try:
        stop = _signals(worker, (0, signal.SIGTERM), (gap, signal.SIGTERM))
        took, result = run(_stopped_then_finished(shared_url, prefix, _graph("slow"), {"query": "q", "prepared": "p"},
                                                  tmp_path, worker, healthy, stop), timeout=110)
        assert worker.returncode == 0
        assert took < HURRIED_EXIT
        assert result["analysis"] == "analysed p"
        runs = runs_log.read_text().splitlines()
        assert runs.count("w1 slow 1") == 1, runs  # not started again on the stopping worker
        log = hanging.log("w1")
        assert "did not stop when cancelled" not in log, log
        # Given back (twice when the claim under way had taken it back: both releases count).
        assert int(re.search(r"(\d+) released", log).group(1)) >= 1, log  # type: ignore[union-attr]
    finally:
        hanging.close()
        healthy.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_that_keep_coming_while_a_worker_stops_still_end_it_with_status_0(
    shared_url: str, tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    # Whatever phase each lands in (draining, hurrying, logging its summary, the interpreter's
    # exit), a stop signal ends the worker cleanly: none falls on the default action.
    workers = crash_workers(shared_url, f"cold{uuid.uuid4().hex[:8]}", tmp_path)
    worker = workers.start("w1")
    try:
        _wait_for_line(workers, "w1", worker, "serving")
        deadline = time.monotonic() + HURRIED_EXIT
        while worker.poll() is None and time.monotonic() < deadline:
            worker.send_signal(sig)
            time.sleep(0.002)
        worker.wait(timeout=5)
        assert worker.returncode == 0, workers.log("w1")
    finally:
        workers.close()


def test_a_sighup_drains_a_worker_as_sigterm_does(shared_url: str, tmp_path: pathlib.Path) -> None:
    """From an operations trial: SIGHUP (the terminal or SSH session closed) ended the worker at
    once with status 129, logging nothing, its registry entry and task leases left to expire.
    Now it drains and deregisters as on SIGTERM, and exits 0."""
    workers = crash_workers(shared_url, f"cold{uuid.uuid4().hex[:8]}", tmp_path)
    worker = workers.start("w1")
    try:
        _wait_for_line(workers, "w1", worker, "serving")
        worker.send_signal(signal.SIGHUP)
        worker.wait(timeout=HURRIED_EXIT)
        log = workers.log("w1")
        assert worker.returncode == 0, log
        assert "received SIGHUP: draining" in log, log
    finally:
        workers.close()
