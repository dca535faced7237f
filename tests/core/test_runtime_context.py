"""LangGraph's run context: ``invoke(..., context=...)`` read by nodes as ``runtime.context``.

``def node(state, runtime: Runtime[Context])`` gets the node's ``NodeContext`` (``Runtime``
is its name in ``distributed_agents``), whose ``context`` holds what the run was given, as
JSON read by attribute or key; ``get_runtime()`` returns it inside a node. Checked side by
side with LangGraph 1.2.24 (same values for the same graph and calls).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from pydantic import BaseModel

from distributed_agents import END, START, Command, InMemorySaver, Runtime, StateGraph, get_runtime, interrupt
from distributed_agents.core.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


@dataclass
class Ctx:
    user_id: str
    level: int = 1


class PCtx(BaseModel):
    user_id: str
    level: int = 2


class Out(TypedDict, total=False):
    out: str
    seen: str
    routed: str


def node(state: Out, runtime: Runtime[Ctx]) -> dict[str, Any]:
    return {"out": f"user={runtime.context.user_id} level={runtime.context['level']}"}


def other(state: Out, config: Any) -> dict[str, Any]:
    return {"seen": f"{get_runtime(Ctx).context.user_id} {sorted(config['configurable'])}"}


def route(state: Out, config: Any) -> str:
    assert "__context__" not in config["configurable"]  # (the context is not a configurable value)
    return END


def context_graph() -> Any:
    builder = StateGraph(Out, context_schema=Ctx)
    builder.add_node("node", node).add_node("other", other)
    builder.add_edge(START, "node").add_edge("node", "other").add_conditional_edges("other", route)
    return builder.compile(checkpointer=InMemorySaver())


def test_nodes_read_the_run_context_by_attribute_and_key_and_get_runtime() -> None:
    app = context_graph()
    # LangGraph 1.2.24: {'out': 'user=ann level=3', 'seen': 'ann'} (here with the configurable keys seen)
    assert app.invoke({}, context=Ctx(user_id="ann", level=3)) == {
        "out": "user=ann level=3", "seen": "ann ['checkpoint_ns', 'thread_id']"}
    assert app.invoke({}, context=PCtx(user_id="pia"))["out"] == "user=pia level=2"
    assert app.invoke({}, context={"user_id": "dee", "level": 0})["out"] == "user=dee level=0"
    chunks = list(app.stream({}, context=Ctx(user_id="bob"), stream_mode="values"))
    assert chunks[0] == {"out": "user=bob level=1"}


def test_without_a_context_it_is_none_and_a_missing_field_says_what_there_is() -> None:
    def plain(state: Out, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"out": repr(runtime.context)}

    def missing(state: Out, runtime: Runtime[Ctx]) -> dict[str, Any]:
        try:
            runtime.context.nope
        except AttributeError as exc:
            return {"out": str(exc)}
        return {"out": "no error"}

    for func, given, expected in ((plain, None, "None"),
                                  (missing, Ctx(user_id="x"), "the run context has no 'nope'; it has 'user_id', 'level'")):
        builder = StateGraph(Out)
        builder.add_node("n", func).add_edge(START, "n").add_edge("n", END)
        assert builder.compile().invoke({}, context=given)["out"] == expected


def test_a_context_json_cannot_carry_is_refused_before_the_run() -> None:
    app = context_graph()
    with pytest.raises(ConfigurationError, match="context= must be a dataclass, a Pydantic model or a dict"):
        app.invoke({}, context="ann")
    with pytest.raises(ConfigurationError, match="context= cannot travel as JSON"):
        app.invoke({}, context={"user_id": object()})


def test_a_context_given_with_a_continuation_is_the_runs_from_then_on() -> None:
    """LangGraph 1.2.24: ``invoke(None, config, context=...)`` on a thread seeded by update_state, and
    ``invoke(Command(resume=...), config, context=...)``, run with that context."""
    def ask(state: Out, runtime: Runtime[Ctx]) -> dict[str, Any]:
        answer = interrupt("go?")
        return {"out": f"{answer} for {runtime.context.user_id}/{runtime.context.level}"}

    builder = StateGraph(Out, context_schema=Ctx)
    builder.add_node("node", node).add_node("ask", ask)
    builder.add_edge(START, "node").add_edge("node", "ask").add_edge("ask", END)
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    app.update_state(config, {"seen": "seeded"})
    assert app.invoke(None, config, context={"user_id": "alice"})["out"] == "user=alice level=1"  # schema default
    assert app.invoke(Command(resume="yes"), config, context=Ctx(user_id="bob", level=2))["out"] == "yes for bob/2"


def test_orchestrator_execute_reads_a_dict_context_through_the_context_schema() -> None:
    from support.aio import run

    from distributed_agents import Orchestrator

    async def scenario() -> dict[str, Any]:
        async with Orchestrator() as orchestrator:
            return dict(await orchestrator.execute(context_graph(), {}, context={"user_id": "bob"}))

    assert run(scenario())["out"] == "user=bob level=1"


def test_each_new_run_of_a_thread_has_its_own_context_and_a_resume_keeps_the_runs() -> None:
    def ask(state: Out, runtime: Runtime[Ctx]) -> dict[str, Any]:
        answer = interrupt("go?")
        return {"out": f"{answer} for {runtime.context.user_id}"}

    builder = StateGraph(Out, context_schema=Ctx)
    builder.add_node("ask", ask).add_edge(START, "ask").add_edge("ask", END)
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    app.invoke({}, config, context=Ctx(user_id="ann"))
    assert app.invoke(Command(resume="yes"), config)["out"] == "yes for ann"
    app.invoke({}, config, context=Ctx(user_id="bob"))  # a new run of the completed thread
    assert app.invoke(Command(resume="ok"), config)["out"] == "ok for bob"


def test_langgraphs_injected_parameters_by_name_and_keyword() -> None:
    """LangGraph 1.2.24 accepts these node signatures (side by side, same outputs)."""
    def kw_runtime(state: Out, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"out": runtime.context.user_id}

    def config_then_runtime(state: Out, config: Any, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"out": f"{config['configurable']['thread_id'] != ''} {runtime.context.user_id}"}

    def config_kw_runtime(state: Out, config: Any, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
        return {"out": runtime.context.user_id}

    def writer_param(state: Out, writer: Any) -> dict[str, Any]:
        writer({"progress": 1})
        return {"out": "wrote"}

    expected = {kw_runtime: "ann", config_then_runtime: "True ann", config_kw_runtime: "ann", writer_param: "wrote"}
    for func, out in expected.items():
        builder = StateGraph(Out, context_schema=Ctx)
        builder.add_node("n", func).add_edge(START, "n").add_edge("n", END)
        app = builder.compile()
        assert app.invoke({}, context=Ctx(user_id="ann"))["out"] == out
    assert list(app.stream({}, stream_mode="custom")) == [{"progress": 1}]


def test_conditions_read_the_context_as_a_runtime_and_through_get_runtime() -> None:
    def by_param(state: Out, runtime: Runtime[Ctx]) -> str:
        return "yes" if runtime.context.user_id == "go" else END

    def by_get_runtime(state: Out) -> str:
        return "yes" if get_runtime(Ctx).context.user_id == "go" else END

    for route in (by_param, by_get_runtime):
        builder = StateGraph(Out, context_schema=Ctx)
        builder.add_node("s", lambda s: {}).add_node("yes", lambda s: {"routed": "yes"})
        builder.add_edge(START, "s").add_conditional_edges("s", route, ["yes", END]).add_edge("yes", END)
        app = builder.compile()
        assert app.invoke({}, context=Ctx(user_id="go")) == {"routed": "yes"}
        assert app.invoke({}, context=Ctx(user_id="stop")) == {}


@dataclass
class Inner:
    x: int


@dataclass
class Outer:
    user_id: str
    inner: Inner
    level: int = 4


def test_a_dict_context_is_read_through_the_context_schema_and_nested_values_by_attribute() -> None:
    def node(state: Out, runtime: Runtime[Outer]) -> dict[str, Any]:
        return {"out": f"{runtime.context.user_id} {runtime.context.level} {runtime.context.inner.x}"}

    builder = StateGraph(Out, context_schema=Outer)
    builder.add_node("n", node).add_edge(START, "n").add_edge("n", END)
    app = builder.compile()
    assert app.invoke({}, context={"user_id": "ann", "inner": {"x": 7}})["out"] == "ann 4 7"  # the schema's default
    with pytest.raises(ConfigurationError, match="does not fit its context_schema Outer"):
        app.invoke({}, context={"nope": 1})
    with pytest.raises(ConfigurationError, match="keep objects such as clients out of it"):
        app.invoke({}, context={"user_id": "ann", "inner": {"x": object()}})


def test_a_graph_invoked_inside_a_node_gets_the_callers_context_and_configurable_values() -> None:
    inner_builder = StateGraph(Out)

    def inner_node(state: Out, runtime: Runtime[Ctx], config: Any = None) -> dict[str, Any]:
        return {"out": f"{runtime.context.user_id} {get_runtime().as_config()['configurable'].get('user')}"}

    inner_builder.add_node("i", inner_node).add_edge(START, "i").add_edge("i", END)
    inner = inner_builder.compile()

    def caller(state: Out) -> dict[str, Any]:
        return {"seen": inner.invoke({})["out"]}

    builder = StateGraph(Out, context_schema=Ctx)
    builder.add_node("c", caller).add_edge(START, "c").add_edge("c", END)
    # LangGraph 1.2.24 hands the caller's config and context on to the inner run.
    assert builder.compile().invoke({}, {"configurable": {"user": "U7"}}, context=Ctx(user_id="ctxU")) == {
        "seen": "ctxU U7"}


def test_batch_takes_a_context_for_every_run() -> None:
    app = context_graph()
    results = app.batch([{}, {}], context=Ctx(user_id="bat"))
    assert [r["out"] for r in results] == ["user=bat level=1", "user=bat level=1"]
