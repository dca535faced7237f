"""``resume(id, Command(resume=answer, update=values))``: LangGraph's answer-with-an-edit.

The update is merged through the reducers as a write of ``START``; the paused step runs
next on the updated state, under its own number (its interrupt and subgraph ids stay),
unchanged otherwise: the node that asked runs again and sees the edit, the writes its
step's other nodes kept are kept and merged after it; the step's commit holds the edit. Checked side by side with LangGraph 1.2.24
(``langgraph`` gives the same values for the same graph and calls).
"""

from __future__ import annotations

import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import END, START, Command, InMemorySaver, Orchestrator, StateGraph, WorkflowStatus, interrupt
from distributed_agents.core.errors import ConfigurationError, StateNotSerializableError

pytestmark = pytest.mark.timeout(60)


class Review(TypedDict, total=False):
    q: str
    a: str
    n: int
    log: Annotated[list[str], operator.add]


def ask(state: Review) -> dict[str, Any]:
    answer = interrupt({"question": state.get("q")})
    return {"a": f"{answer}-{state.get('n')}", "log": ["ask"]}


def other(state: Review) -> dict[str, Any]:
    return {"log": ["other"]}


def after(state: Review) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


def review_graph(**breakpoints: Any) -> Any:
    builder = StateGraph(Review)
    builder.add_node("ask", ask).add_node("other", other).add_node("after", after)
    builder.add_edge(START, "ask").add_edge(START, "other").add_edge(["ask", "other"], "after").add_edge("after", END)
    return builder.compile(checkpointer=InMemorySaver(), **breakpoints)


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}


def test_the_node_that_asked_runs_again_on_the_updated_state_and_kept_writes_merge_after_the_update() -> None:
    app, config = review_graph(), thread()
    paused = app.invoke({"q": "hi", "n": 1, "log": []}, config)
    assert [i.value for i in paused["__interrupt__"]] == [{"question": "hi"}]
    done = app.invoke(Command(resume="yes", update={"n": 10, "log": ["upd"]}), config)
    # LangGraph 1.2.24: {'q': 'hi', 'a': 'yes-10', 'n': 11, 'log': ['upd', 'ask', 'other']}
    assert done == {"q": "hi", "a": "yes-10", "n": 11, "log": ["upd", "ask", "other"]}
    # The edit is committed with the step it re-runs (its ids are the step's): no checkpoint of its own.
    history = list(app.get_state_history(config))
    assert [s.metadata["source"] for s in history] == ["loop", "loop", "input"]
    assert history[1].values == {"q": "hi", "a": "yes-10", "n": 10, "log": ["upd", "ask", "other"]}


def test_the_interrupts_left_unanswered_keep_their_ids_when_an_answer_comes_with_an_update() -> None:
    class Two(TypedDict, total=False):
        note: str
        log: Annotated[list[str], operator.add]

    def asker(name: str) -> Any:
        def node(state: Two) -> dict[str, Any]:
            return {"log": [f"{name}={interrupt(name)} note={state.get('note')}"]}
        return node

    builder = StateGraph(Two)
    builder.add_node("x", asker("x")).add_node("y", asker("y"))
    builder.add_edge(START, "x").add_edge(START, "y").add_edge("x", END).add_edge("y", END)
    app, config = builder.compile(checkpointer=InMemorySaver()), thread()
    paused = app.invoke({"log": []}, config)
    assert sorted(i.id for i in paused["__interrupt__"]) == ["0:x:0", "0:y:0"]
    again = app.invoke(Command(resume={"0:x:0": "X"}, update={"note": "edited"}), config)
    assert [i.id for i in again["__interrupt__"]] == ["0:y:0"]  # (README: it pauses again with the same id)
    done = app.invoke(Command(resume={"0:y:0": "Y"}), config)
    assert sorted(done["log"]) == ["x=X note=edited", "y=Y note=edited"]


