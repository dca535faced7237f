"""core.history: checkpoint ids, and update_state writing exactly what running the node writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, Graph, Orchestrator, State
from distributed_agents.adapters.memory import reset_memory_spaces
from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.history import checkpoint_id, parse_checkpoint_id

WORKFLOW_IDS = st.text(st.characters(blacklist_characters=" \t\n\r.*>/\\", blacklist_categories=("Cs",)),
                       min_size=1, max_size=30)


@given(WORKFLOW_IDS, st.integers(0, 10**12))
def test_a_checkpoint_id_names_its_workflow_and_step_whatever_the_id_contains(workflow_id: str, step: int) -> None:
    assert parse_checkpoint_id(checkpoint_id(workflow_id, step)) == (workflow_id, step)


@pytest.mark.parametrize("text", ["", "wf", "wf:", ":3", "wf:-1", "wf:1.5", "wf:٣", None, 7])
def test_anything_else_is_not_a_checkpoint_id(text: Any) -> None:
    with pytest.raises(ConfigurationError, match="'<workflow_id>:<step>'"):
        parse_checkpoint_id(text)


def looping_join_graph(rounds: int) -> Graph:
    """a fans out to b and c, joined into d; d loops back to a until ``rounds`` rounds ran."""
    graph = Graph("loop_join", reducers={"log": "append", "total": "add"})
    graph.add_node("a", lambda s: {"log": "a", "total": 1})
    graph.add_node("b", lambda s: {"log": "b", "total": 10})
    graph.add_node("c", lambda s: {"log": "c"})
    graph.add_node("d", lambda s: {"rounds": s.get("rounds", 0) + 1, "log": "d"})
    graph.set_entry_point("a").add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d")
    graph.add_conditional_edge("d", lambda s: "again" if s["rounds"] < rounds else "stop", {"again": "a", "stop": END})
    return graph.compile()


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3))
def test_update_state_as_the_node_that_ran_reproduces_that_step_exactly(rounds: int) -> None:
    """Fork the checkpoint before each one-node step, write that node's updates with update_state:
    the new checkpoint's values, next nodes and join progress equal those of the real step."""
    reset_memory_spaces()

    async def scenario() -> list[tuple[Any, Any]]:
        async with Orchestrator() as orchestrator:
            graph = looping_join_graph(rounds)
            await orchestrator.execute(graph, {"log": []}, workflow_id="wf")
            history = list(reversed(await orchestrator.get_state_history("wf")))
            compared = []
            for before, after in zip(history, history[1:]):
                if len(after.metadata["writes"]) != 1:
                    continue  # b and c ran together: no single node to stand for
                ((node, updates),) = after.metadata["writes"].items()
                fork = await orchestrator.fork(before.checkpoint_id, workflow_id=f"fork-{before.step}")
                replayed = await orchestrator.update_state(fork, updates, as_node=node)
                store = orchestrator.backend.state_store
                real = (await store.list_checkpoints("wf", limit=1, before=after.step + 1))[0]
                copy = (await store.list_checkpoints(fork, limit=1))[0]
                compared.append(((replayed.values, replayed.next, dict(copy.frontier)),
                                 (after.values, after.next, dict(real.frontier))))
            return compared

    compared = run(scenario())
    assert len(compared) == 2 * rounds  # every a and d step
    for replayed, real in compared:
        assert replayed == real


def test_update_state_as_start_routes_like_input_and_keeps_join_progress() -> None:
    async def scenario() -> tuple[Any, Any]:
        async with Orchestrator() as orchestrator:
            graph = looping_join_graph(2)
            await orchestrator.execute(graph, {"log": []}, workflow_id="wf")
            fork = await orchestrator.fork("wf:0", workflow_id="again")
            snapshot = await orchestrator.update_state(fork, {"log": "input"}, as_node="__start__")
            return snapshot, await orchestrator.resume(fork, graph)

    snapshot, result = run(scenario())
    assert snapshot.next == ("a",) and snapshot.values == {"log": ["input"]}
    assert isinstance(result, State) and result["log"][0] == "input" and result["rounds"] == 2


def test_a_fork_of_a_typed_workflow_returns_what_its_output_schema_declares() -> None:
    from typing import TypedDict

    class Essay(TypedDict, total=False):
        topic: str
        draft: str
        notes: list[str]

    class Published(TypedDict, total=False):
        draft: str

    graph = Graph("typed", state_schema=Essay, output_schema=Published)
    graph.add_node("write", lambda s: {"draft": f"on {s['topic']}", "notes": ["written"]})
    graph.set_entry_point("write").set_finish_point("write").compile()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Orchestrator() as orchestrator:
            original = await orchestrator.execute(graph, {"topic": "bees"}, workflow_id="wf-typed")
            forked = await orchestrator.execute(graph, from_checkpoint="wf-typed:0", workflow_id="fork-typed")
            return dict(original), dict(forked)

    original, forked = run(scenario())
    assert original == forked == {"draft": "on bees"}
