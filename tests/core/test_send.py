"""``Send(node, arg)``: map-reduce inside one step, on the in-process (memory) backend.

Each Send is its own task with its own input; the updates merge through the reducers by
Send index, whatever order the tasks finish in; a failed Send task is the only one that
runs again on resume; frontiers without Sends (older checkpoints) still resume.
"""

from __future__ import annotations

import asyncio
import operator
import random
import re
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, START, Graph, NodeContext, Orchestrator, Send, State
from distributed_agents.core.errors import ExecutionError, NodeExecutionError
from distributed_agents.core.frontier import TaskEntry, read_entries

pytestmark = pytest.mark.timeout(60)


# -- LangGraph's documented map-reduce example (jokes about generated subjects) ---------


class OverallState(TypedDict):
    topic: str
    subjects: list[str]
    jokes: Annotated[list[str], operator.add]
    best_selected_joke: str


JOKES = {
    "lions": "Why don't lions like fast food? Because they can't catch it!",
    "elephants": "Why don't elephants use computers? They're afraid of the mouse!",
    "penguins": "Why don't penguins like talking to strangers at parties? Because they find it hard to break the ice.",
}


def joke_graph() -> Graph:
    def generate_topics(state: State) -> dict[str, Any]:
        return {"subjects": ["lions", "elephants", "penguins"]}

    async def generate_joke(state: State) -> dict[str, Any]:
        # Finish in reverse order: the merge order must still be the Send order.
        await asyncio.sleep({"lions": 0.03, "elephants": 0.02, "penguins": 0.0}[state["subject"]])
        return {"jokes": [JOKES[state["subject"]]]}

    def continue_to_jokes(state: State) -> list[Send]:
        return [Send("generate_joke", {"subject": s}) for s in state["subjects"]]

    def best_joke(state: State) -> dict[str, Any]:
        return {"best_selected_joke": "penguins"}

    graph = Graph("jokes", state_schema=OverallState)
    graph.add_node("generate_topics", generate_topics)
    graph.add_node("generate_joke", generate_joke)
    graph.add_node("best_joke", best_joke)
    graph.add_edge(START, "generate_topics")
    graph.add_conditional_edge("generate_topics", continue_to_jokes, ["generate_joke"])
    graph.add_edge("generate_joke", "best_joke")
    graph.add_edge("best_joke", END)
    return graph.compile()


def test_langgraph_map_reduce_example_gives_the_same_result() -> None:
    async def scenario() -> tuple[State, list[str]]:
        async with Orchestrator() as orchestrator:
            result = await orchestrator.execute(joke_graph(), {"topic": "animals"}, workflow_id="wf-jokes")
            history = await orchestrator.get_state_history("wf-jokes")
            [mapped] = [snapshot for snapshot in history if snapshot.step == 2]  # the step that ran the Sends
            return result, sorted(mapped.metadata["writes"])

    result, writers = run(scenario())
    # What LangGraph's docs show for this graph.
    assert dict(result) == {
        "topic": "animals", "subjects": ["lions", "elephants", "penguins"],
        "jokes": [JOKES["lions"], JOKES["elephants"], JOKES["penguins"]],
        "best_selected_joke": "penguins",
    }
    assert writers == ["generate_joke#0", "generate_joke#1", "generate_joke#2"]


# -- semantics ------------------------------------------------------------------------


def map_graph(name: str = "map", *, mixed: bool = False) -> Graph:
    async def square(state: State) -> dict[str, Any]:
        await asyncio.sleep(random.random() / 100)  # random finishing order
        if "item" not in state:  # the edge-triggered run sees the shared state
            return {"seen_shared": True}
        return {"total": state["item"] ** 2, "order": [state["item"]]}

    def fan_out(state: State) -> list[Any]:
        sends: list[Any] = [Send("square", {"item": x}) for x in state["items"]]
        return [*sends, "square"] if mixed else sends

    graph = Graph(name, reducers={"total": "add", "order": "extend"})
    graph.add_node("start", lambda state: {"total": 0, "order": []})
    graph.add_node("square", square)
    graph.add_node("done", lambda state: {"finished": True})
    graph.set_entry_point("start")
    graph.add_conditional_edge("start", fan_out, ["square", END])
    graph.add_edge("square", "done").set_finish_point("done")
    return graph.compile()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=-1000, max_value=1000), max_size=30))
def test_a_map_over_any_list_reduces_to_the_sum_in_send_order(items: list[int]) -> None:
    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            return await orchestrator.execute(map_graph(), {"items": items})

    result = run(scenario())
    assert result["total"] == sum(x * x for x in items)
    assert result["order"] == items  # merged by Send index, not by finishing order
    assert result.get("finished") is (True if items else None)


def test_sends_mixed_with_plain_keys_run_both_kinds_and_the_plain_run_merges_first() -> None:
    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            return await orchestrator.execute(map_graph("mixed", mixed=True), {"items": [3, 4]})

    result = run(scenario())
    assert result["total"] == 25 and result["order"] == [3, 4] and result["seen_shared"] is True


