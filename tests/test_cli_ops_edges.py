"""Edges of the operator CLI as subprocesses against a real Redis (and NATS where it is the point).

``--input`` that is JSON but not an object is one line with exit status 2; a read command
whose stdout reader goes away (``| head``) stops quietly with status 141; the text
``status ID`` of a failed workflow shows the node's traceback; a ``redis://`` URL pointed
at a NATS server is one clean line, not the server's raw greeting.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
from hypothesis import given, strategies as st

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.cli_client import parse_input_state

APP = '''
from typing import Any
from distributed_agents import Graph, State


def step(state: State) -> dict[str, Any]:
    return {"text": "done"}


def boom(state: State) -> dict[str, Any]:
    raise ValueError("the model said no")


graph = Graph("edges").add_node("step", step).set_entry_point("step").set_finish_point("step").compile()
failing = Graph("edges_failing").add_node("boom", boom).set_entry_point("boom").set_finish_point("boom").compile()
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_INPUT", "DA_WORKFLOW_ID")


@pytest.fixture
def app(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "edgeapp.py").write_text(APP)
    return tmp_path


def _env(folder: pathlib.Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in ENV_NAMES}, "PYTHONPATH": str(folder)}


def _cli(folder: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distributed_agents", *argv], capture_output=True, text=True,
                          cwd=folder, env=_env(folder), timeout=60)


def _one_line_usage_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distributed-agents: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("text", ["[1,2]", '"x"', "null"])
def test_submit_with_input_that_is_not_an_object_is_one_line(app: pathlib.Path, redis_url: str, text: str) -> None:
    done = _cli(app, "submit", "edgeapp:graph", "--input", text, "--backend-url", redis_url,
                "--prefix", f"edges{uuid.uuid4().hex[:8]}")
    _one_line_usage_error(done, "--input must be a JSON object", text)


def test_run_with_input_that_is_not_an_object_is_one_line(app: pathlib.Path) -> None:
    done = _cli(app, "run", "edgeapp:graph", "--input", "7", "--backend-url", "memory://")
    _one_line_usage_error(done, "--input must be a JSON object")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=5))
def test_parse_input_state_refuses_every_json_value_that_is_not_an_object(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="--input must be a JSON object"):
        parse_input_state(json.dumps(value))


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4))
def test_parse_input_state_keeps_every_object(value: dict[str, Any]) -> None:
    assert parse_input_state(json.dumps(value)) == value


def _with_closed_stdout(folder: pathlib.Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a stdout pipe whose reader has gone (as ``| head`` does once it has its lines)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write to stdout meets EPIPE
    try:
        return subprocess.run([sys.executable, "-m", "distributed_agents", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=folder, env=_env(folder), timeout=60)
    finally:
        os.close(write_end)


def test_read_commands_into_a_closed_pipe_stop_quietly(app: pathlib.Path, redis_url: str) -> None:
    where = ["--backend-url", redis_url, "--prefix", f"edges{uuid.uuid4().hex[:8]}"]
    submitted = _cli(app, "submit", "edgeapp:graph", "--input", '{"topic": "x"}', *where)
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = submitted.stdout.strip()
    for argv in (["list", "--json", *where], ["status", workflow_id, *where], ["backends"]):
        done = _with_closed_stdout(app, *argv)
        assert done.returncode == 141, (argv, done.stderr)
        assert done.stderr == "", (argv, done.stderr)  # no BrokenPipeError traceback, no "Exception ignored"


def test_text_status_of_a_failed_workflow_shows_the_traceback(app: pathlib.Path, redis_url: str) -> None:
    where = ["--backend-url", redis_url, "--prefix", f"edges{uuid.uuid4().hex[:8]}"]
    workflow_id = f"wf_edges_{uuid.uuid4().hex[:8]}"
    ran = _cli(app, "run", "edgeapp:failing", "--local-nodes", "--workflow-id", workflow_id, *where)
    assert ran.returncode == 1 and f"status {workflow_id}" in ran.stderr, ran.stderr
    shown = _cli(app, "status", workflow_id, *where)
    assert shown.returncode == 0, shown.stderr
    assert "status:    failed" in shown.stdout
    assert "traceback:" in shown.stdout and "Traceback (most recent call last)" in shown.stdout, shown.stdout
    assert 'raise ValueError("the model said no")' in shown.stdout
    as_json = json.loads(_cli(app, "status", workflow_id, "--json", *where).stdout)
    assert as_json["error"]["traceback"].strip().splitlines()[-1] in shown.stdout


def test_a_redis_url_at_a_nats_port_is_one_clean_line(app: pathlib.Path, nats_url: str) -> None:
    address = nats_url.split("://", 1)[1].rstrip("/")
    done = _cli(app, "status", "wf_x", "--backend-url", f"redis://user:s3cret@{address}/0")
    _one_line_usage_error(done, f"the server at {address}", "did not answer as Redis", "NATS", f"nats://{address}")
    assert "server_id" not in done.stderr and "INFO" not in done.stderr and "s3cret" not in done.stderr
