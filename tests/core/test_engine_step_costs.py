"""What the step loop's cheaper paths keep: node isolation, turns for other tasks, quiet events, records, graphs.

The step loop skips work a run does not need (a task per step, events nobody listens
to, encoding the same state twice, copying the graph's nodes); these tests pin what
must not change with it. Nothing here is timed.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.adapters.memory.message_bus import BusData, MemoryMessageBus
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.events import EventPublisher
from distributed_agents.core.ports.message_bus import MessageBus
from distributed_agents.core.ports.state_store import WorkflowRecord

FLAG: contextvars.ContextVar[str] = contextvars.ContextVar("test_engine_step_costs_flag", default="unset")


def chain(length: int) -> Graph:
    graph = Graph(f"chain_{length}")
    names = [f"n{i}" for i in range(length)]
    for name in names:
        graph.add_node(name, lambda state: None)
    graph.set_entry_point(names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(names[-1]).compile()


def test_a_context_variable_a_node_sets_is_not_seen_by_the_next_node_or_the_caller() -> None:
    async def setter(state: State) -> dict[str, Any]:
        FLAG.set("set by setter")
        return {"set": FLAG.get()}

    async def reader(state: State) -> dict[str, Any]:
        return {"seen": FLAG.get()}

    graph = Graph("isolated").add_node("setter", setter).add_node("reader", reader)
    graph = graph.set_entry_point("setter").add_edge("setter", "reader").set_finish_point("reader").compile()

    async def scenario() -> tuple[dict[str, Any], str]:
        orchestrator = Orchestrator()
        try:
            return dict(await orchestrator.execute(graph, {})), FLAG.get()
        finally:
            await orchestrator.close()

    result, after = run(scenario())
    assert result == {"set": "set by setter", "seen": "unset"}
    assert after == "unset"


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_other_tasks_of_the_loop_get_a_turn_every_step(durability: str) -> None:
    steps = 150

    async def scenario() -> int:
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                ticks += 1
                await asyncio.sleep(0)

        orchestrator = Orchestrator(step_limit=steps + 10)
        ticking = asyncio.ensure_future(ticker())
        try:
            await orchestrator.execute(chain(steps), {}, durability=durability)
        finally:
            running = False
            await ticking
            await orchestrator.close()
        return ticks

    assert run(scenario()) >= steps


class CountingBus(MemoryMessageBus):
    """The in-process bus, counting what reaches publish."""

    def __init__(self, data: BusData) -> None:
        super().__init__(data)
        self.published: list[str] = []

    async def publish(self, channel: str, data: Any) -> None:
        self.published.append(channel)
        await super().publish(channel, data)


def test_events_nobody_subscribed_to_are_not_sent_and_those_with_a_subscriber_are() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        bus = CountingBus(BusData())
        events = EventPublisher(bus)
        events.emit("wf1", "node.started", step=0, node="a")
        await events.flush()
        unheard = list(bus.published)
        subscription = await bus.subscribe("events.wf1.node.*")
        events.emit("wf1", "node.started", step=0, node="a")
        events.emit("wf2", "node.started", step=0, node="a")  # another workflow: still nobody listens
        events.emit("wf1", "step.committed", step=1)  # another kind: not matched
        await events.flush()
        received = []
        while (message := await subscription.get(timeout=0.05)) is not None:
            received.append(message.channel)
        await events.close()
        await bus.close()
        return unheard, list(bus.published), received

    unheard, published, received = run(scenario())
    assert unheard == []
    assert published == received == ["events.wf1.node.started"]


def test_a_bus_that_cannot_tell_gets_every_event() -> None:
    assert MessageBus().may_deliver("events.wf.node.started") is True


def test_evolve_copies_with_changes_and_refuses_unknown_fields() -> None:
    record = WorkflowRecord("wf", "g", "running", {"a": 1}, step=2, version=3, metadata={"run": 0})
    changed = record.evolve(step=3, version=4)
    assert (changed.step, changed.version, changed.state, changed.metadata) == (3, 4, {"a": 1}, {"run": 0})
    assert (record.step, record.version) == (2, 3)
    assert changed == dataclasses.replace(record, step=3, version=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.step = 9  # type: ignore[misc]
    with pytest.raises(TypeError, match="stepp"):
        record.evolve(stepp=3)


def test_a_compiled_graphs_nodes_are_a_read_only_view_and_its_fingerprint_is_stable() -> None:
    graph = chain(3)
    nodes = graph.nodes
    assert list(nodes) == ["n0", "n1", "n2"]
    with pytest.raises(TypeError):
        nodes["x"] = nodes["n0"]  # type: ignore[index]
    first = graph.fingerprint()
    first["sha256"] = "changed by the caller"
    assert graph.fingerprint() == chain(3).fingerprint() != first
    assert graph.fingerprint()["nodes"] == 3


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_decode_reads_what_encode_wrote_as_json_loads_does(value: Any) -> None:
    raw = encode(value)
    assert decode(raw) == json.loads(raw) == value
    assert decode(raw.decode("utf-8")) == value


def test_decode_takes_encoded_surrogates_as_json_loads_does_and_refuses_what_is_not_utf8() -> None:
    raw = b'{"a":"\xed\xa0\x80"}'  # a lone surrogate, as some encoders write it
    assert decode(raw) == json.loads(raw)
    with pytest.raises(PayloadDecodeError, match="UTF-8"):
        decode(b'{"a":"\xff"}')
    with pytest.raises(PayloadDecodeError, match="not valid"):
        decode(b'{"a":')


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_routing_after_one_node_with_plain_edges_is_what_the_general_path_gives(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, 6))
    names = [f"n{i}" for i in range(size)]
    deferred = data.draw(st.sets(st.sampled_from(names[1:])))
    conditional = data.draw(st.sets(st.sampled_from(names)))

    extra = {name: data.draw(st.lists(st.sampled_from(names[i + 1:]), max_size=2)) if i + 1 < size else []
             for i, name in enumerate(names)}

    def build() -> Graph:
        graph = Graph("routes")
        for name in names:
            graph.add_node(name, lambda state: None, defer=name in deferred)
        graph.set_entry_point(names[0])
        for i, name in enumerate(names):
            later = names[i + 1:]
            if not later:
                graph.set_finish_point(name)
            elif name in conditional:
                graph.add_conditional_edges(name, lambda state, to=later[0]: to, later)
            else:
                for target in dict.fromkeys([later[0], *extra[name]]):
                    graph.add_edge(name, target)
        return graph.compile()

    graph = build()
    general = build()
    general._routing.plain_next.clear()  # every step takes the general path

    async def both(node: str) -> tuple[dict[str, Any], dict[str, Any]]:
        state = State._trusted({}, "wf")
        return (await graph.next_frontier([node], state, {}), await general.next_frontier([node], state, {}))

    for name in names:
        fast, slow = run(both(name))
        assert fast == slow


@pytest.mark.parametrize("initial", [{"x": 1, "name": "a"}, {"x": 1, "items": [1, 2]}],
                         ids=["scalars only", "with a list"])
def test_a_node_changing_its_input_in_place_changes_nothing_for_the_next_node_or_the_result(
        initial: dict[str, Any]) -> None:
    seen: list[dict[str, Any]] = []

    async def changer(state: State) -> dict[str, Any]:
        state["x"] = 99
        if "items" in state:
            state["items"].append(3)
        return {"changed": True}

    async def reader(state: State) -> None:
        seen.append(dict(state))

    graph = Graph("in_place").add_node("changer", changer).add_node("reader", reader)
    graph = graph.set_entry_point("changer").add_edge("changer", "reader").set_finish_point("reader").compile()

    async def scenario() -> dict[str, Any]:
        orchestrator = Orchestrator()
        try:
            return dict(await orchestrator.execute(graph, dict(initial)))
        finally:
            await orchestrator.close()

    result = run(scenario())
    assert result == seen[0] == {**initial, "changed": True}
