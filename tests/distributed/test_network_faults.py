"""Network faults between real processes and the server, through a loopback fault proxy.

Worker processes (the ``distributed-agents worker`` CLI) and orchestrators reach Redis or
NATS through ``support.fault_proxy.FaultProxy``, which stalls, resets or half-opens
their connections and adds latency:

- a worker stalled longer than its lease loses the task: its late ack is refused, the
  task runs again on another worker, the workflow's result is the fault-free one, and
  the node's side effect, recorded through its idempotency key, shows a re-run that
  found it already done (not a second commit);
- reset connections are re-made and the run goes on;
- half-open connections (nothing forwarded, nothing closed) do not hang any process:
  timeouts and keepalives (docs/durability.md, "Network faults") notice them.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.aio import run
from support.fault_proxy import FaultProxy

from distributed_agents import Graph
from distributed_agents.distributed import DistributedOrchestrator

HERE = pathlib.Path(__file__).resolve().parent
LEASE = 1.5
EXPECTED = {"query": "q", "prepared": "prepared q", "effect": "charged prepared q",
            "report": "report on charged prepared q"}
# Short liveness settings for the proxied clients, so a dead connection shows in seconds
# (the defaults, in docs/durability.md, are minutes-safe for production).
FAST_DETECT = {"redis": "?socket_timeout=3&health_check_interval=1",
               "nats": "?ping_interval=1&max_outstanding_pings=2"}


class Server:
    """The session's server of one backend and how to reach it directly or through a proxy."""

    def __init__(self, kind: str, port: int, url: str) -> None:
        self.kind, self.port, self.url = kind, port, url

    def proxied(self, proxy: FaultProxy, fast: bool = True) -> str:
        suffix = "/0" if self.kind == "redis" else ""
        return proxy.url(self.kind, suffix + (FAST_DETECT[self.kind] if fast else ""))


@pytest.fixture(params=["redis", "nats"])
def server(request: pytest.FixtureRequest) -> Server:
    process = request.getfixturevalue(f"{request.param}_server")
    return Server(request.param, process.port, process.url)


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as p:
        yield p


def graph() -> Graph:
    g = Graph("network_workflow")
    g.add_node("prepare").add_node("effect").add_node("finish")
    g.set_entry_point("prepare").add_edge("prepare", "effect").add_edge("effect", "finish").set_finish_point("finish")
    return g.compile()


class Workers:
    """Worker processes serving ``network_app``; killed at the end."""

    def __init__(self, prefix: str, tmp: pathlib.Path) -> None:
        self.prefix, self.tmp = prefix, tmp
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self, worker_id: str, url: str, *, wait_for: str = "") -> subprocess.Popen[str]:
        env = {**os.environ, "DA_MARKER_DIR": str(self.markers), "DA_WAIT_FOR": wait_for, "PYTHONPATH": str(HERE)}
        with open(self.tmp / f"{worker_id}.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", "network_app:registry",
                 "--backend-url", url, "--prefix", self.prefix, "--worker-id", worker_id,
                 "--visibility-timeout", str(LEASE), "--heartbeat-interval", "0.5", "--shutdown-grace", "2"],
                cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.processes[worker_id] = process
        return process

    def log(self, worker_id: str) -> str:
        return (self.tmp / f"{worker_id}.log").read_text()

    def effects(self) -> list[list[str]]:
        path = self.markers / "effects.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: pathlib.Path) -> Iterator[Workers]:
    w = Workers(f"net{uuid.uuid4().hex[:8]}", tmp_path)
    try:
        yield w
    finally:
        w.close()


