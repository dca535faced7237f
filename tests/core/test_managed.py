"""Managed values (``RemainingSteps``, ``IsLastStep``): filled in for each node, never state."""

from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import END, START, Command, IsLastStep, Orchestrator, RemainingSteps, Send, StateGraph
from distributed_agents.core.errors import GraphRecursionError, StateValidationError
from distributed_agents.core.executors import NodeCall, task_payload
from distributed_agents.core.task_payload import check_payload

pytestmark = pytest.mark.timeout(60)


class Agent(TypedDict):
    log: Annotated[list, operator.add]
    remaining_steps: RemainingSteps
    is_last_step: IsLastStep


def _looping(limit_of_loop: int = 100) -> Any:
    def step(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [[state["remaining_steps"], state["is_last_step"]]]}

    builder = StateGraph(Agent)
    builder.add_node("step", step).add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: "step" if len(s["log"]) < limit_of_loop else END)
    return builder.compile()


def test_each_step_reads_the_steps_left_and_the_last_allowed_step_is_told() -> None:
    # LangGraph's own figures for this loop: recursion_limit 7 allows 6 steps, the first reads 6.
    result = _looping(6).invoke({"log": []}, {"recursion_limit": 7})
    assert result == {"log": [[6, False], [5, False], [4, False], [3, False], [2, False], [1, True]]}
    with pytest.raises(GraphRecursionError):
        _looping(6).invoke({"log": []}, {"recursion_limit": 6})


def test_an_agent_loop_stops_itself_on_the_last_step_instead_of_hitting_the_limit() -> None:
    """The prebuilt ReAct agent's guard: with fewer than 2 steps left it answers instead of looping."""
    def agent(state: dict[str, Any]) -> dict[str, Any]:
        if state["remaining_steps"] < 2:
            return {"log": ["sorry, need more steps"]}
        return {"log": ["thinking"]}

    builder = StateGraph(Agent)
    builder.add_node("agent", agent).add_edge(START, "agent")
    builder.add_conditional_edges("agent", lambda s: END if s["log"][-1].startswith("sorry") else "agent")
    app = builder.compile()
    assert app.invoke({"log": []}, {"recursion_limit": 5})["log"] == ["thinking"] * 3 + ["sorry, need more steps"]
    with pytest.raises(GraphRecursionError):  # without the guard the same loop runs into the limit
        _looping().invoke({"log": []}, {"recursion_limit": 4})


def test_managed_values_are_never_state_input_output_or_checkpoint() -> None:
    app = _looping(2)
    config = {"configurable": {"thread_id": "managed-1"}}
    result = app.invoke({"log": [], "remaining_steps": 99, "is_last_step": True}, config)  # ignored, as LangGraph
    assert result == {"log": [[10_000, False], [9_999, False]]}
    snapshot = app.get_state(config)
    assert set(snapshot.values) == {"log"}
    assert all(set(s.values) <= {"log"} for s in app.get_state_history(config))
    chunks = list(app.stream({"log": []}, {"configurable": {"thread_id": "managed-2"}}, stream_mode="values"))
    assert chunks and all(set(chunk) == {"log"} for chunk in chunks)