def test_each_send_has_a_deterministic_task_id_and_its_own_input() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def work(state: State, context: NodeContext) -> dict[str, Any]:
        seen.append((context.idempotency_key, dict(state)))
        return {}

    graph = Graph("ids")
    graph.add_node("work", work)
    graph.add_conditional_edge(START, lambda s: [Send("work", {"n": n}) for n in s["ns"]], ["work"])
    graph.set_finish_point("work").compile()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {"ns": [7, 8], "other": "x"}, workflow_id="wf-ids")

    run(scenario())
    # "<workflow>:<run>.<incarnation>:<step>:<node>#<i>": the incarnation is stamped when the workflow is created
    assert [(re.sub(r"^wf-ids:0\.[0-9a-f]{8}:", "wf-ids:0:", task), arg) for task, arg in sorted(seen)] == \
        [("wf-ids:0:0:work#0", {"n": 7}), ("wf-ids:0:0:work#1", {"n": 8})]


def test_a_failed_send_task_is_the_only_one_run_again_on_resume() -> None:
    calls: list[int] = []
    broken = {"on": True}

    def work(state: State) -> dict[str, Any]:
        calls.append(state["n"])
        if state["n"] == 2 and broken["on"]:
            raise RuntimeError("item 2 is not ready")
        return {"sum": state["n"]}

    graph = Graph("resume_sends", reducers={"sum": "add"})
    graph.add_node("work", work)
    graph.add_conditional_edge(START, lambda s: [Send("work", {"n": n}) for n in (1, 2, 3)], ["work"])
    graph.set_finish_point("work").compile()

    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            with pytest.raises(NodeExecutionError, match="item 2 is not ready"):
                await orchestrator.execute(graph, {"sum": 0}, workflow_id=f"wf-{uuid.uuid4().hex[:6]}")
            [failed] = await orchestrator.list_workflows("failed", graph="resume_sends")
            broken["on"] = False
            return await orchestrator.resume(failed.workflow_id, graph)

    result = run(scenario())
    assert result["sum"] == 6
    assert sorted(calls) == [1, 2, 2, 3]  # 1 and 3 kept their writes


def test_two_sends_writing_a_key_without_reducer_is_a_conflict_naming_both_tasks() -> None:
    graph = Graph("conflict")
    graph.add_node("work", lambda s: {"value": s["n"]})
    graph.add_conditional_edge(START, lambda s: [Send("work", {"n": 1}), Send("work", {"n": 2})], ["work"])
    graph.set_finish_point("work").compile()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {})

    with pytest.raises(ExecutionError, match=r"'work#0' and 'work#1' both wrote state key 'value'"):
        run(scenario())


@pytest.mark.parametrize(("sent", "message"), [
    (lambda s: [Send("elsewhere", {"n": 1})], r"Send\(node='elsewhere'.*not one of \['work'\]"),
    (lambda s: [Send("work", 5)], r"argument must be a dict .* got int"),
    (lambda s: [Send("work", {"n": {1, 2}})], r"set"),
])
def test_bad_sends_fail_the_workflow_naming_the_condition(sent: Any, message: str) -> None:
    graph = Graph(f"bad_send_{uuid.uuid4().hex[:6]}")
    graph.add_node("first", lambda s: {}).add_node("work", lambda s: {}).add_node("elsewhere", lambda s: {})
    graph.set_entry_point("first").add_edge("first", "elsewhere")
    graph.add_conditional_edge("first", sent, ["work"])
    graph.set_finish_point("work").set_finish_point("elsewhere").compile()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {})

    with pytest.raises(ExecutionError, match=message) as info:
        run(scenario())
    assert "after node 'first'" in str(info.value)


def test_frontier_entries_order_plain_first_then_sends_by_index_and_old_frontiers_read_as_before() -> None:
    order = {"a": 0, "b": 1}
    frontier = {"next": ["b"], "sends": [{"node": "b", "arg": {"i": 0}}, {"node": "a", "arg": {"i": 1}},
                                          {"node": "b", "arg": {"i": 2}}]}
    assert read_entries(frontier, order) == [
        TaskEntry("a", 0, {"i": 1}), TaskEntry("b"), TaskEntry("b", 0, {"i": 0}), TaskEntry("b", 1, {"i": 2})]
    assert [e.key for e in read_entries(frontier, order)] == ["a#0", "b", "b#0", "b#1"]
    assert read_entries({"next": ["b", "a"], "joins": {}}, order) == [TaskEntry("a"), TaskEntry("b")]


def test_a_node_named_like_a_send_task_is_refused() -> None:
    graph = Graph("clash").add_node("work").add_node("work#0")
    graph.set_entry_point("work").add_edge("work", "work#0").set_finish_point("work#0")
    with pytest.raises(Exception, match="how the Sends to node 'work' are named"):
        graph.compile()
