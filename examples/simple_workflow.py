"""A two-node research workflow on the in-process backend: nothing to install but Python.

    .venv/bin/python examples/simple_workflow.py
"""

from __future__ import annotations

import asyncio

from distributed_agents import Graph, NodeRegistry, Orchestrator, State

registry = NodeRegistry()


@registry.register("researcher")
async def researcher(state: State) -> dict:
    query = state.get("query", "")
    return {"findings": [f"Finding about {query}", f"Another angle on {query}"], "sources": ["source1.com"]}


@registry.register("writer")
async def writer(state: State) -> dict:
    findings = state.get("findings", [])
    return {"report": f"Report on {state.get('query')!r} with {len(findings)} findings"}


def build_graph() -> Graph:
    graph = Graph(name="research_workflow", description="research a query, then write it up")
    graph.add_node("researcher")
    graph.add_node("writer")
    graph.set_entry_point("researcher")
    graph.add_edge("researcher", "writer")
    graph.set_finish_point("writer")
    return graph.compile()


async def main() -> None:
    orchestrator = Orchestrator(registry=registry)
    result = await orchestrator.execute(build_graph(), initial_state={"query": "AI trends"})
    status = await orchestrator.get_workflow_status(result.workflow_id)
    print(result.get("report"))
    print(f"workflow {status.workflow_id}: {status.status} after {status.step} steps")
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main())
