"""Graph: compile-time validation (property-tested over random graphs), freezing, spec and routing."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Orchestrator, RetryPolicy
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    GraphFrozenError,
    GraphNotCompiledError,
    GraphValidationError,
)
from distributed_agents.core.graph import END, START, Graph, join_key
from distributed_agents.core.state import State

pytestmark = pytest.mark.timeout(60)

PROPERTY = settings(max_examples=60, deadline=None)


def noop(state: Any) -> None:
    """A node function that writes nothing."""
    return None


# -- random graph descriptions ---------------------------------------------------------


@dataclass
class GraphShape:
    """A random graph as plain data: node names in declaration order and outgoing routes.

    ``routes[node]`` is a list of (form, targets): form "edge" adds one static edge per
    target, "dict"/"list"/"omitted" add one conditional edge of that targets form.
    """

    nodes: list[str]
    routes: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)
    entry: str | None = None


def build(shape: GraphShape, *, entry: bool = True) -> Graph:
    """An uncompiled Graph with ``shape``'s nodes and routes."""
    graph = Graph("random")
    for name in shape.nodes:
        graph.add_node(name, noop)
    if entry and shape.entry is not None:
        graph.set_entry_point(shape.entry)
    for source, routes in shape.routes.items():
        for form, targets in routes:
            if form == "edge":
                for target in targets:
                    graph.add_edge(source, target)
            elif form == "dict":
                graph.add_conditional_edge(source, noop, {f"key{i}": t for i, t in enumerate(targets)})
            elif form == "list":
                graph.add_conditional_edge(source, noop, list(targets))
            else:
                graph.add_conditional_edge(source, noop)
    return graph


@st.composite
def valid_shapes(draw: st.DrawFn) -> GraphShape:
    """Graphs where every node is reachable from the entry point and can reach END."""
    count = draw(st.integers(1, 8))
    names = [f"n{i}" for i in range(count)]
    # Declaration order is shuffled so validation cannot lean on it.
    declared = draw(st.permutations(names))
    shape = GraphShape(nodes=list(declared), entry=names[0])
    targets: dict[str, set[str]] = {name: set() for name in names}
    for i in range(1, count):  # a spanning tree from the entry: everything is reachable
        targets[names[draw(st.integers(0, i - 1))]].add(names[i])
    for name in names:  # extra edges anywhere, loops and self-loops included
        targets[name] |= set(draw(st.lists(st.sampled_from(names), max_size=2)))
        if draw(st.booleans()) or not any(names.index(t) > names.index(name) for t in targets[name]):
            # A node whose targets all point backwards may sit in a closed loop: give it END.
            targets[name].add(END)
    for name in names:
        ordered = sorted(targets[name])
        form = draw(st.sampled_from(["edge", "edge", "dict", "list", "omitted"]))
        # "omitted" keeps its intended targets for tests that need the explicit form; the
        # condition may return any node, a superset of them.
        shape.routes[name] = [(form, ordered)]
    return shape


def compile_error(graph: Graph) -> GraphValidationError:
    """The GraphValidationError that compile() raises for ``graph``."""
    with pytest.raises(GraphValidationError) as info:
        graph.compile()
    assert not graph.compiled
    return info.value


# -- compile: valid graphs -------------------------------------------------------------


@PROPERTY
@given(valid_shapes())
def test_valid_random_graphs_compile_and_describe_themselves(shape: GraphShape) -> None:
    """Every graph whose nodes are all reachable and can all reach END compiles, and its spec is JSON."""
    graph = build(shape).compile()
    assert graph.compiled
    assert graph.entry_nodes() == ["n0"]
    spec = json.loads(json.dumps(graph.spec()))
    assert [n["name"] for n in spec["nodes"]] == shape.nodes
    assert graph.order(reversed(shape.nodes)) == shape.nodes


# -- compile: each rejection, injected into a valid random graph ------------------------


@PROPERTY
@given(valid_shapes())
def test_missing_entry_point_is_rejected_naming_start(shape: GraphShape) -> None:
    """A graph without set_entry_point fails with culprit START."""
    error = compile_error(build(shape, entry=False))
    assert error.culprit == START
    assert "no entry point" in str(error)
    assert error.graph == "random"


