"""The dashboard's event hub (fan-out, bounded listeners, end of streams) and its markable graph drawing."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.dashboard import graph_svg
from distributed_agents.dashboard.hub import CLOSED, LISTENER_BUFFER, EventHub
from support.aio import run

THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"


def test_a_stalled_listener_keeps_the_newest_events_and_is_told_of_the_gap() -> None:
    async def scenario() -> None:
        hub = EventHub(Orchestrator().backend.message_bus)
        slow, quick = hub.listen(), hub.listen()
        for i in range(LISTENER_BUFFER + 50):
            hub.publish({"type": "node.started", "workflow_id": "wf", "n": i})
            if not quick.empty():
                quick.get_nowait()
        items = [slow.get_nowait() for _ in range(slow.qsize())]
        assert len(items) <= LISTENER_BUFFER + 2
        assert {"type": "gap"} in items and items[-1]["n"] == LISTENER_BUFFER + 49
        assert len(hub.events_of("wf")) == LISTENER_BUFFER + 50  # the timeline's memory is per workflow
        hub.end_streams()
        assert slow.get_nowait() is CLOSED or CLOSED in [slow.get_nowait() for _ in range(slow.qsize())]
        assert hub.listen().get_nowait() is CLOSED  # a page opened while stopping ends at once
        await hub.close()

    run(scenario())


def test_the_hub_reads_the_bus() -> None:
    async def scenario() -> None:
        orchestrator = Orchestrator()
        await orchestrator.connect()
        bus = orchestrator.backend.message_bus
        hub = EventHub(bus)
        await hub.start()
        listener = hub.listen()
        await bus.publish("events.wf1.node.started", {"type": "node.started", "workflow_id": "wf1", "node": "a"})
        await bus.publish("stream.wf1.custom", {"type": "chunks", "workflow_id": "wf1"})  # not an event
        event = await asyncio.wait_for(listener.get(), 10)
        assert event["node"] == "a" and listener.empty()
        await hub.close()
        await orchestrator.close()

    run(scenario())


def _noop(state: State) -> dict[str, Any]:
    return {}


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda n: n.strip() == n and n not in ("__start__", "__end__") and ":" not in n and "." not in n)


@settings(max_examples=40 if THOROUGH else 6, deadline=None)  # each example runs Graphviz
@given(st.lists(names, min_size=1, max_size=4, unique=True))
def test_every_node_of_a_drawing_can_be_marked_whatever_its_name(chosen: list[str]) -> None:
    graph = Graph(f"g{abs(hash(tuple(chosen)))}")
    for name in chosen:
        graph.add_node(name, _noop)
    graph.set_entry_point(chosen[0])
    for a, b in zip(chosen, chosen[1:]):
        graph.add_edge(a, b)
    graph.set_finish_point(chosen[-1])
    try:
        graph.compile()
    except Exception:  # a name the graph itself refuses is not the drawing's business
        return
    svg = graph_svg.graph_svg(graph)
    marked = graph_svg.mark(svg, {name: "finished" for name in chosen})
    assert len(re.findall(r'class="node da-node state-finished"', marked)) == len(chosen)
