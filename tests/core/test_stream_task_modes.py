"""stream_mode="tasks" and "checkpoints": LangGraph's task events and checkpoint snapshots."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from distributed_agents import END, START, Command, InMemorySaver, Send, StateGraph, interrupt
from distributed_agents.core.errors import NodeExecutionError

pytestmark = pytest.mark.timeout(60)


class S(TypedDict):
    log: Annotated[list, operator.add]


def _graph(**compile_options: Any) -> Any:
    def a(state: dict[str, Any]) -> None:
        return None

    def fan(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": ["fan"]}

    def leaf(arg: dict[str, Any]) -> dict[str, Any]:
        return {"log": [arg["i"]]}

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [interrupt("ok?")]}

    builder = StateGraph(S)
    builder.add_node("a", a).add_node("fan", fan).add_node("leaf", leaf).add_node("ask", ask)
    builder.add_edge(START, "a").add_edge("a", "fan").add_edge("leaf", "ask")
    builder.add_conditional_edges("fan", lambda s: [Send("leaf", {"i": i}) for i in range(2)])
    return builder.compile(checkpointer=InMemorySaver(), **compile_options)


def test_tasks_stream_each_tasks_start_then_its_result_with_pauses_and_resumes() -> None:
    app = _graph()
    config = {"configurable": {"thread_id": "tasks-1"}}
    chunks = list(app.stream({"log": []}, config, stream_mode="tasks"))
    assert chunks == [
        {"id": "tasks-1:0:a", "name": "a", "input": {"log": []}, "triggers": ["branch:to:a"]},
        {"id": "tasks-1:0:a", "name": "a", "error": None, "result": {}, "interrupts": []},
        {"id": "tasks-1:1:fan", "name": "fan", "input": {"log": []}, "triggers": ["branch:to:fan"]},
        {"id": "tasks-1:1:fan", "name": "fan", "error": None, "result": {"log": ["fan"]}, "interrupts": []},
        {"id": "tasks-1:2:leaf#0", "name": "leaf", "input": {"i": 0}, "triggers": ["__pregel_push"]},
        {"id": "tasks-1:2:leaf#1", "name": "leaf", "input": {"i": 1}, "triggers": ["__pregel_push"]},
        {"id": "tasks-1:2:leaf#0", "name": "leaf", "error": None, "result": {"log": [0]}, "interrupts": []},
        {"id": "tasks-1:2:leaf#1", "name": "leaf", "error": None, "result": {"log": [1]}, "interrupts": []},
        {"id": "tasks-1:3:ask", "name": "ask", "input": {"log": ["fan", 0, 1]}, "triggers": ["branch:to:ask"]},
        {"id": "tasks-1:3:ask", "name": "ask", "error": None, "result": {},
         "interrupts": [{"value": "ok?", "id": "3:ask:0"}]},
    ]
    # The ids are get_state's task ids; the resumed run starts the paused task again, once.
    assert [task.id for task in app.get_state(config).tasks] == ["tasks-1:3:ask"]
    resumed = list(app.stream(Command(resume="yes"), config, stream_mode="tasks"))
    assert resumed == [
        {"id": "tasks-1:3:ask", "name": "ask", "input": {"log": ["fan", 0, 1]}, "triggers": ["branch:to:ask"]},
        {"id": "tasks-1:3:ask", "name": "ask", "error": None, "result": {"log": ["yes"]}, "interrupts": []},
    ]


def test_a_failed_task_ends_with_its_error_and_a_breakpoint_starts_nothing_until_resumed() -> None:
    def bad(state: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("boom")

    builder = StateGraph(S)
    builder.add_node("bad", bad).add_edge(START, "bad")
    seen: list[Any] = []
    with pytest.raises(NodeExecutionError):
        for chunk in builder.compile().stream({"log": []}, stream_mode="tasks"):
            seen.append(chunk)
    assert [(c["name"], c.get("error"), "input" in c) for c in seen] == [("bad", None, True), ("bad", "boom", False)]

    app = _graph(interrupt_before=["fan"])
    config = {"configurable": {"thread_id": "tasks-2"}}
    assert [c["name"] for c in app.stream({"log": []}, config, stream_mode="tasks")] == ["a", "a"]
    assert [(c["name"], "input" in c) for c in app.stream(None, config, stream_mode="tasks")][:2] == [
        ("fan", True), ("fan", False)]


def test_checkpoints_stream_what_get_state_history_holds_in_langgraphs_shape() -> None:
    app = _graph()
    config = {"configurable": {"thread_id": "checkpoints-1"}}
    chunks = list(app.stream({"log": []}, config, stream_mode="checkpoints"))
    history = list(reversed(list(app.get_state_history(config))))
    assert len(chunks) == len(history) == 4
    for chunk, snapshot in zip(chunks, history):
        assert set(chunk) == {"config", "parent_config", "values", "metadata", "next", "tasks"}
        assert chunk["config"] == snapshot.config and chunk["parent_config"] == snapshot.parent_config
        assert chunk["values"] == snapshot.values and chunk["next"] == list(snapshot.next)
        assert [t["id"] for t in chunk["tasks"]] == [t.id for t in snapshot.tasks]
    assert chunks[0]["parent_config"] is None and chunks[0]["metadata"]["source"] == "input"
    assert chunks[-1]["next"] == ["ask"] and chunks[2]["next"] == ["leaf", "leaf"]


def test_several_modes_interleave_in_langgraphs_order() -> None:
    def b(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": ["b"]}

    builder = StateGraph(S)
    builder.add_node("b", b).add_edge(START, "b").add_edge("b", END)
    chunks = list(builder.compile().stream({"log": []}, stream_mode=["tasks", "checkpoints", "updates"]))
    assert [(mode, chunk.get("name") if mode == "tasks" else None) for mode, chunk in chunks] == [
        ("checkpoints", None), ("tasks", "b"), ("tasks", "b"), ("checkpoints", None), ("updates", None)]


def test_get_state_tasks_carry_the_error_the_kept_result_and_the_subgraphs_state() -> None:
    """LangGraph's PregelTask fields on a thread's latest snapshot: ``error`` of the task that failed
    its step, ``result`` of a task that finished in a step that paused, ``state`` of a subgraph's task
    (``get_state(subgraphs=True)``): the child's snapshot."""
    def bad(state: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("b down")

    failing = StateGraph(S)
    failing.add_node("ok", lambda s: {"log": ["ok"]}).add_node("bad", bad)
    failing.add_edge(START, "ok").add_edge(START, "bad")
    app = failing.compile()
    config = {"configurable": {"thread_id": "task-fields-1"}}
    with pytest.raises(NodeExecutionError):
        app.invoke({"log": []}, config)
    tasks = {task.name: task for task in app.get_state(config).tasks}
    assert tasks["bad"].error == "RuntimeError('b down')" and tasks["ok"].error is None  # LangGraph's string
    assert tasks["ok"].result == {"log": ["ok"]} and tasks["bad"].result is None

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [interrupt("q")]}

    pausing = StateGraph(S)
    pausing.add_node("ask", ask).add_node("c", lambda s: {"log": ["c"]}).add_edge(START, "ask").add_edge(START, "c")
    app = pausing.compile()
    config = {"configurable": {"thread_id": "task-fields-2"}}
    app.invoke({"log": []}, config)
    tasks = {task.name: task for task in app.get_state(config).tasks}
    assert tasks["c"].result == {"log": ["c"]} and tasks["ask"].result is None and tasks["ask"].interrupts

    inner = StateGraph(S).add_node("ask", ask).add_edge(START, "ask").compile()
    outer = StateGraph(S).add_node("sub", inner).add_edge(START, "sub").compile()
    config = {"configurable": {"thread_id": "task-fields-3"}}
    outer.invoke({"log": []}, config)
    snapshot = outer.get_state(config, subgraphs=True)
    [task] = snapshot.tasks
    assert task.state is snapshot.subgraphs["sub"] and task.state.next == ("ask",)


