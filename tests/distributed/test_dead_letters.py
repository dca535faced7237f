"""Dead letters re-drive their workflow, and the node's side effect happens once.

Graph notify -> archive. ``notify`` fails past its attempts (its mail server is
"down"), the workflow fails, the cause is fixed, and then either
``distributed-agents dead-letters requeue TASK`` (the workflow continues with the
requeued run's result, through recovery or ``resume``), or a plain requeue followed by
``resume()`` (which reuses the requeued task's result). Either way ``notify``'s side
effect happens once after the fix. Real worker processes, real Redis and NATS servers.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph, RetryPolicy
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis_url", "nats_url"])
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def notify_archive() -> Graph:
    graph = Graph("notify_archive")
    graph.add_node("notify", retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=False, retry_on=Exception))
    graph.add_node("archive")
    return graph.set_entry_point("notify").add_edge("notify", "archive").set_finish_point("archive").compile()


def lines(tmp: pathlib.Path, name: str) -> list[str]:
    path = tmp / name
    return path.read_text().splitlines() if path.exists() else []


async def fail_once(orchestrator: DistributedOrchestrator, workflow_id: str) -> str:
    """Run the workflow into its failure; return the dead-lettered notify task's id."""
    with pytest.raises(NodeExecutionError) as caught:
        await orchestrator.execute(notify_archive(), {"to": "ops"}, workflow_id=workflow_id)
    assert caught.value.node == "notify" and "mail server unreachable" in str(caught.value)
    (letter,) = await orchestrator.backend.task_queue.dead_letters("notify")
    assert letter.task is not None and letter.task.workflow_id == workflow_id
    return letter.task_id


def run_with_workers(url: str, tmp: pathlib.Path, scenario: Any) -> Any:
    prefix = f"redrive{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp, "redrive_app:registry")
    (tmp / "broken").touch()
    workers.start("w1")
    try:
        return run(scenario(prefix, workers), timeout=100)
    finally:
        workers.close()


def test_cli_requeue_continues_the_failed_workflow_through_recovery(backend_url: str, tmp_path: pathlib.Path) -> None:
    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recovery_interval=0.2)
        workflow_id = f"{prefix}-wf"
        try:
            task_id = await fail_once(orchestrator, workflow_id)
            (tmp_path / "broken").unlink()  # the cause is fixed
            requeued = await asyncio.to_thread(workers.cli, "dead-letters", "requeue", task_id)
            assert requeued.returncode == 0, requeued.stderr
            assert requeued.stdout.startswith(f"{task_id}: requeued") and "running again" in requeued.stdout
            # This orchestrator recovers workflows, so it takes the reopened one and finishes it.
            result = await orchestrator.wait(workflow_id, timeout=60)
            status = await orchestrator.get_workflow_status(workflow_id)
            return dict(result), status
        finally:
            await orchestrator.close()

    result, status = run_with_workers(backend_url, tmp_path, scenario)
    assert result == {"to": "ops", "notified": "ops", "archived": True}
    assert status.status == "completed" and status.error is None
    assert len(lines(tmp_path, "notified")) == 1 and len(lines(tmp_path, "archived")) == 1
    assert len(lines(tmp_path, "notify_attempts")) == 3  # two failed attempts, one after the fix


def test_cli_requeue_then_resume_uses_the_requeued_result(backend_url: str, tmp_path: pathlib.Path) -> None:
    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        workflow_id = f"{prefix}-wf"
        try:
            task_id = await fail_once(orchestrator, workflow_id)
            (tmp_path / "broken").unlink()
            requeued = await asyncio.to_thread(workers.cli, "dead-letters", "requeue", task_id)
            assert requeued.returncode == 0, requeued.stderr
            return dict(await orchestrator.resume(workflow_id))
        finally:
            await orchestrator.close()

    assert run_with_workers(backend_url, tmp_path, scenario) == {"to": "ops", "notified": "ops", "archived": True}
    assert len(lines(tmp_path, "notified")) == 1 and len(lines(tmp_path, "archived")) == 1


def test_resume_reuses_what_a_plainly_requeued_task_produced(backend_url: str, tmp_path: pathlib.Path) -> None:
    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        workflow_id = f"{prefix}-wf"
        queue = orchestrator.backend.task_queue
        try:
            task_id = await fail_once(orchestrator, workflow_id)
            (tmp_path / "broken").unlink()
            assert await queue.requeue_dead_letter(task_id)  # the port alone: the workflow stays failed
            while (result := await queue.get_result(task_id)) is None or result.status != "succeeded":
                await asyncio.sleep(0.05)
            assert (await orchestrator.get_workflow_status(workflow_id)).status == "failed"
            return dict(await orchestrator.resume(workflow_id))
        finally:
            await orchestrator.close()

    assert run_with_workers(backend_url, tmp_path, scenario) == {"to": "ops", "notified": "ops", "archived": True}
    assert len(lines(tmp_path, "notified")) == 1


