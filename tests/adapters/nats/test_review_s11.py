"""Review of this session's NATS task-queue changes, on a real nats-server.

afda711: the done events of acks one reply read stored go out as one message (a JSON
array). 452a9af: cancel, requeue and the claim's decisions to ack a message away read the
record from the stream's leader.

What must hold: a done message that is malformed in any way (a broken or hostile array, an
item whose result cannot be read) never stops the queue's reader, and the events after it
still wake their waiters with their own results (no poll needed); a cancel racing claims
either wins (the task never runs) or loses to exactly one claim, never both, never neither.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats
import pytest
from support.aio import run

from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats, settle, through_elections

pytestmark = pytest.mark.timeout(60)

_HOSTILE = [
    b"[",
    b"[" * 5000,
    b"[]",
    b"[[[]]]",
    b"\xff\xfe[",
    b'[{"id": "ghost", "result": {"task_id": "ghost", "status": "succeeded", "attempts": 1e999}}]',
    b'[{"id": "ghost", "result": {"task_id": "ghost", "status": "succeeded", "finished_at": "soon"}}]',
    b'[{"id": ["t0"]}, {"id": null}, "t1", 7, {"id": "ghost", "result": []}]',
    b'[{"id": "ghost"}' + b',{"id": "ghost"}' * 3000 + b"]",
]


def test_hostile_done_messages_stop_nothing_and_later_batched_events_still_wake_their_waiters(nats_url: str) -> None:
    """Hostile messages on the done subject first, then 12 tasks claimed together and acked in
    one pass by another connection: a producer whose result poll is 30 s gets every result
    (each its own output) from the events alone, within 10 s."""

    async def scenario() -> dict[str, object]:
        prefix = f"hd{uuid.uuid4().hex[:8]}"
        producer, worker = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        hostile = await nats.connect(nats_url)
        try:
            producer.task_queue.result_poll = 30.0  # type: ignore[attr-defined]
            tasks = [Task(f"t{i}", "wf", f"n{i}", "alpha", {"i": i}) for i in range(12)]
            assert await producer.task_queue.enqueue_many(tasks) == [True] * 12
            subject = producer.connection.names.done_subject
            for payload in _HOSTILE:
                await hostile.publish(subject, payload)
            await hostile.flush()
            claims = await worker.task_queue.claim(["alpha"], worker_id="w", max_tasks=12)
            assert len(claims) == 12
            waiting = asyncio.ensure_future(producer.task_queue.wait_results([t.id for t in tasks], timeout=10))
            await asyncio.sleep(0.05)
            await asyncio.gather(*(worker.task_queue.ack(c, {"id": c.task.id, "i": c.task.payload["i"]})
                                   for c in claims))
            results = dict(await waiting)
            # The port returns what is finished once the first is: under load the acks' done
            # events come in several messages, so the rest are waited for too (each wait bounded).
            for _ in range(10):
                missing = [t.id for t in tasks if t.id not in results]
                if not missing:
                    break
                results.update(await producer.task_queue.wait_results(missing, timeout=10))
            return {k: r.output for k, r in results.items()}
        finally:
            await hostile.close()
            await worker.close()
            await producer.close()

    outputs = run(scenario(), 40)
    assert outputs == {f"t{i}": {"id": f"t{i}", "i": i} for i in range(12)}


def test_cancels_racing_claims_leave_each_task_cancelled_or_claimed_once_never_both(nats_url: str) -> None:
    """40 tasks; two claimers (own connections) claim and ack in a loop while a third cancels
    every task: each task is either cancelled (cancel said True, nobody ever claimed it) or
    claimed exactly once (cancel said False) and succeeded."""

    async def scenario() -> tuple[set[str], list[str], dict[str, str]]:
        prefix = f"cr{uuid.uuid4().hex[:8]}"
        producer = await open_nats(nats_url, prefix=prefix)
        claimers = [await open_nats(nats_url, prefix=prefix) for _ in range(2)]
        claimed: list[str] = []
        stop = asyncio.Event()

        async def claim_loop(backend) -> None:  # type: ignore[no-untyped-def]
            while not stop.is_set():
                for c in await backend.task_queue.claim(["beta"], worker_id=f"w{id(backend)}", max_tasks=3,
                                                        wait=0.05):
                    claimed.append(c.task.id)
                    try:
                        await backend.task_queue.ack(c, {"by": "claimer"})
                    except LeaseLostError:
                        claimed.append(f"lost:{c.task.id}")

        try:
            ids = [f"c{i}" for i in range(40)]
            await producer.task_queue.enqueue_many([Task(i, "wf", "n", "beta", {}) for i in ids])
            loops = [asyncio.ensure_future(claim_loop(b)) for b in claimers]
            cancelled = set()
            for task_id in ids:
                if await producer.task_queue.cancel(task_id):
                    cancelled.add(task_id)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*loops)
            results = await producer.task_queue.wait_results([i for i in ids if i not in cancelled], timeout=5)
            return cancelled, claimed, {k: r.status for k, r in results.items()}
        finally:
            for b in claimers:
                await b.close()
            await producer.close()

    cancelled, claimed, statuses = run(scenario(), 50)
    ids = {f"c{i}" for i in range(40)}
    assert not any(c.startswith("lost:") for c in claimed), claimed
    assert len(claimed) == len(set(claimed)), f"claimed twice: {sorted(claimed)}"
    assert not (cancelled & set(claimed)), f"cancelled and run: {sorted(cancelled & set(claimed))}"
    assert cancelled | set(claimed) == ids, f"neither cancelled nor run: {sorted(ids - cancelled - set(claimed))}"
    assert statuses == {i: "succeeded" for i in claimed}


@pytest.mark.timeout(120)
def test_a_task_nacked_while_a_replica_was_down_is_claimed_through_that_replica_once_it_is_back() -> None:
    """Three routed servers, streams with three replicas. Server n2 is SIGKILLed; through n0
    the task is claimed and nacked three times (its record moves on without n2); n2 is
    started again and a claimer that knows only n2 claims at once: it gets the task on its
    fourth attempt with the three errors (a direct get answered by the replica just back
    may hold the record from before; the claim must neither ack the message away on it nor
    leave the task to AckWait), and the ack lands: one succeeded result, attempts 4."""
    from support.nats_cluster import NatsCluster
    from support.nats_server import find_nats_server

    binary = find_nats_server()
    assert binary is not None, "no nats-server binary"
    cluster = NatsCluster(binary)

    async def retried(what, *args, **kwargs):  # type: ignore[no-untyped-def]
        """``what(...)`` again while the cluster elects leaders after a kill or restart (up to 30 s)."""
        from distributed_agents.core.errors import BackendUnavailableError

        for _ in range(60):
            try:
                return await what(*args, **kwargs)
            except BackendUnavailableError:
                await asyncio.sleep(0.5)
        return await what(*args, **kwargs)

    async def scenario(prefix: str) -> tuple[list[int], list[tuple[str, int]], dict[str, Any]]:
        writer = await open_nats(cluster.server(0).url + "?replicas=3", prefix=prefix, visibility_timeout=60)
        attempts: list[int] = []
        got: list[tuple[str, int]] = []
        try:
            await settle(writer, ("gamma",))  # the streams and consumer just made answer before n2 goes
            await writer.task_queue.enqueue_many([Task(i, "wf", "n", "gamma", {}, max_attempts=10) for i in "tu"])
            cluster.kill(2)
            for k in range(3):
                seen = 0
                while seen < 2:
                    claims = await retried(writer.task_queue.claim, ["gamma"], worker_id="a", max_tasks=2, wait=5)
                    for claim in claims:
                        attempts.append(claim.attempt)
                        # (A retried nack whose first try landed finds its lease gone: the attempts tell.)
                        await through_elections(lambda: writer.task_queue.nack(claim, f"error {k}"),  # noqa: B023
                                                landed=(LeaseLostError,))
                    seen += len(claims)
            cluster.restart(2)
            claimer = None
            for _ in range(60):  # until JetStream answers through n2 again
                try:
                    claimer = await open_nats(cluster.server(2).url + "?replicas=3", prefix=prefix,
                                              visibility_timeout=60)
                    break
                except Exception:
                    await asyncio.sleep(0.5)
            assert claimer is not None, "n2 did not come back"
            try:
                for _ in range(6):
                    for claim in await retried(claimer.task_queue.claim, ["gamma"], worker_id="b", max_tasks=2,
                                               wait=5):
                        got.append((claim.task.id, claim.attempt))
                        await through_elections(lambda: claimer.task_queue.ack(claim, {"by": "b"}),  # noqa: B023
                                                landed=(LeaseLostError,))
                    if len(got) >= 2:
                        break
            finally:
                await claimer.close()
            results = await writer.task_queue.wait_results(["t", "u"], timeout=10)
            return attempts, got, {k: (r.status, r.attempts, r.output) for k, r in results.items()}
        finally:
            await writer.close()

    try:
        cluster.start()
        attempts, got, results = run(scenario(f"rs{uuid.uuid4().hex[:8]}"), 100)
    finally:
        cluster.cleanup()
    assert sorted(attempts) == [1, 1, 2, 2, 3, 3], attempts
    assert sorted(got) == [("t", 4), ("u", 4)], got
    assert results == {"t": ("succeeded", 4, {"by": "b"}), "u": ("succeeded", 4, {"by": "b"})}, results
