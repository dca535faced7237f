"""NodeRegistry: registration by decorator and call, duplicates, and argument checks."""

from __future__ import annotations

from typing import Any

import pytest

from distributed_agents import NodeRegistry
from distributed_agents.core.errors import ConfigurationError

pytestmark = pytest.mark.timeout(30)


def test_register_decorator_records_the_function_and_returns_it_unchanged() -> None:
    """@registry.register("name") maps the type to the function and leaves the function as it was."""
    registry = NodeRegistry()

    @registry.register("researcher")
    def research(state: Any) -> dict[str, Any]:
        return {"found": True}

    @registry.register("writer")
    async def write(state: Any) -> None:
        return None

    assert research({}) == {"found": True}
    assert registry.get("researcher") is research
    assert registry.get("writer") is write
    assert registry.get("missing") is None
    assert "researcher" in registry and "missing" not in registry
    assert len(registry) == 2
    assert list(registry) == ["researcher", "writer"]
    assert registry.node_types() == frozenset({"researcher", "writer"})


def test_register_node_accepts_any_callable() -> None:
    """register_node takes lambdas and callable objects too."""

    class Node:
        def __call__(self, state: Any) -> None:
            return None

    registry = NodeRegistry()
    node = Node()
    registry.register_node("obj", node)
    registry.register_node("fn", lambda state: None)
    assert registry.get("obj") is node
    assert registry.node_types() == frozenset({"obj", "fn"})


def test_registering_a_type_twice_with_another_function_is_refused() -> None:
    """A second function for a registered type raises ConfigurationError naming the type and the first function."""
    registry = NodeRegistry()

    def first(state: Any) -> None:
        return None

    def second(state: Any) -> None:
        return None

    registry.register_node("step", first)
    with pytest.raises(ConfigurationError, match=r"node type 'step' is already registered to '.*first'"):
        registry.register("step")(second)
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.register_node("step", second)
    assert registry.get("step") is first


def test_registering_the_same_function_again_is_harmless() -> None:
    """Re-registering the identical function (e.g. a module imported twice) is not an error."""
    registry = NodeRegistry()

    def step(state: Any) -> None:
        return None

    registry.register_node("step", step)
    registry.register_node("step", step)
    assert registry.get("step") is step and len(registry) == 1


@pytest.mark.parametrize("not_callable", [None, 42, "func", {"a": 1}])
def test_a_non_callable_is_refused(not_callable: Any) -> None:
    """register_node with something that cannot be called raises ConfigurationError naming the type."""
    registry = NodeRegistry()
    with pytest.raises(ConfigurationError, match=r"node 'step': .* is not callable"):
        registry.register_node("step", not_callable)
    assert "step" not in registry


@pytest.mark.parametrize("node_type", ["", None, 3])
def test_node_type_must_be_a_non_empty_string(node_type: Any) -> None:
    """An empty or non-string node type is refused, both by register_node and by the decorator itself."""
    registry = NodeRegistry()
    with pytest.raises(ConfigurationError, match="node type must be a non-empty string"):
        registry.register_node(node_type, lambda state: None)
    with pytest.raises(ConfigurationError, match="node type must be a non-empty string"):
        registry.register(node_type)
    assert len(registry) == 0


def test_bare_decorator_without_a_name_fails_at_once() -> None:
    """@registry.register without ("name") is refused instead of silently replacing the function."""
    registry = NodeRegistry()

    def step(state: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"got <function .*step"):
        registry.register(step)  # type: ignore[arg-type]
    assert len(registry) == 0


def test_from_graph_registers_every_inline_function_by_node_type_subgraphs_included() -> None:
    from distributed_agents import Graph
    from distributed_agents.core.errors import ConfigurationError

    def a(state: Any) -> dict[str, Any]:
        return {}

    def b(state: Any) -> dict[str, Any]:
        return {}

    inner = Graph("inner").add_node("b", b, node_type="typed_b").set_entry_point("b").set_finish_point("b").compile()
    outer = (Graph("outer").add_node("a", a).add_node("sub", inner).add_node("remote", node_type="elsewhere")
             .set_entry_point("a").add_edge("a", "sub").add_edge("sub", "remote").set_finish_point("remote").compile())
    registry = NodeRegistry.from_graph(outer)
    assert {t: registry.get(t) for t in registry} == {"a": a, "typed_b": b}  # "elsewhere" has no function here
    # Added to a registry given; the same function twice is fine, another one under a type is not.
    existing = NodeRegistry()
    existing.register_node("other", b)
    assert NodeRegistry.from_graph(outer, existing) is existing and sorted(existing) == ["a", "other", "typed_b"]
    clash = (Graph("clash").add_node("x", a, node_type="same").add_node("y", b, node_type="same")
             .set_entry_point("x").add_edge("x", "y").set_finish_point("y").compile())
    with pytest.raises(ConfigurationError, match=r"graph 'clash': node 'y' \(function '.*\.b'\) has node type "
                                                 r"'same', and graph 'clash': node 'x' has it too, with '.*\.a'"):
        NodeRegistry.from_graph(clash)
    # A subgraph's node of the parent's node's type (both named "write", say): both are named.
    sub = Graph("sub").add_node("write", b).set_entry_point("write").set_finish_point("write").compile()
    parent = (Graph("parent").add_node("write", a).add_node("nested", sub)
              .set_entry_point("write").add_edge("write", "nested").set_finish_point("nested").compile())
    with pytest.raises(ConfigurationError, match=r"graph 'sub': node 'nested/write' \(function '.*\.b'\) has node "
                                                 r"type 'write', and graph 'parent': node 'write' has it too, with '.*\.a'"):
        NodeRegistry.from_graph(parent)
    # Against a registry that had the type before: the function it has is named.
    with pytest.raises(ConfigurationError, match=r"has node type 'other', which the registry runs with '.*\.b' already"):
        NodeRegistry.from_graph(Graph("g").add_node("o", a, node_type="other").set_entry_point("o")
                                .set_finish_point("o").compile(), existing)
