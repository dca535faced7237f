"""One size limit (``max_payload_bytes``), checked before writing, identical on every backend.

A node result over the limit fails the node at once (it runs once, whatever its retry
policy) naming the node, the size and the limit; a state too large to commit fails the
workflow with the same error; nothing is left ``running``. On memory, a real Redis server
and a real NATS server (whose own limit is the server's max_payload, 1 MiB by default).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, NodeContext, Orchestrator, RetryPolicy, State, Worker, open_backend
from distributed_agents.core.errors import BackendConfigError, NodeExecutionError, PayloadTooLargeError
from distributed_agents.core.limits import DEFAULT_MAX_PAYLOAD_BYTES

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"size{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def single(node_type: str, **options: Any) -> Graph:
    graph = Graph(f"g_{node_type}").add_node(node_type, **options)
    return graph.set_entry_point(node_type).set_finish_point(node_type).compile()


async def on_worker(url: str, worker: Worker, graph: Graph, workflow_id: str, **options: Any) -> Any:
    """Execute ``graph`` with every node on ``worker``; the error, the final status and the dead letters."""
    orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60,
                                backend_options=options)
    serving = asyncio.ensure_future(worker.start())
    try:
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
        status = await orchestrator.get_workflow_status(workflow_id)
        return caught.value, status
    finally:
        await worker.stop(grace=1)
        await serving
        await orchestrator.close()


def test_a_result_over_the_limit_fails_the_node_once_naming_node_size_and_limit(url: str) -> None:
    calls: list[int] = []

    def big(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.attempt)
        return {"blob": "x" * 20_000}

    worker = Worker(backend=url, poll_wait=0.1, backend_options={"max_payload_bytes": 10_000})
    worker.register_node("big", big)
    graph = single("big", retry=RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception))
    error, status = run(on_worker(url, worker, graph, "wf-big", max_payload_bytes=10_000), timeout=60)
    assert calls == [1]
    assert error.node == "big" and error.attempts == 1 and error.error_type == "PayloadTooLargeError"
    assert "node 'big'" in error.error_message and "20,011 bytes" in error.error_message
    assert "limit of 10,000 bytes" in error.error_message and "'blob'" in error.error_message
    assert status.status == "failed"


def test_a_700_kb_result_with_the_default_limit_commits_once_and_completes(url: str) -> None:
    """The issue's example (on NATS a 700 KB result used to leave the workflow running for
    ever): a result under the limit commits, although the step's checkpoint holds it as the
    state and as the node's write (the entry stores it once), and the workflow completes."""
    calls: list[int] = []

    def large(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.attempt)
        return {"report": "r" * 700_000}

    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("large", large)

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        try:
            result = await orchestrator.execute(single("large"), {}, workflow_id="wf-700k")
            return result, await orchestrator.get_workflow_status("wf-700k")
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()

    result, status = run(scenario(), timeout=60)
    assert calls == [1]
    assert status.status == "completed" and len(result["report"]) == 700_000


def test_a_state_growing_past_the_default_limit_fails_the_workflow_instead_of_hanging(url: str) -> None:
    """Two results of 600 KB, each under the limit: the state after the second is not, so
    its commit fails the workflow (on NATS, over the server's own max_payload) rather than
    leaving it running."""
    calls: list[str] = []

    def part(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.node)
        return {context.node: "p" * 600_000}

    worker = Worker(backend=url, poll_wait=0.1)
    worker.register_node("first", part)
    worker.register_node("second", part)
    graph = Graph("g_growing").add_node("first").add_node("second")
    graph.set_entry_point("first").add_edge("first", "second").set_finish_point("second").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60)
        serving = asyncio.ensure_future(worker.start())
        try:
            with pytest.raises(PayloadTooLargeError) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-growing")
            return caught.value, await orchestrator.get_workflow_status("wf-growing")
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()

    error, status = run(scenario(), timeout=60)
    assert calls == ["first", "second"]
    assert error.limit == DEFAULT_MAX_PAYLOAD_BYTES and error.size > error.limit
    assert "cannot commit step 1" in str(error)
    assert status.status == "failed" and status.error["kind"] == "PayloadTooLargeError"


def test_an_initial_state_over_the_limit_is_refused_before_anything_is_written(url: str) -> None:
    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url, backend_options={"max_payload_bytes": 5_000})
        try:
            with pytest.raises(PayloadTooLargeError) as caught:
                await orchestrator.execute(single("noop"), {"doc": "d" * 6_000}, workflow_id="wf-initial")
            return caught.value, await orchestrator.list_workflows()
        finally:
            await orchestrator.close()

    error, workflows = run(scenario(), timeout=60)
    assert error.size > 5_000 and error.limit == 5_000 and "'doc'" in str(error)
    assert workflows == []


def test_a_limit_the_nats_server_cannot_store_is_refused_at_connect(nats_url: str) -> None:
    async def scenario() -> Any:
        backend = open_backend(nats_url, prefix=f"size{uuid.uuid4().hex[:8]}", max_payload_bytes=5_000_000)
        with pytest.raises(BackendConfigError) as caught:
            await backend.connect()
        default = open_backend(nats_url, prefix=f"size{uuid.uuid4().hex[:8]}")
        await default.connect()
        try:
            return caught.value, default.max_payload_bytes
        finally:
            await default.close()

    error, default_limit = run(scenario())
    assert "max_payload_bytes=5000000" in str(error) and "1048576" in str(error)
    assert default_limit == DEFAULT_MAX_PAYLOAD_BYTES  # fits the server's default 1 MiB with the envelope


def test_a_limit_redis_cannot_store_is_refused_at_connect(redis_url: str) -> None:
    async def scenario() -> Any:
        backend = open_backend(redis_url, prefix=f"size{uuid.uuid4().hex[:8]}", max_payload_bytes=600 * 1024 * 1024)
        try:
            with pytest.raises(BackendConfigError) as caught:
                await backend.connect()
        finally:
            await backend.close()
        fits = open_backend(redis_url, prefix=f"size{uuid.uuid4().hex[:8]}", max_payload_bytes=4_000_000)
        try:
            await fits.connect()
            return caught.value, fits.max_payload_bytes
        finally:
            await fits.close()

    error, limit = run(scenario())
    assert "max_payload_bytes=629145600" in str(error) and "proto-max-bulk-len is 536870912" in str(error)
    assert limit == 4_000_000
