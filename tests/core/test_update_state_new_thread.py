"""``update_state`` of a thread that does not exist yet starts it unrun, as LangGraph's does.

LangGraph 1.2.24 (checked side by side): ``update_state(new_config, values)`` stores the
values as the thread's first state with the entry points next, and ``invoke(None,
config)`` runs it; with ``as_node=`` the values stand for that node's output and the
nodes routed after it are next. Here the workflow is created ``pending`` (no node run,
no ``workflow.started`` event), and a bad update leaves no workflow behind.
"""

from __future__ import annotations

import asyncio
import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import END, START, InMemorySaver, Orchestrator, StateGraph, WorkflowStatus, interrupt
from distributed_agents.core.errors import ConfigurationError, StateValidationError, WorkflowNotFoundError

pytestmark = pytest.mark.timeout(60)


class Ask(TypedDict, total=False):
    q: str
    a: str
    n: int


def ask(state: Ask) -> dict[str, Any]:
    return {"a": interrupt({"question": state.get("q")})}


def after(state: Ask) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


def ask_graph() -> Any:
    builder = StateGraph(Ask)
    builder.add_node("ask", ask).add_node("after", after)
    builder.add_edge(START, "ask").add_edge("ask", "after").add_edge("after", END)
    return builder.compile(checkpointer=InMemorySaver())


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}


def test_values_for_a_new_thread_are_its_input_and_invoke_none_runs_it() -> None:
    app, config = ask_graph(), thread()
    new_config = app.update_state(config, {"q": "seed", "n": 5})
    assert new_config["configurable"]["thread_id"] == config["configurable"]["thread_id"]
    snapshot = app.get_state(config)
    assert snapshot.values == {"q": "seed", "n": 5} and snapshot.next == ("ask",)
    assert snapshot.metadata["source"] == "update"  # (LangGraph 1.2.24's, for an update of a new thread)
    paused = app.invoke(None, config)
    assert [i.value for i in paused["__interrupt__"]] == [{"question": "seed"}]


def test_values_as_a_node_of_a_new_thread_route_after_that_node() -> None:
    app, config = ask_graph(), thread()
    app.update_state(config, {"q": "seed"}, as_node="ask")
    snapshot = app.get_state(config)
    assert snapshot.values == {"q": "seed"} and snapshot.next == ("after",)
    assert snapshot.metadata["source"] == "update" and snapshot.metadata["writes"] == {"ask": {"q": "seed"}}
    assert snapshot.step == 0 and len(list(app.get_state_history(config))) == 1  # one checkpoint, as LangGraph's
    assert app.invoke(None, config) == {"q": "seed", "n": 1}


def test_a_new_thread_is_pending_unrun_and_announced_by_no_start_event() -> None:
    graph = ask_graph()
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            events = await orchestrator.backend.message_bus.subscribe(f"events.{workflow_id}.>")
            await orchestrator.update_state(workflow_id, {"q": "x"}, graph=graph)
            status = await orchestrator.get_workflow_status(workflow_id)
            assert status.status == WorkflowStatus.PENDING and status.step == 0
            assert await events.get(timeout=0.5) is None  # nothing ran, nothing was announced
            paused = await orchestrator.resume(workflow_id, graph)
            assert paused["__interrupt__"][0]["value"] == {"question": "x"}
            assert await events.get(timeout=5) is not None  # (the subscription hears the run)
            await events.close()

    run(scenario())


def test_a_bad_update_of_a_new_thread_leaves_no_workflow_behind() -> None:
    app, config = ask_graph(), thread()
    with pytest.raises(ConfigurationError, match="'__x' start with '__'|reserved"):
        app.update_state(config, {"__x": 1})
    with pytest.raises(ConfigurationError, match="as_node='nope' is not a node"):
        app.update_state(config, {"q": "x"}, as_node="nope")
    with pytest.raises(StateValidationError, match="state key 'n', which Ask declares as int"):
        app.update_state(config, {"n": "not an int"}, as_node="ask")  # the schema's type, as for a node
    empty = app.get_state(config)  # LangGraph's snapshot of a thread with no checkpoint
    assert (empty.values, empty.next, empty.step, empty.status) == ({}, (), -1, None)


