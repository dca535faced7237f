"""Subgraphs with their nodes on workers (memory: an in-process Worker; Redis and NATS: worker processes).

The subgraph's child workflow is driven by the orchestrator driving its parent, and its
nodes are tasks like any other. Its interrupt pauses the parent and is answered from
another orchestrator; an orchestrator SIGKILLed mid-subgraph is taken over by another,
which continues the same child (each of its steps runs once) and ends with the same
result; cancelling the parent from another process cancels the child its driver runs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app, sigkill_orchestrator_child

from distributed_agents import Command, Orchestrator, State, Worker, WorkflowStatus
from distributed_agents.core.errors import WorkflowCancelledError
from distributed_agents.core.subgraphs import child_workflow_id
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)
THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"


def subgraph_app() -> ModuleType:
    return load_test_app("subgraph_app")


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_a_subgraph_on_workers_pauses_the_parent_another_orchestrator_answers_and_command_parent_routes(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    prefix = f"subg{uuid.uuid4().hex[:8]}"
    app = subgraph_app()
    workers = WorkerProcesses(url, prefix, tmp_path, "subgraph_app:registry")
    worker = (Worker(capacity=2, registry=app.registry, backend=url, backend_options={"prefix": prefix},
                     poll_wait=0.05, heartbeat_interval=0.5) if backend == "memory" else None)

    async def scenario() -> dict[str, Any]:
        serving = asyncio.ensure_future(worker.start()) if worker is not None else None
        starter = Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True)
        answerer = Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True)
        try:
            paused = await starter.execute(app.pipeline(), {"rounds": 2}, workflow_id="wf-sub")
            snapshot = await answerer.get_state("wf-sub", subgraphs=True)
            done = await answerer.resume("wf-sub", app.pipeline(), Command(resume="yes"))
            child = await answerer.get_workflow_status(child_workflow_id("wf-sub", 1, "review"))
            escalated = await starter.execute(app.escalation(), {}, workflow_id="wf-escalate")
            return {"paused": paused, "snapshot": snapshot, "done": done, "child": child, "escalated": escalated}
        finally:
            await starter.close()
            await answerer.close()
            if worker is not None and serving is not None:
                await worker.stop()
                serving.cancel()

    if worker is None:
        workers.start("w1", "--capacity", "2")
    try:
        out = run(scenario(), timeout=100)
    finally:
        workers.close()
    (pause,) = out["paused"]["__interrupt__"]
    assert pause["id"].startswith("1:review/") and pause["node"] == "ask"
    assert pause["value"] == {"question": "publish?", "count": 2}
    inner = out["snapshot"].subgraphs["review"]
    assert inner.next == ("ask",) and inner.status == WorkflowStatus.INTERRUPTED
    assert out["done"]["log"] == ["prepare", "draft", "tick0", "tick1", "ask", "publish:yes"]
    assert out["child"].status == WorkflowStatus.COMPLETED
    # Command.PARENT returned on a worker ends the subgraph and routes in the parent.
    assert dict(out["escalated"]) == {"log": ["prepare", "publish:escalated"], "count": 0, "verdict": "escalated"}


@pytest.mark.parametrize("backend", [
    "redis_url",
    pytest.param("nats_url", marks=pytest.mark.skipif(not THOROUGH, reason="one backend by default: "
                                                                           "DA_TEST_PROFILE=thorough")),
])
def test_an_orchestrator_sigkilled_mid_subgraph_is_taken_over_and_each_step_runs_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"subkill{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "subgraph_app:registry")
    app = subgraph_app()
    workers.start("w1", "--capacity", "2")
    try:
        # Killed once the subgraph is under way (two ticks).
        assert sigkill_orchestrator_child("subgraph_child.py", url, prefix, "wf-subkill", tmp_path,
                                          markers="tick-*", count=2) == "wf-subkill"

        async def take_over() -> tuple[Any, Any, State]:
            orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=True, lease_ttl=1.0)
            orchestrator.register_graph(app.pipeline())
            try:
                status = await orchestrator.get_workflow_status("wf-subkill")
                inner = await orchestrator.get_workflow_status(child_workflow_id("wf-subkill", 1, "review"))
                return status, inner, await orchestrator.wait("wf-subkill", timeout=100)
            finally:
                await orchestrator.close()

        status, inner, result = run(take_over(), timeout=110)
    finally:
        workers.close()
    assert (status.status, status.step, status.next_nodes) == ("running", 1, ("review",))  # killed mid-subgraph
    assert inner.status == "running" and 1 <= inner.step < 8
    ticks = [f"tick{n}" for n in range(6)]
    assert result["log"] == ["prepare", "draft", *ticks, "ask", "publish:auto"]
    runs = collections.Counter(path.name.split("-")[1] for path in tmp_path.glob("tick-*"))
    assert sorted(map(int, runs)) == list(range(6)) and set(runs.values()) == {1}  # no step of the child ran twice


def test_cancelling_the_parent_from_another_orchestrator_stops_the_child_on_its_workers(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    prefix = f"subcancel{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "subgraph_app:registry")
    app = subgraph_app()
    child_id = child_workflow_id("wf-subcancel", 1, "review")

    async def scenario() -> tuple[str, str, BaseException | None]:
        driver = Orchestrator(backend=redis_url, backend_options={"prefix": prefix}, wait_for_workers=True)
        other = Orchestrator(backend=redis_url, backend_options={"prefix": prefix})
        try:
            await driver.submit(app.pipeline(), {"rounds": 200, "auto": True, "pause": 0.05},
                                workflow_id="wf-subcancel")
            while True:  # the child is under way on the workers
                try:
                    if (await other.get_workflow_status(child_id)).step >= 2:
                        break
                except KeyError:
                    pass
                await asyncio.sleep(0.05)
            assert await other.cancel_workflow("wf-subcancel")
            try:
                await driver.wait("wf-subcancel", timeout=60)
                raised = None
            except BaseException as exc:
                raised = exc
            parent = (await other.get_workflow_status("wf-subcancel")).status
            child = (await other.get_workflow_status(child_id)).status
            return parent, child, raised
        finally:
            await driver.close()
            await other.close()

    workers.start("w1", "--capacity", "2")
    try:
        parent, child, raised = run(scenario(), timeout=100)
    finally:
        workers.close()
    assert (parent, child) == (WorkflowStatus.CANCELLED, WorkflowStatus.CANCELLED)
    assert isinstance(raised, WorkflowCancelledError)
