"""JSON fidelity through a workflow: what the next node reads is what the node wrote.

A value JSON would change (int keys, tuples, dict/int/str subclasses, NaN, lone
surrogates) is refused where it is written - node output, initial state, reducer
output - naming the node, the key and the nested path. Everything accepted reaches the
next node, ``execute()``, ``get_result()``, ``resume()`` and workers unchanged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.errors import NodeExecutionError, StateNotSerializableError

pytestmark = pytest.mark.timeout(60)


def test_issue_example_node_output_is_refused_naming_node_key_and_path() -> None:
    def writer(state: State) -> dict[str, Any]:
        return {"by_id": {7: "seven"}, "pair": (1, 2), "tally": Counter(a=2)}

    graph = Graph("fidelity").add_node("writer", writer).add_node("reader", lambda s: None)
    graph.set_entry_point("writer").add_edge("writer", "reader").set_finish_point("reader").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(graph, {}, workflow_id="wf-json")
        return caught.value, await orchestrator.get_workflow_status("wf-json")

    error, status = run(scenario())
    assert error.node == "writer" and error.error_type == "StateNotSerializableError"
    assert "node 'writer'" in str(error) and "by_id.<key 7>" in str(error)
    assert status.status == "failed" and status.error["node"] == "writer"


@pytest.mark.parametrize("bad", [{"ids": {1: "a"}}, {"pair": (1, 2)}, {"tally": Counter(a=1)},
                                 {"x": float("nan")}, {"s": "\ud800"}], ids=["int-key", "tuple", "counter", "nan",
                                                                          "surrogate"])
def test_initial_state_json_would_change_is_refused_before_anything_is_stored(bad: dict[str, Any]) -> None:
    graph = Graph("init").add_node("n", lambda s: None).set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(StateNotSerializableError) as caught:
            await orchestrator.execute(graph, bad, workflow_id="wf-init")
        return caught.value, await orchestrator.list_workflows()

    error, workflows = run(scenario())
    assert error.key == next(iter(bad)) and workflows == []


def test_node_output_refused_on_a_worker_names_the_node_too() -> None:
    graph = Graph("remote_json").add_node("w", node_type="w").set_entry_point("w").set_finish_point("w").compile()
    worker = Worker(capacity=1, poll_wait=0.05)
    worker.register_node("w", lambda s: {"found": {"items": [1, (2, 3)]}})

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start())
        try:
            with pytest.raises(NodeExecutionError) as caught:
                await Orchestrator(local_nodes=False).execute(graph, {})
            return caught.value
        finally:
            await worker.stop(grace=1)
            await serving

    error = run(scenario())
    assert error.node == "w" and "found.items[1]" in str(error) and "tuple" in str(error)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=25, deadline=None)
@given(value=json_values)
def test_execute_next_node_get_result_and_resume_see_the_same_value(value: Any) -> None:
    seen: list[Any] = []

    def reader(state: State) -> None:
        seen.append(state["v"])

    graph = Graph("same_everywhere").add_node("writer", lambda s: {"v": value}).add_node("reader", reader)
    graph.set_entry_point("writer").add_edge("writer", "reader").set_finish_point("reader").compile()

    async def scenario() -> tuple[Any, Any, Any]:
        orchestrator = Orchestrator(backend="memory://fidelity")
        result = await orchestrator.execute(graph, {}, workflow_id="wf-same")
        stored = await orchestrator.get_result("wf-same")
        resumed = await Orchestrator(backend="memory://fidelity").resume("wf-same", graph)
        await orchestrator.backend.state_store.delete("wf-same")
        return result["v"], stored["v"], resumed["v"]

    from_execute, from_result, from_resume = run(scenario())
    assert repr(from_execute) == repr(from_result) == repr(from_resume) == repr(seen[0]) == repr(value)


def test_a_value_that_contains_itself_is_reported_as_a_cycle_not_as_too_deep() -> None:
    from distributed_agents.core.codec import find_non_json
    looped: list[Any] = [1]
    looped.append(looped)
    nested: dict[str, Any] = {"x": {"y": []}}
    nested["x"]["y"].append(nested["x"])
    assert find_non_json(looped) is not None and find_non_json(looped)[0] == "[1]"  # type: ignore[index]
    assert "contains itself" in find_non_json(looped)[1]  # type: ignore[index]
    assert find_non_json(nested)[0] == ".x.y[0]"  # type: ignore[index]
    deep: list[Any] = []
    cursor = deep
    for _ in range(3000):
        cursor.append([])
        cursor = cursor[0]
    assert "nested too deeply" in find_non_json(deep)[1]  # type: ignore[index]


@pytest.mark.timeout(60)
def test_a_value_nested_two_hundred_thousand_levels_is_refused_in_one_linear_walk() -> None:
    # The cycle search that follows a RecursionError once copied its ancestors at every
    # level: quadratic, so a node returning such a value kept a worker's event loop busy
    # for many minutes (no heartbeats, no settle). It must be one linear walk.
    from distributed_agents.core.codec import find_non_json
    deep: list[Any] = []
    cursor = deep
    for _ in range(200_000):
        cursor.append([])
        cursor = cursor[0]
    found = find_non_json(deep)
    assert found is not None and "nested too deeply" in found[1]
    cursor.append(deep)  # now the innermost list holds the outermost one
    found = find_non_json(deep)
    assert found is not None and "contains itself" in found[1] and found[0].count("[0]") == 200_001