def test_without_a_graph_an_unknown_id_is_still_not_found_and_says_how_to_start_it() -> None:
    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            with pytest.raises(WorkflowNotFoundError, match="pass graph= to start a new one"):
                await orchestrator.update_state(f"wf-{uuid.uuid4().hex[:8]}", {"q": "x"})

    run(scenario())


def test_a_node_seed_is_checked_as_that_nodes_writes_over_the_schemas_defaults() -> None:
    """LangGraph 1.2.24: a Pydantic state with a required field, seeded as a node's output that
    gives it; the default of another field is there when the next node reads the state."""
    from pydantic import BaseModel

    class Profile(BaseModel):
        name: str
        count: int = 7
        items: Annotated[list[str], operator.add] = []

    def greet(state: Any) -> dict[str, Any]:
        return {"items": [f"{state['name']}:{state['count']}"]}  # (a dict here: README, state schemas)

    builder = StateGraph(Profile)
    builder.add_node("seed", lambda s: {}).add_node("greet", greet)
    builder.add_edge(START, "seed").add_edge("seed", "greet").add_edge("greet", END)
    app, config = builder.compile(checkpointer=InMemorySaver()), thread()
    app.update_state(config, {"name": "bob", "items": ["seeded"]}, as_node="seed")
    assert app.get_state(config).next == ("greet",)
    assert app.invoke(None, config) == {"name": "bob", "count": 7, "items": ["seeded", "bob:7"]}


def test_a_new_input_on_a_seeded_thread_runs_from_start_on_the_seeded_state() -> None:
    """LangGraph's "seed the history, then invoke with the user's message"."""
    class Log(TypedDict, total=False):
        log: Annotated[list[str], operator.add]

    builder = StateGraph(Log)
    builder.add_node("a", lambda s: {"log": ["a"]}).add_edge(START, "a").add_edge("a", END)
    app, config = builder.compile(checkpointer=InMemorySaver()), thread()
    app.update_state(config, {"log": ["seed"]})
    assert app.invoke({"log": ["input"]}, config) == {"log": ["seed", "input", "a"]}


def test_the_first_step_a_seeded_thread_runs_does_not_pause_before_it() -> None:
    """LangGraph 1.2.24: a run from an update does not stop at an interrupt_before of its first step."""
    class Log(TypedDict, total=False):
        log: Annotated[list[str], operator.add]

    builder = StateGraph(Log)
    builder.add_node("a", lambda s: {"log": ["a"]}).add_node("c", lambda s: {"log": ["c"]})
    builder.add_edge(START, "a").add_edge("a", "c").add_edge("c", END)
    app = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["a", "c"])
    config = thread()
    app.update_state(config, {"log": ["seed"]})
    assert app.invoke(None, config)["log"] == ["seed", "a"]  # through a, paused before c
    assert app.get_state(config).next == ("c",)


def test_concurrent_seeds_of_one_thread_all_land() -> None:
    class Log(TypedDict, total=False):
        log: Annotated[list[str], operator.add]

    builder = StateGraph(Log)
    builder.add_node("a", lambda s: {"log": ["a"]}).add_edge(START, "a").add_edge("a", END)
    graph = builder.compile()
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> dict[str, Any]:
        orchestrators = [Orchestrator() for _ in range(3)]
        try:
            await asyncio.gather(*(o.update_state(workflow_id, {"log": [f"seed{i}"]}, graph=graph)
                                   for i, o in enumerate(orchestrators)))
            return dict(await orchestrators[0].resume(workflow_id, graph))
        finally:
            for orchestrator in orchestrators:
                await orchestrator.close()

    done = run(scenario())
    assert sorted(done["log"][:3]) == ["seed0", "seed1", "seed2"] and done["log"][3:] == ["a"]


def test_attaching_to_a_seeded_thread_replays_it_and_ends() -> None:
    """A pending workflow (seeded, updated or forked, not run since) has nothing driving it: a
    stream attached to it ends after its checkpoints, as one attached at a pause does."""
    graph = ask_graph()
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[Any]:
        async with Orchestrator() as orchestrator:
            await orchestrator.update_state(workflow_id, {"q": "x"}, graph=graph)
            return [chunk async for chunk in orchestrator.astream(workflow_id, stream_mode="values")]

    assert run(scenario(), timeout=20) == [{"q": "x"}]
