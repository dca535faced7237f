"""Cancelling a workflow reaches every kind of node running on a worker, and capacity stays honest.

An ``async def`` node is interrupted; a plain function (run in a thread, which nothing can
interrupt) sees ``context.cancelled`` / ``current_context().cancelled`` turn True, one
warning says it could not be interrupted if it still runs after a grace (none for a
function that returns in time), and the worker keeps its capacity slot taken
until the thread really returns. On memory, a real Redis server and a real NATS server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, NodeContext, Orchestrator, State, Worker, current_context
from distributed_agents.core import node_runner
from distributed_agents.core.errors import WorkflowCancelledError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"cancel{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def fan_out() -> Graph:
    graph = Graph("fan_out").add_node("start").add_node("coroutine").add_node("plain")
    graph.set_entry_point("start").add_edge("start", "coroutine").add_edge("start", "plain")
    return graph.set_finish_point("coroutine").set_finish_point("plain").compile()


def single(node_type: str) -> Graph:
    return Graph(node_type).add_node(node_type).set_entry_point(node_type).set_finish_point(node_type).compile()


async def settled_without_dead_letters(orchestrator: Orchestrator, *node_types: str) -> None:
    """Wait until no task of ``node_types`` is queued, in flight or dead-lettered.

    A cancelled task leaves no dead letter (cancelling is deliberate, not a failure). The
    worker's final nack and the purge of its letter are separate writes, so this waits for
    the end state; a letter that stays fails the test after about 20 s.
    """
    queue = orchestrator.backend.task_queue
    for _ in range(400):
        stats = [await queue.stats(node_type) for node_type in node_types]
        letters = [await queue.dead_letters(node_type) for node_type in node_types]
        if all((s.queued, s.in_flight, s.dead) == (0, 0, 0) for s in stats) and not any(letters):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"tasks of {node_types} still queued, in flight or dead-lettered: {stats} {letters}")


def test_cancel_stops_an_async_node_and_tells_a_plain_function_node(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain_running = threading.Event()
    saw_cancel: list[bool] = []
    finish = threading.Event()

    def plain(state: State, context: NodeContext) -> dict[str, Any]:
        plain_running.set()
        # Cooperative: check the flag between units of work, as a long loop would.
        while not context.wait_cancelled(0.01):
            pass
        saw_cancel.append(current_context() is not None and current_context().cancelled)  # type: ignore[union-attr]
        finish.wait(30)  # keeps the thread busy after seeing the flag: the slot must stay taken
        return {"plain": "too late"}

    worker = Worker(backend=url, capacity=2, poll_wait=0.1)

    async def scenario() -> Any:
        coroutine = BlockingNode()
        worker.register_node("start", lambda s: None)
        worker.register_node("coroutine", coroutine)
        worker.register_node("plain", plain)
        worker.register_node("quick", lambda s: {"quick": True})
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        try:
            running = asyncio.ensure_future(orchestrator.execute(fan_out(), {}, workflow_id="wf-fan"))
            await coroutine.started.wait()
            while not plain_running.is_set():
                await asyncio.sleep(0.01)
            assert await orchestrator.cancel_workflow("wf-fan")
            with pytest.raises(WorkflowCancelledError):
                await running
            await asyncio.wait_for(coroutine.cancelled.wait(), 10)
            await settled_without_dead_letters(orchestrator, "coroutine", "plain")  # both settled as cancelled
            while not saw_cancel:
                await asyncio.sleep(0.01)
            # One slot is free (the async node's); the thread still holds the other.
            assert len(worker._abandoned) == 1
            after = await orchestrator.execute(single("quick"), {}, workflow_id="wf-after")
            while not any(r.levelno == logging.WARNING for r in caplog.records):  # after the grace
                await asyncio.sleep(0.02)
            finish.set()
            while worker._abandoned:
                await asyncio.sleep(0.01)
            return after
        finally:
            finish.set()
            await worker.stop(grace=5)
            await serving
            await orchestrator.close()

    with caplog.at_level(logging.INFO, logger="distributed_agents.node"):
        after = run(scenario(), timeout=60)
    assert saw_cancel == [True]
    assert after["quick"] is True
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "distributed_agents.node" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "node 'plain'" in warnings[0] and "cannot be interrupted" in warnings[0]
    assert "still running" in warnings[0]
    assert any("cancelled node 'plain'" in r.getMessage() and "returned" in r.getMessage() for r in caplog.records)


def test_a_cancelled_plain_function_keeps_its_capacity_slot_until_it_returns(url: str) -> None:
    """Capacity 1: while the cancelled thread still runs, the worker claims nothing else."""
    running = threading.Event()
    finish = threading.Event()

    def stubborn(state: State) -> dict[str, Any]:
        running.set()
        finish.wait(30)  # ignores cancellation entirely
        return {}

    worker = Worker(backend=url, capacity=1, poll_wait=0.1)
    worker.register_node("stubborn", stubborn)
    worker.register_node("quick", lambda s: {"quick": True})

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        try:
            first = asyncio.ensure_future(orchestrator.execute(single("stubborn"), {}, workflow_id="wf-stubborn"))
            while not running.is_set():
                await asyncio.sleep(0.01)
            assert await orchestrator.cancel_workflow("wf-stubborn")
            with pytest.raises(WorkflowCancelledError):
                await first
            await settled_without_dead_letters(orchestrator, "stubborn")
            second = asyncio.ensure_future(orchestrator.execute(single("quick"), {}, workflow_id="wf-quick"))
            queue = orchestrator.backend.task_queue
            while (await queue.stats("quick")).queued == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)  # ten claim rounds: a freed slot would have claimed it by now
            held = await queue.stats("quick")
            finish.set()
            result = await second
            return held, result
        finally:
            finish.set()
            await worker.stop(grace=5)
            await serving
            await orchestrator.close()

    held, result = run(scenario(), timeout=60)
    assert (held.queued, held.in_flight) == (1, 0)
    assert result["quick"] is True


def test_a_plain_function_that_stops_when_told_logs_no_warning(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops finding: the "cannot be interrupted" warning was logged for a function that returned at once."""
    monkeypatch.setattr(node_runner, "CANCEL_WARNING_GRACE", 30.0)  # far longer than the function takes
    running = threading.Event()

    def cooperative(state: State, context: NodeContext) -> dict[str, Any]:
        running.set()
        context.wait_cancelled(30)
        return {}

    worker = Worker(backend=url, capacity=1, poll_wait=0.1)
    worker.register_node("cooperative", cooperative)

    async def scenario() -> None:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        try:
            first = asyncio.ensure_future(orchestrator.execute(single("cooperative"), {}, workflow_id="wf-coop"))
            while not running.is_set():
                await asyncio.sleep(0.01)
            assert await orchestrator.cancel_workflow("wf-coop")
            with pytest.raises(WorkflowCancelledError):
                await first
            await settled_without_dead_letters(orchestrator, "cooperative")
            while not any("cancelled node 'cooperative'" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)  # its thread has returned
        finally:
            await worker.stop(grace=5)
            await serving
            await orchestrator.close()

    with caplog.at_level(logging.INFO, logger="distributed_agents.node"):
        run(scenario(), timeout=60)
    assert [r.getMessage() for r in caplog.records
            if r.name == "distributed_agents.node" and r.levelno >= logging.WARNING] == []