@PROPERTY
@given(valid_shapes(), st.data())
def test_edge_to_unknown_node_is_rejected_naming_it(shape: GraphShape, data: st.DataObject) -> None:
    """An edge whose target was never added fails naming that target."""
    source = data.draw(st.sampled_from(shape.nodes))
    graph = build(shape).add_edge(source, "ghost")
    error = compile_error(graph)
    assert error.culprit == "ghost"
    assert "unknown node 'ghost'" in str(error)


@PROPERTY
@given(valid_shapes(), st.data())
def test_edge_from_unknown_node_is_rejected_naming_it(shape: GraphShape, data: st.DataObject) -> None:
    """An edge (or one source of a join) that starts at a missing node fails naming that node."""
    target = data.draw(st.sampled_from(shape.nodes))
    sources: str | list[str] = data.draw(st.sampled_from(["ghost", [shape.nodes[0], "ghost"]]))
    error = compile_error(build(shape).add_edge(sources, target))
    assert error.culprit == "ghost"
    assert "unknown node 'ghost'" in str(error)


@PROPERTY
@given(valid_shapes(), st.data(), st.sampled_from(["dict", "list"]))
def test_conditional_target_to_unknown_node_is_rejected_naming_it(
    shape: GraphShape, data: st.DataObject, form: str
) -> None:
    """A conditional edge that may route to a missing node fails naming that node."""
    source = data.draw(st.sampled_from(shape.nodes))
    known = data.draw(st.sampled_from(shape.nodes))
    targets: Mapping[str, str] | list[str] = {"ok": known, "bad": "ghost"} if form == "dict" else [known, "ghost"]
    error = compile_error(build(shape).add_conditional_edge(source, noop, targets))
    assert error.culprit == "ghost"
    assert "ghost" in str(error)


def test_conditional_edge_from_unknown_node_is_rejected_naming_it() -> None:
    """A conditional edge whose source was never added fails naming the source."""
    graph = Graph("g").add_node("a").set_entry_point("a").set_finish_point("a")
    graph.add_conditional_edge("ghost", noop, {"x": "a"})
    assert compile_error(graph).culprit == "ghost"


@PROPERTY
@given(valid_shapes(), st.data())
def test_duplicate_node_is_rejected_at_add_node(shape: GraphShape, data: st.DataObject) -> None:
    """Adding a node name twice fails at once, naming it, and leaves the first node in place."""
    graph = build(shape)
    name = data.draw(st.sampled_from(shape.nodes))
    with pytest.raises(GraphValidationError) as info:
        graph.add_node(name, lambda s: {"other": 1})
    assert info.value.culprit == name
    assert "duplicate node" in str(info.value)
    assert graph.nodes[name].func is noop


@PROPERTY
@given(st.one_of(st.sampled_from([START, END]), st.text(min_size=0, max_size=8).map(lambda s: "__" + s)))
def test_reserved_names_are_rejected_at_add_node(name: str) -> None:
    """START, END and any name starting with '__' cannot be node names."""
    graph = Graph("g")
    with pytest.raises(GraphValidationError) as info:
        graph.add_node(name)
    assert info.value.culprit == name
    assert "reserved" in str(info.value)
    assert name not in graph.nodes


@PROPERTY
@given(valid_shapes(), st.data())
def test_unreachable_node_is_rejected_naming_it(shape: GraphShape, data: st.DataObject) -> None:
    """A node nothing routes to (even one that itself routes onward) fails naming it."""
    onward = data.draw(st.lists(st.sampled_from([*shape.nodes, END]), min_size=1, max_size=3, unique=True))
    shape.nodes.insert(data.draw(st.integers(0, len(shape.nodes))), "orphan")
    shape.routes["orphan"] = [("edge", onward)]
    # A condition without targets may route anywhere, so nothing would be unreachable:
    # check that, then spell those conditions' targets out and expect the rejection.
    if any(form == "omitted" for routes in shape.routes.values() for form, _ in routes):
        build(shape).compile()
        shape.routes = {
            node: [("list" if form == "omitted" else form, targets) for form, targets in routes]
            for node, routes in shape.routes.items()
        }
    error = compile_error(build(shape))
    assert error.culprit == "orphan"
    assert "unreachable" in str(error)


