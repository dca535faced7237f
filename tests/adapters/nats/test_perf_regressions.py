"""Faults against this adapter's faster paths: the client's one pull subscription and one
request timer, the lease token a record created without one carries, the newest
checkpoint entry held in the record, under a stalled server, a takeover and many claimers.

A client's pulls share one subscription, so each pull must take only its own consumer's
deliveries: a pull that gave up on a stalled server may get its messages later, while a
pull of another consumer runs (a worker would claim a task of a node type it does not
serve). The stall makes that a race the fault loses about one run in three;
``test_replies`` checks the filter itself deterministically.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from support.aio import run
from support.nats_server import NatsServer, find_nats_server

from distributed_agents.adapters.nats.delivery import pull_ready
from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    """A nats-server of this test's own (it is stopped with SIGSTOP, which others must not see)."""
    binary = find_nats_server()
    assert binary is not None
    server = NatsServer(binary)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.cleanup()


def _stall(server: NatsServer) -> None:
    """SIGSTOP the server and wait until the kernel shows it stopped (state T): on a busy
    machine the signal can take a moment to land, and the test's premise is a stalled server."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    stat = pathlib.Path(f"/proc/{server.process.pid}/stat")
    for _ in range(400):
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
            return
        time.sleep(0.005)


def _resume(server: NatsServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


def _record(workflow_id: str, value: int) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "g", WorkflowStatus.RUNNING, {"v": value, "pad": "p" * (value % 3) * 20_000})


def _checkpoint(workflow_id: str, step: int, value: int) -> Checkpoint:
    record = _record(workflow_id, value)
    return Checkpoint(workflow_id, step, record.state, {"next": ["n"]})


def test_a_stale_holder_s_saves_after_a_takeover_are_refused_and_leave_the_history_whole(nats_url: str) -> None:
    """A creates a workflow under its lease and commits steps (checkpoints small, held in
    the record, and large, of their own key); its lease lapses and B takes it over. A's
    saves from its cached record (no read) are refused, before and after B commits, and
    the history read by a third store is exactly A's commits then B's."""

    async def scenario() -> tuple[list[str], list[Any], int]:
        a = await open_nats(nats_url)
        b = await open_nats(nats_url, prefix=a.options.prefix)
        c = await open_nats(nats_url, prefix=a.options.prefix)
        refused: list[str] = []
        try:
            made = await a.state_store.create_leased(_record("w", 0), owner="a", ttl=0.5,
                                                     checkpoint=_checkpoint("w", 0, 0))
            assert made is not None
            _, lease_a = made
            for step in range(1, 5):
                await a.state_store.save(_record("w", step).evolve(step=step), expected_version=step,
                                         checkpoint=_checkpoint("w", step, step), fencing_token=lease_a.fencing_token)
            await asyncio.sleep(0.7)  # A's lease lapses
            lease_b = await b.state_store.acquire_lease("w", "b", 30.0)
            assert lease_b is not None and lease_b.fencing_token > lease_a.fencing_token
            for attempt in range(2):
                try:  # before B commits (the grant alone fences A out), then after
                    await a.state_store.save(_record("w", 99).evolve(step=5), expected_version=5,
                                             checkpoint=_checkpoint("w", 5, 99), fencing_token=lease_a.fencing_token)
                    refused.append("accepted")
                except (FencingTokenRejectedError, VersionConflictError) as exc:
                    refused.append(type(exc).__name__)
                if attempt == 0:
                    current = await b.state_store.get("w")
                    assert current is not None and current.version == 5
                    await b.state_store.save(_record("w", 5).evolve(step=5), expected_version=5,
                                             checkpoint=_checkpoint("w", 5, 5), fencing_token=lease_b.fencing_token)
            await b.state_store.save(_record("w", 6).evolve(step=6), expected_version=6,
                                     checkpoint=_checkpoint("w", 6, 6), fencing_token=lease_b.fencing_token)
            history = [(cp.step, cp.state["v"], len(cp.state["pad"]))
                       for cp in await c.state_store.list_checkpoints("w")]
            final = await c.state_store.get("w")
            return refused, history, final.state["v"] if final else -1
        finally:
            for backend in (a, b, c):
                await backend.close()

    refused, history, final = run(scenario(), 50)
    assert "accepted" not in refused and len(refused) == 2
    assert history == [(step, step, (step % 3) * 20_000) for step in range(6, -1, -1)]
    assert final == 6


def test_many_claimers_in_one_client_take_every_task_once(nats_url: str) -> None:
    """Twenty coroutines of one client claim while tasks of two node types are enqueued:
    their pulls share the client's one pull subscription; every task is claimed exactly
    once, by a claimer of its own node type."""

    async def scenario() -> tuple[collections.Counter[str], list[tuple[str, str]], int]:
        producer = await open_nats(nats_url)
        consumer = await open_nats(nats_url, prefix=producer.options.prefix)
        queue = consumer.task_queue
        seen: collections.Counter[str] = collections.Counter()
        wrong: list[tuple[str, str]] = []
        total = 240
        try:
            async def produce() -> None:
                for start in range(0, total, 20):
                    await producer.task_queue.enqueue_many(
                        [Task(f"t{n}", "w", "n", "alpha" if n % 2 else "beta", {"n": n}) for n in range(start, start + 20)])

            async def claimer(k: int) -> None:
                types = ["alpha"] if k % 3 == 0 else ["beta"] if k % 3 == 1 else ["alpha", "beta"]
                idle = 0
                while sum(seen.values()) < total and idle < 40:
                    claims = await queue.claim(types, worker_id=f"c{k}", max_tasks=1 + k % 4, wait=0.1)
                    idle = 0 if claims else idle + 1
                    for claim in claims:
                        seen[claim.task.id] += 1
                        if claim.task.node_type not in types:
                            wrong.append((claim.task.id, ",".join(types)))
                        await queue.ack(claim, {"ok": True})

            await asyncio.gather(produce(), *(claimer(k) for k in range(20)))
            left = sum([(await queue.stats(t)).queued for t in ("alpha", "beta")])
            return seen, wrong, left
        finally:
            await consumer.close()
            await producer.close()

    seen, wrong, left = run(scenario(), 55)
    assert wrong == []
    assert seen == {f"t{n}": 1 for n in range(240)}
    assert left == 0


@pytest.mark.skipif(os.environ.get("DA_TEST_PROFILE") != "thorough",
                    reason="waits out a 5 s request timeout: DA_TEST_PROFILE=thorough")
def test_requests_under_a_stalled_server_fail_in_time_and_the_client_works_once_it_resumes(
    own_server: NatsServer,
) -> None:
    """The server is stopped (SIGSTOP) while a store read, a save and a claim wait: the
    read and the save time out while it is stopped, the claim ends (an error or its answer)
    once it resumes, and afterwards every call works on the same client; the task is
    claimed once."""

    async def scenario() -> tuple[list[str], Any, list[str]]:
        backend = await open_nats(own_server.url)
        store, queue = backend.state_store, backend.task_queue
        try:
            made = await store.create_leased(_record("w", 1), owner="o", ttl=60.0, checkpoint=_checkpoint("w", 0, 1))
            assert made is not None
            await queue.enqueue_many([Task("t1", "w", "n", "alpha", {})])
            _stall(own_server)
            try:
                calls = [asyncio.ensure_future(store.get("w")),
                         asyncio.ensure_future(queue.claim(["alpha"], worker_id="x", max_tasks=1, wait=0.5)),
                         asyncio.ensure_future(store.save(_record("w", 2), expected_version=1,
                                                          fencing_token=made[1].fencing_token))]
                # The read and the save time out (5 s, the client's one sweeping timer) while stopped.
                _, pending = await asyncio.wait([calls[0], calls[2]], timeout=15.0)
            finally:
                _resume(own_server)
            assert pending == set(), "a request to the stopped server did not time out"
            await asyncio.wait_for(asyncio.wait([calls[1]]), 30.0)  # the claim ends once it resumes
            outcomes = [type(t.exception()).__name__ if t.exception() else "ok" for t in calls]
            claimed: list[str] = [c.task.id for c in (calls[1].result() if not calls[1].exception() else [])]
            for _ in range(40):  # the claim's delivery may wait out its AckWait
                if claimed:
                    break
                claimed += [c.task.id for c in await queue.claim(["alpha"], worker_id="x", max_tasks=1, wait=1.0)]
            record = await store.get("w")
            return outcomes, record.state["v"] if record else None, claimed
        finally:
            await backend.close()

    outcomes, value, claimed = run(scenario(), 58)
    assert all(o in ("ok", "BackendUnavailableError", "BackendError") for o in outcomes), outcomes
    assert value in (1, 2)
    assert claimed == ["t1"]


@pytest.mark.skipif(os.environ.get("DA_TEST_PROFILE") != "thorough",
                    reason="restarts a nats-server and waits for the client to reconnect: DA_TEST_PROFILE=thorough")
def test_claims_waiting_through_a_server_restart_reconnect_and_take_each_task_once(own_server: NatsServer) -> None:
    """Claims wait (their pulls on the client's one pull subscription) while the server
    restarts on the same port and store: after the reconnect, tasks enqueued before and
    after the restart are each claimed exactly once by the same client."""

    async def scenario() -> collections.Counter[str]:
        producer = await open_nats(own_server.url)
        backend = await open_nats(own_server.url, prefix=producer.options.prefix)
        queue = backend.task_queue
        seen: collections.Counter[str] = collections.Counter()
        try:
            await producer.task_queue.enqueue_many([Task(f"before{n}", "w", "n", "alpha", {}) for n in range(5)])
            first = await queue.claim(["alpha"], worker_id="x", max_tasks=2, wait=0.5)
            for claim in first:
                seen[claim.task.id] += 1
                await queue.ack(claim, {})
            waiting = [asyncio.ensure_future(queue.claim(["alpha"], worker_id="x", max_tasks=1, wait=2.0))
                       for _ in range(3)]
            await asyncio.to_thread(own_server.restart)
            for outcome in await asyncio.gather(*waiting, return_exceptions=True):
                if isinstance(outcome, list):
                    for claim in outcome:
                        seen[claim.task.id] += 1
                        try:
                            await queue.ack(claim, {})
                        except Exception:
                            pass  # a lease lost in the restart: the task comes again
            while True:  # the producer reconnects too
                try:
                    await producer.task_queue.enqueue_many([Task(f"after{n}", "w", "n", "alpha", {}) for n in range(5)])
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            for _ in range(200):
                if set(seen) >= {f"before{n}" for n in range(5)} | {f"after{n}" for n in range(5)}:
                    break
                try:
                    claims = await queue.claim(["alpha"], worker_id="x", max_tasks=3, wait=0.3)
                except Exception:
                    await asyncio.sleep(0.2)
                    continue
                for claim in claims:
                    seen[claim.task.id] += 1
                    await queue.ack(claim, {})
            return seen
        finally:
            await backend.close()
            await producer.close()

    seen = run(scenario(), 58)
    # A task whose ack the restart lost may be claimed a second time; none is lost.
    assert set(seen) == {f"before{n}" for n in range(5)} | {f"after{n}" for n in range(5)}
    assert all(count == 1 for name, count in seen.items() if name.startswith("after")), seen


def test_a_pull_that_timed_out_on_a_stalled_server_does_not_hand_its_late_message_to_the_next_pull(
    own_server: NatsServer,
) -> None:
    """Consumer A has a message, consumer B fifty. The server stalls (SIGSTOP): a pull of A
    times out; a pull of B is sent; the server resumes and answers both. B's pull must
    return only B's messages: A's late message is A's delivery (handed to B's claimer it
    would be claimed as a task of B's node type, with B's AckWait)."""

    async def scenario() -> tuple[list[str], list[str]]:
        from nats.js import api

        nc = await nats.connect(own_server.url)
        js = nc.jetstream()
        stream = f"PULLS{uuid.uuid4().hex[:8]}"
        try:
            await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream}.>"]))
            for name in ("a", "b"):
                await js.add_consumer(stream, api.ConsumerConfig(
                    durable_name=name, filter_subject=f"{stream}.{name}", ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=2.0))
            await js.publish(f"{stream}.a", b"for-a")
            for n in range(50):
                await js.publish(f"{stream}.b", b"for-b %d" % n)
            _stall(own_server)
            try:
                try:  # times out (an error, or nothing returned): the server is stopped
                    assert await pull_ready(nc, stream, "a", 1, timeout=0.5) == []
                except nats.errors.TimeoutError:
                    pass
                second = asyncio.ensure_future(pull_ready(nc, stream, "b", 100, timeout=5.0))
                await asyncio.sleep(0.2)  # its request is written (and held) before the server resumes
            finally:
                _resume(own_server)
            got_b = [m.subject for m in await second]
            got_a: list[str] = []  # A's message is A's: delivered again to a pull of A after its AckWait
            for _ in range(40):
                got_a = [m.subject for m in await pull_ready(nc, stream, "a", 1)]
                if got_a:
                    break
                await asyncio.sleep(0.25)
            return got_b, got_a
        finally:
            await nc.close()

    got_b, got_a = run(scenario(), 55)
    assert [s for s in got_b if not s.endswith(".b")] == [], f"a pull of consumer b returned {got_b}"
    assert len(got_b) == 50 and len(got_a) == 1