def test_a_nodes_write_to_a_managed_value_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A node returning its whole input (``return state``) writes the managed keys too: dropped, said."""
    def echo(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "log": ["echo"]}

    def commanding(state: dict[str, Any]) -> Command:
        return Command(update={"remaining_steps": 1, "log": ["cmd"]}, goto=END)

    builder = StateGraph(Agent)
    builder.add_node("echo", echo).add_node("commanding", commanding)
    builder.add_edge(START, "echo").add_edge("echo", "commanding")
    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        result = builder.compile().invoke({"log": []})
    assert result == {"log": ["echo", "cmd"]}
    warned = [r.getMessage() for r in caplog.records if "managed value" in r.getMessage()]
    assert any("'echo'" in m and "'remaining_steps'" in m and "'is_last_step'" in m for m in warned), warned
    assert any("'commanding'" in m and "'remaining_steps'" in m for m in warned), warned


def test_update_state_refuses_a_managed_value_saying_what_it_is() -> None:
    app = _looping(1)
    config = {"configurable": {"thread_id": "managed-3"}}
    app.invoke({"log": []}, config)
    with pytest.raises(StateValidationError, match=r"'remaining_steps', a managed value \(remaining_steps\)"):
        app.update_state(config, {"remaining_steps": 3})
    assert app.get_state(config).values == {"log": [[10_000, False]]}


def test_a_sends_node_gets_its_argument_alone() -> None:
    seen: list[Any] = []

    def fan(state: dict[str, Any]) -> dict[str, Any]:
        return {}

    def leaf(arg: dict[str, Any]) -> dict[str, Any]:
        seen.append(sorted(arg))
        return {"log": [arg["i"]]}

    builder = StateGraph(Agent)
    builder.add_node("fan", fan).add_node("leaf", leaf).add_edge(START, "fan")
    builder.add_conditional_edges("fan", lambda s: [Send("leaf", {"i": i}) for i in range(2)])
    assert sorted(builder.compile().invoke({"log": []})["log"]) == [0, 1]
    assert seen == [["i"], ["i"]]


class RemainingStepsManager:  # stands for langgraph.managed's marker class, recognised by its name
    pass


@dataclasses.dataclass
class DataAgent:
    log: Annotated[list, operator.add] = dataclasses.field(default_factory=list)
    remaining_steps: RemainingSteps = 0
    left: Annotated[int, RemainingStepsManager] = 0


def test_dataclass_and_pydantic_schemas_and_langgraphs_own_markers() -> None:
    """A dataclass field, a Pydantic field, and a key annotated with LangGraph's manager class
    (a schema written against ``langgraph.managed``) are managed too."""
    pydantic = pytest.importorskip("pydantic")

    class ModelAgent(pydantic.BaseModel):
        log: Annotated[list, operator.add] = []
        is_last_step: IsLastStep = False

    def note(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [{k: v for k, v in state.items() if k != "log"}]}

    for schema, expected in ((DataAgent, {"remaining_steps": 5, "left": 5}), (ModelAgent, {"is_last_step": False})):
        builder = StateGraph(schema)
        builder.add_node("note", note).add_edge(START, "note")
        assert builder.compile().invoke({}, {"recursion_limit": 6}) == {"log": [expected]}


def test_the_task_payload_names_the_managed_keys_and_a_worker_checks_them() -> None:
    """The queue task names the managed keys (under payload version 2, which a worker that does
    not know them dead-letters asking for an upgrade); a kind this worker does not know is refused."""
    call = NodeCall("wf", "g", 0, "n", "n", "t", b'{"log": []}', remaining_steps=3,
                    managed={"remaining_steps": "remaining_steps"})
    payload = task_payload(call)
    assert payload["v"] == 2 and payload["managed"] == {"remaining_steps": "remaining_steps"}
    check_payload(payload)
    assert task_payload(NodeCall("wf", "g", 0, "n", "n", "t", b"{}"))["v"] == 1  # others keep their shape
    with pytest.raises(ValueError, match="'managed' must map state keys to one of is_last_step, remaining_steps"):
        check_payload({**payload, "managed": {"x": "steps_taken"}})
    with pytest.raises(ValueError, match="'managed' must be an object"):
        check_payload({**payload, "managed": ["remaining_steps"]})


def test_execute_with_a_step_limit_fills_them_in_too() -> None:
    async def go() -> Any:
        return await Orchestrator().execute(_looping(3), {"log": []}, step_limit=3)

    assert run(go()) == {"log": [[3, False], [2, False], [1, True]]}


def test_a_condition_reads_the_managed_values_its_nodes_step_read() -> None:
    """LangGraph's loop guard in the router: ``END if state["remaining_steps"] < 2``; also from START."""
    class Looping(TypedDict):
        n: int
        remaining_steps: RemainingSteps
        is_last_step: IsLastStep

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        return {"n": state["n"] + 1}

    builder = StateGraph(Looping)
    builder.add_node("agent", agent).add_edge(START, "agent")
    builder.add_conditional_edges("agent", lambda s: END if s["remaining_steps"] < 2 else "agent", ["agent", END])
    assert builder.compile().invoke({"n": 0}, {"recursion_limit": 6}) == {"n": 5}
    entry = StateGraph(Looping).add_node("agent", agent)
    entry.add_conditional_edges(START, lambda s, config: "agent" if (s["remaining_steps"], s["is_last_step"]) == (5, False)
                                else END)
    assert entry.compile().invoke({"n": 0}, {"recursion_limit": 6}) == {"n": 1}


