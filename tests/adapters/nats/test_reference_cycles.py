"""The per-task paths of the NATS queue leave no reference cycles behind.

Garbage in a cycle outlives its last use until a collector pass finds it, and what it holds
(a request's answers, the closures of its acks) with it; every task in flight then costs each
pass more. A batch of requests and its slots pointed at each other: ten objects per task were
left to the collector on a worker's claim and ack path. Counted here with the collector off
and ``gc.DEBUG_SAVEALL`` (every object a pass finds unreachable is kept in ``gc.garbage``), on
a real nats-server; nothing is timed.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(120)


@contextmanager
def _cyclic_garbage() -> Iterator[Counter[str]]:
    """Counts, by type name, of the objects made in the block that only a collector pass frees."""
    found: Counter[str] = Counter()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.update(type(obj).__qualname__ for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


async def _counted(step: Callable[[], Awaitable[None]]) -> Counter[str]:
    with _cyclic_garbage() as found:
        await step()
    return found


@pytest.mark.parametrize("width", [1, 10, 200])
def test_enqueue_claim_and_ack_leave_no_cyclic_garbage(nats_url: str, width: int) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            warm = [Task("warm", "wf", "n", "alpha", {})]
            await queue.enqueue_many(warm)  # (the inboxes and consumers made first)
            [claim] = await queue.claim(["alpha"], worker_id="w", wait=5.0)
            await queue.ack(claim, {})
            tasks = [Task(f"t{i}", "wf", f"n{i}", "alpha", {"i": i}) for i in range(width)]

            async def enqueue() -> None:
                assert await queue.enqueue_many(tasks) == [True] * width

            async def claim_and_ack() -> None:
                done = 0
                while done < width:
                    claims = await queue.claim(["alpha"], worker_id="w", max_tasks=64, wait=5.0)
                    assert claims
                    await asyncio.gather(*(queue.ack(c, {"i": c.task.id}) for c in claims))
                    done += len(claims)

            assert await _counted(enqueue) == Counter()
            assert await _counted(claim_and_ack) == Counter()
            results = await queue.wait_results([t.id for t in tasks], timeout=10)
            assert sorted(results) == sorted(t.id for t in tasks)
        finally:
            await backend.close()

    run(scenario())
