"""Nodes that stream, served by real worker processes, and the far side of the attach test.

``talk`` (async) streams ``state["tokens"]`` tokens as messages and a custom chunk;
``count`` (a plain function, in a thread) streams custom chunks; ``gate`` streams
"waiting", then waits for the file ``state["marker"]``. The graphs give no functions,
so every node runs on a worker.

As a script: ``python stream_app.py attach URL PREFIX WORKFLOW_ID`` attaches to the
workflow and prints each (mode, chunk) as one JSON line, then ``END``.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from typing import Any

from distributed_agents import Graph, NodeContext, NodeRegistry, Orchestrator, State, get_stream_writer

registry = NodeRegistry()


@registry.register("talk")
async def talk(state: State) -> dict[str, Any]:
    writer = get_stream_writer()
    for i in range(int(state.get("tokens", 20))):
        writer.message(f"t{i}", metadata={"model": "test"})
    writer({"talked": True})
    return {"talked": int(state.get("tokens", 20))}


@registry.register("count")
def count(state: State, context: NodeContext) -> dict[str, Any]:
    for i in range(5):
        context.stream_writer({"i": i})
    return {"counted": 5}


@registry.register("gate")
async def gate(state: State) -> dict[str, Any]:
    get_stream_writer()("waiting")
    marker = pathlib.Path(state["marker"])
    while not marker.exists():
        await asyncio.sleep(0.02)
    get_stream_writer()("released")
    return {"opened": True}


def talk_graph() -> Graph:
    graph = Graph("stream_talk").add_node("talk", node_type="talk").add_node("count", node_type="count")
    return graph.set_entry_point("talk").add_edge("talk", "count").set_finish_point("count").compile()


def gate_graph() -> Graph:
    graph = Graph("stream_gate").add_node("talk", node_type="talk").add_node("gate", node_type="gate")
    graph.add_node("count", node_type="count")
    graph.set_entry_point("talk").add_edge("talk", "gate").add_edge("gate", "count")
    return graph.set_finish_point("count").compile()


async def attach(url: str, prefix: str, workflow_id: str) -> None:
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix})
    try:
        async for mode, chunk in orchestrator.astream(workflow_id, stream_mode=["values", "updates", "custom"],
                                                      poll_interval=0.2):
            print(json.dumps([mode, chunk]), flush=True)
    finally:
        await orchestrator.close()
    print("END", flush=True)


if __name__ == "__main__" and sys.argv[1] == "attach":
    asyncio.run(attach(*sys.argv[2:5]))
