"""LangGraph-style calls on a compiled graph, from a LangGraph user's trial.

The examples: ``astream({})`` treated the empty input as "continue the thread" (a new
thread raised WorkflowNotFoundError, a completed one yielded nothing); a graph run from
inside a node (``sub.invoke(x)``, LangGraph's nested run) that paused at ``interrupt()``
handed its caller the pause as a result, and the answer was lost; ``sub.invoke(x, config)``
with the node's own config was refused; ``get_state`` through one graph read a thread another
graph ran, as if it were its own.
"""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import END, START, Command, StateGraph, interrupt
from distributed_agents.core.errors import ConfigurationError, NodeExecutionError

pytestmark = pytest.mark.timeout(60)


class S(TypedDict, total=False):
    topic: str
    approved: str
    log: str


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}


def one_node(name: str, func: Any, schema: Any = S) -> Any:
    builder = StateGraph(schema)
    builder.add_node(name, func)
    builder.add_edge(START, name)
    builder.add_edge(name, END)
    return builder.compile()


def starts(state: S) -> dict[str, Any]:
    return {"topic": state.get("topic", "fresh"), "log": state.get("log", "") + "+"}


async def collect(app: Any, input: Any, config: Any = None, **options: Any) -> list[Any]:
    return [chunk async for chunk in app.astream(input, config, **options)]


# -- astream({}) is an input ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["updates", "values"])
def test_astream_of_an_empty_dict_runs_the_graph_as_invoke_does(mode: str) -> None:
    app = one_node("start", starts)
    config = thread()
    new_thread = run(collect(app, {}, config, stream_mode=mode), 30)
    completed_thread = run(collect(app, {}, config, stream_mode=mode), 30)
    no_config = run(collect(app, {}, stream_mode=mode), 30)
    for chunks in (new_thread, completed_thread, no_config):
        assert chunks, "nothing ran"
        last = chunks[-1] if mode == "values" else chunks[-1]["start"]
        assert last["topic"] == "fresh"
    assert app.get_state(config).values["log"] == "++"  # the completed thread ran again on its state
    assert app.invoke({}, thread())["topic"] == "fresh"


# -- a graph run from a node's code ---------------------------------------------------------------------

def asks(state: S) -> dict[str, Any]:
    return {"approved": interrupt("ok?")}


SUB = one_node("ask", asks)
PLAIN_SUB = one_node("start", starts)


def nested(how: str, sub: Any = SUB) -> Any:
    """A parent graph whose node runs ``sub`` from its code, the way ``how`` says."""
    if how == "invoke":
        def node(state: S, config: Any) -> dict[str, Any]:
            out = sub.invoke({"topic": state["topic"]}, config)
            return {"approved": str(out.get("approved")), "log": str(out.get("log"))}
    elif how == "invoke with the config as a dict":
        def node(state: S, config: Any) -> dict[str, Any]:
            out = sub.invoke({"topic": state["topic"]}, config.as_config())
            return {"approved": str(out.get("approved")), "log": str(out.get("log"))}
    elif how == "ainvoke":
        async def node(state: S) -> dict[str, Any]:  # type: ignore[misc]
            out = await sub.ainvoke({"topic": state["topic"]})
            return {"approved": str(out.get("approved")), "log": str(out.get("log"))}
    elif how == "stream":
        def node(state: S) -> dict[str, Any]:
            chunks = list(sub.stream({"topic": state["topic"]}, stream_mode="values"))
            return {"approved": str(chunks[-1].get("approved")), "log": str(chunks[-1].get("log"))}
    else:
        async def node(state: S) -> dict[str, Any]:  # type: ignore[misc]
            chunks = [c async for c in sub.astream({"topic": state["topic"]}, stream_mode=["values", "updates"])]
            return {"approved": str(chunks[-1][1].get("approved")), "log": ""}
    return one_node("n1", node)


