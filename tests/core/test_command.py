"""``Command(update=, goto=)`` returned by a node, on the in-process (memory) backend.

As in LangGraph: the update merges through the reducers like a returned dict, and
``goto`` adds nodes (or Sends) to the next step on top of the node's static edges.
``destinations`` (or a ``Command[Literal[...]]`` annotation) declare where a node may
go, for compile's checks and the drawing.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import pytest
from support.aio import run

from distributed_agents import END, START, Command, Graph, Orchestrator, Send, State
from distributed_agents.core.errors import ExecutionError, GraphValidationError

pytestmark = pytest.mark.timeout(60)


def execute(graph: Graph, state: dict[str, Any] | None = None) -> State:
    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            return await orchestrator.execute(graph, state or {})

    return run(scenario())


# -- LangGraph's documented Command example ----------------------------------------------


def test_langgraph_command_example_updates_and_routes_in_one_return_value() -> None:
    def node_a(state: State) -> Command[Literal["node_b", "node_c"]]:
        value = state["choice"]  # the docs pick at random; the choice is an input here
        goto = "node_b" if value == "b" else "node_c"
        return Command(update={"foo": value}, goto=goto)

    def node_b(state: State) -> dict[str, Any]:
        return {"foo": state["foo"] + "b"}

    def node_c(state: State) -> dict[str, Any]:
        return {"foo": state["foo"] + "c"}

    def build() -> Graph:
        graph = Graph(f"command_doc_{uuid.uuid4().hex[:6]}")
        graph.add_edge(START, "node_a")
        graph.add_node("node_a", node_a).add_node("node_b", node_b).add_node("node_c", node_c)
        # node_a has no edges: the annotation declares where it goes, so compile accepts the graph.
        return graph.add_edge("node_b", END).add_edge("node_c", END).compile()

    assert dict(execute(build(), {"choice": "b"})) == {"choice": "b", "foo": "bb"}
    assert dict(execute(build(), {"choice": "c"})) == {"choice": "c", "foo": "cc"}
    assert build().nodes["node_a"].destinations == ("node_b", "node_c")


def test_goto_runs_in_addition_to_the_static_edges() -> None:
    ran: list[str] = []

    def track(name: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            ran.append(name)
            return {"seen": [name]}
        return node

    graph = Graph("goto_plus_edges", reducers={"seen": "extend"})
    graph.add_node("a", lambda s: Command(update={"seen": ["a"]}, goto=["c", END]), destinations=["c"])
    graph.add_node("b", track("b")).add_node("c", track("c"))
    graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").set_finish_point("c").compile()
    result = execute(graph)
    assert sorted(ran) == ["b", "c"] and result["seen"] == ["a", "b", "c"]  # one step, declaration order


def test_goto_with_sends_maps_over_a_list() -> None:
    graph = Graph("goto_sends", reducers={"total": "add"})
    graph.add_node("plan", lambda s: Command(update={"total": 0}, goto=[Send("add", {"n": n}) for n in s["ns"]]),
                   destinations=["add"])
    graph.add_node("add", lambda s: {"total": s["n"]})
    graph.set_entry_point("plan").set_finish_point("add").compile()
    assert execute(graph, {"ns": [1, 2, 3, 4]})["total"] == 10


def test_a_command_without_goto_follows_the_edges_and_merges_through_reducers() -> None:
    graph = Graph("update_only", reducers={"items": "extend"})
    graph.add_node("a", lambda s: Command(update={"items": [1]}))
    graph.add_node("b", lambda s: {"items": [2]})
    graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()
    assert execute(graph)["items"] == [1, 2]


def test_goto_outside_the_declared_destinations_fails_naming_node_and_target() -> None:
    graph = Graph("undeclared")
    graph.add_node("a", lambda s: Command(goto="c"), destinations=["b"])
    graph.add_node("b", lambda s: {}).add_node("c", lambda s: {})
    graph.set_entry_point("a").add_edge("a", "c").set_finish_point("b").set_finish_point("c").compile()
    with pytest.raises(ExecutionError, match=r"node 'a' returned Command\(goto='c'\), which is not among its "
                                             r"declared destinations \['b'\]"):
        execute(graph)


def test_goto_an_unknown_node_fails_naming_it() -> None:
    graph = Graph("unknown_goto")
    graph.add_node("a", lambda s: Command(goto="nowhere")).set_entry_point("a").set_finish_point("a").compile()
    with pytest.raises(ExecutionError, match="Command\\(goto='nowhere'\\), which is not a node"):
        execute(graph)


def test_command_parent_outside_a_subgraph_says_the_graph_is_no_subgraph() -> None:
    graph = Graph("parent")
    graph.add_node("a", lambda s: Command(graph=Command.PARENT, goto="x"))
    graph.set_entry_point("a").set_finish_point("a").compile()
    with pytest.raises(ExecutionError, match="returned Command\\(graph=Command.PARENT\\), but the graph runs as a graph "
                                             "of its own, not as a subgraph"):
        execute(graph)


def test_destinations_must_name_nodes_and_count_for_reachability() -> None:
    bad = Graph("bad_destination").add_node("a", destinations=["ghost"])
    bad.set_entry_point("a").set_finish_point("a")
    with pytest.raises(GraphValidationError, match="declares destination 'ghost'"):
        bad.compile()
    undeclared = Graph("only_by_goto").add_node("a").add_node("b")
    undeclared.set_entry_point("a").set_finish_point("b")
    with pytest.raises(GraphValidationError, match=r"'b' is unreachable.*destinations="):
        undeclared.compile()
    declared = Graph("declared").add_node("a", destinations=["b"]).add_node("b")
    assert declared.set_entry_point("a").set_finish_point("b").compile().compiled


def test_destinations_change_the_fingerprint_only_when_declared() -> None:
    def build(**options: Any) -> Graph:
        graph = Graph("fp").add_node("a", **options).add_node("b")
        return graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()

    assert "destinations" not in build().spec()["nodes"][0]
    assert build().fingerprint() != build(destinations=["b"]).fingerprint()
