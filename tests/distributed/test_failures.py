"""Failures stay explicit across processes: poison tasks, crashing nodes, cancellation, no workers.

Worker processes are real (the CLI); the backend is a real Redis server, and for the
failure and cancellation paths a real NATS server too.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from support.aio import run
from support.crash_workers import crash_workers, single

from distributed_agents import Graph, RetryPolicy
from distributed_agents.core.errors import (
    NodeExecutionError,
    NodeNotFoundError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from distributed_agents.distributed import DistributedOrchestrator

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(90)


def test_poison_task_is_dead_lettered_and_the_worker_keeps_serving(redis_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"poison{uuid.uuid4().hex[:8]}"
    workers = crash_workers(redis_url, prefix, tmp_path)
    worker = workers.start("w1")
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, worker_timeout=30)
            poisoned = single("poison", retry=RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=False, retry_on=Exception))
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(poisoned, {}, workflow_id=f"{prefix}-bad")
            status = await orchestrator.get_workflow_status(f"{prefix}-bad")
            letters = await orchestrator.backend.task_queue.dead_letters("poison")
            healthy = await orchestrator.execute(single("prepare"), {"query": "after"})
            await orchestrator.close()
            return caught.value, status, letters, healthy

        error, status, letters, healthy = run(scenario(), timeout=60)
        assert (error.node, error.attempts, error.error_type) == ("poison", 3, "ValueError")
        assert error.error_message == "poisoned input on attempt 3"
        assert status.status == "failed" and status.error["attempts"] == 3
        assert "raise ValueError" in status.error["traceback"]
        (letter,) = letters
        assert letter.attempts == 3 and [e.splitlines()[0] for e in letter.errors] == [
            f"attempt {n}: ValueError: poisoned input on attempt {n}" for n in (1, 2, 3)]
        assert healthy["prepared"] == "prepared after"  # the same worker process went on serving
        assert worker.poll() is None
        # The dead letter is visible and can be re-driven from the command line.
        cli = [sys.executable, "-m", "distributed_agents", "dead-letters"]
        where = ["--backend-url", redis_url, "--prefix", prefix]
        listed = subprocess.run([*cli, "list", *where], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert entry["task_id"] == letter.task_id and entry["attempts"] == 3
        assert entry["workflow_id"] == f"{prefix}-bad" and "poisoned input" in entry["reason"]
        # show: every attempt's error with the traceback the worker recorded.
        shown = subprocess.run([*cli, "show", letter.task_id, *where], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"workflow:   {prefix}-bad" in shown.stdout and "attempts:   3" in shown.stdout
        assert shown.stdout.count("Traceback (most recent call last)") == 3, shown.stdout
        assert shown.stdout.count('raise ValueError(f"poisoned input on attempt {context.attempt}")') == 3
        requeued = subprocess.run([*cli, "requeue", letter.task_id, *where], capture_output=True, text=True,
                                  timeout=60)
        assert requeued.returncode == 0 and requeued.stdout.startswith(f"{letter.task_id}: requeued")
        # Re-driven, the (still poisonous) task runs its three attempts again and comes back.
        for _ in range(200):
            if workers.log("w1").count("failed on attempt 3") == 2:
                break
            time.sleep(0.05)
        assert workers.log("w1").count("failed on attempt 3") == 2, workers.log("w1")
        relisted = subprocess.run([*cli, "list", *where], capture_output=True, text=True, timeout=60)
        (again,) = [json.loads(line) for line in relisted.stdout.splitlines()]
        assert again["task_id"] == letter.task_id and again["attempts"] == 3
        assert "attempt 3" in again["reason"]
    finally:
        workers.close()


def test_node_that_kills_its_worker_every_time_ends_in_dead_letters(redis_url: str, tmp_path: pathlib.Path) -> None:
    """Each delivery kills the worker; after max_attempts lease expiries the task is dead-lettered."""
    prefix = f"crasher{uuid.uuid4().hex[:8]}"
    workers = crash_workers(redis_url, prefix, tmp_path)
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, worker_timeout=60,
                                                   visibility_timeout=0.5, max_attempts=2)
            running = asyncio.ensure_future(orchestrator.execute(single("crasher"), {}, workflow_id=f"{prefix}-1"))
            crashes = 0
            while not running.done():  # a supervisor: restart the worker whenever the task kills it
                worker = workers.start(f"w{crashes}", "--visibility-timeout", "0.5")
                while worker.poll() is None and not running.done():
                    await asyncio.sleep(0.05)
                crashes += worker.returncode == 3
            with pytest.raises(NodeExecutionError) as caught:
                await running
            letters = await orchestrator.backend.task_queue.dead_letters("crasher")
            await orchestrator.close()
            return caught.value, crashes, letters

        error, crashes, letters = run(scenario(), timeout=80)
        assert crashes == 2
        assert error.node == "crasher" and error.attempts == 2 and "lease expired" in error.error_message
        (letter,) = letters
        assert letter.attempts == 2 and all("lease expired" in e for e in letter.errors)
    finally:
        workers.close()


@pytest.fixture(params=["redis", "nats"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """The URL of a real Redis or NATS server."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_a_failing_node_without_retry_policy_runs_once_in_a_worker_process(
    shared_url: str, tmp_path: pathlib.Path
) -> None:
    """No retry policy: one attempt, and the workflow fails with the node's own ValueError at once."""
    prefix = f"once{uuid.uuid4().hex[:8]}"
    workers = crash_workers(shared_url, prefix, tmp_path)
    worker = workers.start("w1")
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=shared_url, prefix=prefix, worker_timeout=30)
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(single("poison"), {}, workflow_id=f"{prefix}-1")
            letters = await orchestrator.backend.task_queue.dead_letters("poison")
            await orchestrator.close()
            return caught.value, letters

        error, letters = run(scenario(), timeout=60)
        assert (error.node, error.attempts, error.error_type) == ("poison", 1, "ValueError")
        assert error.error_message == "poisoned input on attempt 1"
        (letter,) = letters
        assert letter.attempts == 1 and letter.reason.startswith("ValueError: poisoned input on attempt 1")
        assert workers.log("w1").count("failed on attempt") == 1
        assert worker.poll() is None
    finally:
        workers.close()