def test_a_slot_held_by_a_cancelled_plain_function_is_visible_in_the_worker_registry(url: str) -> None:
    """Ops finding: while the abandoned thread held the only slot, nothing showed it was busy.

    The worker's registry entry (and ``distributed-agents workers``) shows ``in_flight``
    and ``busy_abandoned``.
    """
    running = threading.Event()
    finish = threading.Event()

    def stubborn(state: State) -> dict[str, Any]:
        running.set()
        finish.wait(30)  # ignores cancellation entirely
        return {}

    worker = Worker(backend=url, capacity=1, poll_wait=0.1, heartbeat_interval=0.2, worker_id="w-stubborn")
    worker.register_node("stubborn", stubborn)

    async def usage(orchestrator: Orchestrator, wanted: dict[str, int]) -> None:
        while True:
            workers = await orchestrator.backend.worker_registry.list_workers()
            if [(w.worker_id, dict(w.metadata)) for w in workers] == [("w-stubborn", wanted)]:
                return
            await asyncio.sleep(0.05)

    def listing() -> list[dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "distributed_agents", "workers", "--backend-url", url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    async def scenario() -> list[dict[str, Any]]:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        listed: list[dict[str, Any]] = []
        try:
            await orchestrator.backend.connect()
            await usage(orchestrator, {"in_flight": 0, "busy_abandoned": 0})
            first = asyncio.ensure_future(orchestrator.execute(single("stubborn"), {}, workflow_id="wf-stubborn"))
            while not running.is_set():
                await asyncio.sleep(0.01)
            await usage(orchestrator, {"in_flight": 1, "busy_abandoned": 0})
            assert await orchestrator.cancel_workflow("wf-stubborn")
            with pytest.raises(WorkflowCancelledError):
                await first
            await usage(orchestrator, {"in_flight": 0, "busy_abandoned": 1})
            if not url.startswith("memory://"):  # another process sees it through the CLI
                listed = await asyncio.to_thread(listing)
            finish.set()
            await usage(orchestrator, {"in_flight": 0, "busy_abandoned": 0})
            return listed
        finally:
            finish.set()
            await worker.stop(grace=5)
            await serving
            await orchestrator.close()

    listed = run(scenario(), timeout=80)
    if not url.startswith("memory://"):
        assert [(w["worker_id"], w["capacity"], w["in_flight"], w["busy_abandoned"]) for w in listed] == [
            ("w-stubborn", 1, 0, 1)]