@PROPERTY
@given(valid_shapes(), st.data(), st.booleans())
def test_node_without_path_to_end_is_rejected_naming_it(
    shape: GraphShape, data: st.DataObject, self_loop: bool
) -> None:
    """A reachable dead end (with or without a self-loop) fails naming it."""
    parent = data.draw(st.sampled_from(shape.nodes))
    shape.nodes.insert(data.draw(st.integers(0, len(shape.nodes))), "sink")
    shape.routes.setdefault(parent, []).append(("edge", ["sink"]))
    if self_loop:
        shape.routes["sink"] = [("edge", ["sink"])]
    error = compile_error(build(shape))
    assert error.culprit == "sink"
    assert "no path to END" in str(error)


def test_dead_end_loop_names_its_first_declared_node() -> None:
    """Two nodes looping between themselves with no exit: the first declared one is named."""
    graph = Graph("g")
    for name in ("a", "trap2", "trap1"):
        graph.add_node(name)
    graph.set_entry_point("a").set_finish_point("a")
    graph.add_edge("a", "trap1").add_edge("trap1", "trap2").add_edge("trap2", "trap1")
    assert compile_error(graph).culprit == "trap2"


@pytest.mark.parametrize("targets", [{}, [], ()], ids=["dict", "list", "tuple"])
def test_empty_conditional_mapping_is_rejected_naming_the_source(targets: Any) -> None:
    """An empty targets dict or list is rejected, naming the edge's source node."""
    graph = Graph("g").add_node("a")
    with pytest.raises(GraphValidationError) as info:
        graph.add_conditional_edge("a", noop, targets)
    assert info.value.culprit == "a"
    assert "empty targets" in str(info.value)


def test_entry_edge_to_end_triggers_nothing() -> None:
    """START -> END is allowed but never hands END to the engine as a node to run."""
    graph = Graph("g").add_node("a").set_entry_point("a").set_entry_point(END).set_finish_point("a").compile()
    assert graph.entry_nodes() == ["a"]


# -- compiled vs not compiled ----------------------------------------------------------


def simple_graph() -> Graph:
    """a -> b -> END, not compiled."""
    graph = Graph("simple").add_node("a", noop).add_node("b", noop)
    return graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b")


@pytest.mark.parametrize(
    "use",
    [
        lambda g: g.entry_nodes(),
        lambda g: g.spec(),
        lambda g: run(g.route(["a"], State(), {}), 5),
        lambda g: run(Orchestrator().execute(g), 10),
    ],
    ids=["entry_nodes", "spec", "route", "Orchestrator.execute"],
)
def test_an_uncompiled_graph_cannot_run_or_describe_itself(use: Callable[[Graph], Any]) -> None:
    """Executing or describing a graph before compile() raises GraphNotCompiledError naming it."""
    graph = simple_graph()
    with pytest.raises(GraphNotCompiledError, match="'simple' is not compiled"):
        use(graph)


@pytest.mark.parametrize(
    "change",
    [
        lambda g: g.add_node("c"),
        lambda g: g.add_edge("a", END),
        lambda g: g.add_conditional_edge("a", noop, ["b"]),
        lambda g: g.add_reducer("k", "append"),
        lambda g: g.set_entry_point("b"),
        lambda g: g.set_finish_point("a"),
    ],
    ids=["add_node", "add_edge", "add_conditional_edge", "add_reducer", "set_entry_point", "set_finish_point"],
)
def test_a_compiled_graph_cannot_change(change: Callable[[Graph], Any]) -> None:
    """Every builder method of a compiled graph raises GraphFrozenError and changes nothing."""
    graph = simple_graph().compile()
    before = graph.spec()
    with pytest.raises(GraphFrozenError, match="'simple' is compiled"):
        change(graph)
    assert graph.spec() == before
    assert graph.compile() is graph


# -- spec ------------------------------------------------------------------------------


def route_by_flag(state: Any) -> str:
    """A condition for the spec test."""
    return "yes" if state.get("flag") else "no"


