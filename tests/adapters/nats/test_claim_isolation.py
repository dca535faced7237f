"""One delivery's failure in a NATS claim stays with that delivery.

A claim handles a batch of deliveries. When one of them has to be dead-lettered (it does
not decode, is too large, or its control record is damaged) and the dead letter cannot be
written, only that delivery is affected: it is logged, left unacked (the server delivers it
again after AckWait, when it is dead-lettered if the write works by then), and the other
tasks of the batch are claimed. Before, the error failed the whole claim, and the good
tasks came back only after AckWait.

The write is refused by a real server: the dead-letter bucket's stream is limited to
messages of a few bytes (``max_msg_size``), so every dead letter is rejected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)

_LOGGER = "distributed_agents.adapters.nats"


def _task(task_id: str, node_type: str = "n") -> Task:
    return Task(task_id, "wf", node_type, node_type, {"x": 1})


async def _limit_dead_letters(backend: NatsBackend, max_msg_size: int) -> None:
    """Set the dead-letter bucket's largest message (-1: no limit) on the server."""
    js = backend.connection.js
    info = await js.stream_info(f"KV_{backend.connection.names.dead_bucket}")
    info.config.max_msg_size = max_msg_size
    await js.update_stream(info.config)


async def _add_poison(backend: NatsBackend, kind: str, node_type: str = "n") -> None:
    """Queue a delivery that must be dead-lettered at claim time, of ``kind``."""
    queue = backend.task_queue
    if kind == "undecodable":
        await queue.enqueue_raw(node_type, b"this is not a task")
    elif kind == "oversized":
        await queue.enqueue_raw(node_type, b"x" * (queue.max_task_bytes + 1))
    else:  # "damaged record": the task decodes, its control record does not
        assert await queue.enqueue(_task("poison", node_type))
        tasks = backend.connection.bucket(backend.connection.names.task_bucket)
        await tasks.put(token("poison"), b"\x00 damaged")


async def _letters_after_redelivery(backend: NatsBackend, node_type: str = "n") -> list[Any]:
    """Claim until the poison delivery, delivered again after AckWait, is dead-lettered."""
    queue = backend.task_queue
    for _ in range(40):
        assert await queue.claim([node_type], worker_id="w", max_tasks=10, wait=0.5) == []
        letters = await queue.dead_letters(node_type)
        if letters:
            return letters
    return []


@pytest.mark.parametrize("kind", ["undecodable", "oversized", "damaged record"])
def test_a_dead_letter_that_cannot_be_written_leaves_its_message_for_later_and_the_batch_is_claimed(
    nats_url: str, kind: str, caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[list[str], list[Any], list[Any]]:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue = backend.task_queue
        if kind == "oversized":
            queue.max_task_bytes = 1024  # the good tasks are far smaller
        try:
            for task_id in ("g1", "g2"):
                assert await queue.enqueue(_task(task_id))
            await _add_poison(backend, kind)
            assert await queue.enqueue(_task("g3"))
            await _limit_dead_letters(backend, 8)
            with caplog.at_level(logging.WARNING, logger=_LOGGER):
                claimed = await queue.claim(["n"], worker_id="w", max_tasks=10)
            before = await queue.dead_letters("n")
            for claim in claimed:
                await queue.ack(claim, {"ok": True})
            await _limit_dead_letters(backend, -1)
            return sorted(c.task.id for c in claimed), before, await _letters_after_redelivery(backend)
        finally:
            await backend.close()

    claimed, before, after = run(scenario(), 50)
    assert claimed == ["g1", "g2", "g3"], "the batch's good tasks were not all claimed"
    assert before == [], "a dead letter the server refused was reported written"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("delivered again" in text for text in warnings), f"the failure was not logged: {warnings}"
    assert len(after) == 1, "the poison message was dropped instead of delivered again and dead-lettered"
    if kind == "damaged record":
        assert after[0].task_id == "poison"
    else:
        assert after[0].raw is not None and after[0].task is None


def test_a_failed_delivery_of_one_node_type_leaves_the_next_node_types_task_claimable_in_the_same_claim(
    nats_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The poison delivery is the claim's first (the oldest, of node type ``p``); the one task
    wanted comes from the second type's pull (``n``), taken after it one by one."""

    async def scenario() -> list[str]:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue = backend.task_queue
        try:
            await _add_poison(backend, "undecodable", node_type="p")
            assert await queue.enqueue(_task("good"))
            await _limit_dead_letters(backend, 8)
            with caplog.at_level(logging.WARNING, logger=_LOGGER):
                claimed = await queue.claim(["p", "n"], worker_id="w", max_tasks=1)
            for claim in claimed:
                await queue.ack(claim, {"ok": True})
            await _limit_dead_letters(backend, -1)
            assert len(await _letters_after_redelivery(backend, "p")) == 1
            return [c.task.id for c in claimed]
        finally:
            await backend.close()

    assert run(scenario(), 50) == ["good"]
    assert any("delivered again" in r.getMessage() for r in caplog.records)


def test_a_claim_whose_only_delivery_fails_returns_nothing_and_keeps_serving(nats_url: str) -> None:
    """The failure does not escape the claim (the worker's claim loop is not sent into its
    error backoff by one message); the next claim finds the next task."""

    async def scenario() -> tuple[list[Any], list[str]]:
        backend = await open_nats(nats_url, visibility_timeout=2.0)
        queue = backend.task_queue
        try:
            await _add_poison(backend, "undecodable")
            await _limit_dead_letters(backend, 8)
            alone = await queue.claim(["n"], worker_id="w", max_tasks=5)
            assert await queue.enqueue(_task("next"))
            later = await asyncio.wait_for(queue.claim(["n"], worker_id="w", max_tasks=5, wait=5), 10)
            for claim in later:
                await queue.ack(claim, {"ok": True})
            return alone, [c.task.id for c in later]
        finally:
            await backend.close()

    alone, later = run(scenario(), 50)
    assert alone == []
    assert later == ["next"]


def test_a_delivery_the_claim_cannot_give_back_stays_for_later_and_the_claimed_task_is_returned(
    nats_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A claim of one task pulls one delivery of each node type and gives back the one it
    does not need; the server refusing the give-back's mark (the claims bucket full) does not
    fail the claim of the other, and the given-back task is claimed after AckWait."""

    async def scenario() -> tuple[list[str], list[str]]:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue = backend.task_queue
        js = backend.connection.js
        stream = f"KV_{backend.connection.names.claim_bucket}"
        try:
            assert await queue.enqueue(_task("first", "a"))
            assert await queue.enqueue(_task("second", "b"))
            info = await js.stream_info(stream)
            info.config.max_bytes = 1
            await js.update_stream(info.config)
            with caplog.at_level(logging.WARNING, logger=_LOGGER):
                claimed = await queue.claim(["a", "b"], worker_id="w", max_tasks=1)
            for claim in claimed:
                await queue.ack(claim, {"ok": True})
            info.config.max_bytes = -1
            await js.update_stream(info.config)
            later = await queue.claim(["a", "b"], worker_id="w", max_tasks=5, wait=10)
            for claim in later:
                await queue.ack(claim, {"ok": True})
            return [c.task.id for c in claimed], [c.task.id for c in later]
        finally:
            await backend.close()

    claimed, later = run(scenario(), 50)
    assert claimed == ["first"]
    assert later == ["second"]
    assert any("could not be given back" in r.getMessage() for r in caplog.records)
