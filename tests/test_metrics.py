"""Prometheus metrics scraped from a real worker process on Redis (``worker --metrics-port``).

Workflows run from this process: one whose node fails once and then succeeds, one whose
node fails every attempt (dead-lettered). The worker's ``/metrics`` must count the
attempts by outcome, time them, show the dead letter on its queue gauge and nothing in
progress; the orchestrator's own ``Metrics`` counts the runs and the stored workflows.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import pytest
from support.observability import metrics_url, samples, value

from distributed_agents import Orchestrator
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.metrics import Metrics

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

APP = '''
from typing import Any
from distributed_agents import Graph, NodeContext, RetryPolicy, State


def work(state: State, context: NodeContext) -> dict[str, Any]:
    if state["mode"] == "broken" or context.attempt == 1:
        raise RuntimeError(f"attempt {context.attempt} failed")
    return {"done": True}


graph = (Graph("measured").add_node("work", work, retry=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False, retry_on=Exception))
         .set_entry_point("work").set_finish_point("work").compile())
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_LOG_FORMAT", "DA_APP",
             "NODE_TYPES", "DA_OTEL", "DA_METRICS_PORT", "LOG_LEVEL")


def _load_app(folder: pathlib.Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"measuredapp_{uuid.uuid4().hex[:6]}", folder / "measuredapp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_serves_task_counts_durations_and_queue_depths(redis_url: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "measuredapp.py").write_text(APP)
    prefix = f"prom{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(PYTHONPATH=str(tmp_path), DA_METRICS_ADDR="127.0.0.1", DA_METRICS_INTERVAL="0.1",
               DA_METRICS_PORT="0")  # the port from the environment, as a container would set it
    graph = _load_app(tmp_path).graph
    ours = Metrics(poll_interval=0.1)
    url = f"{redis_url}?prefix={prefix}"

    async def drive() -> None:
        async with Orchestrator(backend=url, local_nodes=False, wait_for_workers=True,
                                instrumentation=ours) as orchestrator:
            assert (await orchestrator.execute(graph, {"mode": "flaky"}))["done"] is True
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(graph, {"mode": "broken"})
            await ours.poll(orchestrator.backend)

    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "measuredapp:graph", "--backend-url",
             redis_url, "--prefix", prefix, "--heartbeat-interval", "0.5"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            served = metrics_url(log, worker)
            try:  # bounded, so a stuck run fails with the worker's log rather than the test's timeout
                asyncio.run(asyncio.wait_for(drive(), 90))
            except asyncio.TimeoutError:
                raise AssertionError(f"the workflows did not finish; worker log:\n{log.read_text()}") from None
            # The queue gauges are polled: wait for the poll that sees the dead letter.
            deadline = time.monotonic() + 60
            while True:
                scraped = samples(urllib.request.urlopen(served, timeout=10).read().decode())
                dead = value(scraped, "distributed_agents_queue_tasks", node_type="work", state="dead_lettered")
                if dead == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    assert worker.returncode == 0, log.read_text()

    def count(name: str, **labels: str) -> float | None:
        return value(scraped, name, node_type="work", **labels)

    # flaky: attempt 1 retried, attempt 2 succeeded; broken: attempt 1 retried, attempt 2 dead-lettered.
    assert count("distributed_agents_tasks_started_total") == 4
    assert count("distributed_agents_tasks_succeeded_total") == 1
    assert count("distributed_agents_tasks_failed_total") == 3
    assert count("distributed_agents_tasks_retried_total") == 2
    assert count("distributed_agents_tasks_dead_lettered_total") == 1
    assert count("distributed_agents_tasks_in_progress") == 0
    assert count("distributed_agents_node_duration_seconds_count", outcome="retried") == 2
    assert count("distributed_agents_node_duration_seconds_count", outcome="succeeded") == 1
    assert count("distributed_agents_node_duration_seconds_count", outcome="dead_lettered") == 1
    assert count("distributed_agents_node_duration_seconds_bucket", outcome="retried", le="+Inf") == 2
    assert (count("distributed_agents_node_duration_seconds_sum", outcome="succeeded") or -1) >= 0
    assert count("distributed_agents_queue_tasks", state="dead_lettered") == 1
    assert count("distributed_agents_queue_tasks", state="queued") == 0
    assert count("distributed_agents_queue_tasks", state="in_flight") == 0
    assert value(scraped, "process_cpu_seconds_total") is not None  # the process collectors are there too

    # The orchestrator side: its runs by status, and the stored workflows by status.
    mine = samples(ours.text())
    assert value(mine, "distributed_agents_workflow_runs_total", graph="measured", status="completed") == 1
    assert value(mine, "distributed_agents_workflow_runs_total", graph="measured", status="failed") == 1
    assert value(mine, "distributed_agents_workflow_runs_in_progress", graph="measured") == 0
    assert value(mine, "distributed_agents_workflows", status="completed") == 1
    assert value(mine, "distributed_agents_workflows", status="failed") == 1
    assert value(mine, "distributed_agents_workflows", status="running") == 0
    assert value(mine, "distributed_agents_queue_tasks", node_type="work", state="dead_lettered") == 1
    assert value(mine, "distributed_agents_tasks_started_total", node_type="work") is None  # none ran here


def test_a_bad_metrics_port_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "measuredapp.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(PYTHONPATH=str(tmp_path), DA_METRICS_PORT="nine")
    done = subprocess.run([sys.executable, "-m", "distributed_agents", "worker", "--app", "measuredapp:graph",
                           "--backend-url", "redis://127.0.0.1:1/0"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "DA_METRICS_PORT" in done.stderr and "port" in done.stderr, done.stderr
