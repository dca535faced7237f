"""On Redis and NATS, with the nodes on a worker: a node that writes nothing is streamed as
``{node: None}`` (as LangGraph does), its step yields no "values", and the checkpoint that
records it is stored and read back by the backend's state store."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import END, START, Graph, Worker
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return f"{found}{'&' if '?' in found else '?'}prefix=sn{uuid.uuid4().hex[:8]}"


def quiet(state: Any) -> None:
    return None


def count(state: Any) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


def test_a_node_on_a_worker_that_writes_nothing_streams_as_none(url: str) -> None:
    graph = Graph("quiet_then_count")
    graph.add_node("quiet", node_type="quiet").add_node("count", node_type="count")
    graph.add_edge(START, "quiet").add_edge("quiet", "count").add_edge("count", END)
    compiled = graph.compile()
    worker = Worker(backend=url, capacity=4, poll_wait=0.1)
    worker.register_node("quiet", quiet)
    worker.register_node("count", count)

    async def scenario() -> tuple[list[Any], list[Any]]:
        orchestrator = DistributedOrchestrator(backend_url=url, recover=False)
        serving = asyncio.ensure_future(worker.start())
        try:
            chunks = [c async for c in orchestrator.astream(compiled, {"n": 0}, stream_mode=["updates", "values"],
                                                            workflow_id="quiet-1")]
            history = await orchestrator.get_state_history("quiet-1")
            return chunks, [snapshot.metadata.get("writes") for snapshot in history]
        finally:
            await worker.stop(grace=2)
            await serving
            await orchestrator.close()

    chunks, writes = run(scenario(), 100)
    assert chunks == [("values", {"n": 0}), ("updates", {"quiet": None}), ("updates", {"count": {"n": 1}}),
                      ("values", {"n": 1})]
    assert {"quiet": None} in writes and {"count": {"n": 1}} in writes
