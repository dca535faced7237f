"""A two-node graph for the security tests, served by CLI workers as ``support.security_app:registry``.

``graph`` leaves the functions out, so only workers run its nodes; ``local_graph`` holds
them (for ``run --local-nodes`` and in-process workers). ``greet`` then ``shout``: the
final state is ``{"name": ..., "greeting": "HELLO <NAME>"}``.
"""

from __future__ import annotations

from typing import Any

from distributed_agents import END, START, Graph, NodeRegistry, State

registry = NodeRegistry()


@registry.register("greet")
def greet(state: State) -> dict[str, Any]:
    return {"greeting": f"hello {state['name']}"}


@registry.register("shout")
def shout(state: State) -> dict[str, Any]:
    return {"greeting": str(state["greeting"]).upper()}


def build(with_functions: bool) -> Graph:
    graph = Graph("secure_greeting")
    graph.add_node("greet", greet if with_functions else None, node_type="greet")
    graph.add_node("shout", shout if with_functions else None, node_type="shout")
    return graph.add_edge(START, "greet").add_edge("greet", "shout").add_edge("shout", END).compile()


graph = build(False)
local_graph = build(True)
