"""Who sets a task consumer's AckWait: the claimers' visibility timeout, never an enqueuer's.

A task's redelivery after its worker died waits the consumer's AckWait. An orchestrator
enqueueing with its own (default 30 s) visibility timeout used to re-make the consumer with
it, so a worker's shorter one (e.g. 5 s) stopped counting: a killed worker's task came back
after about 34 s instead of about 9 s.
"""

from __future__ import annotations

import uuid

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def test_a_claimers_visibility_timeout_sets_ack_wait_and_an_enqueuer_does_not_change_it(nats_url: str) -> None:
    async def scenario() -> list[float]:
        orchestrator = await open_nats(nats_url, visibility_timeout=30.0)
        worker = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=3.0)
        late = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=30.0)
        names = orchestrator.task_queue._conn.names
        consumer = names.task_consumer("n", 0)

        async def ack_wait() -> float:
            info = await orchestrator.task_queue._conn.js.consumer_info(names.task_stream, consumer)
            return float(info.config.ack_wait)

        seen = []
        try:
            await orchestrator.task_queue.enqueue(Task(f"t-{uuid.uuid4().hex[:6]}", "wf", "n", "n", {}))
            seen.append(await ack_wait())  # made by the enqueue, with its own
            claimed = await worker.task_queue.claim(["n"], worker_id="w", max_tasks=1)
            seen.append(await ack_wait())  # the claimer's
            await late.task_queue.enqueue(Task(f"t-{uuid.uuid4().hex[:6]}", "wf", "n", "n", {}))
            seen.append(await ack_wait())  # a later enqueuer leaves it
            assert len(claimed) == 1
        finally:
            for backend in (orchestrator, worker, late):
                await backend.close()
        return seen

    assert run(scenario()) == [30.0, 3.0, 3.0]