def test_a_task_failing_into_its_error_handler_ends_with_its_error() -> None:
    def bad(state: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("fetch down")

    builder = StateGraph(S)
    builder.add_node("bad", bad, on_error="fallback").add_node("fallback", lambda s: {"log": ["fallback"]})
    builder.add_edge(START, "bad")
    chunks = list(builder.compile().stream({"log": []}, stream_mode="tasks"))
    assert [(c["name"], "input" in c, c.get("error")) for c in chunks] == [
        ("bad", True, None), ("bad", False, "fetch down"), ("fallback", True, None), ("fallback", False, None)]
    assert chunks[1]["id"] == chunks[0]["id"]


def test_a_paused_steps_finished_task_streams_in_the_run_that_paused_and_comes_back_cached() -> None:
    """LangGraph's order: c finished while its sibling asked; the run that paused streams c's update
    and result, the resumed run starts both tasks again and streams c's kept writes marked cached
    (never a second result: c ran once)."""
    runs: list[str] = []

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [interrupt("q")]}

    def c(state: dict[str, Any]) -> dict[str, Any]:
        runs.append("c")
        return {"log": ["c"]}

    builder = StateGraph(S)
    builder.add_node("ask", ask).add_node("c", c).add_edge(START, "ask").add_edge(START, "c")
    app = builder.compile()
    config = {"configurable": {"thread_id": "kept-writes"}}

    def seen(chunks: Any) -> list[tuple[str, Any]]:
        return [(mode, (chunk["name"], "input" in chunk) if mode == "tasks" else chunk) for mode, chunk in chunks]

    first = seen(app.stream({"log": []}, config, stream_mode=["tasks", "updates"]))
    assert ("updates", {"c": {"log": ["c"]}}) in first and ("tasks", ("c", False)) in first
    assert first[-1][0] == "updates" and "__interrupt__" in first[-1][1]
    second = seen(app.stream(Command(resume="y"), config, stream_mode=["tasks", "updates"]))
    assert second == [("tasks", ("ask", True)), ("tasks", ("c", True)), ("tasks", ("ask", False)),
                      ("updates", {"ask": {"log": ["y"]}}),
                      ("updates", {"c": {"log": ["c"]}, "__metadata__": {"cached": True}})]
    assert runs == ["c"]


