"""Conditional routing with a loop: a writer drafts, a reviewer sends it back until it is good.

    .venv/bin/python examples/conditional_workflow.py
"""

from __future__ import annotations

import asyncio

from distributed_agents import Graph, NodeRegistry, Orchestrator, State
from distributed_agents.core.graph import END

registry = NodeRegistry()


@registry.register("writer")
async def writer(state: State) -> dict:
    revision = state.get("revision", 0) + 1
    return {"revision": revision, "draft": f"draft v{revision} about {state.get('topic')}"}


@registry.register("reviewer")
def reviewer(state: State) -> dict:  # a plain function: it runs in a thread
    good_enough = state.get("revision", 0) >= state.get("revisions_needed", 2)
    return {"decision": "approve" if good_enough else "revise"}


@registry.register("publisher")
async def publisher(state: State) -> dict:
    return {"published": state.get("draft")}


def route_after_review(state: dict) -> str:
    return state.get("decision", "revise")


def build_graph() -> Graph:
    graph = Graph(name="review_workflow")
    graph.add_node("writer")
    graph.add_node("reviewer")
    graph.add_node("publisher")
    graph.set_entry_point("writer")
    graph.add_edge("writer", "reviewer")
    graph.add_conditional_edge("reviewer", route_after_review, {"approve": "publisher", "revise": "writer"})
    graph.add_edge("publisher", END)
    return graph.compile()


async def main() -> None:
    orchestrator = Orchestrator(registry=registry)
    result = await orchestrator.execute(build_graph(), initial_state={"topic": "graphs", "revisions_needed": 3})
    print(f"published {result['published']!r} after {result['revision']} revisions")
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main())