def test_spec_lists_nodes_types_edges_routes_and_reducers_as_json() -> None:
    """spec() survives json.dumps and states every node, node type, edge, route and reducer."""

    def custom(current: Any, update: Any) -> Any:
        return update

    graph = Graph("described", "what it does", reducers={"log": "append", "x": custom})
    graph.add_node("a", noop, node_type="researcher", retry=RetryPolicy(max_attempts=2, jitter=False, retry_on=Exception), timeout=1.5)
    graph.add_node("b").add_node("c").add_node("d")
    graph.set_entry_point("a")
    graph.add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d")
    graph.add_conditional_edge("d", route_by_flag, {"yes": "a", "no": END})
    graph.add_conditional_edge("b", route_by_flag, ["c", "d"])
    graph.add_conditional_edge("c", route_by_flag)
    spec = json.loads(json.dumps(graph.compile().spec()))
    assert spec["name"] == "described" and spec["description"] == "what it does"
    assert [(n["name"], n["node_type"], n["timeout"]) for n in spec["nodes"]] == [
        ("a", "researcher", 1.5), ("b", "b", None), ("c", "c", None), ("d", "d", None),
    ]
    assert spec["nodes"][0]["retry"]["max_attempts"] == 2
    assert spec["edges"] == [
        {"sources": [START], "target": "a"},
        {"sources": ["a"], "target": "b"},
        {"sources": ["a"], "target": "c"},
        {"sources": ["b", "c"], "target": "d"},
    ]
    assert spec["conditional_edges"] == [
        {"source": "d", "condition": "route_by_flag", "targets": {"yes": "a", "no": END}},
        {"source": "b", "condition": "route_by_flag", "targets": ["c", "d"]},
        {"source": "c", "condition": "route_by_flag", "targets": None},
    ]
    assert spec["reducers"]["log"] == "append"
    assert spec["reducers"]["x"].endswith("custom")


# -- routing ---------------------------------------------------------------------------


