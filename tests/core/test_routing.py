"""Routing correctness: join barriers, read-only conditions, entry order, conditional entry, step limits.

Each rule is checked on the graph alone (``Graph.route``/``Graph.start``, fast, property
tested) and end to end through ``Orchestrator.execute`` on the memory backend, reading
which nodes ran in which step from the committed checkpoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Orchestrator
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    GraphValidationError,
    RoutingError,
    StepLimitExceededError,
    WorkflowNotFoundError,
)
from distributed_agents.core.graph import END, START, Graph, join_key
from distributed_agents.core.joins import legacy_join_key
from distributed_agents.core.state import State

pytestmark = pytest.mark.timeout(120)

PROPERTY = settings(max_examples=60, deadline=None)
END_TO_END = settings(max_examples=15, deadline=None)


def logger(name: str) -> Any:
    """A node that appends its name to the state's "log"."""

    def node(state: Any) -> dict[str, Any]:
        return {"log": [name]}

    node.__qualname__ = f"log_{name}"
    return node


def routed(graph: Graph, ran: Sequence[str], joins: Mapping[str, Sequence[str]] | None = None,
           state: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """``graph.route`` run to completion."""
    return run(graph.route(list(ran), State(dict(state or {})), dict(joins or {})), 5)


async def execute_and_trace(graph: Graph, state: Mapping[str, Any] | None = None,
                            **kwargs: Any) -> tuple[State, list[list[str]]]:
    """Run ``graph``; return its final state and the nodes each step ran, from the checkpoints."""
    orchestrator = Orchestrator()
    try:
        result = await orchestrator.execute(graph, dict(state or {}), **kwargs)
        checkpoints = await orchestrator.backend.state_store.list_checkpoints(result.workflow_id)
    finally:
        await orchestrator.close()
    frontiers = [cp.frontier for cp in sorted(checkpoints, key=lambda cp: cp.step)]
    return result, [list(f["next"]) for f in frontiers if f["next"]]


# -- 1. joins are per-step barriers ----------------------------------------------------


def issue_join_graph(order: Sequence[str]) -> Graph:
    """The issue's example: entry a and x; x->a, a->b, b->END, c->END; join [a, b] -> c."""
    graph = Graph("join_barrier", reducers={"log": "append"})
    for name in order:
        graph.add_node(name, logger(name))
    graph.set_entry_point("a").set_entry_point("x")
    graph.add_edge("x", "a").add_edge("a", "b").add_edge("b", END).add_edge("c", END)
    return graph.add_edge(["a", "b"], "c").compile()


@pytest.mark.parametrize("order", list(itertools.permutations("baxc")), ids="".join)
def test_join_fires_once_per_completion_whatever_the_declaration_order(order: Sequence[str]) -> None:
    """c runs once, in 3 steps {a,x}, {a,b}, {b,c}, for every declaration order (was: twice, 4 steps)."""
    result, steps = run(execute_and_trace(issue_join_graph(order)))
    assert [set(s) for s in steps] == [{"a", "x"}, {"a", "b"}, {"b", "c"}]
    assert result["log"].count("c") == 1
    # Within a step, updates merge in declaration order.
    position = {name: i for i, name in enumerate(order)}
    merged_steps = [sorted(s, key=position.__getitem__) for s in steps]
    assert result["log"] == [name for s in merged_steps for name in s]


def test_a_source_running_twice_in_one_completion_counts_once() -> None:
    """The join counts source runs since it last fired: a, a again, then b fires it once."""
    graph = Graph("g").add_node("a").add_node("b").add_node("t")
    graph.set_entry_point("a").add_edge("a", "b").add_edge(["a", "b"], "t").add_edge("b", END).add_edge("t", END)
    graph.compile()
    ab = join_key("t", ["a", "b"])
    assert routed(graph, ["a"]) == (["b"], {ab: ["a"]})
    assert routed(graph, ["a"], {ab: ["a"]}) == (["b"], {ab: ["a"]})
    assert routed(graph, ["b"], {ab: ["a"]}) == (["t"], {})
    # Sources of one step arrive together, whatever order ``ran`` lists them in.
    assert routed(graph, ["b", "a"]) == (["b", "t"], {}) == routed(graph, ["a", "b"])


@pytest.mark.parametrize("second", [["a", "b"], ["b", "a"], ["b", "a", "a"]], ids=["same", "reordered", "repeated"])
def test_a_join_declared_twice_is_one_join(second: list[str]) -> None:
    """Declaring [a, b] -> c again (any source order) neither fires c twice nor leaves stray progress."""
    graph = Graph("twice").add_node("a").add_node("b").add_node("c")
    graph.set_entry_point("a").set_entry_point("b").add_edge("a", END).add_edge("b", END).add_edge("c", END)
    graph.add_edge(["a", "b"], "c").add_edge(second, "c").compile()
    assert routed(graph, ["a", "b"]) == (["c"], {})
    # Old code kept b as progress of the "second" join, so a alone fired c again.
    assert routed(graph, ["a"]) == ([], {join_key("c", ["a", "b"]): ["a"]})


def test_join_keys_with_plus_in_node_names_do_not_collide() -> None:
    """[a+b, c] -> t and [a, b+c] -> t keep separate progress ('+' made both 't<-a+b+c')."""
    graph = Graph("plus")
    for name in ("a+b", "c", "a", "b+c", "t"):
        graph.add_node(name)
    for name in ("a+b", "c", "a", "b+c"):
        graph.set_entry_point(name).add_edge(name, END)
    graph.add_edge(["a+b", "c"], "t").add_edge(["a", "b+c"], "t").set_finish_point("t").compile()
    one, two = join_key("t", ["a+b", "c"]), join_key("t", ["a", "b+c"])
    assert one != two
    nodes, progress = routed(graph, ["a+b", "b+c"])
    assert (nodes, progress) == ([], {one: ["a+b"], two: ["b+c"]})
    nodes, progress = routed(graph, ["c"], progress)
    assert (nodes, progress) == (["t"], {two: ["b+c"]})  # the second join keeps its progress
    assert routed(graph, ["a"], progress) == (["t"], {})


def test_join_keys_with_arrows_in_node_names_do_not_collide_across_targets() -> None:
    """Target 'x<-a' from [b, c] and target 'x' from [a<-b, c] had one key 'x<-a<-b+c'."""
    graph = Graph("arrows")
    for name in ("x<-a", "x", "b", "c", "a<-b"):
        graph.add_node(name)
    for name in ("b", "c", "a<-b"):
        graph.set_entry_point(name).add_edge(name, END)
    graph.add_edge(["b", "c"], "x<-a").add_edge(["a<-b", "c"], "x").set_finish_point("x<-a").set_finish_point("x")
    graph.compile()
    assert legacy_join_key("x<-a", ["b", "c"]) == legacy_join_key("x", ["a<-b", "c"])  # the old flaw
    nodes, progress = routed(graph, ["b", "a<-b"])
    assert nodes == [] and len(progress) == 2
    assert routed(graph, ["c"], progress) == (["x<-a", "x"], {})


names = st.text(alphabet=st.sampled_from("ab+<-,\"[]\\ é"), min_size=1, max_size=5)


@PROPERTY
@given(names, st.lists(names, min_size=1, max_size=4), names, st.lists(names, min_size=1, max_size=4))
def test_join_keys_are_equal_exactly_for_the_same_target_and_source_set(
    target: str, sources: list[str], other_target: str, other_sources: list[str]
) -> None:
    """Whatever characters names hold, two joins share a key only if they are the same join."""
    same = target == other_target and set(sources) == set(other_sources)
    assert (join_key(target, sources) == join_key(other_target, other_sources)) == same
    assert join_key(target, sources) == join_key(target, list(reversed(sources)) + sources[:1])


def test_progress_stored_under_old_keys_is_still_read() -> None:
    """A checkpoint written before the key change ("d<-b+c") continues where it was."""
    graph = Graph("old").add_node("b").add_node("c").add_node("d")
    graph.set_entry_point("b").set_entry_point("c").add_edge(["b", "c"], "d").set_finish_point("d").compile()
    assert routed(graph, ["c"], {"d<-b+c": ["b"]}) == (["d"], {})
    assert routed(graph, [], {"d<-b+c": ["b"], "gone<-x+y": ["x"]}) == ([], {join_key("d", ["b", "c"]): ["b"]})


# -- random DAGs with joins: an oracle from the trace, and declaration-order independence --


@dataclass
class DagShape:
    """A DAG over n0..nk (edges only go forward): entry nodes, static edges and joins."""

    names: list[str]
    entry: list[str]
    edges: list[tuple[str, str]] = field(default_factory=list)
    joins: list[tuple[list[str], str]] = field(default_factory=list)


@st.composite
def dags(draw: st.DrawFn) -> DagShape:
    """Random DAGs with joins (some declared twice, sources reordered)."""
    count = draw(st.integers(3, 8))
    names = [f"n{i}" for i in range(count)]
    later = st.integers(2, count - 1)  # a join needs two earlier nodes
    shape = DagShape(names, entry=["n0", *sorted(set(draw(st.lists(st.sampled_from(names[1:]), max_size=2))))])
    for i in range(1, count):  # a spanning tree: everything is reachable
        shape.edges.append((names[draw(st.integers(0, i - 1))], names[i]))
    for _ in range(draw(st.integers(0, count))):
        a = draw(st.integers(0, count - 2))
        shape.edges.append((names[a], names[draw(st.integers(a + 1, count - 1))]))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(later)
        sources = draw(st.lists(st.sampled_from(names[:target]), min_size=2, max_size=4, unique=True))
        shape.joins.append((sources, names[target]))
        if draw(st.booleans()):
            shape.joins.append((list(reversed(sources)), names[target]))
    return shape


def build_dag(shape: DagShape, order: Sequence[str]) -> Graph:
    """``shape`` as a compiled graph with nodes declared in ``order``."""
    graph = Graph("dag", reducers={"log": "append"})
    for name in order:
        graph.add_node(name, logger(name))
    for name in reversed(shape.entry):  # entry points in a different order than declared
        graph.set_entry_point(name)
    for source, target in shape.edges:
        graph.add_edge(source, target)
    for sources, target in shape.joins:
        graph.add_edge(sources, target)
    for name in shape.names:
        graph.set_finish_point(name)
    return graph.compile()


def simulate(graph: Graph) -> list[list[str]]:
    """The nodes of each step, driving ``Graph.start``/``Graph.route`` as the engine does."""

    async def steps() -> list[list[str]]:
        trace: list[list[str]] = []
        nodes, joins = await graph.start(State()), {}
        while nodes:
            trace.append(nodes)
            nodes, joins = await graph.route(nodes, State(), joins)
            assert len(trace) < 100, "a DAG must finish"
        return trace

    return run(steps(), 10)


def oracle_next(shape: DagShape, trace: Sequence[Sequence[str]], step: int) -> set[str]:
    """What step ``step + 1`` must run, by the rule's definition, read off the trace alone.

    Static edges trigger their target after a step that ran the source. A join (target,
    set of sources) fires after step i iff one of its sources ran in step i and every
    source ran in some step after the step the join last fired.
    """
    triggered = {t for s, t in shape.edges if s in trace[step]}
    for sources, target in {(frozenset(s), t) for s, t in shape.joins}:
        fired_after = -1
        for i in range(step + 1):
            since = set().union(*map(set, trace[fired_after + 1:i + 1]))
            if sources & set(trace[i]) and sources <= since:
                if i == step:
                    triggered.add(target)
                fired_after = i
    return triggered


@PROPERTY
@given(dags(), st.data())
def test_random_dags_follow_the_barrier_rule_in_any_declaration_order(shape: DagShape, data: st.DataObject) -> None:
    """Each step runs exactly what the barrier rule says, and the trace ignores declaration order."""
    order = data.draw(st.permutations(shape.names))
    trace = simulate(build_dag(shape, order))
    assert trace[0] == [n for n in order if n in shape.entry]
    for step in range(len(trace)):
        expected = oracle_next(shape, trace, step)
        actual = set(trace[step + 1]) if step + 1 < len(trace) else set()
        assert actual == expected, f"after step {step} ({trace[step]})"
        assert list(trace[step]) == [n for n in order if n in trace[step]]  # declaration order
    reference = simulate(build_dag(shape, shape.names))
    assert [set(s) for s in trace] == [set(s) for s in reference]


@END_TO_END
@given(dags(), st.data())
def test_random_dags_give_the_same_result_in_any_declaration_order(shape: DagShape, data: st.DataObject) -> None:
    """End to end: the same steps and, per step, the same writes whatever the declaration order."""
    order = data.draw(st.permutations(shape.names))
    result, steps = run(execute_and_trace(build_dag(shape, order)))
    reference, reference_steps = run(execute_and_trace(build_dag(shape, shape.names)))
    assert [set(s) for s in steps] == [set(s) for s in reference_steps] == [set(s) for s in simulate(
        build_dag(shape, shape.names))]
    assert sorted(result["log"]) == sorted(reference["log"])
    assert result["log"] == [name for s in steps for name in s]


# -- 2. conditions see a read-only view -------------------------------------------------


def test_the_view_is_a_dict_whose_values_read_through_any_api_are_copies() -> None:
    """json.dumps and isinstance(dict) work on the view (LangGraph code does both); mutating what
    ``items()``, ``values()``, ``dict(view)`` or ``{**view}`` return changes nothing committed."""
    import json

    seen: list[str] = []

    def condition(state: Any) -> str:
        assert isinstance(state, dict)
        seen.append(json.dumps(state, sort_keys=True))
        for _, value in state.items():
            value.append("x") if isinstance(value, list) else value.update(z=1)
        for value in state.values():
            value.append("y") if isinstance(value, list) else value.update(y=1)
        dict(state)["items"].append("z")
        {**state}["seen"]["w"] = 2
        return "done"

    state = State({"items": [1], "seen": {"k": 1}})
    run(condition_graph(condition).route(["start"], state, {}), 5)
    assert seen == ['{"items": [1], "seen": {"k": 1}}']
    assert state == {"items": [1], "seen": {"k": 1}}


def flagging(state: Any) -> str:
    """A condition that (wrongly) writes into the state it routes on."""
    state["flag"] = True
    return "done"


def condition_graph(condition: Any) -> Graph:
    """start -> condition -> done | start."""
    graph = Graph("cond", reducers={"items": "append"})
    graph.add_node("start", lambda s: {"items": ["x"], "seen": {"k": 1}}).add_node("done", lambda s: None)
    graph.set_entry_point("start").add_conditional_edge("start", condition, ["done", END]).set_finish_point("done")
    return graph.compile()


def test_a_condition_writing_the_state_fails_naming_condition_graph_and_key() -> None:
    """state["flag"] = ... in a condition raises; nothing of it is committed."""
    orchestrator = Orchestrator()

    async def scenario() -> None:
        with pytest.raises(ExecutionError) as info:
            await orchestrator.execute(condition_graph(flagging), {}, workflow_id="cond-write")
        message = str(info.value)
        assert "flagging" in message and "'cond'" in message and "'flag'" in message and "read-only" in message
        record = await orchestrator.backend.state_store.get("cond-write")
        assert record is not None and record.status == "failed"
        assert "flag" not in record.state
        await orchestrator.close()

    run(scenario())


@pytest.mark.parametrize("write", [
    lambda s: s.__delitem__("items"),
    lambda s: s.update(flag=1),
    lambda s: s.update({"a": 1, "b": 2}),
    lambda s: s.pop("items"),
    lambda s: s.setdefault("new", 1),
    lambda s: s.clear(),
    lambda s: s.popitem(),
    lambda s: s.restore_from_checkpoint(State({"x": 1}).checkpoint("n")),
    lambda s: s.__ior__({"flag": 1}),
    lambda s: s.__setitem__("flag", 1),
], ids=["del", "update-kwargs", "update-dict", "pop", "setdefault", "clear", "popitem", "restore", "ior", "set"])
def test_every_kind_of_write_to_the_view_is_refused(write: Any) -> None:
    """Any write through the mapping API raises ExecutionError naming the condition; the state is unchanged."""

    def condition(state: Any) -> str:
        write(state)
        return "done"

    graph = condition_graph(condition)
    state = State({"items": [1], "seen": {"k": 1}})
    with pytest.raises(ExecutionError, match=r"graph 'cond': condition .*condition after node 'start' tried to"):
        run(graph.route(["start"], state, {}), 5)
    assert state == {"items": [1], "seen": {"k": 1}}


def test_changing_nested_values_in_a_condition_changes_nothing_committed() -> None:
    """Values handed out are copies: appending to a list in a condition is not committed."""

    async def meddle(state: Any) -> str:
        state["items"].append("sneaky")
        state["seen"]["k"] = 2
        assert state["items"][-1] == "sneaky"  # within the condition, the copy is consistent
        assert state.get("seen") == {"k": 2}
        return "done"

    result = run(Orchestrator().execute(condition_graph(meddle), {}))
    assert result["items"] == ["x"] and result["seen"] == {"k": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=8,
)


def _mutate(value: Any, choice: int) -> None:
    """Change a nested list or dict in place (whatever it holds)."""
    if isinstance(value, list):
        value.append(choice)
        value.reverse()
    elif isinstance(value, dict):
        value["__changed__"] = choice
        for item in list(value.values()):
            _mutate(item, choice + 1)


@PROPERTY
@given(st.dictionaries(st.text(max_size=3), json_values, min_size=1, max_size=4), st.data())
def test_no_condition_can_change_the_state_it_routes_on(values: dict[str, Any], data: st.DataObject) -> None:
    """Reads, in-place changes of what was read, and writes (refused) leave the routed state as it was."""
    state = State(values)
    before = state.values_copy()
    keys = sorted(values)
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["read", "mutate", "write"]), st.sampled_from(keys),
                                       st.integers(0, 5)), max_size=6))

    def meddler(view: Any) -> str:
        changed = set()
        for op, key, choice in ops:
            if op == "read":
                assert key in changed or view[key] == before[key]
            elif op == "mutate":
                _mutate(view[key], choice)
                changed.add(key)
            else:
                with pytest.raises(ExecutionError, match=r"meddler after node 'start' tried to set state key"):
                    view[key] = choice
        return "done"

    if any(op == "write" for op, _, _ in ops):  # a refused write fails the routing even when caught
        with pytest.raises(ExecutionError, match=r"tried to set state key"):
            run(condition_graph(meddler).route(["start"], state, {}), 5)
    else:
        run(condition_graph(meddler).route(["start"], state, {}), 5)
    assert state.values_copy() == before