def test_a_paused_subgraph_goes_on_with_the_answer_when_its_parent_is_edited() -> None:
    class Doc(TypedDict, total=False):
        topic: str
        draft: str
        approved: list[Any]
        log: Annotated[list[str], operator.add]

    writes: list[str] = []

    def write(state: Doc) -> dict[str, Any]:
        writes.append(state["topic"])
        return {"draft": state["topic"].upper()}

    def approve(state: Doc) -> dict[str, Any]:
        return {"approved": [interrupt({"draft": state["draft"]}), state["draft"]]}

    inner = StateGraph(Doc)
    inner.add_node("write", write).add_node("approve", approve)
    inner.add_edge(START, "write").add_edge("write", "approve").add_edge("approve", END)
    outer = StateGraph(Doc)
    outer.add_node("review", inner.compile()).add_node("after", lambda s: {"log": [f"after draft={s['draft']}"]})
    outer.add_edge(START, "review").add_edge("review", "after").add_edge("after", END)
    app, config = outer.compile(checkpointer=InMemorySaver()), thread()
    app.invoke({"topic": "tides"}, config)
    done = app.invoke(Command(resume="yes", update={"log": ["upd"]}), config)
    # LangGraph 1.2.24: the subgraph goes on from its pause (its first node does not run again).
    assert done == {"topic": "tides", "draft": "TIDES", "approved": ["yes", "TIDES"], "log": ["upd", "after draft=TIDES"]}
    assert writes == ["tides"]


def test_an_answer_with_an_update_at_a_static_breakpoint_applies_the_update_and_goes_on() -> None:
    builder = StateGraph(Review)
    builder.add_node("other", other).add_node("after", after)
    builder.add_edge(START, "other").add_edge("other", "after").add_edge("after", END)
    app, config = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["after"]), thread()
    app.invoke({"n": 1, "log": []}, config)
    # LangGraph ignores the resume value at a static breakpoint, and applies the update.
    assert app.invoke(Command(resume="ignored", update={"n": 20}), config) == {"n": 21, "log": ["other"]}


def test_an_update_without_an_answer_passes_a_static_breakpoint_and_the_paused_node_reads_it() -> None:
    builder = StateGraph(Review)
    builder.add_node("other", other).add_node("after", after)
    builder.add_edge(START, "other").add_edge("other", "after").add_edge("after", END)
    app, config = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["after"]), thread()
    app.invoke({"n": 1, "log": []}, config)
    assert app.get_state(config).next == ("after",)
    done = app.invoke(Command(update={"n": 40}), config)
    assert done == {"n": 41, "log": ["other"]}


async def paused_review(orchestrator: Orchestrator) -> str:
    """A review workflow started on ``orchestrator`` and paused at ``ask``'s interrupt(); its id."""
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    await orchestrator.execute(review_graph(), {"q": "hi", "n": 1, "log": []}, workflow_id=workflow_id)
    return workflow_id


def test_a_bad_update_is_refused_before_anything_changes() -> None:
    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            workflow_id = await paused_review(orchestrator)
            before = await orchestrator.get_state(workflow_id)
            with pytest.raises(ConfigurationError, match="'__secret' start with '__'"):
                await orchestrator.resume(workflow_id, Command(resume="yes", update={"__secret": 1}))
            with pytest.raises(StateNotSerializableError):
                await orchestrator.resume(workflow_id, Command(resume="yes", update={"n": object()}))
            with pytest.raises(ConfigurationError, match="must be a dict of state updates"):
                await orchestrator.resume(workflow_id, Command(resume="yes", update=[1, 2]))
            with pytest.raises(ConfigurationError, match="not goto= or graph="):
                await orchestrator.resume(workflow_id, Command(resume="yes", goto="after"))
            after_refusals = await orchestrator.get_state(workflow_id)
            assert after_refusals.checkpoint_id == before.checkpoint_id and after_refusals.values == before.values
            assert (await orchestrator.get_workflow_status(workflow_id)).status == WorkflowStatus.INTERRUPTED
            done = await orchestrator.resume(workflow_id, Command(resume="ok", update={"n": 2}))
            assert dict(done)["a"] == "ok-2"

    run(scenario())


