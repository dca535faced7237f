"""Streams of nodes that write nothing, and of resumed runs, as LangGraph 1.2 streams them.

Measured against LangGraph 1.2.24 (``langgraph.graph.StateGraph`` with ``InMemorySaver``):
a node that returns None, ``{}`` or a ``Command`` with no update is streamed in "updates" as
``{node: None}``; "values" yields nothing for a step that wrote nothing (its state is the step
before's); a resumed run (``Command(resume=...)``, or ``stream(None, thread)`` after a
breakpoint) starts with the values of the state it resumes from.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from support.aio import run

from distributed_agents import END, START, Command, InMemorySaver, Orchestrator, StateGraph, interrupt


class S(TypedDict, total=False):
    x: int


class L(TypedDict, total=False):
    log: Annotated[list[str], operator.add]


def _writes_nothing_then_something() -> Any:
    def returns_none(state: S) -> None:
        return None

    def returns_empty(state: S) -> dict[str, Any]:
        return {}

    def only_routes(state: S) -> Command[Literal["last"]]:
        return Command(goto="last")

    def last(state: S) -> dict[str, Any]:
        return {"x": 2}

    graph = StateGraph(S)
    for name, func in [("a", returns_none), ("b", returns_empty), ("c", only_routes), ("last", last)]:
        graph.add_node(name, func)
    graph.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c").add_edge("last", END)
    return graph.compile(checkpointer=InMemorySaver())


def test_nodes_that_write_nothing_are_streamed_as_none_and_their_steps_yield_no_values() -> None:
    app = _writes_nothing_then_something()
    chunks = list(app.stream({"x": 0}, {"configurable": {"thread_id": "t1"}}, stream_mode=["updates", "values"]))
    assert chunks == [("values", {"x": 0}), ("updates", {"a": None}), ("updates", {"b": None}),
                      ("updates", {"c": None}), ("updates", {"last": {"x": 2}}), ("values", {"x": 2})]
    updates_only = list(app.stream({"x": 0}, {"configurable": {"thread_id": "t2"}}))
    assert updates_only == [{"a": None}, {"b": None}, {"c": None}, {"last": {"x": 2}}]


def test_history_names_every_node_that_ran_and_none_for_what_it_wrote() -> None:
    app = _writes_nothing_then_something()
    thread = {"configurable": {"thread_id": "t3"}}
    app.invoke({"x": 0}, thread)
    writes = [snapshot.metadata.get("writes") for snapshot in reversed(list(app.get_state_history(thread)))]
    assert {"a": None} in writes and {"b": None} in writes and {"c": None} in writes
    assert {"last": {"x": 2}} in writes


def test_a_resumed_run_streams_the_state_it_resumes_from_first() -> None:
    def ask(state: S) -> dict[str, Any]:
        return {"x": interrupt("how many?")}

    def double(state: S) -> dict[str, Any]:
        return {"x": state["x"] * 2}

    graph = StateGraph(S)
    graph.add_node("ask", ask).add_node("double", double)
    graph.add_edge(START, "ask").add_edge("ask", "double").add_edge("double", END)
    app = graph.compile(checkpointer=InMemorySaver())

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        orchestrator = Orchestrator()
        try:
            first = [c async for c in orchestrator.astream(app, {"x": 1}, stream_mode="values", workflow_id="r1")]
            resumed = [c async for c in orchestrator.astream(app, Command(resume=5), stream_mode=["updates", "values"],
                                                             workflow_id="r1")]
            updates = [c async for c in orchestrator.astream(app, {"x": 1}, stream_mode="updates", workflow_id="r2")]
            updates += [c async for c in orchestrator.astream(app, Command(resume=3), stream_mode="updates",
                                                              workflow_id="r2")]
            return first, resumed, updates
        finally:
            await orchestrator.close()

    first, resumed, updates = run(scenario())
    assert first[0] == {"x": 1}
    assert resumed == [("values", {"x": 1}), ("updates", {"ask": {"x": 5}}), ("values", {"x": 5}),
                       ("updates", {"double": {"x": 10}}), ("values", {"x": 10})]
    # "updates" alone has no leading chunk: only "values" starts with the state resumed from.
    assert updates[-2:] == [{"ask": {"x": 3}}, {"double": {"x": 6}}]


def test_state_tasks_carry_the_interrupts_of_each_pending_task_sends_first() -> None:
    """LangGraph's ``state.tasks``: one ``PregelTask`` per entry of ``next`` (Sends first, as
    LangGraph 1.2.24 orders them), each with the interrupts its node raised:
    ``state.tasks[0].interrupts[0].value`` reads the question, as LangGraph's docs do."""
    from distributed_agents import PregelTask, Send

    def root(state: L) -> dict[str, Any]:
        return {"log": ["root"]}

    def approve(state: L) -> dict[str, Any]:
        return {"log": [f"approve={interrupt('approve?')}"]}

    def work(state: dict[str, Any]) -> dict[str, Any]:
        key = state["k"]
        answer = interrupt(f"w {key}?")
        return {"log": [f"w{key}={answer}"]}

    graph = StateGraph(L)
    graph.add_node("root", root).add_node("approve", approve).add_node("w", work)
    graph.add_edge(START, "root").add_edge("root", "approve")
    graph.add_conditional_edges("root", lambda s: [Send("w", {"k": 1}), Send("w", {"k": 2})], ["w"])
    graph.add_edge("approve", END).add_edge("w", END)
    app = graph.compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "tasks"}}
    app.invoke({"log": []}, thread)
    state = app.get_state(thread)
    assert state.next == ("w", "w", "approve")
    assert all(isinstance(task, PregelTask) for task in state.tasks)
    assert [(t.name, t.path, [i.value for i in t.interrupts]) for t in state.tasks] == [
        ("w", ("__pregel_push", 0), ["w 1?"]), ("w", ("__pregel_push", 1), ["w 2?"]),
        ("approve", ("__pregel_pull", "approve"), ["approve?"])]
    assert len({task.id for task in state.tasks}) == 3
    app.invoke(Command(resume={state.tasks[0].interrupts[0].id: "a", state.tasks[1].interrupts[0].id: "b",
                               state.tasks[2].interrupts[0].id: "c"}), thread)
    after = app.get_state(thread)
    assert after.tasks == () and sorted(after.values["log"]) == ["approve=c", "root", "w1=a", "w2=b"]


def test_an_empty_input_yields_no_values_and_a_non_empty_one_does() -> None:
    """LangGraph 1.2.24, side by side: ``stream({})`` starts with the first step's values (the
    empty input wrote nothing), ``stream({"y": 2})`` with the input's."""
    from typing import TypedDict

    from distributed_agents import END, START, StateGraph

    class XY(TypedDict, total=False):
        x: int
        y: int

    builder = StateGraph(XY)
    builder.add_node("a", lambda s: {"x": 1}).add_node("b", lambda s: None)
    builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", END)
    app = builder.compile()
    assert list(app.stream({}, stream_mode="values")) == [{"x": 1}]
    assert list(app.stream({"y": 2}, stream_mode="values")) == [{"y": 2}, {"x": 1, "y": 2}]
    assert list(app.stream({}, stream_mode="updates")) == [{"a": {"x": 1}}, {"b": None}]