def test_reading_the_view_works_like_a_state() -> None:
    """Conditions may read keys, iterate, compare, copy and see the workflow id."""
    seen: dict[str, Any] = {}

    def reader(state: Any) -> str:
        seen.update(keys=sorted(state), length=len(state), has="items" in state, missing=state.get("nope", 0),
                    equal=state == {"items": ["x"], "seen": {"k": 1}}, copy=state.copy().values_copy(),
                    workflow=state.workflow_id, is_state=isinstance(state, State))
        return "done"

    result = run(Orchestrator().execute(condition_graph(reader), {}, workflow_id="reader-1"))
    assert seen == {"keys": ["items", "seen"], "length": 2, "has": True, "missing": 0, "equal": True,
                    "copy": {"items": ["x"], "seen": {"k": 1}}, "workflow": "reader-1", "is_state": True}
    assert result["items"] == ["x"]


# -- 7. merge order, conditional entry, step limits -------------------------------------


@PROPERTY
@given(st.permutations(["a", "b", "c", "d"]), st.permutations(["a", "b", "c", "d"]), st.integers(1, 4))
def test_the_first_step_merges_in_declaration_order_not_entry_order(
    declared: list[str], entry_order: list[str], entries: int
) -> None:
    """Entry b then a, declared a then b, merges [a, b] (was [b, a])."""
    graph = Graph("entries", reducers={"log": "append"})
    for name in declared:
        graph.add_node(name, logger(name)).set_finish_point(name)
    chosen = entry_order[:entries]
    for name in chosen:
        graph.set_entry_point(name)
    for name in set(declared) - set(chosen):
        graph.add_edge(chosen[0], name)
    graph.compile()
    expected = [n for n in declared if n in chosen]
    assert graph.entry_nodes() == expected
    result = run(Orchestrator().execute(graph, {}))
    assert result["log"][:entries] == expected