def test_requeue_of_a_workflow_that_moved_on_is_refused_pointing_to_resume(
    backend_url: str, tmp_path: pathlib.Path
) -> None:
    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        workflow_id = f"{prefix}-wf"
        try:
            task_id = await fail_once(orchestrator, workflow_id)
            with pytest.raises(NodeExecutionError):  # resumed while still broken: a new run fails too
                await orchestrator.resume(workflow_id)
            refused = await asyncio.to_thread(workers.cli, "dead-letters", "requeue", task_id)
            letters = [letter.task_id for letter in await orchestrator.backend.task_queue.dead_letters("notify")]
            return refused, letters, task_id
        finally:
            await orchestrator.close()

    refused, letters, task_id = run_with_workers(backend_url, tmp_path, scenario)
    assert refused.returncode == 1
    assert refused.stdout == ""  # an error: on stderr, prefixed like every other CLI error
    assert refused.stderr.startswith(f"distributed-agents: error: {task_id}: not requeued") and "resume(" in refused.stderr
    assert task_id in letters  # left where it was
    assert lines(tmp_path, "notified") == []


def test_resume_on_workers_reruns_only_the_failed_node_of_a_parallel_step(
    backend_url: str, tmp_path: pathlib.Path
) -> None:
    """Parallel audit (succeeds, side effect) and notify (fails); after the fix, resume runs notify only."""
    graph = Graph("audit_notify").add_node("audit").add_node("notify", retry=RetryPolicy(max_attempts=1, retry_on=Exception))
    graph.set_entry_point("audit").set_entry_point("notify").set_finish_point("audit").set_finish_point("notify")
    graph.compile()

    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        try:
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(graph, {"to": "ops"}, workflow_id=f"{prefix}-wf")
            record = await orchestrator.backend.state_store.get(f"{prefix}-wf")
            assert record is not None and record.frontier["pending_writes"] == {"audit": {"audited": True}}
            (tmp_path / "broken").unlink()
            return dict(await orchestrator.resume(f"{prefix}-wf"))
        finally:
            await orchestrator.close()

    result = run_with_workers(backend_url, tmp_path, scenario)
    assert result == {"to": "ops", "audited": True, "notified": "ops"}
    assert len(lines(tmp_path, "audited")) == 1 and len(lines(tmp_path, "notified")) == 1


def test_resume_that_completes_the_workflow_purges_its_obsolete_dead_letters(
    backend_url: str, tmp_path: pathlib.Path
) -> None:
    """Ops finding: after resume() completed the workflow, its dead letters were still listed."""
    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        workflow_id = f"{prefix}-wf"
        queue = orchestrator.backend.task_queue
        try:
            first = await fail_once(orchestrator, workflow_id)
            with pytest.raises(NodeExecutionError):  # resumed while still broken: a second dead letter
                await orchestrator.resume(workflow_id)
            before = sorted(letter.task_id for letter in await queue.dead_letters("notify"))
            (tmp_path / "broken").unlink()
            result = dict(await orchestrator.resume(workflow_id))
            after = [letter.task_id for letter in await queue.dead_letters()]
            return first, before, result, after
        finally:
            await orchestrator.close()

    first, before, result, after = run_with_workers(backend_url, tmp_path, scenario)
    assert len(before) == 2 and first in before
    assert result == {"to": "ops", "notified": "ops", "archived": True}
    assert after == []  # both runs' letters of the failed step are gone
    assert len(lines(tmp_path, "notified")) == 1


def test_requeue_after_the_workflow_completed_says_nothing_needs_re_running(
    backend_url: str, tmp_path: pathlib.Path
) -> None:
    """Ops finding: a stale requeue of a completed workflow pointed to resume(); it should offer purge.

    notify's final failure goes to its on_error handler and the workflow completes; the
    engine's purge of notify's dead letter (a handled failure needs no operator) is
    refused here, so the letter is left behind, as when the orchestrator died right
    after the workflow's last commit.
    """
    graph = Graph("notify_fallback")
    graph.add_node("notify", retry=RetryPolicy(max_attempts=1, retry_on=Exception), on_error="fallback").add_node("fallback")
    graph.set_entry_point("notify").set_finish_point("notify").set_finish_point("fallback").compile()

    async def scenario(prefix: str, workers: WorkerProcesses) -> Any:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix, recover=False)
        workflow_id = f"{prefix}-wf"

        async def refuse(task_id: str) -> bool:
            raise RuntimeError("purge refused")

        try:
            await orchestrator.connect()
            orchestrator.backend.task_queue.purge_dead_letter = refuse  # type: ignore[method-assign]
            result = dict(await orchestrator.execute(graph, {"to": "ops"}, workflow_id=workflow_id))
            (letter,) = await orchestrator.backend.task_queue.dead_letters("notify")
            (tmp_path / "broken").unlink()
            refused = await asyncio.to_thread(workers.cli, "dead-letters", "requeue", letter.task_id)
            return result, refused, letter.task_id
        finally:
            await orchestrator.close()

    result, refused, task_id = run_with_workers(backend_url, tmp_path, scenario)
    assert result["handled"] == "notify"
    assert refused.returncode == 1 and refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"distributed-agents: error: {task_id}: not requeued")
    assert "completed" in line and "nothing needs re-running" in line and f"dead-letters purge {task_id}" in line
    assert "resume(" not in line
    assert lines(tmp_path, "notified") == []
