"""core.node_runner: what a node returns is detached from its objects; how a node gets its context."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Command, Graph, Orchestrator, State
from distributed_agents.adapters.memory import reset_memory_spaces

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


def aliasing_graph(name: str, shared: list[Any], *, command: bool) -> Graph:
    def p(state: State) -> Any:
        return Command(update={"x": shared}) if command else {"x": shared}

    def q(state: State) -> dict[str, Any]:
        shared.append("mutated later")  # q writes nothing to 'x'
        return {"y": 1}

    graph = Graph(name).add_node("p", p).add_node("q", q).add_node("r", lambda s: {"r_saw": list(s["x"])})
    graph.set_entry_point("p").add_edge("p", "q").add_edge("q", "r")
    return graph.set_finish_point("r").compile()


@pytest.mark.parametrize("command", [False, True], ids=["dict", "Command"])
def test_a_returned_value_mutated_after_the_node_returned_does_not_change_the_state(command: bool) -> None:
    reset_memory_spaces()
    shared: list[Any] = [1]
    graph = aliasing_graph(f"alias_{command}", shared, command=command)

    async def scenario() -> tuple[Any, Any, Any]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(graph, {}, workflow_id="alias")
        history = await orchestrator.get_state_history("alias")
        return dict(result), dict(await orchestrator.get_result("alias")), [s.values for s in history]

    result, stored, history = run(scenario())
    assert result == stored == {"x": [1], "y": 1, "r_saw": [1]}
    assert all(values.get("x", [1]) == [1] for values in history)


@settings(max_examples=25, deadline=None)
@given(value=JSON)
def test_any_json_output_is_seen_unchanged_however_the_returned_object_is_mutated(value: Any) -> None:
    reset_memory_spaces()
    box: dict[str, Any] = {"v": value}

    def writer(state: State) -> dict[str, Any]:
        return {"out": box}

    def vandal(state: State) -> dict[str, Any]:
        box["v"] = "vandalised"
        box["extra"] = 1
        return {}

    graph = Graph("alias_prop").add_node("w", writer).add_node("v", vandal)
    graph.set_entry_point("w").add_edge("w", "v").set_finish_point("v").compile()
    result = run(Orchestrator().execute(graph, {}, workflow_id="prop"))
    assert result["out"] == {"v": value}


@pytest.mark.parametrize("how", ["dict", "Command"])
@pytest.mark.parametrize("key", ["__interrupt__", "__command__", "__mine"])
def test_a_node_writing_a_reserved_key_fails_naming_it(key: str, how: str) -> None:
    """A node's '__interrupt__' made a completed result look like a pause."""
    from distributed_agents.core.errors import NodeExecutionError

    def writer(state: State) -> Any:
        return Command(update={key: "user data"}) if how == "Command" else {key: "user data"}

    graph = Graph(f"reserved_{how}").add_node("a", writer).set_entry_point("a").set_finish_point("a").compile()
    with pytest.raises(NodeExecutionError) as caught:
        run(Orchestrator().execute(graph, {}))
    assert caught.value.node == "a" and caught.value.error_type == "InvalidNodeOutputError"
    assert repr(key) in str(caught.value) and "reserved" in str(caught.value)


def test_update_state_and_the_input_refuse_reserved_keys() -> None:
    from distributed_agents.core.errors import ConfigurationError
    graph = Graph("reserved_in").add_node("a", lambda s: {}).add_node("b", lambda s: {})
    graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()

    async def scenario() -> None:
        orchestrator = Orchestrator()
        with pytest.raises(ConfigurationError, match="'__interrupt__'"):
            await orchestrator.execute(graph, {"__interrupt__": 1})
        await orchestrator.execute(graph, {}, workflow_id="u", interrupt_after=["a"])
        with pytest.raises(ConfigurationError, match="'__x'"):
            await orchestrator.update_state("u", {"__x": 1}, as_node="a")

    run(scenario())


def _context_of(func: Any) -> Any:
    from distributed_agents.core.node_runner import wants_context
    return wants_context(func)


def test_the_context_is_passed_only_to_a_required_or_annotated_second_parameter() -> None:
    from distributed_agents import NodeContext

    def required(state: State, context: NodeContext) -> None: ...

    def required_unannotated(state, ctx):  # type: ignore[no-untyped-def]
        ...

    def annotated_optional(state: State, context: NodeContext | None = None) -> None: ...

    def star(*args: Any) -> None: ...

    def defaulted(state: State, i: int = 3) -> None: ...

    assert _context_of(required) and _context_of(required_unannotated) and _context_of(annotated_optional)
    assert _context_of(star)
    assert not _context_of(defaulted) and not _context_of(lambda state, i=1: None)
    assert not _context_of(lambda state: None)


def test_a_lambda_with_a_default_argument_keeps_its_default() -> None:
    """`lambda state, i=i: ...` got a NodeContext as i."""
    graph = Graph("ctx_default")
    for i in range(3):
        graph.add_node(f"n{i}", lambda state, i=i: {f"v{i}": i})
        graph.set_entry_point(f"n{i}").set_finish_point(f"n{i}")
    graph.compile()
    assert dict(run(Orchestrator().execute(graph, {}))) == {"v0": 0, "v1": 1, "v2": 2}