def test_entry_b_then_a_merges_a_first() -> None:
    """The issue's example: declared a, b; set_entry_point("b") then ("a") gives [a, b]."""
    graph = Graph("ba", reducers={"log": "append"}).add_node("a", logger("a")).add_node("b", logger("b"))
    graph.set_entry_point("b").set_entry_point("a").set_finish_point("a").set_finish_point("b").compile()
    assert run(Orchestrator().execute(graph, {}))["log"] == ["a", "b"]


def pick(state: Any) -> Any:
    """A START condition routing on the input."""
    return state.get("route", "small")


def conditional_entry_graph(targets: Any = None) -> Graph:
    """START routes by ``pick`` to small | big (| END), each finishing."""
    graph = Graph("entry_cond", reducers={"log": "append"})
    graph.add_node("big", logger("big")).add_node("small", logger("small"))
    graph.add_conditional_edge(START, pick, targets if targets is not None else {"small": "small", "big": "big",
                                                                                  "none": END})
    return graph.set_finish_point("big").set_finish_point("small").compile()


@pytest.mark.parametrize("targets", [None, ["small", "big", END]], ids=["dict", "list"])
def test_a_conditional_entry_point_routes_the_input_state(targets: Any) -> None:
    """add_conditional_edge(START, ...) compiles (was: 'no entry point') and routes the input."""
    graph = conditional_entry_graph(targets)
    assert graph.entry_nodes() == []
    assert run(Orchestrator().execute(graph, {"route": "big"}))["log"] == ["big"]
    assert run(Orchestrator().execute(graph, {}))["log"] == ["small"]
    assert run(Orchestrator().execute(graph, {"route": ["big", "small"]}))["log"] == ["big", "small"]
    spec = graph.spec()
    assert spec["conditional_edges"][0]["source"] == START


