"""``core.errors``: what the framework raises, and how a node's own error reaches the caller."""

import pytest


def test_a_local_nodes_error_is_also_of_the_type_the_node_raised() -> None:
    """``except ValueError`` around ``invoke`` catches a node's ValueError, as around LangGraph's,
    and ``except NodeExecutionError`` still does; an OSError (read as a backend outage elsewhere)
    and this framework's own errors are not mixed in."""
    from typing import TypedDict

    from distributed_agents import END, START, StateGraph
    from distributed_agents.core.errors import NodeExecutionError, node_error_class

    class Nothing(TypedDict, total=False):
        x: int

    for raised, also in ((ValueError("bad"), True), (KeyError("k"), True), (RuntimeError("r"), True),
                         (ConnectionError("c"), False), (StopIteration(), False)):
        def boom(state: Nothing, raised: BaseException = raised) -> dict[str, int]:
            raise raised

        builder = StateGraph(Nothing)
        builder.add_node("boom", boom).add_edge(START, "boom").add_edge("boom", END)
        with pytest.raises(NodeExecutionError) as info:
            builder.compile().invoke({})
        assert isinstance(info.value, type(raised)) is also, raised
        assert str(info.value).startswith("node 'boom' of graph 'Nothing'")  # (not KeyError's quoted repr)
        assert info.value.__cause__ is raised or isinstance(raised, StopIteration)
    assert node_error_class(NodeExecutionError, None) is NodeExecutionError
    assert node_error_class(NodeExecutionError, NodeExecutionError("x", node="n", attempts=1)) is NodeExecutionError


def test_langgraphs_name_for_a_conflicting_write_is_importable() -> None:
    from distributed_agents.core.errors import InvalidUpdateError, ReducerConflictError

    assert InvalidUpdateError is ReducerConflictError
