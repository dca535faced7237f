"""``--otel`` and ``--metrics-port`` on the ``orchestrator`` and ``worker`` commands, as real processes on Redis.

A client submits a workflow; the orchestrator process drives it, the worker process runs
its nodes. Both export their spans to stdout (``OTEL_TRACES_EXPORTER=console``): the
worker's node spans must be children of the orchestrator process's step spans, in one
trace. Both serve metrics: the orchestrator's count the run and the stored workflows by
status, the worker's the tasks.
"""

from __future__ import annotations

import json
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
from support.observability import console_spans, metrics_url, samples, value

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

APP = '''
from distributed_agents import Graph, State


def draft(state: State) -> dict:
    return {"text": f"draft about {state['topic']}"}


def polish(state: State) -> dict:
    return {"text": state["text"] + ", polished"}


graph = (Graph("observed").add_node("draft", draft).add_node("polish", polish).add_edge("draft", "polish")
         .set_entry_point("draft").set_finish_point("polish").compile())
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_LOG_FORMAT", "DA_APP",
             "NODE_TYPES", "DA_OTEL", "DA_METRICS_PORT", "LOG_LEVEL")


def test_orchestrator_and_worker_processes_share_one_trace_and_serve_metrics(redis_url: str,
                                                                           tmp_path: pathlib.Path) -> None:
    (tmp_path / "observedapp.py").write_text(APP)
    prefix = f"obs{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES and not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(tmp_path), OTEL_TRACES_EXPORTER="console", DA_METRICS_ADDR="127.0.0.1",
               DA_METRICS_INTERVAL="0.1")
    where = ["--backend-url", redis_url, "--prefix", prefix]
    processes: dict[str, subprocess.Popen[str]] = {}

    def start(name: str, *argv: str) -> None:
        with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", *argv, *where, "--otel", "--metrics-port", "0"],
                cwd=tmp_path, env=env, stdout=out, stderr=err, text=True)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "distributed_agents", *argv, *where], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=60)

    def errors() -> str:
        return "\n".join(f"--- {n}\n{(tmp_path / f'{n}.err').read_text()}" for n in processes)

    try:
        start("worker", "worker", "--app", "observedapp:graph", "--heartbeat-interval", "0.5")
        start("orchestrator", "orchestrator", "--app", "observedapp:graph", "--poll-interval", "0.2")
        orchestrator_metrics = metrics_url(tmp_path / "orchestrator.err", processes["orchestrator"])
        worker_metrics = metrics_url(tmp_path / "worker.err", processes["worker"])
        submitted = cli("submit", "observedapp:graph", "--input", json.dumps({"topic": "tides"}))
        assert submitted.returncode == 0, (submitted.stderr, errors())
        workflow_id = submitted.stdout.strip()
        deadline = time.monotonic() + 90
        while True:  # the orchestrator's workflow gauge is polled: wait for the poll that sees the end
            scraped = samples(urllib.request.urlopen(orchestrator_metrics, timeout=10).read().decode())
            if value(scraped, "distributed_agents_workflows", status="completed") == 1:
                break
            assert time.monotonic() < deadline, errors()
            time.sleep(0.1)
        status = cli("status", workflow_id, "--json")
        assert json.loads(status.stdout)["status"] == "completed", (status.stdout, status.stderr)
        worker_scraped = samples(urllib.request.urlopen(worker_metrics, timeout=10).read().decode())
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # spans are flushed as each exits
        codes = {name: process.wait(timeout=60) for name, process in processes.items()}
    assert codes == {"worker": 0, "orchestrator": 0}, errors()

    assert value(scraped, "distributed_agents_workflow_runs_total", graph="observed", status="completed") == 1
    assert value(scraped, "distributed_agents_workflows", status="running") == 0
    for node in ("draft", "polish"):
        assert value(worker_scraped, "distributed_agents_tasks_succeeded_total", node_type=node) == 1

    ours = console_spans((tmp_path / "orchestrator.out").read_text())
    theirs = console_spans((tmp_path / "worker.out").read_text())
    (run,) = [s for s in ours if s["name"] == "workflow observed"]
    assert run["attributes"]["distributed_agents.workflow.id"] == workflow_id
    steps = {s["attributes"]["distributed_agents.step"]: s for s in ours if s["name"] == "step observed"}
    assert sorted(steps) == [0, 1] and all(s["parent_id"] == run["context"]["span_id"] for s in steps.values())
    nodes: dict[str, dict[str, Any]] = {s["attributes"]["distributed_agents.node.name"]: s
                                        for s in theirs if s["name"].startswith("node ")}
    assert sorted(nodes) == ["draft", "polish"]
    for name, step in (("draft", 0), ("polish", 1)):
        assert nodes[name]["parent_id"] == steps[step]["context"]["span_id"]
        assert nodes[name]["context"]["trace_id"] == run["context"]["trace_id"]
    assert run["resource"]["attributes"]["service.name"] == "distributed-agents-orchestrator"
    assert nodes["draft"]["resource"]["attributes"]["service.name"] == "distributed-agents-worker"