def test_a_conditional_entry_to_end_completes_with_the_input() -> None:
    """START's condition choosing END runs no node; the workflow completes with its input."""
    graph = conditional_entry_graph()
    orchestrator = Orchestrator()

    async def scenario() -> None:
        assert await orchestrator.execute(graph, {"route": "none"}, workflow_id="nothing") == {"route": "none"}
        assert (await orchestrator.get_workflow_status("nothing")).status == "completed"
        await orchestrator.close()

    run(scenario())


def test_conditional_and_static_entry_points_run_together() -> None:
    """set_entry_point nodes and START's chosen nodes form one first step, in declaration order."""
    graph = Graph("both", reducers={"log": "append"})
    for name in ("z", "big", "small"):
        graph.add_node(name, logger(name)).set_finish_point(name)
    graph.add_conditional_edge(START, pick, ["small", "big", "z"]).set_entry_point("small").compile()
    assert graph.entry_nodes() == ["small"]
    assert run(graph.start(State({"route": "big"}))) == ["big", "small"]
    with pytest.raises(GraphValidationError, match="'z' is unreachable"):
        Graph("g").add_node("a").add_node("z").add_conditional_edge(START, pick, ["a"]).set_finish_point("a") \
            .set_finish_point("z").compile()


def test_conditional_entry_edges_are_validated_like_others() -> None:
    """A START condition to an unknown node, or a condition out of END, is rejected naming the culprit."""
    graph = Graph("g").add_node("a").set_finish_point("a").add_conditional_edge(START, pick, {"x": "a", "y": "ghost"})
    with pytest.raises(GraphValidationError, match="from '__start__' targets unknown node 'ghost'"):
        graph.compile()
    graph = Graph("g").add_node("a").set_entry_point("a").set_finish_point("a").add_conditional_edge(END, pick, ["a"])
    with pytest.raises(GraphValidationError, match="starts at unknown node '__end__'"):
        graph.compile()
    with pytest.raises(GraphValidationError, match="no entry point; call set_entry_point"):
        Graph("g").add_node("a").set_finish_point("a").compile()


