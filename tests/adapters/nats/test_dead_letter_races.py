"""A requeue and a purge of the same dead letter, racing (two backends, one server): exactly
one of them returns True, and what happens after agrees with it: a requeued task runs again
and its letter is gone; a purged one never runs again and no letter of it is listed.

Before, a purge that lost the record to the requeue still found the letter (the requeue
removes it only after publishing) and answered True as well, while the task ran again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(120)


async def _dead(queue: Any, task_id: str) -> None:
    assert await queue.enqueue(Task(task_id, "wf", "n", "alpha", {}, max_attempts=1))
    [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
    await queue.nack(claim, "boom", final=True)
    assert [d.task_id for d in await queue.dead_letters("alpha")] == [task_id]


def test_a_racing_requeue_and_purge_are_never_both_true(nats_server: Any) -> None:
    async def scenario() -> list[tuple[bool, bool, list[str], list[str]]]:
        prefix = f"rp{uuid.uuid4().hex[:8]}"
        one, two = await open_nats(nats_server.url, prefix=prefix), await open_nats(nats_server.url, prefix=prefix)
        outcomes = []
        try:
            for round_ in range(24):
                task_id = f"t{round_}"
                await _dead(one.task_queue, task_id)
                delay = (round_ % 6) * 0.001  # the purge starts 0-5 ms after the requeue

                async def purge() -> bool:
                    await asyncio.sleep(delay)
                    return bool(await two.task_queue.purge_dead_letter(task_id))

                requeued, purged = await asyncio.gather(one.task_queue.requeue_dead_letter(task_id), purge())
                ran = [c.task.id for c in await one.task_queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=0.5)]
                for claim in await one.task_queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=0):
                    ran.append(claim.task.id)
                letters = [d.task_id for d in await one.task_queue.dead_letters("alpha")]
                outcomes.append((requeued, purged, ran, letters))
                # (a requeued task is left claimed: the next round's ids differ)
        finally:
            await one.close()
            await two.close()
        return outcomes

    outcomes = run(scenario(), 110)
    for round_, (requeued, purged, ran, letters) in enumerate(outcomes):
        assert requeued != purged, (round_, outcomes[round_])
        assert ran == ([f"t{round_}"] if requeued else []), (round_, outcomes[round_])
        assert letters == [], (round_, outcomes[round_])