def routed(graph: Graph, ran: Sequence[str], state: Mapping[str, Any] | None = None,
           joins: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """``graph.route`` run to completion."""
    return run(graph.route(list(ran), State(dict(state or {})), dict(joins or {})), 5)


def diamond(*extra: str) -> Graph:
    """Nodes declared d, c, b, a (reverse order) plus ``extra``, entry a, nothing compiled yet."""
    graph = Graph("routes")
    for name in ("d", "c", "b", "a", *extra):
        graph.add_node(name, noop)
    return graph.set_entry_point("a")


def test_static_edges_fan_out_in_declaration_order() -> None:
    """a -> b and a -> c trigger both, ordered by declaration (c before b), and END triggers nothing."""
    graph = diamond().add_edge("a", "b").add_edge("a", "c").add_edge("a", END)
    graph.add_edge("b", "d").add_edge("c", "d").set_finish_point("d").compile()
    assert routed(graph, ["a"]) == (["c", "b"], {})
    assert routed(graph, ["c", "b"]) == (["d"], {})
    assert routed(graph, ["d"]) == ([], {})


def test_condition_returning_a_list_fans_out_through_a_dict() -> None:
    """A condition may return several keys; each maps through the dict, duplicates collapse."""
    graph = diamond().add_conditional_edge("a", lambda s: tuple(s["pick"]) if s.get("as_tuple") else s["pick"],
                                           {"x": "b", "y": "c", "z": END, "w": "b"})
    graph.add_edge("b", "d").add_edge("c", "d").set_finish_point("d").compile()
    assert routed(graph, ["a"], {"pick": ["x", "y"]}) == (["c", "b"], {})
    assert routed(graph, ["a"], {"pick": ["w", "x"], "as_tuple": True}) == (["b"], {})
    assert routed(graph, ["a"], {"pick": "z"}) == ([], {})
    assert routed(graph, ["a"], {"pick": ["z", "y"]}) == (["c"], {})


def test_targets_as_list_restrict_the_names_a_condition_returns() -> None:
    """With a targets list the condition returns node names, and only those in the list."""
    graph = diamond().add_conditional_edge("a", lambda s: s["pick"], ["b", "c", END])
    graph.add_edge("b", "d").add_edge("c", "d").set_finish_point("d").compile()
    assert routed(graph, ["a"], {"pick": "b"}) == (["b"], {})
    assert routed(graph, ["a"], {"pick": ["b", "c"]}) == (["c", "b"], {})
    assert routed(graph, ["a"], {"pick": END}) == ([], {})
    with pytest.raises(ExecutionError, match=r"after node 'a' returned 'd', which is not one of"):
        routed(graph, ["a"], {"pick": "d"})


def test_targets_omitted_lets_the_condition_name_any_node() -> None:
    """Without targets the condition returns node names or END; anything else is an ExecutionError."""

    async def pick(state: Any) -> Any:
        return state["pick"]

    graph = diamond().add_conditional_edge("a", pick).add_edge("b", "d").add_edge("c", "d")
    graph.set_finish_point("d").compile()
    assert routed(graph, ["a"], {"pick": "d"}) == (["d"], {})
    assert routed(graph, ["a"], {"pick": [END, "a"]}) == (["a"], {})
    with pytest.raises(ExecutionError, match=r"after node 'a' returned 'nowhere'"):
        routed(graph, ["a"], {"pick": "nowhere"})
    with pytest.raises(ExecutionError, match=r"after node 'a' returned \[\['b'\]\]: its item \['b'\] is not one of"):
        routed(graph, ["a"], {"pick": [["b"]]})  # an unhashable key is an ExecutionError too


def test_condition_key_missing_from_its_mapping_names_node_and_key() -> None:
    """A key the mapping lacks raises ExecutionError naming the source node and the key."""
    graph = diamond().add_conditional_edge("a", lambda s: s["pick"], {"go": "b"}).add_edge("a", "c")
    graph.add_edge("b", "d").add_edge("c", "d").set_finish_point("d").compile()
    with pytest.raises(ExecutionError) as info:
        routed(graph, ["a"], {"pick": "stay"})
    message = str(info.value)
    assert "after node 'a'" in message and "returned 'stay'" in message and "'go'" in message


def test_condition_that_raises_is_an_execution_error_naming_node() -> None:
    """An exception inside a condition becomes an ExecutionError naming the node, chained to the original."""

    def broken(state: Any) -> str:
        raise KeyError("missing")

    graph = diamond().add_conditional_edge("a", broken, {"x": "b"}).add_edge("a", "c")
    graph.add_edge("b", "d").add_edge("c", "d").set_finish_point("d").compile()
    with pytest.raises(ExecutionError, match=r"broken.* after node 'a' raised KeyError") as info:
        routed(graph, ["a"])
    assert isinstance(info.value.__cause__, KeyError)


def test_join_fires_only_when_all_sources_ran_in_the_same_step() -> None:
    """add_edge(["b", "c"], "d") triggers d when b and c complete together, once."""
    graph = diamond().add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d").set_finish_point("d")
    graph.compile()
    assert routed(graph, ["c", "b"]) == (["d"], {})


def test_join_carries_progress_across_steps() -> None:
    """A join remembers which sources ran through ``joins`` and fires when the last one arrives."""
    graph = diamond("e").add_edge("a", "b").add_edge("a", "e").add_edge("e", "c")
    graph.add_edge(["b", "c"], "d").set_finish_point("d").compile()
    bc = join_key("d", ["b", "c"])
    assert routed(graph, ["a"]) == (["b", "e"], {})
    assert routed(graph, ["b", "e"]) == (["c"], {bc: ["b"]})
    assert routed(graph, ["c"], joins={bc: ["b"]}) == (["d"], {})
    # Without the carried progress, c alone does not fire the join.
    assert routed(graph, ["c"]) == ([], {bc: ["c"]})
    # A source running again before the join fires does not fire it twice.
    assert routed(graph, ["b"], joins={bc: ["b"]}) == ([], {bc: ["b"]})


def test_two_joins_into_one_target_keep_separate_progress() -> None:
    """add_edge(["a","b"], "d") and add_edge(["a","c"], "d") fire independently."""
    graph = diamond().add_edge("a", "b").add_edge("a", "c")
    graph.add_edge(["a", "b"], "d").add_edge(["a", "c"], "d").set_finish_point("d").compile()
    ab, ac = join_key("d", ["a", "b"]), join_key("d", ["a", "c"])
    assert routed(graph, ["a"]) == (["c", "b"], {ab: ["a"], ac: ["a"]})
    assert routed(graph, ["b"], joins={ab: ["a"], ac: ["a"]}) == (["d"], {ac: ["a"]})


def test_join_progress_for_other_targets_is_kept() -> None:
    """Progress of joins not touched this step is passed through unchanged."""
    graph = diamond().add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d").set_finish_point("d")
    graph.compile()
    bc = join_key("d", ["b", "c"])
    assert routed(graph, ["a"], joins={bc: ["c"]}) == (["c", "b"], {bc: ["c"]})


# -- add_sequence --------------------------------------------------------------------------


def shout(state: Any) -> dict[str, Any]:
    return {"log": state.get("log", []) + ["shout"]}


def test_add_sequence_adds_names_pairs_and_functions_chained_in_order() -> None:
    registry_free = Graph("seq")
    registry_free.add_sequence([("first", lambda s: {"log": ["first"]}), shout,
                                ("last", lambda s: {"log": s["log"] + ["last"]})])
    registry_free.set_entry_point("first").set_finish_point("last").compile()
    assert list(registry_free.nodes) == ["first", "shout", "last"]
    assert [(e["sources"], e["target"]) for e in registry_free.spec()["edges"][:2]] == [
        (["first"], "shout"), (["shout"], "last")]
    result = run(Orchestrator().execute(registry_free, {}))
    assert result["log"] == ["first", "shout", "last"]


def test_add_sequence_of_names_makes_nodes_served_by_their_node_type() -> None:
    graph = Graph("seq_names").add_sequence(["fetch", "parse"])
    graph.set_entry_point("fetch").set_finish_point("parse").compile()
    assert [(n.name, n.node_type, n.func) for n in graph.nodes.values()] == [
        ("fetch", "fetch", None), ("parse", "parse", None)]
    assert graph.spec()["edges"][0] == {"sources": ["fetch"], "target": "parse"}


@pytest.mark.parametrize("nodes", [[], "abc", ("a", "b"), [lambda s: {}], [3], [("a",)], [("a", 3)]])
def test_add_sequence_refuses_what_is_not_a_sequence_of_nodes(nodes: Any) -> None:
    with pytest.raises(GraphValidationError, match="graph 'bad_seq'"):
        Graph("bad_seq").add_sequence(nodes)


def test_add_sequence_refuses_a_duplicate_node() -> None:
    graph = Graph("dup_seq").add_node("a")
    with pytest.raises(GraphValidationError, match="duplicate node 'a'"):
        graph.add_sequence(["a", "b"])


def _joined(sources_list: list[list[str]]) -> Graph:
    graph = Graph("jfp")
    for name in "abcd":
        graph.add_node(name, lambda s: {})
    graph.set_entry_point("a").add_edge("a", "b").add_edge("a", "c")
    for sources in sources_list:
        graph.add_edge(sources, "d")
    return graph.set_finish_point("d").compile()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.permutations(["b", "c", "a"]).map(lambda p: p[:2] if "a" not in p[:2] else ["b", "c"]),
                min_size=1, max_size=3))
