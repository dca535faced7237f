"""One NATS backend used from several event loops in turn (asyncio.run after asyncio.run,
a Worker started again, the sync API's own loops), with or without ``close()`` between.

A client made in a loop that is not the running one is dropped, without awaiting anything
on it (its read loop and replies ran in that loop, which no longer runs them), and a new
one is opened; the claim's wake-up events of the old loop go with it (waiting on an event
bound to another loop fails at once, and a claim then looked again without pause).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(60)


def _backend(url: str) -> NatsBackend:
    return NatsBackend(url, BackendOptions.from_url(url, prefix=f"loops{uuid.uuid4().hex[:8]}"))


def _count_looks(backend: NatsBackend) -> list[int]:
    """Counts the claim's looks (``STREAM.INFO`` requests) on the backend's current client."""
    looks = [0]
    nc = backend.connection.nc
    publish = nc.publish

    async def counted(subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if subject.startswith("$JS.API.STREAM.INFO."):
            looks[0] += 1
        await publish(subject, payload, reply=reply, headers=headers)

    nc.publish = counted  # type: ignore[method-assign]
    return looks


@pytest.mark.parametrize("close_between", [True, False], ids=["closed between", "not closed"])
def test_a_queue_used_in_a_second_event_loop_claims_there_and_waits_between_looks(
    nats_url: str, close_between: bool,
) -> None:
    backend = _backend(nats_url)
    clients: list[Any] = []

    async def use(task_id: str) -> tuple[list[str], int]:
        await backend.connect()
        clients.append(backend.connection.nc)
        queue = backend.task_queue
        looks = _count_looks(backend)
        assert await queue.claim(["n"], worker_id="w", wait=1.0) == []  # waits on the wake-up events
        idle = looks[0]
        assert await queue.enqueue(Task(task_id, "wf", "n", "n", {}))
        claimed = await queue.claim(["n"], worker_id="w", wait=5.0)
        for claim in claimed:
            await queue.ack(claim, {"ok": True})
        assert await queue.claim(["n"], worker_id="w", wait=0.3) == []  # the loop's last wait binds its events
        if close_between:
            await backend.close()
        return [c.task.id for c in claimed], idle

    try:
        first, first_looks = run(use("one"), 30)
        second, second_looks = run(use("two"), 30)
    finally:
        run(backend.close(), 30)
    assert (first, second) == (["one"], ["two"])
    assert clients[0] is not clients[1], "the second loop used the first loop's client"
    # About one look per poll interval (0.2 s) of the 1 s wait: the same in both loops (a
    # claim whose events were bound to the first loop looked hundreds of times).
    assert first_looks <= 12 and second_looks <= 12, (first_looks, second_looks)


def test_concurrent_first_enqueues_in_a_second_event_loop_all_succeed(nats_url: str) -> None:
    """The first calls in a loop race to subscribe to done events (one subscribes, the others
    wait on its lock): the lock of the first loop is not waited on in the second."""
    backend = _backend(nats_url)

    async def burst(name: str) -> list[bool]:
        await backend.connect()
        queue = backend.task_queue
        tasks = [Task(f"{name}-{i}", "wf", "n", "n", {}) for i in range(5)]
        return list(await asyncio.gather(*(queue.enqueue(task) for task in tasks)))

    try:
        first = run(burst("one"), 30)
        second = run(burst("two"), 30)  # not closed between
    finally:
        run(backend.close(), 30)
    assert first == second == [True] * 5
