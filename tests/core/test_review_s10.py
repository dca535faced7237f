"""Review of this session's core hot-path changes: ``EventPublisher.flush`` as a future, the
plain-edge routing shortcut (``Graph.plain_frontier``) and the sync commit handed on as the
write's own coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.core.events import EventPublisher
from distributed_agents.core.graph import END, Graph
from distributed_agents.core.ports.message_bus import MessageBus


class _GatedBus(MessageBus):
    """A bus whose publishes wait for ``gate``; ``fail`` makes them raise."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.fail = False
        self.published: list[tuple[str, Mapping[str, Any]]] = []

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("bus down")
        self.published.extend(messages)


def test_flush_waits_for_what_was_queued_when_it_was_called_and_survives_a_cancelled_waiter() -> None:
    """``flush()`` completes (True) once every event queued before the call is published, or
    failed to be; a flush whose waiter was cancelled neither completes nor blocks later ones;
    a flush with nothing queued, or with no publisher task, is done at once."""

    async def scenario() -> list[Any]:
        bus = _GatedBus()
        publisher = EventPublisher(bus)
        seen: list[Any] = []
        idle = publisher.flush()  # no task yet: nothing to wait for
        seen.append(await idle)
        publisher.emit("wf", "node.started", node="a")
        first = publisher.flush()
        cancelled = asyncio.ensure_future(_await(publisher.flush()))
        await asyncio.sleep(0)
        cancelled.cancel()
        publisher.emit("wf", "node.completed", node="a")  # after the first flush was asked
        second = publisher.flush()
        await asyncio.sleep(0.01)
        seen.append((first.done(), second.done()))
        bus.gate.set()
        seen.append(await first)
        seen.append(await second)
        seen.append([data["type"] for _, data in bus.published])
        bus.fail = True
        publisher.emit("wf", "node.failed", node="a")
        seen.append(await asyncio.wait_for(publisher.flush(), 30))  # failed to be published: done
        await publisher.close()
        seen.append(await publisher.flush())  # closed: nothing to wait for
        seen.append(cancelled.cancelled())
        return seen

    assert run(scenario()) == [True, (False, False), True, True, ["node.started", "node.completed"], True, True, True]


async def _await(awaitable: Any) -> Any:
    return await awaitable


@st.composite
def _graphs(draw: Any) -> tuple[list[str], list[tuple[str, str]]]:
    names = [f"n{i}" for i in range(draw(st.integers(1, 5)))]
    edges = []
    for name in names:
        for target in draw(st.lists(st.sampled_from([*names, END]), max_size=3, unique=True)):
            edges.append((name, target))
    return names, edges


@settings(max_examples=150, deadline=None)
@given(_graphs(), st.data())
def test_the_plain_edge_shortcut_is_next_frontiers_answer(graph_shape: tuple[list[str], list[tuple[str, str]]],
                                                          data: st.DataObject) -> None:
    """For graphs of plain edges (fan-outs, joins by several sources, END), ``plain_frontier``
    answers only where ``next_frontier`` needs no condition, and then what ``next_frontier``
    answers; otherwise None (the engine awaits ``next_frontier``)."""
    names, edges = graph_shape
    g = Graph("shortcut")
    for name in names:
        g.add_node(name, lambda state: {})
    g.set_entry_point(names[0])
    for source, target in edges:
        g.add_edge(source, target)
    if len(names) > 1 and data.draw(st.booleans()):
        g.add_edge(names, names[-1])  # a join waiting for all of them
    try:
        compiled = g.compile()
    except Exception:
        return  # a shape the builder refuses (a node with no way on): nothing to route
    ran = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    shortcut = compiled.plain_frontier(ran)
    from distributed_agents.core.state import State

    full = run(compiled.next_frontier(ran, State({}), {}, (), (), ()))
    if shortcut is not None:
        assert shortcut == full
        assert len(ran) == 1
