"""Acks of one event-loop pass go out together (``NatsTaskQueue._send_acks``): one batch of
requests behind one waiter, each ack still settled on its own (its result, its stats, its
error). Counted by spying on ``replies.chain_now`` (it still sends), never timed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import replies
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def task(task_id: str) -> Task:
    return Task(task_id, "wf", "n", "n", {})


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = replies.chain_now

    def counted(nc: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(items))
        return real(nc, items, *args, **kwargs)

    monkeypatch.setattr(replies, "chain_now", counted)
    return sizes


def test_acks_of_one_pass_are_one_batch_with_exact_results(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _spy(monkeypatch)

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            ids = [f"t{i}" for i in range(6)]
            assert await queue.enqueue_many([task(i) for i in ids]) == [True] * 6
            claims = await queue.claim(["n"], worker_id="w", max_tasks=6)
            assert len(claims) == 6
            await asyncio.gather(*(queue.ack(c, {"i": c.task.id}) for c in claims))
            assert sizes == [6]
            results = await queue.wait_results(ids, timeout=10)
            assert {i: r.output for i, r in results.items()} == {i: {"i": i} for i in ids}
            stats = await queue.stats("n")
            assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
            # Settled: a second ack of any of them is refused, one by one.
            for claim in claims[:2]:
                with pytest.raises(LeaseLostError):
                    await queue.ack(claim, {"again": True})
            # Acks in separate passes are separate batches.
            await queue.enqueue(task("late"))
            (late,) = await queue.claim(["n"], worker_id="w")
            await queue.ack(late, None)
            assert sizes[-1] == 1
        finally:
            await backend.close()

    run(scenario())


def test_an_ack_that_cannot_be_sent_fails_alone(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result over the server's max_payload fails its own ack; the others of its batch are stored."""
    sizes = _spy(monkeypatch)

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue_many([task("a"), task("big"), task("b")]) == [True] * 3
            claims = {c.task.id: c for c in await queue.claim(["n"], worker_id="w", max_tasks=3)}
            huge = "x" * (backend.connection.nc.max_payload + 10)
            outcomes = await asyncio.gather(
                queue.ack(claims["a"], {"v": 1}), queue.ack(claims["big"], {"v": huge}), queue.ack(claims["b"], {"v": 2}),
                return_exceptions=True)
            assert sizes == [3]
            assert outcomes[0] is None and outcomes[2] is None
            assert isinstance(outcomes[1], Exception)
            results = await queue.wait_results(["a", "b"], timeout=10)
            assert {i: r.output for i, r in results.items()} == {"a": {"v": 1}, "b": {"v": 2}}
            assert await queue.get_result("big") is None
            await queue.nack(claims["big"], "too big", final=True)  # still held: settled by its holder
            stats = await queue.stats("n")
            assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
        finally:
            await backend.close()

    run(scenario())


def test_a_cancelled_ack_does_not_cancel_its_batch(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _spy(monkeypatch)

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue_many([task("a"), task("b")]) == [True] * 2
            first, second = await queue.claim(["n"], worker_id="w", max_tasks=2)
            one = asyncio.ensure_future(queue.ack(first, {"v": 1}))
            two = asyncio.ensure_future(queue.ack(second, {"v": 2}))
            await asyncio.sleep(0)  # both joined the batch
            one.cancel()
            await two
            with pytest.raises(asyncio.CancelledError):
                await one
            assert sizes == [2]
            results = await queue.wait_results(["a", "b"], timeout=10)
            assert {i: r.output for i, r in results.items()} == {"a": {"v": 1}, "b": {"v": 2}}
            stats = await queue.stats("n")
            assert (stats.queued, stats.in_flight) == (0, 0)
        finally:
            await backend.close()

    run(scenario())
