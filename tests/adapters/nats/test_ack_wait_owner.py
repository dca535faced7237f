"""Who sets a task consumer's AckWait: the first worker that claims there; no one changes it.

Every holder of a lease must know the AckWait the server applies. A worker that set its own
(shorter) AckWait on a consumer in use had another worker's running tasks (with a longer
visibility timeout, so kept alive too rarely) redelivered to it and run twice. An enqueuer
that made the consumer with its own 30 s made a killed worker's tasks wait 30 s whatever the
workers' ``--visibility-timeout`` said. Now only a claim makes a consumer, the consumer keeps
the AckWait it was made with, and a claimer whose visibility timeout differs says so.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from support.aio import run

from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _task(node_type: str = "n") -> Task:
    return Task(f"t-{uuid.uuid4().hex[:6]}", "wf", node_type, node_type, {})


async def _ack_wait(backend: object, node_type: str, priority: int = 0) -> float | None:
    import nats.js.errors

    conn = backend.task_queue._conn  # type: ignore[attr-defined]
    try:
        info = await conn.js.consumer_info(conn.names.task_stream, conn.names.task_consumer(node_type, priority))
    except nats.js.errors.NotFoundError:
        return None
    return float(info.config.ack_wait)


@pytest.mark.parametrize("enqueue", ["enqueue", "enqueue_many"])
def test_an_enqueue_makes_no_consumer_and_the_first_claimer_sets_its_ack_wait(nats_url: str, enqueue: str) -> None:
    """An orchestrator (30 s) enqueues first; the worker (3 s) that claims makes the consumer with its 3 s."""
    async def scenario() -> tuple[float | None, float | None, int, float]:
        orchestrator = await open_nats(nats_url, visibility_timeout=30.0)
        worker = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=3.0)
        try:
            if enqueue == "enqueue":
                await orchestrator.task_queue.enqueue(_task())
            else:
                await orchestrator.task_queue.enqueue_many([_task(), _task()])
            before = await _ack_wait(orchestrator, "n")
            stats = await orchestrator.task_queue.stats("n")
            claimed = await worker.task_queue.claim(["n"], worker_id="w", max_tasks=1)
            assert len(claimed) == 1
            return before, await _ack_wait(orchestrator, "n"), stats.queued, worker.task_queue._held[claimed[0].lease_id].ack_wait
        finally:
            for backend in (orchestrator, worker):
                await backend.close()

    before, after, queued, held = run(scenario())
    assert before is None  # the message waits in the stream with no consumer
    assert queued == (1 if enqueue == "enqueue" else 2)
    assert (after, held) == (3.0, 3.0)


def test_the_consumers_ack_wait_stays_as_made_and_a_differing_claimer_says_so(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[float | None]:
        first = await open_nats(nats_url, visibility_timeout=30.0)
        second = await open_nats(nats_url, prefix=first.options.prefix, visibility_timeout=3.0)
        seen = []
        try:
            await first.task_queue.enqueue(_task())
            await first.task_queue.enqueue(_task())
            assert len(await first.task_queue.claim(["n"], worker_id="w1", max_tasks=1)) == 1
            seen.append(await _ack_wait(first, "n"))  # made by the first claim, with its own
            claimed = await second.task_queue.claim(["n"], worker_id="w2", max_tasks=1)
            seen.append(await _ack_wait(first, "n"))  # a second claimer does not change it...
            assert len(claimed) == 1 and claimed[0].deadline > 0
            # ... and keeps its lease alive by the consumer's AckWait, not its own visibility timeout
            assert second.task_queue._held[claimed[0].lease_id].ack_wait == 30.0
        finally:
            for backend in (first, second):
                await backend.close()
        return seen

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        assert run(scenario()) == [30.0, 30.0]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "redelivers after 30s" in warned and "visibility timeout of 3s" in warned


def test_a_consumer_a_worker_made_keeps_its_ack_wait_when_an_orchestrator_enqueues(nats_url: str) -> None:
    async def scenario() -> list[float | None]:
        worker = await open_nats(nats_url, visibility_timeout=3.0)
        orchestrator = await open_nats(nats_url, prefix=worker.options.prefix, visibility_timeout=30.0)
        try:
            await worker.task_queue.enqueue(_task())
            assert len(await worker.task_queue.claim(["n"], worker_id="w", max_tasks=1)) == 1  # makes it, with 3 s
            await orchestrator.task_queue.enqueue(_task())
            return [await _ack_wait(worker, "n"), float(len(await worker.task_queue.claim(["n"], worker_id="w",
                                                                                           max_tasks=1)))]
        finally:
            for backend in (worker, orchestrator):
                await backend.close()

    assert run(scenario()) == [3.0, 1.0]  # kept at 3 s; the worker claims as usual


def test_a_silent_workers_task_comes_back_after_the_workers_visibility_timeout_not_the_enqueuers(nats_url: str) -> None:
    """The everyday deployment: an orchestrator with the default visibility timeout enqueues,
    workers run with ``--visibility-timeout 2``; a worker that stops keeping its lease alive
    (closed without acking, as a killed one) has its task claimed again within seconds, not
    after the orchestrator's 30 s."""
    async def scenario() -> float:
        import time

        orchestrator = await open_nats(nats_url, visibility_timeout=30.0)
        gone = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=2.0)
        survivor = await open_nats(nats_url, prefix=orchestrator.options.prefix, visibility_timeout=2.0)
        try:
            task = _task("quick")
            await orchestrator.task_queue.enqueue(task)
            assert [c.task.id for c in await gone.task_queue.claim(["quick"], worker_id="gone", max_tasks=1)] == [task.id]
            await gone.close()  # no ack, no more in-progress
            started = time.monotonic()
            while time.monotonic() - started < 20:
                claimed = await survivor.task_queue.claim(["quick"], worker_id="survivor", max_tasks=1, wait=1.0)
                if claimed:
                    assert claimed[0].task.id == task.id and claimed[0].attempt == 2
                    return time.monotonic() - started
            raise AssertionError("the task did not come back within 20 s")
        finally:
            for backend in (orchestrator, survivor):
                await backend.close()

    assert run(scenario(), 40) < 10


