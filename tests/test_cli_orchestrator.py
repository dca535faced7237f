"""``distributed-agents orchestrator`` as a real process against a real Redis (and NATS).

A client process submits (``distributed-agents submit``), a worker process runs the
nodes, and the orchestrator process drives the workflow to its end. SIGTERM stops the
orchestrator cleanly (exit status 0, leases released, the workflow resumable); a second
orchestrator takes over a workflow whose orchestrator was SIGKILLed mid-run. Its
``--health-port`` answers probes and ``/queues`` counts the backlog.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distributed_agents import Orchestrator
from distributed_agents.plugins import open_backend

APP = '''
import os, pathlib, time
from distributed_agents import Graph, State

MARKERS = pathlib.Path(os.environ["DA_MARKER_DIR"])


def draft(state: State) -> dict:
    return {"text": f"draft about {state['topic']}"}


def hold(state: State) -> dict:
    # Waits for the test's gate file, so the test can stop orchestrators while the step runs.
    (MARKERS / f"started-{state['topic']}").touch()
    while not (MARKERS / f"gate-{state['topic']}").exists():
        time.sleep(0.05)
    return {"held": True}


def polish(state: State) -> dict:
    return {"text": state["text"] + ", polished"}


graph = (Graph("essay").add_node("draft", draft).add_node("hold", hold).add_node("polish", polish)
         .set_entry_point("draft").add_edge("draft", "hold").add_edge("hold", "polish")
         .set_finish_point("polish").compile())
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_APP", "DA_HEALTH_PORT")
PATIENCE = 90.0  # seconds any one wait may take on a loaded machine before the test fails


def wait_until(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)


class Deployment:
    """One Redis prefix, a worker process, orchestrator processes started on demand, and the CLI."""

    def __init__(self, url: str, folder: pathlib.Path) -> None:
        self.url, self.folder = url, folder
        self.prefix = f"orch{uuid.uuid4().hex[:8]}"
        (folder / "essayapp.py").write_text(APP)
        base = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
        self.env = {**base, "PYTHONPATH": str(folder), "DA_MARKER_DIR": str(folder)}
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.start("worker", "worker", "--app", "essayapp:graph", "--capacity", "4", "--heartbeat-interval", "0.5")

    def start(self, name: str, *argv: str) -> subprocess.Popen[str]:
        with open(self.folder / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", *argv, "--backend-url", self.url, "--prefix", self.prefix],
                cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.processes[name] = process
        return process

    def orchestrator(self, name: str, *extra: str) -> subprocess.Popen[str]:
        return self.start(name, "orchestrator", "--app", "essayapp:graph", "--orchestrator-id", name,
                          "--poll-interval", "0.2", *extra)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.processes)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "distributed_agents", *argv, "--backend-url", self.url,
                               "--prefix", self.prefix], capture_output=True, text=True, cwd=self.folder,
                              env=self.env, timeout=60)

    def submit(self, topic: str) -> str:
        done = self.cli("submit", "essayapp:graph", "--input", json.dumps({"topic": topic}))
        assert done.returncode == 0, (done.stdout, done.stderr)
        return done.stdout.strip()

    def started(self, topic: str) -> bool:
        return (self.folder / f"started-{topic}").exists()

    def open_gate(self, topic: str) -> None:
        (self.folder / f"gate-{topic}").touch()

    def result(self, workflow_id: str) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            async with Orchestrator(backend=self.url, backend_options={"prefix": self.prefix}) as client:
                return dict(await client.wait(workflow_id, timeout=PATIENCE))

        return asyncio.run(wait())

    def lease_holder(self, workflow_id: str) -> Any:
        async def read() -> Any:
            backend = open_backend(self.url, prefix=self.prefix)
            await backend.connect()
            try:
                return await backend.state_store.lease_holder(workflow_id)
            finally:
                await backend.close()

        return asyncio.run(read())

    def stop(self, name: str, sig: int) -> int:
        process = self.processes[name]
        process.send_signal(sig)
        return process.wait(timeout=60)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def deployment(redis_url: str, tmp_path: pathlib.Path) -> Iterator[Deployment]:
    deployment = Deployment(redis_url, tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_submitted_workflow_runs_to_its_end_and_sigterm_hands_it_over(deployment: Deployment) -> None:
    first = deployment.orchestrator("orch-a")
    held = deployment.submit("tides")
    wait_until(lambda: deployment.started("tides"), lambda: f"the held node never started\n{deployment.logs()}")
    assert f"taking over workflow {held!r}" in deployment.log("orch-a")

    # SIGTERM mid-step: a clean exit that releases the lease at once (no waiting for lease_ttl).
    assert deployment.stop("orch-a", signal.SIGTERM) == 0, deployment.log("orch-a")
    assert first.returncode == 0
    assert "stopped" in deployment.log("orch-a")
    assert deployment.lease_holder(held) is None
    status = json.loads(deployment.cli("status", held, "--json").stdout)
    assert status["status"] == "running", status

    # The next orchestrator takes it over; submitted workflows keep running to their end.
    deployment.orchestrator("orch-b")
    deployment.open_gate("tides")
    deployment.open_gate("moons")
    second = deployment.submit("moons")
    assert deployment.result(held)["text"] == "draft about tides, polished"
    assert deployment.result(second)["text"] == "draft about moons, polished"
    assert f"taking over workflow {held!r}" in deployment.log("orch-b")
    assert f"taking over workflow {second!r}" in deployment.log("orch-b")
    assert deployment.stop("orch-b", signal.SIGTERM) == 0, deployment.log("orch-b")


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_sighup_stops_the_orchestrator_cleanly_and_releases_its_lease(deployment: Deployment) -> None:
    """From an operations trial: SIGHUP (its terminal closed) ended the service at once, status
    129, its leases held until they expired. Now it stops as on SIGTERM."""
    deployment.orchestrator("orch-a")
    held = deployment.submit("hups")
    wait_until(lambda: deployment.started("hups"), lambda: f"the held node never started\n{deployment.logs()}")
    assert deployment.stop("orch-a", signal.SIGHUP) == 0, deployment.log("orch-a")
    assert "received SIGHUP: stopping" in deployment.log("orch-a")
    assert deployment.lease_holder(held) is None
    deployment.open_gate("hups")


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_a_second_orchestrator_takes_over_after_sigkill(deployment: Deployment) -> None:
    deployment.orchestrator("orch-a", "--lease-ttl", "2")
    workflow_id = deployment.submit("reefs")
    wait_until(lambda: deployment.started("reefs"), lambda: f"the held node never started\n{deployment.logs()}")
    assert deployment.stop("orch-a", signal.SIGKILL) == -signal.SIGKILL
    assert deployment.lease_holder(workflow_id) is not None  # left behind: only its expiry frees it

    deployment.orchestrator("orch-b")
    deployment.open_gate("reefs")
    assert deployment.result(workflow_id)["text"] == "draft about reefs, polished"
    assert f"taking over workflow {workflow_id!r}" in deployment.log("orch-b")


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _health_port(deployment: Deployment, name: str) -> int:
    found: list[str] = []

    def logged() -> bool:
        found[:] = re.findall(r"health endpoint on port (\d+)", deployment.log(name))
        return bool(found)

    wait_until(logged, lambda: f"{name} logged no health port\n{deployment.log(name)}")
    return int(found[0])


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_health_endpoints_of_worker_and_orchestrator(deployment: Deployment) -> None:
    deployment.orchestrator("orch-a", "--health-port", "0")
    orchestrator_port = _health_port(deployment, "orch-a")
    wait_until(lambda: _get(orchestrator_port, "/readyz")[0] == 200,
               lambda: f"{_get(orchestrator_port, '/readyz')}\n{deployment.log('orch-a')}")
    assert _get(orchestrator_port, "/livez") == (200, {"status": "ok"})
    status, body = _get(orchestrator_port, "/nowhere")
    assert status == 404 and "/readyz" in body["reason"]

    # Nothing serves the first step while the only worker is stopped: its task stays queued.
    # (Stopped once it serves: a SIGTERM before its handlers are installed would kill it.)
    wait_until(lambda: "serving" in deployment.log("worker"), lambda: deployment.log("worker"))
    assert deployment.stop("worker", signal.SIGTERM) == 0, deployment.log("worker")
    workflow_id = deployment.submit("waves")
    wait_until(lambda: _get(orchestrator_port, "/queues")[1].get("backlog") == 1,
               lambda: f"{_get(orchestrator_port, '/queues')}\n{deployment.logs()}")
    queues = _get(orchestrator_port, "/queues?node_types=draft")[1]
    assert queues["node_types"] == {"draft": {"queued": 1, "in_flight": 0, "dead": 0}}, queues
    assert queues["backlog"] == 1 and queues["queued"] == 1

    deployment.start("worker-2", "worker", "--app", "essayapp:graph", "--health-port", "0",
                     "--heartbeat-interval", "0.5")
    worker_port = _health_port(deployment, "worker-2")
    wait_until(lambda: _get(worker_port, "/readyz")[0] == 200,
               lambda: f"{_get(worker_port, '/readyz')}\n{deployment.log('worker-2')}")
    assert _get(worker_port, "/livez") == (200, {"status": "ok"})
    wait_until(lambda: deployment.started("waves"), lambda: deployment.logs())
    deployment.open_gate("waves")
    assert deployment.result(workflow_id)["text"] == "draft about waves, polished"
    assert deployment.stop("worker-2", signal.SIGTERM) == 0
    assert deployment.stop("orch-a", signal.SIGTERM) == 0


def test_orchestrator_refuses_bad_input_in_one_line(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "distributed_agents", "orchestrator", *argv],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)

    missing = run("--backend-url", "redis://127.0.0.1:1/0")
    assert missing.returncode == 2 and "--app MODULE:GRAPH" in missing.stderr, missing.stderr
    memory = run("--app", "nowhere:graph", "--backend-url", "memory://")
    assert memory.returncode == 2 and "nowhere" in memory.stderr, memory.stderr
    (tmp_path / "flows.py").write_text(APP.replace('os.environ["DA_MARKER_DIR"]', '"."'))
    memory = run("--app", "flows:graph", "--backend-url", "memory://")
    assert memory.returncode == 2 and "memory:// lives inside one process" in memory.stderr, memory.stderr
    port = run("--app", "flows:graph", "--backend-url", "redis://127.0.0.1:1/0", "--health-port", "70000")
    assert port.returncode == 2 and "0 to 65535" in port.stderr and "Traceback" not in port.stderr, port.stderr
    assert len(port.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:  # a port something else listens on: one line, exit status 2
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        for command in (["--app", "flows:graph"], []):
            argv = ["--backend-url", "redis://127.0.0.1:1/0", "--health-port", busy]
            done = (run(*command, *argv) if command else subprocess.run(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", "flows:graph", *argv],
                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60))
            assert done.returncode == 2, done.stderr
            assert f"cannot serve the health endpoint on port {busy}" in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_readiness_follows_the_backend_and_liveness_does_not(tmp_path: pathlib.Path) -> None:
    from support.redis_server import RedisServer

    with RedisServer() as server:
        # heartbeat_ttl 3 s: a worker's heartbeat is stale 3 s into an outage.
        deployment = Deployment(server.url + "?heartbeat_ttl=3", tmp_path)
        try:
            deployment.start("worker-h", "worker", "--app", "essayapp:graph", "--health-port", "0",
                             "--heartbeat-interval", "0.5")
            deployment.orchestrator("orch-h", "--health-port", "0")
            ports = {name: _health_port(deployment, name) for name in ("worker-h", "orch-h")}

            def all_ready(status: int) -> Callable[[], bool]:
                return lambda: all(_get(port, "/readyz")[0] == status for port in ports.values())

            def answers() -> str:
                return f"{ {n: _get(p, '/readyz') for n, p in ports.items()} }\n{deployment.logs()}"

            wait_until(all_ready(200), answers)
            server.stop()
            wait_until(all_ready(503), answers)
            for name, port in ports.items():
                assert _get(port, "/livez") == (200, {"status": "ok"}), name  # restarting would not help
            assert "heartbeat" in _get(ports["worker-h"], "/readyz")[1]["reason"]
            assert "unavailable" in _get(ports["orch-h"], "/readyz")[1]["reason"]
            server.start()
            wait_until(all_ready(200), answers)
            for name in ("worker-h", "orch-h"):
                assert deployment.stop(name, signal.SIGTERM) == 0, deployment.log(name)
        finally:
            deployment.close()


@pytest.mark.nats
@pytest.mark.timeout(300)
def test_on_nats_a_submitted_workflow_runs_to_its_end(nats_url: str, tmp_path: pathlib.Path) -> None:
    deployment = Deployment(nats_url, tmp_path)
    try:
        deployment.orchestrator("orch-n")
        deployment.open_gate("tides")
        workflow_id = deployment.submit("tides")
        assert deployment.result(workflow_id)["text"] == "draft about tides, polished"
        assert f"taking over workflow {workflow_id!r}" in deployment.log("orch-n")
        assert deployment.stop("orch-n", signal.SIGTERM) == 0, deployment.log("orch-n")
    finally:
        deployment.close()
