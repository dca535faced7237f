"""A workflow that fails, or is deleted, leaves none of its node tasks queued.

The example (a new user, on Redis and on NATS): a workflow failed because no live worker
served its node type (``worker_timeout``), and its task stayed queued (``queues`` showed
``first QUEUED 1``); ``delete`` left it too; a worker started later claimed and ran it,
side effects included, for a workflow nobody would merge. Now the step's queued tasks
are withdrawn once its failure is stored (as a cancel withdraws them), ``delete`` withdraws
those of the workflow's last step (in each of its runs), and the error names the workflow
and the graph. A step stopped because another orchestrator took the workflow over keeps
its tasks queued: the new owner waits for the same task ids.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest
from support.aio import run
from support.crash_workers import single

from distributed_agents import Orchestrator, Worker
from distributed_agents.core.errors import ExecutionError, NodeNotFoundError
from distributed_agents.core.executors import TaskQueueExecutor
from distributed_agents.core.orchestrator import step_task_ids
from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distributed_agents", *args], capture_output=True, text=True,
                          timeout=60)


def _driver(url: str, prefix: str, **options: Any) -> Orchestrator:
    # What DistributedOrchestrator(backend_url=url, worker_timeout=...) is: every node on a
    # worker, waiting for one of its type.
    options.setdefault("recover", False)
    return Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True, local_nodes=False,
                        **options)


async def _claimable(orchestrator: Orchestrator, node_type: str) -> list[str]:
    """The ids of the tasks of ``node_type`` a worker starting now would claim (given back at once)."""
    queue = orchestrator.backend.task_queue
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    claimed = await queue.claim([node_type], worker_id=probe, max_tasks=10, wait=0.5)
    await queue.stop_claiming(probe)  # as a stopping worker: nothing is handed to the probe afterwards
    for claim in claimed:
        await queue.release(claim)
    return [claim.task.id for claim in claimed]


def test_a_step_failing_for_want_of_a_worker_withdraws_its_queued_task_and_resume_runs_it_once(url: str) -> None:
    prefix = f"nw{uuid.uuid4().hex[:8]}"
    graph = single("first")
    ran: list[str] = []

    async def scenario() -> tuple[NodeNotFoundError, Any, int, list[str], Any]:
        orchestrator = _driver(url, prefix, worker_timeout=1.0)
        worker = Worker(backend=url, backend_options={"prefix": prefix}, poll_wait=0.1)
        worker.register_node("first", lambda state: ran.append("first") or {"done": True})
        serving: asyncio.Future[Any] | None = None
        try:
            with pytest.raises(NodeNotFoundError) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-nw")
            status = await orchestrator.get_workflow_status("wf-nw")
            stats = await orchestrator.backend.task_queue.stats("first")
            claimable = await _claimable(orchestrator, "first")  # what a worker started now would run
            # Resumed once a worker is up: the node runs under the new run's task id (the
            # withdrawn one is not waited for), once.
            serving = asyncio.ensure_future(worker.start())
            resumed = await asyncio.wait_for(orchestrator.resume("wf-nw", graph), 30)
            return caught.value, status, stats.queued, claimable, resumed
        finally:
            if serving is not None:
                await worker.stop(grace=2)
                await serving
            await orchestrator.close()

    error, status, queued, claimable, resumed = run(scenario(), timeout=60)
    assert status.status == "failed" and status.error["kind"] == "NodeNotFoundError"
    assert (queued, claimable) == (0, [])  # a worker started now runs nothing
    (withdrawn,) = status.error["withdrawn_tasks"]  # named in the failure: a resume does not wait for it
    assert withdrawn.startswith("wf-nw:0") and withdrawn.endswith(":0:first"), withdrawn
    text = str(error)
    assert "workflow 'wf-nw'" in text and f"graph {graph.name!r}" in text, text
    assert "no live worker serves node type(s) 'first'" in text and "start a worker with those node types" in text
    assert resumed["done"] is True and ran == ["first"]


def test_a_step_stopped_by_a_takeover_leaves_its_task_queued_for_the_new_owner(url: str) -> None:
    """The first orchestrator stalls (its lease lapses unrenewed) and another resumes the workflow
    in the same run, waiting for the same task; the first one's worker_timeout then ends its
    step, whose failure cannot be committed (its lease is gone): the task stays queued, a
    worker started afterwards runs it, and both get the new owner's result."""
    prefix = f"to{uuid.uuid4().hex[:8]}"
    graph = single("first")
    ran: list[str] = []

    async def stalled(_: object) -> None:  # the first orchestrator's renewals: as in a stalled process
        return None

    async def scenario() -> tuple[Any, Any, int, str]:
        first = _driver(url, prefix, worker_timeout=3.0, lease_ttl=1.0)
        second = _driver(url, prefix, lease_ttl=10.0)
        await first.connect()
        first._renewer._renew = stalled
        worker = Worker(backend=url, backend_options={"prefix": prefix}, poll_wait=0.1)
        worker.register_node("first", lambda state: ran.append("first") or {"done": True})
        serving: asyncio.Future[Any] | None = None
        try:
            original = asyncio.ensure_future(first.execute(graph, {}, workflow_id="wf-to"))
            queue = first.backend.task_queue
            while (await queue.stats("first")).queued < 1:
                await asyncio.sleep(0.05)
            taken = asyncio.ensure_future(second.resume("wf-to", graph, wait_for_lease=10))
            # The first one's step ends (worker_timeout) after the second took the workflow over.
            while "wf-to" in first._running:
                await asyncio.sleep(0.05)
            assert not original.done()  # it waits for the new owner's result
            queued = (await queue.stats("first")).queued
            record = await first.backend.state_store.get("wf-to")
            assert record is not None
            serving = asyncio.ensure_future(worker.start())
            results = await asyncio.wait_for(asyncio.gather(original, taken), 40)
            return results[0], results[1], queued, record.status
        finally:
            if serving is not None:
                await worker.stop(grace=2)
                await serving
            await second.close()
            await first.close()

    by_first, by_second, queued, status = run(scenario(), timeout=90)
    assert status == WorkflowStatus.RUNNING and queued == 1
    assert by_first["done"] is True and by_second["done"] is True
    assert ran == ["first"]