def test_the_way_the_warning_gives_to_change_the_ack_wait_works_and_keeps_the_queued_tasks(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Workers stopped, the consumer the warning names deleted: the next claimer makes it anew
    with its own visibility timeout, and every task queued before is still there to claim."""
    async def scenario() -> tuple[float | None, float | None, int]:
        old = await open_nats(nats_url, visibility_timeout=30.0)
        new = await open_nats(nats_url, prefix=old.options.prefix, visibility_timeout=3.0)
        try:
            for _ in range(3):
                await old.task_queue.enqueue(_task())
            assert len(await old.task_queue.claim(["n"], worker_id="w-old", max_tasks=1)) == 1  # made with 30 s
            assert len(await new.task_queue.claim(["n"], worker_id="w-new", max_tasks=1)) == 1  # warns
            warned = " ".join(r.getMessage() for r in caplog.records if "redelivers after" in r.getMessage())
            conn = new.task_queue._conn  # type: ignore[attr-defined]
            stream, consumer = conn.names.task_stream, conn.names.task_consumer("n", 0)
            assert f"delete consumer {consumer!r} of stream {stream!r}" in warned
            assert f"nats consumer rm {stream} {consumer}" in warned
            before = await _ack_wait(new, "n")
            await conn.js.delete_consumer(stream, consumer)  # (what `nats consumer rm` does)
            fresh = await open_nats(nats_url, prefix=old.options.prefix, visibility_timeout=3.0)
            try:
                claimed = await fresh.task_queue.claim(["n"], worker_id="w-fresh", max_tasks=5)
                return before, await _ack_wait(fresh, "n"), len(claimed)
            finally:
                await fresh.close()
        finally:
            for backend in (old, new):
                await backend.close()

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        before, after, claimed = run(scenario())
    assert (before, after) == (30.0, 3.0)
    assert claimed == 1  # the task nobody held; the two held ones come back when their leases run out
