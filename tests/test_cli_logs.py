"""``--log-format json`` / ``DA_LOG_FORMAT``: one JSON object per log line, naming the task it is about.

A real ``distributed-agents worker`` process on the session's Redis runs a node that logs
through its own logger; its stderr must be JSON lines only, and the records emitted while
it ran the task carry workflow_id, step, node, task_id and attempt.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

APP = '''
import logging
from typing import Any
from distributed_agents import Graph, State


def draft(state: State) -> dict[str, Any]:
    logging.getLogger("logapp").info("drafting %s", state["topic"])
    return {"text": f"draft about {state['topic']}"}


graph = Graph("logged").add_node("draft", draft).set_entry_point("draft").set_finish_point("draft").compile()
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_LOG_FORMAT", "LOG_LEVEL",
             "DA_APP", "NODE_TYPES")


@pytest.fixture
def app_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "logapp.py").write_text(APP)
    return tmp_path


def _env(folder: pathlib.Path, **more: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return {**environment, "PYTHONPATH": str(folder), **more}


def cli(folder: pathlib.Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distributed_agents", *argv], capture_output=True, text=True,
                          cwd=folder, env=_env(folder, **env), timeout=60)


def test_a_worker_logs_json_lines_naming_the_task_it_ran(redis_url: str, app_dir: pathlib.Path) -> None:
    prefix = f"clilogs{uuid.uuid4().hex[:8]}"
    workflow_id = f"wf_logs_{uuid.uuid4().hex[:6]}"
    where = ["--backend-url", redis_url, "--prefix", prefix]
    with open(app_dir / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "logapp:graph", *where,
             "--log-format", "json", "--log-level", "info", "--heartbeat-interval", "0.5"],
            cwd=app_dir, env=_env(app_dir), stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            done = cli(app_dir, "run", "logapp:graph", "--input", '{"topic": "tides"}', "--workflow-id", workflow_id,
                       *where)
            assert done.returncode == 0, (done.stdout, done.stderr, (app_dir / "worker.log").read_text())
            assert json.loads(done.stdout)["values"]["text"] == "draft about tides"
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    text = (app_dir / "worker.log").read_text()
    records: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert records, "the worker logged nothing at info"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record
    (node_record,) = [r for r in records if r["logger"] == "logapp"]
    assert node_record["message"] == "drafting tides" and node_record["level"] == "INFO"
    assert (node_record["workflow_id"], node_record["step"], node_record["node"], node_record["attempt"]) == (
        workflow_id, 0, "draft", 1)
    task_id = node_record["task_id"]
    (done_record,) = [r for r in records if r["logger"] == "distributed_agents.worker" and " done in " in r["message"]]
    assert (done_record["workflow_id"], done_record["node"], done_record["task_id"], done_record["attempt"]) == (
        workflow_id, "draft", task_id, 1)
    outside = [r for r in records if "task_id" not in r]
    assert outside and all("workflow_id" not in r for r in outside)  # start/stop lines name no task


def test_the_environment_variable_selects_json_for_a_local_run(app_dir: pathlib.Path) -> None:
    done = cli(app_dir, "run", "logapp:graph", "--input", '{"topic": "ice"}', "--workflow-id", "wf_env_json",
               "--backend-url", "memory://", "--log-level", "info", DA_LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (record,) = [r for r in logged if r["logger"] == "logapp"]
    assert (record["workflow_id"], record["node"], record["attempt"]) == ("wf_env_json", "draft", 1)
    assert record["task_id"]


def test_the_text_format_stays_the_default_and_names_the_node_compactly(app_dir: pathlib.Path) -> None:
    done = cli(app_dir, "run", "logapp:graph", "--input", '{"topic": "ice"}', "--workflow-id", "wf_text",
               "--backend-url", "memory://", "--log-level", "info")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "drafting ice" in line]
    assert " INFO logapp: [wf=wf_text step=0 node=draft task=" in line and " attempt=1] drafting ice" in line


@pytest.mark.parametrize("argv, env", [
    (["worker", "--log-format", "xml"], {}),
    (["--log-format=xml", "backends"], {}),
    (["backends"], {"DA_LOG_FORMAT": "xml"}),
])
def test_an_invalid_log_format_is_a_one_line_usage_error(app_dir: pathlib.Path, argv: list[str],
                                                         env: dict[str, str]) -> None:
    done = cli(app_dir, *argv, **env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "'xml' is not a log format; use one of text, json" in line
    if env:
        assert "DA_LOG_FORMAT='xml'" in line
