"""Settling a task (ack, nack, extend, release) means the same on every backend.

Only a backend outage and a lost lease are transient; any other exception while settling
is a bug, logged with its traceback and dead-lettered with that reason. A node's own
error, a cancellation and a result the backend cannot store end the task at once: the
node runs once. Each test runs on memory, a real Redis server and a real NATS server.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, NodeContext, Orchestrator, RetryPolicy, State, Worker
from distributed_agents.core.errors import NodeExecutionError, WorkflowCancelledError

pytestmark = pytest.mark.timeout(90)

BACKENDS = ["memory", "redis", "nats"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest) -> str:
    """A backend URL on a fresh prefix: memory://, or a real Redis / NATS server."""
    prefix = f"settle{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}prefix={prefix}"


def single(node_type: str, **options: Any) -> Graph:
    graph = Graph(f"single_{node_type}").add_node(node_type, **options)
    return graph.set_entry_point(node_type).set_finish_point(node_type).compile()


async def serving(worker: Worker, body: Callable[[Orchestrator], Awaitable[Any]], url: str) -> Any:
    """Run ``body(orchestrator)`` while ``worker`` serves; both on ``url``; workers only."""
    orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
    task = asyncio.ensure_future(worker.start())
    try:
        while not worker._serving:
            await asyncio.sleep(0.01)
        return await body(orchestrator)
    finally:
        await worker.stop(grace=1)
        await task
        await orchestrator.close()


def test_a_failing_node_without_retry_policy_runs_once_and_fails_with_its_own_error(url: str) -> None:
    calls: list[int] = []

    def explode(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.attempt)
        raise ValueError("bad input")

    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("explode", explode)

    async def body(orchestrator: Orchestrator) -> Any:
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(single("explode"), {}, workflow_id="wf-explode")
        return caught.value, await orchestrator.backend.task_queue.dead_letters("explode")

    error, letters = run(serving(worker, body, url), timeout=60)
    assert calls == [1]
    assert (error.node, error.attempts, error.error_type, error.error_message) == ("explode", 1, "ValueError",
                                                                                   "bad input")
    (letter,) = letters
    assert letter.attempts == 1 and letter.reason.startswith("ValueError: bad input")


def test_a_result_that_is_not_utf8_fails_at_once_even_with_a_retry_policy(url: str) -> None:
    calls: list[int] = []

    def lone_surrogate(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.attempt)
        return {"text": "half a pair: \udc80"}

    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("surrogate", lone_surrogate)
    graph = single("surrogate", retry=RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception))

    async def body(orchestrator: Orchestrator) -> NodeExecutionError:
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(graph, {}, workflow_id="wf-surrogate")
        return caught.value

    error = run(serving(worker, body, url), timeout=60)
    assert calls == [1]
    assert error.attempts == 1 and error.error_type == "StateNotSerializableError"
    assert "'text'" in error.error_message and "surrogates not allowed" in error.error_message


def test_an_error_message_that_is_not_utf8_is_stored_escaped(url: str) -> None:
    def raises_surrogate(state: State) -> dict[str, Any]:
        raise ValueError("bad byte \udcff here")

    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("rude", raises_surrogate)

    async def body(orchestrator: Orchestrator) -> NodeExecutionError:
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(single("rude"), {}, workflow_id="wf-rude")
        return caught.value

    error = run(serving(worker, body, url), timeout=60)
    assert error.attempts == 1 and error.error_message == "bad byte \\udcff here"


