"""add_node(metadata=): the node's own JSON, read in config["metadata"] as in LangGraph."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from distributed_agents import START, StateGraph
from distributed_agents.core.errors import GraphValidationError

pytestmark = pytest.mark.timeout(60)


class S(TypedDict):
    seen: Annotated[list, operator.add]


def _noting(state: dict[str, Any], config: Any) -> dict[str, Any]:
    return {"seen": [dict(config["metadata"])]}


def test_the_node_reads_its_metadata_in_its_config_and_the_graph_shows_it() -> None:
    given = {"team": "red", "limits": {"tokens": 100}, "langgraph_step": "mine"}
    builder = StateGraph(S)
    builder.add_node("a", _noting, metadata=given).add_node("b", _noting).add_edge(START, "a").add_edge("a", "b")
    app = builder.compile()
    given["team"] = "blue"  # the node keeps what it was given
    seen = app.invoke({"seen": []})["seen"]
    assert seen[0]["team"] == "red" and seen[0]["limits"] == {"tokens": 100}
    assert seen[0]["langgraph_step"] == 0 and seen[0]["langgraph_node"] == "a"  # the engine's keys win a clash
    assert "team" not in seen[1]  # another node's is its own
    assert app.get_graph().nodes["a"].metadata == {"team": "red", "limits": {"tokens": 100}, "langgraph_step": "mine"}
    assert app.get_graph().nodes["b"].metadata is None


def test_metadata_does_not_change_the_graphs_fingerprint() -> None:
    def build(metadata: dict[str, Any] | None) -> Any:
        return StateGraph(S).add_node("a", _noting, metadata=metadata).add_edge(START, "a").compile()

    assert build({"team": "red"}).fingerprint() == build(None).fingerprint() == build({"team": "blue"}).fingerprint()


@pytest.mark.parametrize("metadata", [["team"], {1: "x"}, {"when": object()}, {"s": {1, 2}}],
                         ids=["list", "int-key", "object", "set"])
def test_metadata_that_is_not_a_json_dict_is_refused_naming_the_node(metadata: Any) -> None:
    with pytest.raises(GraphValidationError, match=r"graph 'S': node 'a': metadata "):
        StateGraph(S).add_node("a", _noting, metadata=metadata)


def test_a_subgraph_nodes_metadata_reaches_the_subgraphs_nodes_and_messages_carry_the_nodes_own() -> None:
    """As LangGraph: the nodes inside a subgraph read the metadata of the node running it (theirs
    win a clash), and a node's streamed messages carry its metadata."""
    def inner_node(state: dict[str, Any], config: Any) -> dict[str, Any]:
        return {"seen": [{k: v for k, v in config["metadata"].items() if k in ("pk", "team", "own")}]}

    inner = StateGraph(S).add_node("i", inner_node, metadata={"own": 1, "team": "inner"}).add_edge(START, "i").compile()
    middle = StateGraph(S).add_node("inner", inner, metadata={"team": "middle"}).add_edge(START, "inner").compile()

    def talk(state: dict[str, Any], config: Any) -> dict[str, Any]:
        config.stream_writer.message("hello", metadata={"model": "m", "team": "override"})
        return {}

    builder = StateGraph(S)
    builder.add_node("sub", middle, metadata={"pk": "parent-only"}).add_node("talk", talk, metadata={"team": "red"})
    app = builder.add_edge(START, "sub").add_edge(START, "talk").compile()
    assert app.invoke({"seen": []}) == {"seen": [{"pk": "parent-only", "team": "inner", "own": 1}]}
    [(token, meta)] = list(app.stream({"seen": []}, stream_mode="messages"))
    assert token == "hello" and meta["model"] == "m" and meta["team"] == "override" and meta["node"] == "talk"
    [(token, meta)] = [c for c in StateGraph(S).add_node("talk", talk, metadata={"team": "red", "x": [1]}).add_edge(
        START, "talk").compile().stream({"seen": []}, stream_mode="messages")]
    assert meta["x"] == [1] and meta["team"] == "override"