def test_cancel_reaches_a_task_running_in_another_process(shared_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"cancel{uuid.uuid4().hex[:8]}"
    workers = crash_workers(shared_url, prefix, tmp_path, DA_HANG="1")
    worker = workers.start("w1")
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=shared_url, prefix=prefix, worker_timeout=30)
            graph = Graph("cancel_me").add_node("prepare").add_node("slow")
            graph.set_entry_point("prepare").add_edge("prepare", "slow").set_finish_point("slow").compile()
            running = asyncio.ensure_future(orchestrator.execute(graph, {"query": "q"}, workflow_id=f"{prefix}-1"))
            while not (tmp_path / "w1.attempt1").exists():
                await asyncio.sleep(0.05)
            assert await orchestrator.cancel_workflow(f"{prefix}-1") is True
            with pytest.raises(WorkflowCancelledError):
                await running
            queue = orchestrator.backend.task_queue
            # The worker cancels the node, records why and lets the task go. On NATS those are
            # separate writes (record, dead letter, claim index, ack: no transaction), so the
            # letter may be visible while the task still counts as in flight: wait for the end
            # state, not for its first sign (a task that never leaves ends in the timeout).
            while True:  # a cancelled task leaves no dead letter: cancelling is not a failure
                letters = await queue.dead_letters("slow")
                stats = await queue.stats("slow")
                if not letters and (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0):
                    break
                await asyncio.sleep(0.05)
            status = await orchestrator.get_workflow_status(f"{prefix}-1")
            await orchestrator.close()
            return letters, stats, status

        letters, stats, status = run(scenario(), timeout=60)
        assert status.status == "cancelled"
        assert letters == []
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
        assert worker.poll() is None  # still serving
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        workers.close()


