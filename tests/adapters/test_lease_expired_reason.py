"""A task whose last lease expired is dead-lettered with one wording on every backend, naming the worker.

The example (distributed-guarantees trial): a workflow whose worker crashed on every
attempt failed with "lease expired on attempt 3 of 3" and nothing else: no worker named,
no word on why a crash used up its attempts. The reason now names the worker that held
the lease and says that every unfinished attempt counts toward max_attempts, in the same
words on memory, Redis (written by its claim script) and NATS.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task, lease_expired_reason
from distributed_agents.plugins import open_backend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}{'&' if '?' in base else '?'}prefix=lx{uuid.uuid4().hex[:8]}&max_attempts=2"


def test_the_reason_names_the_worker_and_is_the_same_everywhere(url: str) -> None:
    async def scenario() -> tuple[list[str], Any]:
        backend = open_backend(url)
        await backend.connect()
        queue = backend.task_queue
        try:
            await queue.enqueue(Task("t-crash", "wf-1", "node", "alpha", {"state": {}}))
            for worker in ("worker-a", "worker-b"):  # each claims, then "dies": the lease just runs out
                for _ in range(100):
                    if await queue.claim(["alpha"], worker_id=worker, lease_seconds=0.3, wait=0.3):
                        break
                await asyncio.sleep(0.5)
            for _ in range(50):  # a claim (or a waiter) applies the expiry of the last lease
                assert not await queue.claim(["alpha"], worker_id="worker-c", wait=0.1)
                letters = await queue.dead_letters("alpha")
                if letters:
                    return [letter.reason for letter in letters], await queue.get_result("t-crash")
            return [], None
        finally:
            await backend.close()

    reasons, result = run(scenario(), 50)
    assert reasons == [lease_expired_reason(2, 2, "worker-b")]
    assert result is not None and result.status == "failed" and lease_expired_reason(2, 2, "worker-b") in result.error
    assert "worker 'worker-b' held it and stopped renewing it" in reasons[0]