def test_a_pause_two_subgraphs_deep_streams_each_levels_task_and_interrupt() -> None:
    """subgraphs=True: the paused step of each level (the asking node's, its subgraph's, the
    root's) ends in the tasks stream with its interrupts and an __interrupt__ update, deepest first."""
    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": ["ask:" + interrupt("deep?")]}

    inner = StateGraph(S).add_node("i1", lambda s: {"log": ["i1"]}).add_node("ask", ask)
    inner = inner.add_edge(START, "i1").add_edge("i1", "ask").compile()
    mid = StateGraph(S).add_node("m1", lambda s: {"log": ["m1"]}).add_node("inner", inner)
    mid = mid.add_edge(START, "m1").add_edge("m1", "inner").compile()
    app = StateGraph(S).add_node("mid", mid).add_edge(START, "mid").compile()
    chunks = list(app.stream({"log": []}, {"configurable": {"thread_id": "deep-pause"}},
                             stream_mode=["tasks", "updates"], subgraphs=True))
    levels = [tuple(part.split(":")[0] for part in ns) for ns, _, _ in chunks]
    ended = [(level, chunk["name"], [i["value"] for i in chunk["interrupts"]])
             for level, (_, mode, chunk) in zip(levels, chunks) if mode == "tasks" and "interrupts" in chunk]
    assert ended[-3:] == [(("mid", "inner"), "ask", ["deep?"]), (("mid",), "inner", ["deep?"]), ((), "mid", ["deep?"])]
    paused = [level for level, (_, mode, chunk) in zip(levels, chunks) if mode == "updates" and "__interrupt__" in chunk]
    assert paused == [("mid", "inner"), ("mid",), ()]


def test_a_resumed_checkpoints_stream_starts_with_the_checkpoint_it_resumes_from() -> None:
    app = _graph()
    config = {"configurable": {"thread_id": "checkpoints-resumed"}}
    paused = list(app.stream({"log": []}, config, stream_mode="checkpoints"))
    resumed = list(app.stream(Command(resume="yes"), config, stream_mode="checkpoints"))
    assert resumed[0]["config"] == paused[-1]["config"] and resumed[0]["next"] == ["ask"]
    assert [i.value for i in resumed[0]["tasks"][0]["interrupts"]] == ["ok?"]
    assert resumed[-1]["values"]["log"][-1] == "yes" and resumed[-1]["next"] == []
