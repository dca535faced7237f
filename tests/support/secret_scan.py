"""Run workflows, CLI commands and failing connections with secret-bearing URLs; return all they printed.

``exercise(url, bad_urls, prefix, tmp_path)`` starts a CLI worker (JSON log, debug level)
serving ``support.security_app``, streams a workflow from this process with every stream
mode and reads its status, state and history, runs the CLI's ``status`` and ``run``
commands, then connects in this process to each of ``bad_urls`` (a wrong
password, nothing listening, ...) and with the CLI to the first, which must fail. It returns
every text produced: the worker's log, CLI stdout/stderr, stream chunks, reprs, and each
exception's message, repr and formatted traceback with its chained causes. The caller adds
what the backend stores and the captured log records, and greps it all for its secrets.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import traceback

from support import security_app
from support.aio import run

from distributed_agents import Orchestrator, open_backend
from distributed_agents.core.errors import DistributedAgentsError

__all__ = ["described", "exercise"]

TESTS = pathlib.Path(__file__).resolve().parents[1]


def described(exc: BaseException) -> str:
    """str, repr and the whole formatted traceback, chained causes included."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


def _cli(*args: str) -> list[str]:
    command = [sys.executable, "-m", "distributed_agents", "--log-format", "json", "--log-level", "debug", *args]
    return command


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TESTS)}


def exercise(url: str, bad_urls: list[str], prefix: str, tmp_path: pathlib.Path) -> list[str]:
    """See the module docstring; asserts that good calls succeed and bad ones fail."""
    captured: list[str] = []
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            _cli("worker", "--app", "support.security_app:registry", "--backend-url", url, "--prefix", prefix,
                 "--worker-id", "w-secret", "--heartbeat-interval", "0.5"),
            stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=TESTS)
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
        for bad in bad_urls:
            async def fail(bad: str = bad) -> None:
                backend = open_backend(bad, prefix=prefix)
                try:
                    await backend.connect()
                    await backend.state_store.get("x")
                finally:
                    await backend.close()

            try:
                run(fail(), 60)
            except DistributedAgentsError as exc:
                captured.append(described(exc))
            else:
                raise AssertionError(f"connecting to a bad URL ({len(captured)}) did not fail")
        # Each CLI process costs a second or more: status and run print what list and history would.
        for command in (("status", workflow_id), ("run", "support.security_app:graph", "--input", '{"name": "bo"}')):
            done = subprocess.run(_cli(*command, "--backend-url", url, "--prefix", prefix), capture_output=True,
                                  text=True, timeout=60, env=_env(), cwd=TESTS)
            assert done.returncode == 0, done.stderr
            captured += [done.stdout, done.stderr]
        for bad in bad_urls[:1]:  # the first (a wrong password); the others failed in this process above
            done = subprocess.run(_cli("status", workflow_id, "--backend-url", bad, "--prefix", prefix),
                                  capture_output=True, text=True, timeout=60, env=_env(), cwd=TESTS)
            assert done.returncode != 0 and "error" in done.stderr, done.stderr
            captured += [done.stdout, done.stderr]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    worker_log = log_path.read_text()
    assert '"message": "worker w-secret serving' in worker_log, worker_log[-2000:]  # it did log, in JSON
    assert all(json.loads(line) for line in worker_log.splitlines() if line.startswith("{"))
    captured.append(worker_log)
    return captured