def test_a_node_type_without_workers_waits_then_fails_with_the_reason(redis_url: str) -> None:
    async def scenario() -> Any:
        orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=f"nowork{uuid.uuid4().hex[:8]}",
                                               worker_timeout=1.5)
        running = asyncio.ensure_future(orchestrator.execute(single("writer"), {}, workflow_id="wf-wait"))
        status = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                status = await orchestrator.get_workflow_status("wf-wait")
            except WorkflowNotFoundError:  # not created yet
                continue
            if status.waiting_for:
                break
        with pytest.raises(NodeNotFoundError) as caught:
            await running
        final = await orchestrator.get_workflow_status("wf-wait")
        await orchestrator.close()
        return status, caught.value, final

    waiting, error, final = run(scenario(), timeout=30)
    assert waiting is not None and waiting.waiting_for == "waiting for a worker of type 'writer'"
    assert "no live worker serves node type(s) 'writer'" in str(error)
    assert final.status == "failed" and final.error["kind"] == "NodeNotFoundError"


@pytest.mark.parametrize("node_type,error_type,backend", [
    ("stopiter", "StopIteration", "redis_url"), ("libtimeout", "LibraryTimeout", "redis_url"),
    ("interrupted", "KeyboardInterrupt", "redis_url"), ("stopiter", "StopIteration", "nats_url")])
def test_node_raising_a_base_exception_on_a_worker_fails_retries_and_dead_letters(
        request: pytest.FixtureRequest, tmp_path: pathlib.Path, node_type: str, error_type: str, backend: str) -> None:
    """Such a node used to hang: the task kept its lease, never retried, execute() never returned."""
    redis_url = str(request.getfixturevalue(backend))  # the backend's URL (Redis or NATS)
    prefix = f"base{node_type}{uuid.uuid4().hex[:8]}"
    workers = crash_workers(redis_url, prefix, tmp_path)
    worker = workers.start("w1")
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, worker_timeout=30)
            graph = single(node_type, retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=False, retry_on=Exception))
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(graph, {}, workflow_id=f"{prefix}-1")
            status = await orchestrator.get_workflow_status(f"{prefix}-1")
            letters = await orchestrator.backend.task_queue.dead_letters(node_type)
            healthy = await orchestrator.execute(single("prepare"), {"query": "after"})
            await orchestrator.close()
            return caught.value, status, letters, healthy

        error, status, letters, healthy = run(scenario(), timeout=60)
        # retry_on (default: Exception) matches the node's own exception: StopIteration is an
        # Exception and is retried, a BaseException that is no Exception is not.
        attempts = 2 if node_type == "stopiter" else 1
        assert (error.node, error.attempts, error.error_type) == (node_type, attempts, error_type)
        assert status.status == "failed" and status.error["error_type"] == error_type
        (letter,) = letters
        assert letter.attempts == attempts
        assert healthy["prepared"] == "prepared after" and worker.poll() is None
    finally:
        workers.close()


def test_a_node_error_of_megabytes_on_a_worker_is_cut_and_reported_as_the_nodes_error(
        redis_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"huge{uuid.uuid4().hex[:8]}"
    workers = crash_workers(redis_url, prefix, tmp_path)
    workers.start("w1")
    try:
        async def scenario() -> Any:
            orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, worker_timeout=30)
            graph = single("hugeerror", retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=False, retry_on=Exception))
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(graph, {}, workflow_id=f"{prefix}-1")
            status = await orchestrator.get_workflow_status(f"{prefix}-1")
            letters = await orchestrator.backend.task_queue.dead_letters("hugeerror")
            await orchestrator.close()
            return caught.value, status, letters

        error, status, letters = run(scenario(), timeout=60)
        assert error.node == "hugeerror" and error.error_type == "RuntimeError"
        assert status.error["kind"] == "NodeExecutionError" and len(status.error["message"]) <= 5000
        assert status.error["message"].endswith(" END")
        (letter,) = letters
        assert letter.attempts == 2 and all(len(e) < 30_000 for e in letter.errors)
    finally:
        workers.close()