def test_a_conditional_entry_failing_stores_no_workflow() -> None:
    """A START condition that raises, returns an unknown key or writes fails execute(); nothing is stored."""
    orchestrator = Orchestrator()

    def boom(state: Any) -> str:
        raise RuntimeError("no route")

    cases = [(boom, r"condition .*boom at START raised RuntimeError: no route"),
             (flagging, r"condition flagging at START tried to set state key 'flag'"),
             (lambda s: "elsewhere", r"at START returned 'elsewhere'")]

    async def scenario() -> None:
        for i, (condition, message) in enumerate(cases):
            graph = Graph(f"bad_entry{i}").add_node("done").add_conditional_edge(START, condition, {"done": "done"})
            graph.set_finish_point("done").compile()
            with pytest.raises(ExecutionError, match=message):
                await orchestrator.execute(graph, {}, workflow_id=f"bad-entry-{i}")
            with pytest.raises(WorkflowNotFoundError):
                await orchestrator.get_workflow_status(f"bad-entry-{i}")
        await orchestrator.close()

    run(scenario())


def chain(length: int) -> Graph:
    """n0 -> n1 -> ... -> END."""
    graph = Graph("chain")
    for i in range(length):
        graph.add_node(f"n{i}", lambda s: None)
    graph.set_entry_point("n0")
    for i in range(length - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    return graph.set_finish_point(f"n{length - 1}").compile()


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, "3"], ids=repr)
def test_per_call_step_limits_below_one_are_refused(limit: Any) -> None:
    """execute/resume(step_limit=0) used the default and -1 claimed 'cycling'; both now say what is wrong."""
    orchestrator = Orchestrator()

    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match=r"step_limit must be an int >= 1.*got"):
            await orchestrator.execute(chain(2), {}, step_limit=limit)
        with pytest.raises(ConfigurationError, match=r"step_limit must be an int >= 1"):
            await orchestrator.resume("anything", chain(2), step_limit=limit)
        assert await orchestrator.list_workflows() == []
        assert await orchestrator.execute(chain(2), {}, step_limit=2) == {}
        await orchestrator.close()

    run(scenario())


