"""Worker processes serving a LangGraph-style graph's own functions (``--app module:graph``)."""

from __future__ import annotations

import pathlib
import time
import uuid

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


def test_a_worker_process_started_on_a_graph_serves_its_nodes_and_its_subgraphs_nodes(
        redis_url: str, tmp_path: pathlib.Path) -> None:
    app = load_test_app("lg_graph_app").app
    prefix = f"lgapp{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "lg_graph_app:app")

    async def scenario() -> dict[str, str]:
        orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix)
        try:
            await orchestrator.connect()
            return dict(await orchestrator.execute(app, {"q": "x"}))
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        result = run(scenario(), timeout=100)
        # A worker logs "done" after its ack, which the orchestrator may see first: the
        # workers are killed only once the lines are there (or after 20 s).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "node 'check' done" not in workers.log("w1"):
            time.sleep(0.05)
    finally:
        workers.close()
    assert result == {"q": "x", "a": "answer to x", "checked": "ANSWER TO X"}
    log = workers.log("w1")
    assert "node 'answer' done" in log and "node 'check' done" in log


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_node_on_a_worker_reads_the_run_context(backend: str, request: pytest.FixtureRequest,
                                                  tmp_path: pathlib.Path) -> None:
    """``execute(..., context=...)`` (LangGraph's ``invoke(..., context=...)``) travels with the
    task: the node's ``runtime.context`` on the worker holds it."""
    url = str(request.getfixturevalue(backend))
    module = load_test_app("lg_graph_app")
    prefix = f"lgctx{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "lg_graph_app:greeter_app")

    async def scenario() -> dict[str, str]:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix)
        try:
            return dict(await orchestrator.execute(module.greeter_app, {}, context={"user_id": "ann", "level": 3}))
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        result = run(scenario(), timeout=100)
        deadline = time.monotonic() + 20  # (its "done" line may come after the orchestrator saw the ack)
        while time.monotonic() < deadline and "node 'greet' done" not in workers.log("w1"):
            time.sleep(0.05)
    finally:
        workers.close()
    assert result == {"greeting": "hello ann at level 3"}
    assert "node 'greet' done" in workers.log("w1")  # it ran on the worker


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_worker_process_started_on_a_graph_refuses_another_graphs_node_of_the_same_type(
        backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> None:
    """Node types are shared by every graph on a prefix: a worker serving ``app`` gets the task of
    ``other_app``'s node ``answer`` (type "answer", as ``app``'s) and dead-letters it, naming both
    functions and what to do, instead of answering it with ``app``'s function."""
    url = str(request.getfixturevalue(backend))
    module = load_test_app("lg_graph_app")
    prefix = f"lgother{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "lg_graph_app:app")

    async def scenario() -> str:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix)
        try:
            with pytest.raises(NodeExecutionError) as info:
                await orchestrator.execute(module.other_app, {"q": "x"})
            return str(info.value)
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        message = run(scenario(), timeout=100)
        deadline = time.monotonic() + 20  # (its log line may come after the orchestrator saw the dead letter)
        while time.monotonic() < deadline and "wrong function" not in workers.log("w1"):
            time.sleep(0.05)
    finally:
        workers.close()
    assert "wrong function" in message
    assert "'lg_graph_app.py:answer'" in message and "'lg_graph_app.py:other_answer'" in message
    assert "node_type='QA.answer'" in message
    log = workers.log("w1")
    assert "wrong function" in log and "node 'answer' done" not in log