def test_an_update_for_a_workflow_that_is_not_paused_says_to_use_update_state() -> None:
    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            workflow_id = await paused_review(orchestrator)
            await orchestrator.resume(workflow_id, Command(resume="yes"))
            with pytest.raises(ConfigurationError, match=r"completed, not paused; update_state\("):
                await orchestrator.resume(workflow_id, Command(update={"n": 5}))
            assert dict(await orchestrator.get_result(workflow_id))["n"] == 2

    run(scenario())


def test_a_stream_resumed_with_an_update_starts_with_the_edited_state() -> None:
    app, config = review_graph(), thread()
    app.invoke({"q": "hi", "n": 1, "log": []}, config)
    chunks = list(app.stream(Command(resume="yes", update={"n": 10, "log": ["upd"]}), config,
                             stream_mode=["values", "updates"]))
    # LangGraph 1.2.24 leads with the edited state and streams no chunk for the edit itself.
    assert chunks[0] == ("values", {"q": "hi", "n": 10, "log": ["upd"]})
    assert all("__start__" not in data for mode, data in chunks if mode == "updates")
    assert sorted(next(iter(data)) for mode, data in chunks if mode == "updates") == ["after", "ask", "other"]
    assert chunks[-1] == ("values", {"q": "hi", "a": "yes-10", "n": 11, "log": ["upd", "ask", "other"]})


class Topic(TypedDict, total=False):
    topic: str
    log: Annotated[list[str], operator.add]


def test_an_edit_without_an_answer_at_an_interrupt_asks_again_on_the_edited_state() -> None:
    """LangGraph 1.2.24, side by side: ``Command(update={'topic': 'EDIT'})`` at an ``interrupt()``
    re-runs the node, which asks again with the edited topic (same id); the answer then goes on."""
    def ask(state: Topic) -> dict[str, Any]:
        return {"log": [f"ask {interrupt({'topic': state['topic']})} {state['topic']}"]}

    builder = StateGraph(Topic)
    builder.add_node("ask", ask).add_edge(START, "ask").add_edge("ask", END)
    app, config = builder.compile(checkpointer=InMemorySaver()), thread()
    first = app.invoke({"topic": "t", "log": []}, config)
    again = app.invoke(Command(update={"topic": "EDIT"}), config)
    assert [i.value for i in again["__interrupt__"]] == [{"topic": "EDIT"}]
    assert [i.id for i in again["__interrupt__"]] == [i.id for i in first["__interrupt__"]]
    assert app.invoke(Command(resume="ok"), config) == {"topic": "EDIT", "log": ["ask ok EDIT"]}


def test_langgraphs_list_of_key_value_pairs_is_an_update_too() -> None:
    """LangGraph takes ``Command(update=[(key, value), ...])`` from a node and in an answer; one pair
    per key here (a repeated key is refused, saying to merge its values)."""
    def pairs(state: Review) -> Command[Any]:
        return Command(update=[("n", 5), ("log", ["pairs"])], goto="after")

    builder = StateGraph(Review)
    builder.add_node("pairs", pairs, destinations=("after",)).add_node("after", after)
    builder.add_edge(START, "pairs").add_edge("after", END)
    assert builder.compile().invoke({"log": []}) == {"n": 6, "log": ["pairs"]}

    def twice(state: Review) -> Command[Any]:
        return Command(update=[("log", ["a"]), ("log", ["b"])])

    repeated = StateGraph(Review)
    repeated.add_node("twice", twice).add_edge(START, "twice").add_edge("twice", END)
    with pytest.raises(Exception, match="writes 'log' more than once"):
        repeated.compile().invoke({"log": []})

    app, config = review_graph(), thread()
    app.invoke({"q": "hi", "n": 1, "log": []}, config)
    assert app.invoke(Command(resume="yes", update=[("n", 10)]), config)["a"] == "yes-10"