def test_an_acyclic_chain_at_the_step_limit_names_the_pending_node_not_a_cycle() -> None:
    """n0..n4 with limit 3: 'n3' is pending, and nothing is called cycling."""
    with pytest.raises(StepLimitExceededError) as info:
        run(Orchestrator().execute(chain(5), {}, step_limit=3))
    message = str(info.value)
    assert info.value.nodes == ("n3",)
    assert "'n3' pending" in message and "cycling" not in message and "no loop" in message


@pytest.mark.parametrize("limit", [4, 7, 20])
def test_a_loop_at_the_step_limit_names_the_pending_and_the_cycling_nodes(limit: int) -> None:
    """pre -> writer <-> reviewer for ever: the loop's nodes are cycling, pre is not."""
    graph = Graph("loop")
    for name in ("pre", "writer", "reviewer", "done"):
        graph.add_node(name, lambda s: None)
    graph.set_entry_point("pre").add_edge("pre", "writer").add_edge("writer", "reviewer")
    graph.add_conditional_edge("reviewer", lambda s: "writer", ["writer", "done"]).set_finish_point("done").compile()
    with pytest.raises(StepLimitExceededError) as info:
        run(Orchestrator().execute(graph, {}, step_limit=limit))
    pending = "writer" if limit % 2 == 1 else "reviewer"
    message = str(info.value)
    assert f"with '{pending}' pending" in message and "'writer' ran " in message and "'reviewer' ran " in message
    assert f"in the last {min(limit, 8)} step(s)" in message
    assert "cycling" in message and "'pre'" not in message.split("pending")[1]
    assert set(info.value.nodes) == {"writer", "reviewer"} and info.value.nodes[0] == pending


