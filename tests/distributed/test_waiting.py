"""Waiting for a worker is logged and visible from any process; in-process backends are refused.

A workflow whose node type has no live worker logs a warning naming the type when the
wait starts and again while it lasts, and its status says "waiting for a worker of type
X" to every process that reads the backend (a second orchestrator, a separate Python
process), until a worker comes and the step commits. ``memory://`` is refused by
``DistributedOrchestrator``, ``DistributedWorker`` and the CLI worker, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.errors import ConfigurationError, WorkflowNotFoundError
from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

pytestmark = pytest.mark.timeout(90)

WAITING = "waiting for a worker of type 'writer'"


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"wait{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def chain() -> Graph:
    graph = Graph("waits").add_node("draft").add_node("writer")
    return graph.set_entry_point("draft").add_edge("draft", "writer").set_finish_point("writer").compile()


STATUS_SCRIPT = """
import asyncio, sys
from distributed_agents import Orchestrator

async def main():
    orchestrator = Orchestrator(backend=sys.argv[1])
    status = await orchestrator.get_workflow_status(sys.argv[2])
    print(status.waiting_for)
    await orchestrator.close()

asyncio.run(main())
"""


def status_from_another_process(url: str, workflow_id: str) -> str:
    done = subprocess.run([sys.executable, "-c", STATUS_SCRIPT, url, workflow_id], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_waiting_for_a_worker_is_logged_and_visible_from_any_process(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    drafter = Worker(backend=url, node_types={"draft"}, poll_wait=0.1)
    drafter.register_node("draft", lambda s: {"draft": "d"})
    writer = Worker(backend=url, node_types={"writer"}, poll_wait=0.1)
    writer.register_node("writer", lambda s: {"text": s["draft"] + "!"})

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False)
        orchestrator.waiting_log_interval = 0.2
        observer = Orchestrator(backend=url)  # another orchestrator: sees only what is stored
        serving = [asyncio.ensure_future(drafter.start())]
        try:
            running = asyncio.ensure_future(orchestrator.execute(chain(), {}, workflow_id="wf-waits"))
            seen: Any = None
            for _ in range(400):
                await asyncio.sleep(0.05)
                with contextlib.suppress(WorkflowNotFoundError):  # not created yet
                    seen = (await orchestrator.get_workflow_status("wf-waits")).step
                if seen == 1:
                    seen = (await observer.get_workflow_status("wf-waits")).waiting_for
                    if seen:
                        break
            elsewhere = None
            if not url.startswith("memory") and not os.environ.get("SKIPX"):
                elsewhere = await asyncio.to_thread(status_from_another_process, url, "wf-waits")
            while sum("still waiting" in r.getMessage() for r in caplog.records) < 2:
                await asyncio.sleep(0.05)
            serving.append(asyncio.ensure_future(writer.start()))
            result = await running
            after = await observer.get_workflow_status("wf-waits")
            return seen, elsewhere, result, after
        finally:
            await drafter.stop(grace=1)
            await writer.stop(grace=1)
            await asyncio.gather(*serving)
            await orchestrator.close()
            await observer.close()

    with caplog.at_level(logging.INFO, logger="distributed_agents.orchestrator"):
        seen, elsewhere, result, after = run(scenario(), timeout=80)
    assert seen == WAITING
    assert elsewhere in (None, WAITING)
    if not url.startswith("memory"):
        assert elsewhere == WAITING
    assert result["text"] == "d!"
    assert after.status == "completed" and after.waiting_for is None
    messages = [r.getMessage() for r in caplog.records if r.name == "distributed_agents.orchestrator"]
    started = [m for m in messages if "no live worker serves node type(s) 'writer'" in m]
    assert len(started) == 1 and "--node-types writer" in started[0]
    assert "on key prefix " in started[0]  # (a worker of another --prefix is not seen)
    assert any("done waiting" in m and "'writer'" in m for m in messages)


def test_the_waiting_note_ends_when_a_worker_arrives_even_before_the_step_commits(url: str) -> None:
    """The stored note is removed as soon as a worker serves the type, not only at the next commit."""
    writer = Worker(backend=url, node_types={"writer"}, poll_wait=0.1)

    async def scenario() -> Any:
        release = asyncio.Event()
        started = asyncio.Event()

        async def slow_writer(state: Any) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {"text": "w"}

        writer.register_node("writer", slow_writer)
        graph = Graph("w").add_node("writer").set_entry_point("writer").set_finish_point("writer").compile()
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False)
        observer = Orchestrator(backend=url)
        serving = None
        try:
            running = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="wf-note"))
            while True:
                with contextlib.suppress(WorkflowNotFoundError):  # not created yet
                    if (await observer.get_workflow_status("wf-note")).waiting_for:
                        break
                await asyncio.sleep(0.05)
            serving = asyncio.ensure_future(writer.start())
            await started.wait()
            while (await observer.get_workflow_status("wf-note")).waiting_for is not None:
                await asyncio.sleep(0.05)
            during = await observer.get_workflow_status("wf-note")
            release.set()
            return during, await running
        finally:
            release.set()
            await writer.stop(grace=1)
            if serving is not None:
                await serving
            await orchestrator.close()
            await observer.close()

    during, result = run(scenario(), timeout=60)
    assert during.status == "running" and during.step == 0 and during.waiting_for is None
    assert result["text"] == "w"


def test_memory_backend_is_refused_where_other_processes_could_never_see_it() -> None:
    for build in (lambda: DistributedOrchestrator(backend_url="memory://"),
                  lambda: DistributedWorker(backend_url="memory://", node_types={"x"})):
        with pytest.raises(ConfigurationError) as caught:
            build()
        message = str(caught.value)
        assert "'memory://'" in message and "inside one process" in message
        assert "redis://" in message and "nats://" in message and "local Orchestrator" in message
    here = pathlib.Path(__file__).resolve().parent
    cli = subprocess.run(
        [sys.executable, "-m", "distributed_agents", "worker", "--app", "crash_app:registry", "--backend-url",
         "memory://"],
        capture_output=True, text=True, timeout=60, cwd=here, env={**os.environ, "PYTHONPATH": str(here)},
    )
    assert cli.returncode == 2, cli.stderr
    (line,) = cli.stderr.strip().splitlines()
    assert "cannot use" in line and "'memory://'" in line and "one process" in line and "redis://" in line
