"""A stream survives malformed messages on the bus.

Anyone who can publish on the bus can send a JSON object of any shape on a workflow's
``events.*`` and ``stream.*`` channels; the bus adapters drop what is not a JSON object,
and the stream reader drops (and logs) an object it cannot read, instead of its reader
task dying and the stream stopping. Regression: a non-numeric ``step``, a non-iterable
``namespace`` or ``chunks``, a ``dropped`` that is not an object.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, get_stream_writer

MALFORMED = [
    ("events.{wf}.step.committed", {"type": "step.committed", "step": "not a number"}),
    ("events.{wf}.workflow.started", {"type": "workflow.started", "step": [1]}),
    ("events.{wf}.step.committed", {"type": "step.committed", "namespace": 7}),
    ("stream.{wf}.custom", {"type": "chunks", "chunks": 12}),
    ("stream.{wf}.custom", {"type": "chunks", "chunks": [1, 2]}),
    ("stream.{wf}.gap", {"type": "gap", "dropped": ["custom"]}),
    ("stream.{wf}.gap", {"type": "gap", "dropped": {"custom": "many"}}),
    ("events.{wf}.step.committed", {"type": "step.committed", "namespace": ["x:1"], "subgraph_workflow_id": "c",
                                    "step": "?"}),
]


def gated_graph(gate: asyncio.Event) -> Graph:
    async def wait(state: State) -> dict[str, Any]:
        get_stream_writer()("waiting")
        await gate.wait()
        get_stream_writer()("released")
        return {"n": 2}

    graph = Graph("gated").add_node("wait", wait).add_node("last", lambda s: {"n": 3})
    graph.set_entry_point("wait").add_edge("wait", "last")
    return graph.set_finish_point("last").compile()


@pytest.mark.parametrize("channel,data", MALFORMED)
def test_a_malformed_bus_message_is_dropped_and_the_stream_goes_on(
    channel: str, data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        orchestrator = Orchestrator()
        stream = orchestrator.astream(gated_graph(gate), {}, stream_mode=["custom", "values"], workflow_id="wf-h",
                                      subgraphs=True)
        got = []
        async for item in stream:  # (namespace, mode, chunk) with subgraphs=True
            mode, chunk = item[-2:]
            got.append((mode, chunk))
            if chunk == "waiting":
                await orchestrator.backend.message_bus.publish(channel.format(wf="wf-h"), data)
                gate.set()
        await orchestrator.close()
        return got

    got = run(scenario())
    assert ("custom", "released") in got
    assert got[-1] == ("values", {"n": 3})
    assert "dropped a malformed message" in caplog.text