def test_a_cancelled_task_is_not_delivered_again_and_leaves_no_dead_letter(url: str) -> None:
    """Cancelling is deliberate, not a failure: the task ends with a "cancelled" result, no dead letter."""
    worker = Worker(backend=url, poll_wait=0.1, lease_seconds=1.0)

    async def scenario() -> Any:
        node = BlockingNode()
        starts: list[int] = []
        task_ids: list[str] = []

        async def blocking(state: State, context: NodeContext) -> dict[str, Any]:
            starts.append(context.attempt)
            task_ids.append(context.idempotency_key)
            return await node(state)

        worker.register_node("blocking", blocking)

        async def body(orchestrator: Orchestrator) -> Any:
            running = asyncio.ensure_future(orchestrator.execute(single("blocking"), {}, workflow_id="wf-cancel"))
            await node.started.wait()
            assert await orchestrator.cancel_workflow("wf-cancel")
            with pytest.raises(WorkflowCancelledError):
                await running
            await asyncio.wait_for(node.cancelled.wait(), 10)
            queue = orchestrator.backend.task_queue
            for _ in range(200):
                result = await queue.get_result(task_ids[0])
                stats = await queue.stats("blocking")
                # the final nack and the purge of its letter are separate writes: wait for the end state
                if result is not None and (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0):
                    break
                await asyncio.sleep(0.05)
            return result, await queue.dead_letters("blocking"), await queue.stats("blocking")

        result, letters, stats = await serving(worker, body, url)
        return starts, result, letters, stats

    starts, result, letters, stats = run(scenario(), timeout=60)
    assert starts == [1]
    assert result is not None and result.status == "failed"
    assert result.error == "cancelled: the workflow was cancelled"
    assert letters == []
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


def test_an_unexpected_error_while_settling_is_logged_and_dead_lettered(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An adapter whose ack raises a bug (not an outage) fails the task at once, with that reason."""
    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("fine", lambda s: {"ok": True})

    async def broken_ack(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("adapter bug in ack")

    async def body(orchestrator: Orchestrator) -> Any:
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(single("fine"), {}, workflow_id="wf-broken-ack")
        return caught.value, await orchestrator.backend.task_queue.dead_letters("fine")

    worker.backend.task_queue.ack = broken_ack  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="distributed_agents.worker"):
        error, letters = run(serving(worker, body, url), timeout=60)
    assert error.attempts == 1 and "settling the task failed: RuntimeError: adapter bug in ack" in str(error)
    (letter,) = letters
    assert letter.reason == "settling the task failed: RuntimeError: adapter bug in ack"
    (record,) = [r for r in caplog.records if "settling raised RuntimeError" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert worker.stats.failed == 1 and worker.stats.succeeded == 0


def test_an_unexpected_error_while_extending_the_lease_stops_the_node_and_dead_letters_it(url: str) -> None:
    worker = Worker(backend=url, poll_wait=0.1, lease_seconds=0.3)

    async def scenario() -> Any:
        node = BlockingNode()
        worker.register_node("held", node)

        async def broken_extend(*args: Any, **kwargs: Any) -> None:
            raise KeyError("adapter bug in extend")

        async def body(orchestrator: Orchestrator) -> Any:
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(single("held"), {}, workflow_id="wf-broken-extend")
            return caught.value

        worker.backend.task_queue.extend = broken_extend  # type: ignore[method-assign]
        error = await serving(worker, body, url)
        return error, node.cancelled.is_set()

    error, cancelled = run(scenario(), timeout=60)
    assert cancelled
    assert error.attempts == 1 and "extending the lease failed: KeyError: 'adapter bug in extend'" in str(error)


class UnprintableError(Exception):
    """An exception whose ``__str__`` itself raises (seen in the wild in wrapper libraries)."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


@pytest.mark.parametrize("where", ["worker", "in-process"])
def test_a_node_error_whose_str_raises_fails_the_node_once_by_its_own_type(url: str, where: str) -> None:
    calls: list[int] = []

    async def unprintable(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.attempt)
        raise UnprintableError()

    graph = single("unprintable")
    if where == "in-process":
        async def local() -> NodeExecutionError:
            orchestrator = Orchestrator(backend=url)
            orchestrator.registry.register_node("unprintable", unprintable)
            try:
                with pytest.raises(NodeExecutionError) as caught:
                    await orchestrator.execute(graph, {}, workflow_id="wf-unprintable")
                return caught.value
            finally:
                await orchestrator.close()

        error = run(local(), timeout=60)
    else:
        worker = Worker(backend=url, poll_wait=0.1)
        worker.register_node("unprintable", unprintable)

        async def body(orchestrator: Orchestrator) -> NodeExecutionError:
            with pytest.raises(NodeExecutionError) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-unprintable")
            return caught.value

        error = run(serving(worker, body, url), timeout=60)
    assert calls == [1]
    assert (error.node, error.attempts, error.error_type) == ("unprintable", 1, "UnprintableError")
    assert "str() of this UnprintableError raised RuntimeError" in error.error_message
    assert "UnprintableError" in (error.traceback_text or "")