def test_delete_withdraws_the_queued_task_of_a_failed_workflow(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its task left queued, as when the orchestrator died right after committing the failure
    (before withdrawing it), or by a version before the failure withdrew it."""

    async def died_first(*_: object) -> None:
        return None

    monkeypatch.setattr(Orchestrator, "_withdraw_left", died_first, raising=False)
    prefix = f"dl{uuid.uuid4().hex[:8]}"

    async def fail() -> int:
        orchestrator = _driver(url, prefix, worker_timeout=0.5)
        try:
            with pytest.raises(NodeNotFoundError):
                await orchestrator.execute(single("first"), {}, workflow_id="wf-dl")
            return (await orchestrator.backend.task_queue.stats("first")).queued
        finally:
            await orchestrator.close()

    async def after() -> tuple[int, list[str]]:
        orchestrator = _driver(url, prefix)
        try:
            await orchestrator.connect()
            queue = orchestrator.backend.task_queue
            return (await queue.stats("first")).queued, await _claimable(orchestrator, "first")
        finally:
            await orchestrator.close()

    assert run(fail(), timeout=60) == 1
    done = _cli("delete", "wf-dl", "--yes", "--backend-url", url, "--prefix", prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["deleted 1 workflow(s)", "withdrew 1 queued task(s) of the deleted workflows"]
    assert run(after(), timeout=30) == (0, [])


# -- backend-agnostic paths: the in-memory backend ------------------------------------------


def test_an_error_of_the_queue_after_the_tasks_were_queued_withdraws_them() -> None:
    """Not only a missing worker: any error that ends the step once its tasks are queued."""

    async def scenario() -> tuple[Any, int]:
        orchestrator = _driver(f"memory://qe-{uuid.uuid4().hex[:8]}", "qe")
        await orchestrator.connect()
        queue = orchestrator.backend.task_queue

        async def broken(*_: object, **__: object) -> Any:
            raise RuntimeError("the result stream is damaged")

        queue.wait_results = broken  # type: ignore[method-assign]
        try:
            with pytest.raises(ExecutionError, match="the result stream is damaged"):
                await orchestrator.execute(single("first"), {}, workflow_id="wf-qe")
            status = await orchestrator.get_workflow_status("wf-qe")
            return status, (await queue.stats("first")).queued
        finally:
            await orchestrator.close()

    status, queued = run(scenario(), timeout=30)
    assert status.status == "failed"
    assert queued == 0


def test_the_no_worker_errors_name_the_workflow_and_the_graph() -> None:
    async def scenario() -> tuple[str, str]:
        space = f"memory://nm-{uuid.uuid4().hex[:8]}"
        at_once = Orchestrator(backend=space, local_nodes=False)  # wait_for_workers False: fails at once
        waited = _driver(f"{space}-w", "nm", worker_timeout=0.2)
        try:
            with pytest.raises(NodeNotFoundError) as now:
                await at_once.execute(single("first"), {}, workflow_id="wf-now")
            with pytest.raises(NodeNotFoundError) as later:
                await waited.execute(single("first"), {}, workflow_id="wf-later")
            return str(now.value), str(later.value)
        finally:
            await at_once.close()
            await waited.close()

    now, later = run(scenario(), timeout=30)
    assert "workflow 'wf-now'" in now and "graph 'single_first'" in now and "start a Worker" in now, now
    assert "workflow 'wf-later'" in later and "graph 'single_first'" in later and "after waiting 0.2s" in later, later


def test_a_failed_steps_tasks_stay_queued_while_the_workflow_runs_on_in_the_same_run() -> None:
    """The guard for a lost lease: the stored workflow still running in the run the tasks belong to
    (another orchestrator drives it on, waiting for them) keeps them queued; once it ended, they go."""

    async def scenario() -> tuple[int, int]:
        orchestrator = _driver(f"memory://gd-{uuid.uuid4().hex[:8]}", "gd")
        running = asyncio.ensure_future(orchestrator.execute(single("first"), {}, workflow_id="wf-gd"))
        try:
            await orchestrator.connect()
            queue = orchestrator.backend.task_queue
            while (await queue.stats("first")).queued < 1:
                await asyncio.sleep(0.02)
            record = await orchestrator.backend.state_store.get("wf-gd")
            assert record is not None and record.status == WorkflowStatus.RUNNING
            (task_id,) = await _claimable(orchestrator, "first")
            stale = TaskQueueExecutor(queue, orchestrator.backend.worker_registry, left_queued=(task_id,))
            await orchestrator._withdraw_left(stale, record)
            kept = (await queue.stats("first")).queued
            failed = record.evolve(status=WorkflowStatus.FAILED)
            stale = TaskQueueExecutor(queue, orchestrator.backend.worker_registry, left_queued=(task_id,))
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)  # a caller's cancel: nothing withdrawn
            store = orchestrator.backend.state_store
            current = await store.get("wf-gd")
            assert current is not None
            await store.save(failed.evolve(version=current.version), expected_version=current.version)
            await orchestrator._withdraw_left(stale, record)
            return kept, (await queue.stats("first")).queued
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await orchestrator.close()

    kept, after_failure = run(scenario(), timeout=30)
    assert (kept, after_failure) == (1, 0)


def test_step_task_ids_name_the_steps_tasks_in_every_run() -> None:
    """What delete withdraws: a step failed, resumed and failed again may have tasks of each run queued."""
    record = WorkflowRecord(workflow_id="wf-ids", graph_name="g", status=WorkflowStatus.FAILED, state={},
                            frontier={"next": ["a", "b"]}, step=3, metadata={"run": 1})
    assert step_task_ids(record) == ["wf-ids:0:3:a", "wf-ids:1:3:a", "wf-ids:0:3:b", "wf-ids:1:3:b"]
    assert step_task_ids(record.evolve(frontier={"next": []})) == []
