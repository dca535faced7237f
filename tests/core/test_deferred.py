"""Deferred nodes (``add_node(..., defer=True)``) and ``NodeContext.remaining_steps``, on memory."""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents import END, START, Graph, NodeContext, Orchestrator, State

pytestmark = pytest.mark.timeout(60)


def execute(graph: Graph, state: dict[str, Any], **options: Any) -> State:
    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            return await orchestrator.execute(graph, state, **options)

    return run(scenario())


def uneven_graph(defer: bool) -> Graph:
    """LangGraph's deferred-node example: branches of one and two nodes end in ``d``."""
    def node(name: str) -> Any:
        return lambda state: {"aggregate": [name.upper()]}

    graph = Graph(f"uneven_{defer}", reducers={"aggregate": "extend"})
    for name in ("a", "b", "b_2", "c"):
        graph.add_node(name, node(name))
    graph.add_node("d", node("d"), defer=defer)
    graph.add_edge(START, "a").add_edge("a", "b").add_edge("a", "c").add_edge("b", "b_2")
    graph.add_edge("b_2", "d").add_edge("c", "d").add_edge("d", END)
    return graph.compile()


def test_a_deferred_node_waits_for_the_longer_branch_and_runs_once() -> None:
    assert execute(uneven_graph(True), {"aggregate": []})["aggregate"] == ["A", "B", "C", "B_2", "D"]
    # Without defer, d runs after each branch: what defer is for.
    assert execute(uneven_graph(False), {"aggregate": []})["aggregate"] == ["A", "B", "C", "B_2", "D", "D"]


def test_deferred_changes_the_fingerprint_only_when_set() -> None:
    assert uneven_graph(True).spec()["nodes"][4]["defer"] is True
    assert "defer" not in uneven_graph(False).spec()["nodes"][4]


def test_a_node_reads_the_remaining_steps_to_wrap_up_before_the_limit() -> None:
    seen: list[int | None] = []

    def work(state: State, context: NodeContext) -> dict[str, Any]:
        seen.append(context.remaining_steps)
        return {"count": state["count"] + 1, "wrapped_up": context.remaining_steps == 1}

    graph = Graph("wrap_up").add_node("work", work).set_entry_point("work")
    graph.add_conditional_edge("work", lambda s: END if s["wrapped_up"] else "work", ["work", END]).compile()
    result = execute(graph, {"count": 0}, step_limit=5)
    assert seen == [5, 4, 3, 2, 1]
    assert result["count"] == 5 and result["wrapped_up"] is True