@pytest.mark.parametrize("how", ["invoke", "invoke with the config as a dict", "ainvoke", "stream", "astream"])
def test_a_graph_run_from_a_node_that_pauses_fails_the_node_saying_what_to_do(how: str) -> None:
    app = nested(how)
    config = thread()
    with pytest.raises(NodeExecutionError) as caught:
        app.invoke({"topic": "sea"}, config)
    message = str(caught.value)
    assert "paused at an interrupt while run from inside node 'n1'" in message, message
    assert "add_node(name, subgraph" in message
    assert app.get_state(config).values.get("approved") is None  # no pause taken for a result


@pytest.mark.parametrize("how", ["invoke", "invoke with the config as a dict"])
def test_a_node_handing_its_own_config_to_a_nested_run_runs_it_on_a_thread_of_its_own(how: str) -> None:
    app = nested(how, PLAIN_SUB)
    config = {"configurable": {**thread()["configurable"], "user": "ada"}}
    out = app.invoke({"topic": "sea"}, config)
    assert out["log"] == "+" and out["topic"] == "sea"
    assert app.get_state(config).values["log"] == "+"  # the caller's thread holds the caller's run


def test_a_nested_run_that_completes_is_not_touched_and_a_top_level_pause_still_returns() -> None:
    app = one_node("ask", asks)
    config = thread()
    assert "__interrupt__" in app.invoke({"topic": "x"}, config)  # outside a node: returned as before
    assert app.invoke(Command(resume="yes"), config)["approved"] == "yes"


# -- threads of other graphs ---------------------------------------------------------------------------

class A(TypedDict, total=False):
    x: int


class B(TypedDict, total=False):
    y: str


def test_get_state_through_another_graph_is_refused_naming_both_graphs() -> None:
    graph_a = one_node("inc", lambda s: {"x": s["x"] + 1}, A)
    graph_b = one_node("echo", lambda s: {"y": s["y"] * 2}, B)
    config = thread()
    graph_a.invoke({"x": 1}, config)
    for call in (lambda: graph_b.get_state(config), lambda: list(graph_b.get_state_history(config))):
        with pytest.raises(ConfigurationError) as caught:
            call()
        assert "started with graph 'A'" in str(caught.value) and "thread ids of its own" in str(caught.value)
    assert graph_a.get_state(config).values == {"x": 2}
    assert len(list(graph_a.get_state_history(config))) == 2
    assert graph_b.get_state(thread()).values == {}  # a thread no graph ran is empty, as before


def test_a_subgraphs_child_thread_reads_through_its_parent() -> None:
    parent = StateGraph(S)
    parent.add_node("review", SUB)
    parent.add_edge(START, "review")
    parent.add_edge("review", END)
    app = parent.compile()
    config = thread()
    assert "__interrupt__" in app.invoke({"topic": "x"}, config)
    child = app.get_state(config, subgraphs=True).subgraphs["review"]
    assert app.get_state(child.config).values["topic"] == "x"


# -- time travel as LangGraph's tutorial writes it ------------------------------------------------------

class Joke(TypedDict, total=False):
    topic: str
    joke: str


def test_update_state_on_a_fork_without_as_node_stands_for_the_forked_steps_writer() -> None:
    """LangGraph's time-travel tutorial: fork a past checkpoint, update it without ``as_node``, run on.
    The fork's checkpoint has no writes of its own; the update stands for the node that wrote in
    the forked step (it was refused: "no node wrote in the last step")."""
    builder = StateGraph(Joke)
    builder.add_node("gen_topic", lambda s: {"topic": "cats"})
    builder.add_node("write", lambda s: {"joke": "about " + s["topic"]})
    builder.add_edge(START, "gen_topic")
    builder.add_edge("gen_topic", "write")
    builder.add_edge("write", END)
    app = builder.compile()
    config = thread()
    assert app.invoke({}, config)["joke"] == "about cats"
    [before_write] = [s for s in app.get_state_history(config) if s.next == ("write",)]
    forked = app.update_state(app.fork(before_write.config), {"topic": "chickens"})
    assert app.get_state(forked).metadata["as_node"] == "gen_topic"
    assert app.invoke(None, forked) == {"topic": "chickens", "joke": "about chickens"}
    assert app.get_state(config).values["joke"] == "about cats"  # the source thread is as it was


