"""Managed values on workers: a node run by a worker process reads ``remaining_steps`` and
``is_last_step`` as a local one does, whether its task carries the state or names it (a
large state, read from its checkpoint), and they stay out of the stored state."""

from __future__ import annotations

import operator
import pathlib
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import END, START, IsLastStep, RemainingSteps, StateGraph
from distributed_agents.core.task_state import INLINE_STATE_LIMIT
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


class Agent(TypedDict):
    log: Annotated[list, operator.add]
    blob: str
    remaining_steps: RemainingSteps
    is_last_step: IsLastStep


def agent_graph() -> Any:
    builder = StateGraph(Agent, name="managed_agent")
    builder.add_node("agent", node_type="agent").add_edge(START, "agent")
    builder.add_conditional_edges("agent", lambda s: END if s["log"][-1][0] == "done" else "agent", ["agent", END])
    return builder.compile()


@pytest.mark.parametrize("blob_bytes", [0, INLINE_STATE_LIMIT + 1024], ids=["inline", "by-reference"])
def test_a_worker_node_reads_the_managed_values(blob_bytes: int, redis_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"mv{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "managed_app:registry")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, recover=False)
        try:
            result = await orchestrator.execute(agent_graph(), {"log": [], "blob": "x" * blob_bytes},
                                                workflow_id="wf-managed", step_limit=4)
            stored = await orchestrator.backend.state_store.get("wf-managed")
            assert stored is not None
            return dict(result), dict(stored.state)
        finally:
            await orchestrator.close()

    workers.start("w1", "--capacity", "2")
    try:
        result, stored = run(scenario(), timeout=100)
    finally:
        workers.close()
    assert result["log"] == [["think", 4, False], ["think", 3, False], ["think", 2, False], ["done", 1, True]]
    assert set(result) == set(stored) == {"log", "blob"}


def test_a_worker_node_reads_its_own_metadata(redis_url: str, tmp_path: pathlib.Path) -> None:
    """add_node(metadata=) reaches the node's config["metadata"] on a worker too."""
    prefix = f"md{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "managed_app:registry")
    builder = StateGraph(Agent, name="tagged_graph")
    builder.add_node("tagged", node_type="tagged", metadata={"team": "red", "n": [1, 2]}).add_edge(START, "tagged")
    graph = builder.compile()

    async def scenario() -> dict[str, Any]:
        orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, recover=False)
        try:
            return dict(await orchestrator.execute(graph, {"log": [], "blob": ""}, workflow_id="wf-tagged"))
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        result = run(scenario(), timeout=100)
    finally:
        workers.close()
    assert result["log"] == [{"team": "red", "n": [1, 2], "langgraph_node": "tagged"}]