async def wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
def test_a_worker_stalled_past_its_lease_has_its_late_ack_refused_and_the_task_runs_again(
    server: Server, proxy: FaultProxy, workers: Workers
) -> None:
    # The stalled worker reaches the server through the proxy with default settings: a
    # stall shorter than its timeouts must not lose its connection, only its lease.
    stalled = workers.start("stalled", server.proxied(proxy, fast=False), wait_for="go")
    orchestrator = DistributedOrchestrator(backend_url=server.url, prefix=workers.prefix,
                                           visibility_timeout=LEASE, worker_timeout=120)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        running = asyncio.ensure_future(orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{workers.prefix}-1"))
        await wait_for(lambda: (workers.markers / "stalled.attempt1").exists(), "the stalled worker to run the node")
        proxy.stall()
        (workers.markers / "go").touch()  # the node does its side effect, then its ack hangs in the stall
        await wait_for(lambda: len(workers.effects()) == 1, "the first attempt's side effect")
        workers.start("rescuer", server.url)  # claims the task once the stalled worker's lease ran out
        faulted = dict(await asyncio.wait_for(running, 90))
        proxy.resume()  # the stalled worker's ack (or lease extension) now reaches the server, late
        await wait_for(lambda: "lease lost" in workers.log("stalled"), "the stalled worker to learn its lease was lost")
        workers.processes["rescuer"].kill()
        # The stalled worker still serves: the next workflow runs on it alone.
        again = dict(await asyncio.wait_for(
            orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{workers.prefix}-2"), 90))
        await orchestrator.close()
        return faulted, again

    try:
        faulted, again = run(scenario(), timeout=170)
    finally:
        proxy.resume()
    assert faulted == again == EXPECTED
    assert stalled.poll() is None, workers.log("stalled")
    effects = workers.effects()
    first_run = [e for e in effects if e[0] in ("stalled", "rescuer")][:2]
    # Same idempotency key on both attempts: applied once by the stalled worker, found
    # already done by the re-run; the second workflow's task has its own key.
    assert [(e[0], e[3]) for e in first_run] == [("stalled", "applied"), ("rescuer", "already")], effects
    assert first_run[0][1] == first_run[1][1]
    assert first_run[1][2] == "2"  # the re-run is the task's second attempt
    assert len(effects) == 3 and effects[2][0] == "stalled" and effects[2][3] == "applied", effects
    assert effects[2][1] != first_run[0][1]
    assert len(list((workers.markers / "effects").iterdir())) == 2  # one commit per task, not per attempt
    # The late settle was the ack (the node had finished), refused by the server.
    assert "lease lost before settling" in workers.log("stalled"), workers.log("stalled")


def _done_subscribers(server: Server, prefix: str) -> int:
    """Redis: how many connections are subscribed to the queue's done channel (the notifiers' pub/sub)."""
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return int(dict(client.pubsub_numsub(f"{prefix}:q:ev:done"))[f"{prefix}:q:ev:done".encode()])
    finally:
        client.close()


def _fault_mid_node(server: Server, proxy: FaultProxy, workers: Workers, fault: str) -> tuple[dict[str, Any], int]:
    """Worker and orchestrator through the proxy; ``fault`` hits every connection while the node runs.

    On Redis, after a half-open fault, also waits until the notifiers' pub/sub readers
    noticed their dead connections and subscribed again on new ones.
    """
    proxy.latency = 0.005
    url = server.proxied(proxy)
    workers.start("w1", url, wait_for="go")
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=workers.prefix, visibility_timeout=LEASE,
                                           worker_timeout=120)

    async def scenario() -> tuple[dict[str, Any], int]:
        running = asyncio.ensure_future(orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{workers.prefix}-1"))
        await wait_for(lambda: (workers.markers / "w1.attempt1").exists(), "the worker to run the node")
        subscribed = _done_subscribers(server, workers.prefix) if server.kind == "redis" else 0
        hit = proxy.reset() if fault == "reset" else proxy.half_open()
        (workers.markers / "go").touch()
        result = dict(await asyncio.wait_for(running, 90))
        if server.kind == "redis" and fault == "half-open":
            # The dead connections still count at the server (the proxy holds them open):
            # the readers' new ones come on top.
            await wait_for(lambda: _done_subscribers(server, workers.prefix) > subscribed,
                           "the queue notifier to resubscribe on a new connection")
        await orchestrator.close()
        return result, hit

    return run(scenario(), timeout=120)


@pytest.mark.timeout(150)
def test_reset_connections_are_remade_and_the_run_goes_on(server: Server, proxy: FaultProxy, workers: Workers) -> None:
    before = proxy.connections
    result, hit = _fault_mid_node(server, proxy, workers, "reset")
    assert hit > 0  # the worker's and the orchestrator's connections were open, and were reset
    assert result == EXPECTED
    assert proxy.connections > before + hit - 1  # new connections replaced the reset ones
    assert workers.processes["w1"].poll() is None, workers.log("w1")


@pytest.mark.timeout(150)
def test_half_open_connections_do_not_hang_any_process(server: Server, proxy: FaultProxy, workers: Workers) -> None:
    result, hit = _fault_mid_node(server, proxy, workers, "half-open")
    assert hit > 0
    # Only timeouts and keepalives can tell a silent connection from a quiet one: the run
    # finishing shows the worker and the orchestrator noticed and connected again.
    assert result == EXPECTED
    assert workers.processes["w1"].poll() is None, workers.log("w1")
