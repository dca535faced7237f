"""``on_error`` on Redis and NATS: the failing node and its handler run on a real worker process.

The handler's task payload carries the error, so the worker running it needs nothing
else; a failing handler fails the workflow naming both nodes.
"""

from __future__ import annotations

import pathlib
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


def error_handler_app() -> ModuleType:
    return load_test_app("error_handler_app")


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_workers_final_failure_runs_the_handler_on_a_worker(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"onerr{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    app = error_handler_app()

    async def scenario() -> Any:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            result = await orchestrator.execute(app.error_graph(), {"url": "http://x"}, workflow_id="wf-onerr")
            with pytest.raises(NodeExecutionError) as failed:
                await orchestrator.execute(app.error_graph("bad_recover"), {"url": "http://y"},
                                           workflow_id="wf-onerr-bad")
            status = await orchestrator.get_workflow_status("wf-onerr-bad")
            return result, failed.value, status
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        result, error, status = run(scenario(), timeout=110)
        listed = workers.cli("dead-letters", "list")
        requeued = workers.cli("dead-letters", "requeue", "wf-onerr:0:0:fetch")
    finally:
        workers.close()
    # The handled failure stays dead-lettered as a record; re-driving it is refused, the workflow moved on.
    assert '"task_id": "wf-onerr:0:0:fetch"' in listed.stdout
    assert requeued.returncode != 0 and "workflow 'wf-onerr' completed" in requeued.stderr
    assert result["handled"] == "fetch: ConnectionError: upstream http://x is down (2 attempts)"
    assert result["input"] == {"url": "http://x"} and result["handled_on"] == "w1"
    assert len(list(tmp_path.glob("fetch-*"))) == 4  # 2 attempts in each workflow, on the worker
    assert error.node == "handler" and "error handler 'handler' of node 'fetch'" in str(error)
    assert "ValueError: cannot recover" in str(error)
    assert status.error is not None and status.error["handles"] == "fetch"


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_the_pending_handler_task_is_committed_and_another_orchestrator_runs_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"onerrre{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    app = error_handler_app()

    async def scenario() -> Any:
        first = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:  # stops right after the step whose failure was routed: the handler is pending
            await first.execute(app.error_graph(), {"url": "http://z"}, workflow_id="wf-onerr-restart",
                                interrupt_before=["handler"])
            (checkpoint,) = await first.backend.state_store.list_checkpoints("wf-onerr-restart", limit=1)
        finally:
            await first.close()
        second = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            second.register_graph(app.error_graph())
            return checkpoint, await second.resume("wf-onerr-restart")
        finally:
            await second.close()

    workers.start("w1")
    try:
        checkpoint, result = run(scenario(), timeout=110)
    finally:
        workers.close()
    (send,) = checkpoint.frontier["sends"]
    assert send["node"] == "handler" and send["handles"] == "fetch"
    assert result["handled"] == "fetch: ConnectionError: upstream http://z is down (2 attempts)"
    assert len(list(tmp_path.glob("fetch-*"))) == 2  # the failed node did not run again