def test_a_continued_paused_thread_keeps_the_callers_recursion_limit() -> None:
    """invoke(Command(resume=)) / invoke(None) with a config holding recursion_limit: the continued
    run is bounded by it (it ran on to the default 10,000 steps)."""
    from distributed_agents import interrupt

    class Paused(TypedDict):
        n: Annotated[int, operator.add]
        remaining_steps: RemainingSteps

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        interrupt("go?")
        return {"n": 0}

    builder = StateGraph(Paused)
    builder.add_node("ask", ask).add_node("loop", lambda s: {"n": 1}).add_edge(START, "ask").add_edge("ask", "loop")
    builder.add_conditional_edges("loop", lambda s: "loop" if s["n"] < 50 else END, ["loop", END])
    for how, app in (("resume", builder.compile()), ("breakpoint", builder.compile(interrupt_after=["ask"]))):
        config = {"configurable": {"thread_id": f"managed-continued-{how}"}, "recursion_limit": 5}
        assert "__interrupt__" in app.invoke({"n": 0}, config)
        if how == "breakpoint":
            assert "__interrupt__" in app.invoke(Command(resume=True), config)  # answered: paused after it
        with pytest.raises(GraphRecursionError):
            app.invoke(Command(resume=True) if how == "resume" else None, config)


def test_a_graph_invoked_in_a_node_inherits_the_runs_limit_and_config_shows_each_runs_own() -> None:
    """A graph a node invokes without a config runs under the caller's run's step limit (it ran
    under 10,000), and config["recursion_limit"] is each run's limit on every turn of a thread
    (it grew by the steps of earlier runs)."""
    class Inner(TypedDict):
        log: Annotated[list, operator.add]
        remaining_steps: RemainingSteps

    inner = StateGraph(Inner).add_node("note", lambda s: {"log": [s["remaining_steps"]]}).add_edge(START, "note").compile()

    def outer_node(state: dict[str, Any], config: Any) -> dict[str, Any]:
        return {"log": [config["recursion_limit"], *inner.invoke({"log": []})["log"]]}

    outer = StateGraph(Inner)
    outer.add_node("first", lambda s: {"log": []}).add_node("outer", outer_node)
    app = outer.add_edge(START, "first").add_edge("first", "outer").compile()
    config = {"configurable": {"thread_id": "managed-turns"}, "recursion_limit": 7}
    seen = [app.invoke({"log": []}, config)["log"][-2:] for _ in range(3)]
    assert seen == [[7, 6], [7, 6], [7, 6]]  # the inner graph: 6 steps, as LangGraph hands recursion_limit 7 down


def test_the_node_cache_keys_on_the_managed_values_too() -> None:
    from distributed_agents import CachePolicy

    class Cached(TypedDict):
        out: int
        remaining_steps: RemainingSteps

    builder = StateGraph(Cached)
    builder.add_node("n", lambda s: {"out": s["remaining_steps"]}, cache_policy=CachePolicy()).add_edge(START, "n")
    app = builder.compile()
    assert [app.invoke({}, {"recursion_limit": limit})["out"] for limit in (11, 51, 11)] == [10, 50, 10]


class Plain(TypedDict):
    out: str
    remaining_steps: int


class ManagedOnly(TypedDict):
    remaining_steps: RemainingSteps


def _managed_node(state: ManagedOnly) -> dict[str, Any]:
    return {}


def test_a_key_managed_in_one_schema_and_state_in_another_is_refused_and_changes_nothing() -> None:
    from distributed_agents.core.errors import ConfigurationError

    builder = StateGraph(Plain)
    with pytest.raises(ConfigurationError, match=r"'remaining_steps' is a managed value \(remaining_steps\) in one "
                                                 r"schema and a state key in Plain"):
        builder.add_node("m", _managed_node)
    with pytest.raises(ConfigurationError, match="managed value"):
        StateGraph(ManagedOnly, output_schema=Plain)
    builder.add_node("plain", lambda s: {"out": str(s["remaining_steps"])}).add_edge(START, "plain")
    assert builder.compile().invoke({"out": "", "remaining_steps": 7}) == {"out": "7", "remaining_steps": 7}
