"""A step's tokens come after the values of its input checkpoint, on every backend.

The example (streaming trial): on Redis with a worker, ``astream(graph, input,
stream_mode=["values", "messages"])`` yielded the first node's tokens before the input's
``values`` chunk in 9 to 22 of 30 runs: the first step's tasks go out with the workflow's
creation, so a worker streams before the "workflow.started" event that made the reader
yield step 0. LangGraph yields the input values first. Now a live chunk of step N makes the
reader yield the values up to checkpoint N before it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import END, START, Graph, NodeContext, Send, Worker, get_stream_writer
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return f"{found}{'&' if '?' in found else '?'}prefix=so{uuid.uuid4().hex[:8]}"


async def plan(state: Any, context: NodeContext) -> dict[str, Any]:
    get_stream_writer()({"plan": "start"})
    for i in range(5):
        context.emit_message(f"p{i}")
    return {"items": [0, 1, 2]}


async def work(state: Any, context: NodeContext) -> dict[str, Any]:
    for i in range(3):
        context.emit_message(f"w{state['k']}-{i}")
    return {"log": [state["k"]]}


def graph() -> Graph:
    built = Graph("stream_order", reducers={"log": "extend"})
    built.add_node("plan", plan).add_node("work", work).add_node("gather", lambda s: {"total": len(s["log"])})
    built.add_edge(START, "plan").add_conditional_edge("plan", lambda s: [Send("work", {"k": k}) for k in s["items"]],
                                                       ["work"])
    return built.add_edge("work", "gather").add_edge("gather", END).compile()


def test_every_token_comes_after_the_values_of_its_steps_input(url: str) -> None:
    worker = Worker(backend=url, capacity=8, poll_wait=0.1)
    worker.register_node("plan", plan)
    worker.register_node("work", work)
    worker.register_node("gather", lambda s: {"total": len(s["log"])})

    async def scenario() -> list[list[tuple[str, int, int]]]:
        import asyncio

        orchestrator = DistributedOrchestrator(backend_url=url, recover=False)
        serving = asyncio.ensure_future(worker.start())
        misplaced = []
        try:
            for _ in range(12):
                values, wrong = 0, []
                async for mode, chunk in orchestrator.astream(graph(), {"log": []},
                                                              stream_mode=["values", "messages", "custom"]):
                    if mode == "values":
                        values += 1
                    elif mode == "messages" and values != chunk[1]["step"] + 1:
                        wrong.append((chunk[0], chunk[1]["step"], values))
                    elif mode == "custom" and values < 1:
                        wrong.append(("custom", 0, values))
                misplaced.append(wrong)
        finally:
            await worker.stop(grace=2)
            await serving
            await orchestrator.close()
        return misplaced

    misplaced = run(scenario(), 100)
    assert not any(misplaced), misplaced