def test_a_join_in_any_source_order_or_declared_twice_is_one_join_with_one_fingerprint(
        declarations: list[list[str]]) -> None:
    graph = _joined(declarations)
    reference = _joined([["b", "c"]])
    assert graph.fingerprint() == reference.fingerprint()
    assert graph.spec() == reference.spec()
    assert graph.draw_ascii() == reference.draw_ascii()
    assert [e for e in graph.spec()["edges"] if e["target"] == "d"] == [{"sources": ["b", "c"], "target": "d"}]



@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -float("inf"), 0, -1, True, "3"])
def test_a_node_timeout_must_be_a_finite_positive_number(timeout: Any) -> None:
    """nan and inf were accepted; a worker then failed on 'Out of range float values' naming nothing."""
    with pytest.raises(GraphValidationError, match=r"node 'a': timeout must be a finite number"):
        Graph("t").add_node("a", lambda s: None, timeout=timeout)


@pytest.mark.parametrize("field", ["initial_interval", "backoff_factor", "max_interval"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_retry_policy_numbers_must_be_finite(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match="finite"):
        RetryPolicy(**{field: value})


def test_the_fixed_start_frontier_is_a_fresh_copy_and_the_same_as_start_frontier() -> None:
    graph = Graph("fixed").add_node("a", lambda s: {}).add_node("b", lambda s: {}, defer=True)
    graph.add_edge(START, "a").add_edge(START, "b").set_finish_point("a").set_finish_point("b").compile()
    first = graph.fixed_start()
    assert first is not None
    assert first == run(graph.start_frontier({}))
    first["next"].append("x")
    first["joins"]["j"] = ["y"]
    assert graph.fixed_start() == run(graph.start_frontier({}))  # nothing shared with a copy handed out
    routed = Graph("routed").add_node("a", lambda s: {}).add_conditional_edges(START, lambda s: "a", ["a"])
    assert routed.set_finish_point("a").compile().fixed_start() is None  # a condition decides: start_frontier
    assert not graph.has_subgraphs
