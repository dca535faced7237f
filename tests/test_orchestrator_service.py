"""``distributed_agents.orchestrator_service``: the node types and backlog the orchestrator's ``/queues`` reports."""

from __future__ import annotations

import asyncio
from typing import Any

from distributed_agents import Graph
from distributed_agents.orchestrator_service import graph_node_types, queue_backlog, safe_url
from distributed_agents.plugins import open_backend


def _chain(name: str, *nodes: tuple[str, Any]) -> Graph:
    graph = Graph(name)
    for node, target in nodes:
        graph.add_node(node, target)
    graph.set_entry_point(nodes[0][0])
    for (a, _), (b, _) in zip(nodes, nodes[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(nodes[-1][0]).compile()


def test_node_types_include_those_of_subgraphs_at_any_depth() -> None:
    inner = _chain("inner", ("polish", lambda s: {}))
    middle = _chain("middle", ("check", lambda s: {}), ("deeper", inner))
    parent = _chain("parent", ("draft", lambda s: {}), ("review", middle))
    assert graph_node_types([parent]) == {"draft", "check", "polish"}


def test_backlog_counts_queued_tasks_per_type() -> None:
    async def scenario() -> dict[str, Any]:
        backend = open_backend("memory://backlog-test")
        await backend.connect()
        try:
            return await queue_backlog(backend, ["writer", "researcher", "writer"])
        finally:
            await backend.close()

    body = asyncio.run(scenario())
    assert body == {"backlog": 0, "queued": 0, "in_flight": 0, "dead": 0,
                    "node_types": {"researcher": {"queued": 0, "in_flight": 0, "dead": 0},
                                   "writer": {"queued": 0, "in_flight": 0, "dead": 0}}}


def test_safe_url_hides_credentials_only() -> None:
    assert safe_url("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert safe_url("nats://user:pw@nats:4222") == "nats://***@nats:4222"
    assert safe_url("redis://redis:6379/0?prefix=a") == "redis://redis:6379/0?prefix=a"
