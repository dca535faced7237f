"""Who sets a task consumer's AckWait: the process that makes the consumer; no one changes it.

Every holder of a lease must know the AckWait the server applies. A worker that set its own
(shorter) AckWait on a consumer in use had another worker's running tasks (with a longer
visibility timeout, so kept alive too rarely) redelivered to it and run twice; an enqueuer
that re-made the consumer with its own 30 s delayed a dead worker's tasks. Now the consumer
keeps the AckWait it was made with, and a claimer whose visibility timeout differs says so.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _task() -> Task:
    return Task(f"t-{uuid.uuid4().hex[:6]}", "wf", "n", "n", {})


def test_the_consumers_ack_wait_stays_as_made_and_a_differing_claimer_says_so(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[float]:
        orchestrator = await open_nats(nats_url, visibility_timeout=30.0)
        worker = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=3.0)
        names = orchestrator.task_queue._conn.names

        async def ack_wait() -> float:
            info = await orchestrator.task_queue._conn.js.consumer_info(names.task_stream, names.task_consumer("n", 0))
            return float(info.config.ack_wait)

        seen = []
        try:
            await orchestrator.task_queue.enqueue(_task())
            seen.append(await ack_wait())  # made by the enqueue, with its own
            claimed = await worker.task_queue.claim(["n"], worker_id="w", max_tasks=1)
            seen.append(await ack_wait())  # a claimer does not change it...
            assert len(claimed) == 1 and claimed[0].deadline > 0
            # ... and keeps its lease alive by the consumer's AckWait, not its own visibility timeout
            assert worker.task_queue._held[claimed[0].lease_id].ack_wait == 30.0
        finally:
            for backend in (orchestrator, worker):
                await backend.close()
        return seen

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        assert run(scenario()) == [30.0, 30.0]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "redelivers after 30s" in warned and "visibility timeout of 3s" in warned


def test_a_consumer_a_worker_made_keeps_its_ack_wait_when_an_orchestrator_enqueues(nats_url: str) -> None:
    async def scenario() -> list[float]:
        worker = await open_nats(nats_url, visibility_timeout=3.0)
        orchestrator = await open_nats(nats_url, prefix=worker.options.prefix, visibility_timeout=30.0)
        names = worker.task_queue._conn.names
        try:
            await worker.task_queue.enqueue(_task())  # makes it, with 3 s
            await orchestrator.task_queue.enqueue(_task())
            info = await worker.task_queue._conn.js.consumer_info(names.task_stream, names.task_consumer("n", 0))
            return [float(info.config.ack_wait), float(len(await worker.task_queue.claim(["n"], worker_id="w",
                                                                                           max_tasks=1)))]
        finally:
            for backend in (worker, orchestrator):
                await backend.close()

    assert run(scenario()) == [3.0, 1.0]  # kept at 3 s; the worker claims as usual
