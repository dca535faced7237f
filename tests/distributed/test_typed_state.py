"""A typed graph with Annotated reducers, its nodes on real worker processes, on Redis and NATS.

The workers only return JSON updates; the orchestrator merges them through the schema's
reducers (add_messages, operator.add), checks them against the schema, and filters the
result to the output schema, also for another orchestrator reading the result. A
failed step resumed by another orchestrator merges the kept writes exactly once.
"""

from __future__ import annotations

import asyncio
import operator
import pathlib
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph, State, add_messages
from distributed_agents.core.errors import NodeExecutionError, StateValidationError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


class Review(TypedDict):
    topic: str
    messages: Annotated[list[dict[str, Any]], add_messages]
    score: Annotated[int, operator.add]
    summary: str


class Summary(TypedDict):
    summary: str
    messages: list[dict[str, Any]]


def review_graph() -> Graph:
    """draft -> (review_a, review_b) -> tally, every node on a worker."""
    graph = Graph("typed_review", state_schema=Review, output_schema=Summary)
    graph.add_node("draft").add_node("review_a").add_node("review_b").add_node("tally")
    graph.set_entry_point("draft").add_edge("draft", "review_a").add_edge("draft", "review_b")
    graph.add_edge(["review_a", "review_b"], "tally").set_finish_point("tally")
    return graph.compile()


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_typed_graph_with_annotated_reducers_across_processes(backend: str, request: pytest.FixtureRequest,
                                                              tmp_path: pathlib.Path) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"typed{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "typed_app:registry")

    async def scenario() -> tuple[State, State, State, StateValidationError, dict[str, Any]]:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        reader = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)  # knows no graph
        try:
            result = await orchestrator.execute(review_graph(), {"topic": "tides"}, workflow_id="wf-typed")
            read = await reader.get_result("wf-typed")
            # A step that fails keeps review_a's writes; another orchestrator resumes and merges them once.
            (tmp_path / "broken").touch()
            with pytest.raises(NodeExecutionError, match="review_b"):
                await orchestrator.execute(review_graph(), {"topic": "reefs"}, workflow_id="wf-resumed")
            (tmp_path / "broken").unlink()
            resumed = await reader.resume("wf-resumed", review_graph())
            sloppy = Graph("typed_sloppy", state_schema=Review).add_node("sloppy")
            sloppy.set_entry_point("sloppy").set_finish_point("sloppy").compile()
            with pytest.raises(StateValidationError) as info:
                await orchestrator.execute(sloppy, {"topic": "x"}, workflow_id="wf-sloppy")
            status = await reader.get_workflow_status("wf-sloppy")
            return result, read, resumed, info.value, dict(status.error or {})
        finally:
            await orchestrator.close()
            await reader.close()

    workers.start("w1", "--capacity", "2")
    try:
        result, read, resumed, invalid, error = run(scenario(), timeout=100)
    finally:
        workers.close()
    expected = ["draft about tides (edited)", "review a", "review b"]
    assert sorted(result) == ["messages", "summary"]  # the output schema's keys only
    assert [m["content"] for m in result["messages"]] == expected
    assert result["summary"] == "3 messages, score 111"
    assert len({m["id"] for m in result["messages"]}) == 3
    assert dict(read) == dict(result)
    assert [m["content"] for m in resumed["messages"]] == ["draft about reefs (edited)", "review a", "review b"]
    assert resumed["summary"] == "3 messages, score 111"  # review_a's kept write merged once
    assert (invalid.key, invalid.node, invalid.graph) == ("summary", "sloppy", "typed_sloppy")
    assert error["key"] == "summary" and error["node"] == "sloppy" and "declares as str" in error["summary"]
