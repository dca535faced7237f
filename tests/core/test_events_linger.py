"""EventPublisher's linger: lifecycle events wait a moment on a networked bus; nothing that waits for them does."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.memory.message_bus import BusData, MemoryMessageBus
from distributed_agents.core.events import DEFAULT_LINGER, EventPublisher
from distributed_agents.core.ports.message_bus import MessageBus, Subscription

pytestmark = pytest.mark.timeout(30)


class _NetworkedBus(MessageBus):
    """A bus that keeps the port's may_deliver (as Redis's and NATS's do) and records each round."""

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []
        self.published = asyncio.Event()

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        await self.publish_many([(channel, data)])

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        self.rounds.append([f"{channel}:{data.get('type', '')}" for channel, data in messages])
        self.published.set()

    async def subscribe(self, pattern: str) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def test_the_default_linger_is_for_networked_buses_only() -> None:
    assert EventPublisher(_NetworkedBus()).linger == DEFAULT_LINGER > 0
    assert EventPublisher(MemoryMessageBus(BusData())).linger == 0.0
    assert EventPublisher(_NetworkedBus(), linger=0).linger == 0.0


@pytest.mark.parametrize("bad", [-0.001, math.inf, math.nan, True, "0.1"])
def test_a_linger_that_is_no_finite_number_of_seconds_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"EventPublisher\(linger=.*\): seconds, a finite number >= 0"):
        EventPublisher(_NetworkedBus(), linger=bad)


def test_dispatch_events_of_an_idle_publisher_wait_out_the_linger_and_go_as_one_round() -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]]]:
        bus = _NetworkedBus()
        publisher = EventPublisher(bus, linger=0.3)
        publisher.emit("wf", "workflow.started")
        publisher.emit("wf", "node.started", node="a")
        await asyncio.sleep(0.05)
        publisher.emit("wf", "node.started", node="b")
        early = list(bus.rounds)  # still lingering: nothing sent
        await asyncio.wait_for(bus.published.wait(), 5)
        later = list(bus.rounds)
        await publisher.close()
        return early, later

    early, later = run(scenario())
    assert early == []
    assert later == [["events.wf.workflow.started:workflow.started", "events.wf.node.started:node.started",
                      "events.wf.node.started:node.started"]]


@pytest.mark.parametrize("kind", ["node.completed", "node.failed", "step.committed", "workflow.completed",
                                  "workflow.interrupted"])
def test_any_other_event_goes_at_once_with_the_lingering_ones_before_it(kind: str) -> None:
    async def scenario() -> list[list[str]]:
        bus = _NetworkedBus()
        publisher = EventPublisher(bus, linger=60)  # longer than the test's timeout
        publisher.emit("wf", "node.started", node="a")
        await asyncio.sleep(0.01)  # lingering
        assert bus.rounds == []
        publisher.emit("wf", kind)
        await asyncio.wait_for(bus.published.wait(), 5)
        rounds = list(bus.rounds)
        await publisher.close()
        return rounds

    assert run(scenario()) == [["events.wf.node.started:node.started", f"events.wf.{kind}:{kind}"]]


def test_a_round_holding_another_event_does_not_linger() -> None:
    async def scenario() -> list[list[str]]:
        bus = _NetworkedBus()
        publisher = EventPublisher(bus, linger=60)
        publisher.emit("wf", "step.committed", step=1)
        publisher.emit("wf", "node.started", node="b")  # queued after it: goes with it
        await asyncio.wait_for(bus.published.wait(), 5)
        rounds = list(bus.rounds)
        await publisher.close()
        return rounds

    assert run(scenario()) == [["events.wf.step.committed:step.committed", "events.wf.node.started:node.started"]]


def test_no_linger_publishes_at_once() -> None:
    async def scenario() -> list[list[str]]:
        bus = _NetworkedBus()
        publisher = EventPublisher(bus, linger=0)
        publisher.emit("wf", "workflow.started")
        for _ in range(5):
            await asyncio.sleep(0)
        rounds = list(bus.rounds)
        await publisher.close()
        return rounds

    assert run(scenario()) == [["events.wf.workflow.started:workflow.started"]]


@pytest.mark.parametrize("how", ["flush", "wait_published", "close", "chunk on the loop", "chunk from a thread"])
def test_whatever_waits_for_the_events_ends_the_linger(how: str) -> None:
    async def scenario() -> list[list[str]]:
        bus = _NetworkedBus()
        publisher = EventPublisher(bus, linger=60)  # longer than the test's timeout: only the ending can publish
        publisher.emit("wf", "node.started", node="a")
        await asyncio.sleep(0.01)  # the pump is lingering now
        assert bus.rounds == []
        if how == "flush":
            assert await asyncio.wait_for(publisher.flush(), 5) is True
        elif how == "wait_published":
            assert await publisher.wait_published(1, timeout=5) is True
        elif how == "close":
            await asyncio.wait_for(publisher.close(), 5)
            return bus.rounds
        elif how == "chunk on the loop":
            publisher.emit_chunk("wf", "custom", {"n": 1})
            await asyncio.wait_for(bus.published.wait(), 5)
        else:
            thread = threading.Thread(target=publisher.emit_chunk, args=("wf", "custom", {"n": 1}))
            thread.start()
            thread.join()
            await asyncio.wait_for(bus.published.wait(), 5)
        rounds = list(bus.rounds)
        await publisher.close()
        return rounds

    rounds = run(scenario())
    expected = ["events.wf.node.started:node.started"]
    if how.startswith("chunk"):
        expected.append("stream.wf.custom:")  # in order: the event, then the chunk
    assert [item for batch in rounds for item in batch] == expected
