"""The port's default ``StateStore.create_leased_enqueuing``: create under a lease, then queue the first tasks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from support.aio import run

from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task


def _record(workflow_id: str) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", WorkflowStatus.RUNNING, {}, frontier={"next": ["n"]})


def test_the_default_creates_then_queues_and_a_failed_enqueue_is_left_to_the_first_step() -> None:
    async def scenario() -> tuple[Any, ...]:
        orchestrator = Orchestrator(backend=f"memory://cle-{uuid.uuid4().hex[:8]}")
        await orchestrator.connect()
        store, queue = orchestrator.backend.state_store, orchestrator.backend.task_queue
        try:
            made = await store.create_leased_enqueuing(_record("w1"), owner="o", ttl=30.0, queue=queue,
                                                       tasks=[Task("w1-t", "w1", "n", "alpha", {})])
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=5)]

            class Down:  # a queue whose enqueue fails (an outage)
                max_attempts = 3

                async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
                    raise BackendUnavailableError("down")

            failed = await store.create_leased_enqueuing(_record("w2"), owner="o", ttl=30.0, queue=Down(),  # type: ignore[arg-type]
                                                         tasks=[Task("w2-t", "w2", "n", "alpha", {})])
            other = await store.acquire_lease("w3", "someone", 30.0)
            held = await store.create_leased_enqueuing(_record("w3"), owner="o", ttl=30.0, queue=queue,
                                                       tasks=[Task("w3-t", "w3", "n", "beta", {})])
            stats = await queue.stats("beta")
            return (made is not None and (made[0].version, made[1].owner, made[2]), claimed,
                    failed is not None and (failed[0].version, failed[2]), await store.get("w2") is not None,
                    other is not None, held, await store.get("w3"), stats.queued)
        finally:
            await orchestrator.close()

    made, claimed, failed, w2_stored, other, held, w3, beta = run(scenario(), 30)
    assert made == (1, "o", True) and claimed == ["w1-t"]
    assert failed == (1, False) and w2_stored  # created; its tasks are queued by its first step
    assert other and held is None and w3 is None and beta == 0  # another owner's lease: nothing written or queued
