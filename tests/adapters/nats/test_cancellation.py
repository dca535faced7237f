"""A cancelled caller of the NATS adapter is cancelled: nats-py swallows a cancellation that lands
while it pushes its pending buffer (``Client._flush_pending`` catches ``CancelledError``), so an
``await`` on it directly would return normally instead; ``message_bus.flush_in_order`` waits for
the flush in a task of its own, shielded, and a cancelled caller gets ``CancelledError`` at once
while the flush finishes by itself (no PONG waiter cancelled half-way to break the read loop)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from support.aio import ends_cancelled, run

from distributed_agents.adapters.nats.message_bus import flush_in_order
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats


@pytest.mark.timeout(60)
def test_a_flush_cancelled_while_the_buffer_is_pushed_raises_and_the_connection_keeps_working(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[bool]:
        backend = await open_nats(nats_url)
        try:
            nc = backend.connection.nc
            outcomes = [await ends_cancelled(lambda: flush_in_order(nc)) for _ in range(20)]
            # The connection still answers: the abandoned flushes finished on their own.
            await asyncio.wait_for(flush_in_order(nc), 5)
            queue = backend.task_queue
            assert await queue.enqueue(Task("after", "wf", "n", "alpha", {}))
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5.0)
            assert [claim.task.id for claim in claims] == ["after"]
            return outcomes
        finally:
            await backend.close()

    with caplog.at_level(logging.ERROR):
        outcomes = run(scenario(), 50)
    assert outcomes == [True] * 20
    assert "InvalidStateError" not in caplog.text and "encountered error" not in caplog.text


@pytest.mark.timeout(90)
def test_wait_results_cancelled_as_it_subscribes_raises(nats_url: str) -> None:
    """The first ``wait_results`` of a queue subscribes to done events and flushes: a cancel that lands
    there (a timeout around it, a workflow cancelled, Ctrl-C) is not turned into a 2 s wait and ``{}``."""
    async def scenario() -> list[bool]:
        outcomes = []
        for _ in range(5):
            backend = await open_nats(nats_url)
            try:
                queue = backend.task_queue
                outcomes.append(await ends_cancelled(
                    lambda: queue.wait_results(["never-enqueued"], timeout=2.0)))
            finally:
                await backend.close()
        return outcomes

    assert run(scenario(), 80) == [True] * 5
