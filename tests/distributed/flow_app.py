"""Node functions for the control-flow tests, served by real worker processes.

``log`` serves many nodes: it appends its node's name (upper case) to ``aggregate`` and
the id of the worker that ran it to ``ran_on``. ``join`` is the deferred node: it also
reports the ``aggregate`` it saw. ``countdown`` records ``NodeContext.remaining_steps``
as the worker got it and says when it is the last step. ``first``/``second``/``third``
are an ``add_sequence`` of node names. Every graph leaves the functions out, so only
workers run the nodes.
"""

from __future__ import annotations

from typing import Any

from distributed_agents import END, START, Graph, NodeContext, NodeRegistry, State

registry = NodeRegistry()
REDUCERS = {"aggregate": "extend", "ran_on": "extend", "seen": "extend"}


@registry.register("log")
def log(state: State, context: NodeContext) -> dict[str, Any]:
    return {"aggregate": [context.node.upper()], "ran_on": [context.worker_id]}


for _name in ("first", "second", "third", "alt"):  # add_sequence names nodes by their node type
    registry.register_node(_name, log)


@registry.register("join")
def join(state: State, context: NodeContext) -> dict[str, Any]:
    return {"aggregate": [context.node.upper()], "ran_on": [context.worker_id], "join_saw": list(state["aggregate"])}


@registry.register("countdown")
def countdown(state: State, context: NodeContext) -> dict[str, Any]:
    return {"seen": [context.remaining_steps], "ran_on": [context.worker_id],
            "wrapped_up": context.remaining_steps == 1}


def uneven_graph() -> Graph:
    """a -> (b -> b_2 -> b_3, c) -> d, with d deferred: it must run once, after b_3."""
    graph = Graph("flow_uneven", reducers=REDUCERS)
    for name in ("a", "b", "b_2", "b_3", "c"):
        graph.add_node(name, node_type="log")
    graph.add_node("d", node_type="join", defer=True)
    graph.add_edge(START, "a").add_edge("a", "b").add_edge("a", "c").add_edge("b", "b_2").add_edge("b_2", "b_3")
    return graph.add_edge("b_3", "d").add_edge("c", "d").add_edge("d", END).compile()


def countdown_graph() -> Graph:
    """prep, then ``work`` loops until it reads remaining_steps == 1."""
    graph = Graph("flow_countdown", reducers=REDUCERS)
    graph.add_node("prep", node_type="log").add_node("work", node_type="countdown")
    graph.add_edge(START, "prep").add_edge("prep", "work")
    graph.add_conditional_edge("work", lambda state: END if state["wrapped_up"] else "work", ["work", END])
    return graph.compile()


def chain_graph(name: str, **breakpoints: Any) -> Graph:
    """a -> b -> c, compiled with ``breakpoints`` (interrupt_before= / interrupt_after=)."""
    graph = Graph(name, reducers=REDUCERS)
    for node in "abc":
        graph.add_node(node, node_type="log")
    graph.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c").add_edge("c", END)
    return graph.compile(**breakpoints)


def route_entry(state: State) -> str:
    return "go" if state["route"] == "sequence" else "other"


def sequence_graph() -> Graph:
    """A conditional entry point: first -> second -> third (add_sequence), or alt."""
    graph = Graph("flow_sequence", reducers=REDUCERS).add_sequence(["first", "second", "third"])
    graph.add_node("alt")
    graph.set_conditional_entry_point(route_entry, {"go": "first", "other": "alt"})
    return graph.add_edge("third", END).add_edge("alt", END).compile()