def test_update_state_on_a_fork_of_a_parallel_step_still_asks_for_as_node() -> None:
    builder = StateGraph(Joke)
    builder.add_node("a", lambda s: {"topic": "a"})
    builder.add_node("b", lambda s: {"joke": "b"})
    builder.add_node("c", lambda s: {})
    builder.add_edge(START, "a")
    builder.add_edge(START, "b")
    builder.add_edge("a", "c")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    app = builder.compile()
    config = thread()
    app.invoke({}, config)
    [before_c] = [s for s in app.get_state_history(config) if s.next == ("c",)]
    with pytest.raises(ConfigurationError, match="pass as_node=.*nodes 'a', 'b' wrote"):
        app.update_state(app.fork(before_c.config), {"topic": "x"})


def test_update_state_takes_the_message_shorthands_a_node_may_return() -> None:
    from distributed_agents import MessagesState

    app = one_node("bot", lambda s: {"messages": [("assistant", "hi")]}, MessagesState)
    config = thread()
    app.invoke({"messages": [("user", "yo")]}, config)
    app.update_state(config, {"messages": [("user", "never mind"), "and another"]})
    messages = app.get_state(config).values["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "yo"), ("assistant", "hi"), ("user", "never mind"), ("user", "and another")]


# -- conditions taking a config -------------------------------------------------------------------------

class Routed(TypedDict, total=False):
    x: int
    who: str
    seen: str


def routed_graph(route: Any, after_node: bool) -> Any:
    builder = StateGraph(Routed)
    if after_node:
        builder.add_node("first", lambda s: {"x": 2})
    builder.add_node("a", lambda s: {"who": "a"})
    builder.add_node("b", lambda s: {"who": "b"})
    if after_node:
        builder.add_edge(START, "first")
        builder.add_conditional_edges("first", route, ["a", "b"])
    else:
        builder.add_conditional_edges(START, route, ["a", "b"])
    builder.add_edge("a", END)
    builder.add_edge("b", END)
    return builder.compile()


def by_model(state: Routed, config: Any) -> str:
    assert config["configurable"]["thread_id"] and config["configurable"]["checkpoint_ns"] == ""
    return "a" if config["configurable"].get("model") == "big" else "b"


async def by_model_async(state: Routed, config: Any) -> str:
    return by_model(state, config)


@pytest.mark.parametrize("after_node", [False, True])
@pytest.mark.parametrize("route", [by_model, by_model_async])
def test_a_condition_taking_a_config_gets_the_runs_configurable_values(route: Any, after_node: bool) -> None:
    """From the trial: ``def route(state, config)`` failed with "missing 1 required positional
    argument: 'config'"; LangGraph passes path functions that take it the run's config."""
    app = routed_graph(route, after_node)
    config = {"configurable": {**thread()["configurable"], "model": "big"}}
    assert app.invoke({"x": 1}, config)["who"] == "a"
    assert app.invoke({"x": 1}, {"configurable": {"model": "small"}})["who"] == "b"
    assert app.invoke({"x": 1})["who"] == "b"
    # A thread's next run, and update_state's routing, get that run's values too.
    assert app.invoke({"x": 3}, {"configurable": {**config["configurable"], "model": "small"}})["who"] == "b"


def test_a_condition_whose_second_parameter_has_a_default_keeps_it() -> None:
    app = routed_graph(lambda state, target="a": target, after_node=True)
    assert app.invoke({"x": 1})["who"] == "a"


def test_a_graph_whose_code_changed_since_still_reads_its_threads() -> None:
    """Same name, other nodes (the code was edited between runs): reading the old thread works,
    as LangGraph reads old checkpoints; running on it is refused, as before."""
    before = one_node("inc", lambda s: {"x": s["x"] + 1}, A)
    builder = StateGraph(A)
    builder.add_node("inc", lambda s: {"x": s["x"] + 1})
    builder.add_node("more", lambda s: {"x": s["x"] * 10})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", "more")
    builder.add_edge("more", END)
    after = builder.compile()
    config = thread()
    before.invoke({"x": 1}, config)
    assert after.get_state(config).values == {"x": 2}
    assert len(list(after.get_state_history(config))) == 2
    with pytest.raises(ConfigurationError, match="differs from the given graph"):
        after.invoke({"x": 5}, config)
