"""No password ever shows: workflows, CLI commands and failures with secret-bearing URLs, all output grepped.

A real Redis with an ACL user. A CLI worker logs in JSON at debug level; this process runs
and streams a workflow with every event mode and reads status, state and history; CLI
commands (status, list, history, workers, queues, run) print; connections fail (wrong
password, nothing listening). Then every captured byte (logs, stdout/stderr, events,
exceptions with their chained causes and tracebacks, reprs) and everything stored in Redis
is searched for each secret.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator

import pytest
from support import security_app
from support.aio import run
from support.secure_redis import SecureRedisServer
from support.server_process import free_port

from distributed_agents import Orchestrator, open_backend
from distributed_agents.core.errors import DistributedAgentsError

pytestmark = pytest.mark.timeout(120)

TESTS = pathlib.Path(__file__).resolve().parents[2]
PASSWORD = f"pw-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"
SECRETS = (PASSWORD, WRONG)


@pytest.fixture(scope="module")
def server() -> Iterator[SecureRedisServer]:
    rule = "allkeys allchannels +@all -@dangerous"
    with SecureRedisServer(acl=[f"user app on >{PASSWORD} {rule}"]) as redis:
        yield redis


def cli(*args: str, log_path: pathlib.Path | None = None) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "distributed_agents", "--log-format", "json", "--log-level", "debug", *args]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    if log_path is not None:
        with open(log_path, "w") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=TESTS)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=TESTS)


def described(exc: BaseException) -> str:
    """str, repr and the whole formatted traceback, chained causes included."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


def stored(server: SecureRedisServer) -> str:
    """Every key and value in the server, as text."""
    import redis

    client = redis.Redis.from_url(server.admin_url)
    try:
        dump = []
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                     "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                     "stream": lambda k: client.xrange(k)}[kind](key)
            dump.append(f"{key!r} {kind} {value!r}")
        return "\n".join(dump)
    finally:
        client.close()


def test_no_secret_appears_in_logs_output_events_errors_or_stored_records(
        server: SecureRedisServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"sec{uuid.uuid4().hex[:6]}"
    url = server.url_for("app", PASSWORD)
    wrong_url = server.url_for("app", WRONG)
    dead_url = f"redis://app:{PASSWORD}@127.0.0.1:{free_port()}/0"
    captured: list[str] = []
    caplog.set_level(logging.DEBUG)
    worker = cli("worker", "--app", "support.security_app:registry", "--backend-url", url, "--prefix", prefix,
                 "--worker-id", "w-secret", "--heartbeat-interval", "0.5", log_path=tmp_path / "worker.log")
    assert isinstance(worker, subprocess.Popen)
    try:
        async def in_process() -> str:
            async with Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True,
                                    worker_timeout=60) as orchestrator:
                chunks = [chunk async for chunk in orchestrator.astream(
                    security_app.graph, {"name": "ann"}, stream_mode=["updates", "values", "custom", "debug"])]
                captured.append(repr(chunks))
                listed = await orchestrator.list_workflows()
                workflow_id = listed[0].workflow_id
                captured.append(repr(listed))
                captured.append(repr(await orchestrator.get_workflow_status(workflow_id)))
                captured.append(repr(await orchestrator.get_state(workflow_id)))
                captured.append(repr(await orchestrator.get_state_history(workflow_id)))
                captured.append(repr(orchestrator) + repr(orchestrator.backend))
                try:
                    await orchestrator.get_state("no-such-workflow")
                except DistributedAgentsError as exc:
                    captured.append(described(exc))
                return workflow_id

        workflow_id = run(in_process(), 90)
        for bad in (wrong_url, dead_url):
            backend = open_backend(bad, prefix=prefix)

            async def fail() -> None:
                try:
                    await backend.connect()
                    await backend.state_store.get("x")
                finally:
                    await backend.close()

            with pytest.raises(DistributedAgentsError) as caught:
                run(fail(), 60)
            captured.append(described(caught.value))
        for command in (("status", workflow_id), ("list",), ("history", workflow_id), ("workers",), ("queues",),
                        ("run", "support.security_app:graph", "--input", '{"name": "bo"}')):
            done = cli(*command, "--backend-url", url, "--prefix", prefix)
            assert isinstance(done, subprocess.CompletedProcess)
            assert done.returncode == 0, done.stderr
            captured += [done.stdout, done.stderr]
        for bad in (wrong_url, dead_url, url + "?bogus=1"):
            done = cli("status", workflow_id, "--backend-url", bad, "--prefix", prefix)
            assert isinstance(done, subprocess.CompletedProcess)
            assert done.returncode != 0 and "error" in done.stderr, done.stderr
            captured += [done.stdout, done.stderr]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    worker_log = (tmp_path / "worker.log").read_text()
    assert '"message": "worker w-secret serving' in worker_log  # it did log, in JSON
    assert all(json.loads(line) for line in worker_log.splitlines() if line.startswith("{"))
    captured += [worker_log, caplog.text, "\n".join(described(r.exc_info[1]) for r in caplog.records
                                                    if r.exc_info and r.exc_info[1]), stored(server)]
    everything = "\n".join(captured)
    assert "app:***@" in everything  # the URLs were shown, masked
    for secret in SECRETS:
        assert secret not in everything, [chunk for chunk in captured if secret in chunk][0][-2000:]
