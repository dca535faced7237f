"""Routing is the same on every backend: join barriers and conditional entry with nodes on a worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.errors import ExecutionError
from distributed_agents.core.graph import END, START

pytestmark = pytest.mark.timeout(120)


def entry(state: Any) -> list[str]:
    """Start at a and x (the issue's entry edges), chosen from the input."""
    return list(state["start"])


def barrier_graph() -> Graph:
    """Declared b, a, x, c; START -> a, x; x->a, a->b, b->END, c->END; join [a, b] -> c; all on workers."""
    graph = Graph("barrier_remote", reducers={"log": "append"})
    for name in "baxc":
        graph.add_node(name)
    graph.add_conditional_edge(START, entry, ["a", "x", END])
    graph.add_edge("x", "a").add_edge("a", "b").add_edge("b", END).add_edge("c", END)
    graph.add_conditional_edge("c", lambda s: s.__setitem__("sneaky", 1), [END])  # a condition that writes
    return graph.add_edge(["a", "b"], "c").compile()


def logger(name: str) -> Any:
    def node(state: State) -> dict[str, Any]:
        return {"log": [name]}
    return node


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_join_barrier_and_conditional_entry_with_nodes_on_a_worker(backend: str, request: pytest.FixtureRequest) -> None:
    """c runs once after steps {a,x}, {a,b}; then c's condition writing the state fails the workflow."""
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    options = {"prefix": f"route{uuid.uuid4().hex[:8]}"} if backend != "memory" else {}

    async def scenario() -> tuple[list[list[str]], dict[str, Any], str]:
        orchestrator = Orchestrator(backend=url, backend_options=options, local_nodes=False, wait_for_workers=True)
        worker = Worker(backend=url, backend_options=options, capacity=4, poll_wait=0.05)
        for name in "baxc":
            worker.register_node(name, logger(name))
        serving = asyncio.ensure_future(worker.start())
        try:
            with pytest.raises(ExecutionError) as info:
                await orchestrator.execute(barrier_graph(), {"start": ["x", "a"]}, workflow_id="wf-barrier")
            record = await orchestrator.backend.state_store.get("wf-barrier")
            assert record is not None
            checkpoints = await orchestrator.backend.state_store.list_checkpoints("wf-barrier")
            steps = [list(cp.frontier["next"]) for cp in sorted(checkpoints, key=lambda cp: cp.step)]
            return steps, dict(record.state), record.status + ": " + str(info.value)
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()

    steps, state, outcome = run(scenario(), timeout=100)
    assert steps == [["a", "x"], ["b", "a"], ["b", "c"]]  # each step in declaration order: b, a, x, c
    assert state["log"] == ["a", "x", "b", "a"]  # the failed step (b, c) committed nothing
    assert "sneaky" not in state
    assert outcome.startswith("failed: ") and "tried to set state key 'sneaky'" in outcome