def test_only_nodes_that_repeated_are_called_cycling() -> None:
    """At limit 3 the loop ran pre, writer, reviewer and writer is pending: only writer repeated."""
    graph = Graph("loop")
    for name in ("pre", "writer", "reviewer", "done"):
        graph.add_node(name, lambda s: None)
    graph.set_entry_point("pre").add_edge("pre", "writer").add_edge("writer", "reviewer")
    graph.add_conditional_edge("reviewer", lambda s: "writer", ["writer", "done"]).set_finish_point("done").compile()
    with pytest.raises(StepLimitExceededError) as info:
        run(Orchestrator().execute(graph, {}, step_limit=3))
    assert ("with 'writer' pending; in the last 3 step(s) 'writer' ran 1 time(s) and is pending again, so the graph "
            "is cycling") in str(info.value)
    assert info.value.nodes == ("writer",)


def test_the_step_limit_failure_is_recorded_with_pending_and_cycling_nodes() -> None:
    """The workflow's error record lists the pending nodes and the cycling ones."""
    orchestrator = Orchestrator()

    async def scenario() -> None:
        with pytest.raises(StepLimitExceededError):
            await orchestrator.execute(chain(4), {}, step_limit=2, workflow_id="limited")
        status = await orchestrator.get_workflow_status("limited")
        assert status.status == "failed" and status.error is not None
        assert status.error["nodes"] == ["n2"] and status.error["cycling"] == []
        await orchestrator.close()

    run(scenario())


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
def test_the_step_limit_message_counts_each_nodes_runs_exactly(limit: int) -> None:
    """a -> b -> a ...: a node is called cycling only when it ran twice or ran and is pending again."""
    graph = Graph("ab").add_node("a", lambda s: None).add_node("b", lambda s: None)
    graph.set_entry_point("a").add_edge("a", "b").add_conditional_edge("b", lambda s: "a", ["a", END]).compile()
    with pytest.raises(StepLimitExceededError) as info:
        run(Orchestrator().execute(graph, {}, step_limit=limit))
    message = str(info.value)
    ran = {"a": (limit + 1) // 2, "b": limit // 2}
    pending = "a" if limit % 2 == 0 else "b"
    assert f"in the last {limit} step(s)" in message or "no loop" in message
    if limit == 1:
        assert "no loop" in message and "cycling" not in message
        return
    for name, times in ran.items():
        if times + (name == pending) > 1:
            assert f"'{name}' ran {times} time(s)" + (" and is pending again" if name == pending else "") in message
        else:
            assert f"'{name}' ran" not in message


def test_a_condition_that_catches_its_refused_write_still_fails_the_workflow() -> None:
    def route(state: Any) -> str:
        try:
            state["visits"] = 1
        except Exception:  # the condition swallows the refusal and returns a route
            pass
        return "b"

    graph = Graph("swallow").add_node("a", lambda s: {"x": 1}).add_node("b", lambda s: {})
    graph.set_entry_point("a").add_conditional_edge("a", route, ["b"]).set_finish_point("b").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(ExecutionError, match="tried to set state key 'visits'"):
            await orchestrator.execute(graph, {}, workflow_id="swallow")
        return await orchestrator.get_workflow_status("swallow")

    status = run(scenario())
    assert status.status == "failed" and "visits" in status.error["summary"]


@pytest.mark.parametrize("returned", [{"junk"}, ["b", "junk"], ("junk",)])
def test_a_condition_returning_a_collection_with_a_bad_item_is_reported_as_returned(returned: Any) -> None:
    graph = Graph("junk").add_node("a", lambda s: {}).add_node("b", lambda s: {})
    graph.set_entry_point("a").add_conditional_edge("a", lambda s: returned, {"b": "b"}).set_finish_point("b")
    graph.compile()
    with pytest.raises(ExecutionError) as caught:
        run(Orchestrator().execute(graph, {}))
    assert f"returned {returned!r}: its item 'junk' is not in its targets" in str(caught.value)


def _route_annotated(state: Any) -> Literal["tools", "__end__"]:
    return "tools" if not state.get("done") else END


def _route_elsewhere(state: Any) -> Literal["tools", "__end__"]:
    return "other"  # type: ignore[return-value]  # not what it says it returns


class _Router:
    def __call__(self, state: Any) -> Literal["tools", "__end__"]:
        return END


def _agent_graph(name: str, condition: Any, extra: bool = False) -> Graph:
    graph = Graph(name)
    graph.add_node("agent", lambda s: {"n": s.get("n", 0) + 1}).add_node("tools", lambda s: {"done": True})
    if extra:
        graph.add_node("other", lambda s: {}).add_edge("other", END)
    graph.add_edge(START, "agent").add_conditional_edges("agent", condition).add_edge("tools", "agent")
    return graph


def test_a_conditions_literal_return_annotation_is_its_path_map_as_in_langgraph() -> None:
    graph = _agent_graph("literal_routes", _route_annotated).compile()
    drawn = graph.draw_ascii()
    assert "-.-> [tools]" in drawn and "-.-> (END)" in drawn and "-.-> [agent]" not in drawn
    assert dict(Orchestrator().invoke(graph, {})) == {"n": 2, "done": True}
    # A callable object's __call__ annotation counts too (without one, every node is a target: agent too).
    assert "-.-> [agent]" not in _agent_graph("literal_object", _Router()).compile().draw_ascii()
    # The targets are checked: a node the annotation does not name is unreachable, and a
    # returned name it does not list is a routing error (LangGraph raises too).
    with pytest.raises(GraphValidationError, match="node 'other' is unreachable"):
        _agent_graph("literal_unreachable", _route_annotated, extra=True).compile()
    with pytest.raises(RoutingError, match="returned 'other', which is not one of"):
        Orchestrator().invoke(_agent_graph("literal_wrong", _route_elsewhere).compile(), {})


def test_a_condition_without_a_literal_annotation_may_still_return_any_node() -> None:
    def route(state: Any) -> str:
        return "tools" if not state.get("done") else END

    graph = _agent_graph("plain_routes", route, extra=True).compile()  # "other" may be routed to: reachable
    assert "-.-> [agent]" in graph.draw_ascii()
    assert dict(Orchestrator().invoke(graph, {})) == {"n": 2, "done": True}


def _route_unresolvable(state: "OnlyATypeCheckerSeesThis") -> Literal["tools", "__end__"]:  # noqa: F821
    return "tools" if not state.get("done") else END


def _route_with_flag(state: Any, flag: bool) -> Literal["tools", "__end__"]:
    return "tools" if not state.get("done") else END


def test_a_literal_return_is_read_when_another_annotation_does_not_resolve_and_through_a_partial() -> None:
    import functools

    for name, condition in (("unresolvable", _route_unresolvable),
                            ("partial", functools.partial(_route_with_flag, flag=True))):
        graph = _agent_graph(f"literal_{name}", condition).compile()
        assert "-.-> [agent]" not in graph.draw_ascii(), name  # only the Literal's targets
        assert dict(Orchestrator().invoke(graph, {})) == {"n": 2, "done": True}
