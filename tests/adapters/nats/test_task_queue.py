"""NATS-specific task queue behaviour (the shared contract is in test_conformance.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.aio import run

from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats


def task(task_id: str, node_type: str = "n", priority: int = 0, **payload: object) -> Task:
    return Task(task_id, "wf", node_type, node_type, dict(payload), priority=priority)


def test_priority_first_then_fifo_across_node_types(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            for item in (task("a", "x"), task("b", "y"), task("c", "x", priority=-1), task("d", "y", priority=5)):
                assert await queue.enqueue(item)
            order = []
            for _ in range(4):
                (claimed,) = await queue.claim(["x", "y"], worker_id="w")
                order.append(claimed.task.id)
                await queue.ack(claimed, None)
            assert order == ["d", "a", "b", "c"]
        finally:
            await backend.close()

    run(scenario())


def test_dead_holder_loses_lease_after_ack_wait(nats_url: str) -> None:
    """A holder whose process is gone (no keeper, no ack) loses the task at AckWait."""

    async def scenario() -> None:
        holder = await open_nats(nats_url, visibility_timeout=1.0)
        other = await open_nats(nats_url, prefix=holder.options.prefix, visibility_timeout=1.0)
        try:
            await holder.task_queue.enqueue(task("t"))
            (first,) = await holder.task_queue.claim(["n"], worker_id="dead")
            await holder.close()  # its keeper stops: only the server's AckWait is left
            assert await other.task_queue.claim(["n"], worker_id="live") == []
            (second,) = await other.task_queue.claim(["n"], worker_id="live", wait=5)
            assert second.attempt == 2
            with pytest.raises(LeaseLostError):
                await other.task_queue.ack(first, {"stale": True})  # a stale holder, settled from anywhere
            await other.task_queue.nack(second, "boom")
            (third,) = await other.task_queue.claim(["n"], worker_id="live", wait=5)
            await other.task_queue.nack(third, "boom again")
            (letter,) = await other.task_queue.dead_letters("n")
            assert letter.errors == ("attempt 1: lease expired (worker 'dead')", "attempt 2: boom", "attempt 3: boom again")
        finally:
            await other.close()
            await holder.close()

    run(scenario(), 40)


def test_short_and_long_leases_are_honoured(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue = backend.task_queue
        try:
            await queue.enqueue(task("long"))
            (held,) = await queue.claim(["n"], worker_id="w", lease_seconds=3.0)
            await asyncio.sleep(2.0)  # past AckWait: in_progress() keeps it
            assert await queue.claim(["n"], worker_id="x") == []
            await queue.ack(held, {"done": 1})
            await queue.enqueue(task("short"))
            (short,) = await queue.claim(["n"], worker_id="w", lease_seconds=0.3)
            (again,) = await queue.claim(["n"], worker_id="x", wait=2.0)
            assert again.task.id == "short" and again.attempt == 2
            with pytest.raises(LeaseLostError):
                await queue.extend(short)
        finally:
            await backend.close()

    run(scenario())


def test_wait_results_wakes_on_ack(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        queue.result_poll = 30.0  # no poll within the wait: only the ack's notification can wake it
        try:
            await queue.enqueue(task("t"))
            (claimed,) = await queue.claim(["n"], worker_id="w")

            async def finish() -> None:
                await asyncio.sleep(0.3)
                await queue.ack(claimed, {"v": 1})

            finisher = asyncio.ensure_future(finish())
            started = time.monotonic()
            results = await queue.wait_results(["t"], timeout=10)
            await finisher
            assert results["t"].output == {"v": 1}
            assert time.monotonic() - started < 5.0  # woken by the notification, not the (30 s) poll
        finally:
            await backend.close()

    run(scenario())


def test_prefixes_are_isolated(nats_url: str) -> None:
    async def scenario() -> None:
        one = await open_nats(nats_url, prefix="a.b")
        two = await open_nats(nats_url, prefix="a_2eb")
        try:
            await one.task_queue.enqueue(task("t"))
            assert await two.task_queue.enqueue(task("t"))  # same id, other deployment
            assert (await two.task_queue.stats("n")).queued == 1
            assert len(await one.task_queue.claim(["n"], worker_id="w", max_tasks=5)) == 1
        finally:
            await one.close()
            await two.close()

    run(scenario())


def test_nack_final_dead_letters_at_once_with_attempts_left(nats_url: str) -> None:
    """``nack(final=True)`` on attempt 1 of 3: dead-lettered now, result failed, never claimed again."""

    async def scenario() -> None:
        backend = await open_nats(nats_url, max_attempts=3)
        queue = backend.task_queue
        try:
            await queue.enqueue(task("final"))
            (claimed,) = await queue.claim(["n"], worker_id="w")
            assert await queue.nack(claimed, "ValueError: no retry policy", final=True) is False
            (letter,) = await queue.dead_letters("n")
            assert letter.task_id == "final" and letter.attempts == 1
            assert letter.errors == ("attempt 1: ValueError: no retry policy",)
            result = await queue.get_result("final")
            assert result is not None and result.status == "failed" and result.attempts == 1
            assert await queue.claim(["n"], worker_id="w", wait=0.5) == []
            stats = await queue.stats("n")
            assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
            await queue.enqueue(task("retry"))
            (again,) = await queue.claim(["n"], worker_id="w")
            assert await queue.nack(again, "flaky") is True  # without final: delivered again
        finally:
            await backend.close()

    run(scenario())


def test_stats_count_given_back_messages_as_queued_until_delivered_again(nats_url: str) -> None:
    """JetStream counts a NAKed message as unacked until its next delivery; ``stats`` must
    not: released, over-pulled and cancelled-after-release tasks are counted where they are,
    read from another connection (no state kept in the process that gave them back)."""

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        reader = await open_nats(nats_url, prefix=backend.options.prefix)
        queue = backend.task_queue

        async def counts(node_type: str) -> tuple[int, int]:
            stats = await reader.task_queue.stats(node_type)
            return stats.queued, stats.in_flight

        try:
            for item in (task("a", "x"), task("b", "x"), task("c", "y")):
                assert await queue.enqueue(item)
            (first,) = await queue.claim(["x"], worker_id="w")
            (second,) = await queue.claim(["x"], worker_id="w")
            assert await counts("x") == (0, 2)
            await queue.release(first)  # NAKed: unacked for the server, queued for stats
            assert await counts("x") == (1, 1)
            assert await queue.cancel(first.task.id)  # its message deleted: no mark may stay behind
            assert await counts("x") == (0, 1)
            # A claim of both types pulls one of each and gives the younger one back.
            await queue.release(second)
            assert await counts("x") == (1, 0)
            (again,) = await queue.claim(["x", "y"], worker_id="w")
            assert again.task.id == "b" and again.attempt == 1
            assert await counts("x") == (0, 1) and await counts("y") == (1, 0)
            (last,) = await queue.claim(["y"], worker_id="w")
            assert last.task.id == "c"
            assert await counts("y") == (0, 1)
            await queue.ack(last, None)
            await queue.ack(again, None)
            assert await counts("x") == (0, 0) and await counts("y") == (0, 0)
        finally:
            await reader.close()
            await backend.close()

    run(scenario())


def test_a_record_changed_between_the_claims_batched_read_and_its_cas_is_read_again(nats_url: str) -> None:
    """A claim of several tasks reads their records in one batch and CASes them together;
    a record that changed in between (here the task was cancelled) loses its CAS and is
    read again: the cancelled task is not claimed, the others are, in order."""

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            for name in ("a", "b", "c"):
                assert await queue.enqueue(task(name))
            prefetch = queue._prefetch

            async def read_then_cancel(messages: list[object]) -> object:
                read = await prefetch(messages)  # type: ignore[arg-type]
                assert await queue.cancel("b")
                return read

            queue._prefetch = read_then_cancel  # type: ignore[method-assign]
            claimed = await queue.claim(["n"], worker_id="w", max_tasks=3)
            assert [c.task.id for c in claimed] == ["a", "c"]
            for claim in claimed:
                await queue.ack(claim, None)
            assert await queue.claim(["n"], worker_id="w", max_tasks=3) == []
            assert (await queue.stats("n")).queued == 0
        finally:
            await backend.close()

    run(scenario())
