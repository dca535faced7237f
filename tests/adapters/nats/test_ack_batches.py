"""Acks of one event-loop pass go out together (``NatsTaskQueue._send_acks``): one batch of
requests behind one waiter, each ack still settled on its own (its result, its stats, its
error); of their ``+ACK``s only the last of each consumer asks for the server's answer, and
once the acks returned no process counts their messages in flight. Counted by spying on
``replies.chain_now`` and on the commands written to the socket (both still send), never timed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.aio import run
from support.nats_commands import watch_commands

from distributed_agents.adapters.nats import kv, replies
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def task(task_id: str, node_type: str = "n", priority: int = 0) -> Task:
    return Task(task_id, "wf", "n", node_type, {}, priority=priority)


class AckCommands:
    """The ``+ACK`` commands ``backend``'s client writes to its socket, by consumer (the
    ``$JS.ACK.<stream>.<consumer>.…`` subject's fourth token): ``confirmed`` (with a reply
    subject) and ``plain``."""

    def __init__(self, backend: NatsBackend) -> None:
        self.confirmed: list[str] = []
        self.plain: list[str] = []
        watch_commands(backend.connection.nc, self._count)

    def _count(self, op: str, subject: str, reply: str, payload: bytes) -> None:
        if subject.startswith("$JS.ACK.") and payload.endswith(b"+ACK"):
            (self.confirmed if reply else self.plain).append(subject.split(".")[3])


async def _lose_cas(backend: NatsBackend, task_id: str) -> None:
    """Rewrite ``task_id``'s record behind the queue's back (same content, a new revision), so
    the CAS its holder's ack makes against the revision it remembers loses."""
    queue = backend.task_queue
    entry = await kv.get(queue._tasks, token(task_id))
    assert await kv.cas(backend.connection.js, queue._tasks, token(task_id), entry.value, last=entry.revision)


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
            # The three chained CASes (the big one's never sent: the newest +ACK its consumer got
            # plain is then sent again as a request of its own, so none of a pass goes unconfirmed).
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


def test_only_the_last_ack_of_each_consumer_in_a_pass_is_confirmed_and_another_process_sees_none_in_flight(
        nats_url: str) -> None:
    """20 passes of 12 tasks over two node types (two consumers), each pass's acks made
    together: every task is acked once, one +ACK per consumer and pass asks for an answer,
    and right after each pass's acks returned another connection's ``stats`` counts none in
    flight and nothing queued (the plain acks before it were taken: a consumer takes its
    acks in order)."""

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        observer = await open_nats(nats_url, prefix=backend.connection.names.prefix)
        queue = backend.task_queue
        try:
            meter = AckCommands(backend)
            for round_ in range(20):
                tasks = [task(f"r{round_}-{i}", ("n", "m")[i % 2]) for i in range(12)]
                assert await queue.enqueue_many(tasks) == [True] * 12
                claims: list[Any] = []
                while len(claims) < 12:
                    got = await queue.claim(["n", "m"], worker_id="w", max_tasks=12, wait=2)
                    assert got, "a claim came back empty with tasks queued"
                    claims += got
                meter.confirmed.clear()
                meter.plain.clear()
                await asyncio.gather(*(queue.ack(c, {"i": c.task.id}) for c in claims))
                assert sorted(meter.confirmed) == sorted({c.lease_id.split(".")[3] for c in claims}), meter.confirmed
                assert len(meter.plain) + len(meter.confirmed) == 12, (meter.plain, meter.confirmed)
                seen = [await observer.task_queue.stats(t) for t in ("n", "m")]
                assert [(s.queued, s.in_flight) for s in seen] == [(0, 0), (0, 0)], (round_, seen)
            again = await queue.claim(["n", "m"], worker_id="w2", max_tasks=12, wait=0.3)
            assert again == []
        finally:
            await observer.close()
            await backend.close()

    run(scenario(), 60)


@pytest.mark.parametrize("lost", ["first", "middle", "last", "all"])
def test_acks_whose_cas_lost_leave_the_others_confirmed(nats_url: str, lost: str) -> None:
    """Five tasks of one consumer acked together, the records of some rewritten behind the
    queue's back first (same content, new revision: their chained CAS loses and the ack
    re-reads and commits): whichever they are, every ack returns, every result is stored,
    and right after, another connection counts none in flight; nothing comes back after
    AckWait."""

    async def scenario() -> None:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        observer = await open_nats(nats_url, prefix=backend.connection.names.prefix)
        queue = backend.task_queue
        try:
            ids = [f"c{i}" for i in range(5)]
            assert await queue.enqueue_many([task(i) for i in ids]) == [True] * 5
            claims = await queue.claim(["n"], worker_id="w", max_tasks=5, wait=2)
            assert len(claims) == 5
            picked = {"first": claims[:1], "middle": claims[2:3], "last": claims[-1:], "all": claims}[lost]
            for claim in picked:
                await _lose_cas(backend, claim.task.id)
            await asyncio.gather(*(queue.ack(c, {"id": c.task.id}) for c in claims))
            stats = await observer.task_queue.stats("n")
            assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), stats
            results = await queue.wait_results(ids, timeout=5)
            assert {i: r.output for i, r in results.items()} == {i: {"id": i} for i in ids}
            await asyncio.sleep(1.5)
            assert await queue.claim(["n"], worker_id="w2", max_tasks=5, wait=0.3) == []
        finally:
            await observer.close()
            await backend.close()

    run(scenario(), 60)


@pytest.mark.parametrize("last_cas", ["stored", "lost"])
def test_when_a_consumer_does_not_confirm_every_ack_of_the_pass_says_so(
        nats_url: str, last_cas: str, caplog: pytest.LogCaptureFixture) -> None:
    """The task consumer is deleted after the claim, so nothing answers the pass's confirming
    +ACK (sent with the last stored CAS, or sent again once the last CAS lost): every ack
    still returns (the results are stored), and each one whose +ACK went out plain logs that
    it was not confirmed, as the confirmed one does; nothing of the pass is left in the inbox."""

    async def scenario() -> tuple[list[Any], list[str], dict[str, Any]]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            ids = [f"u{i}" for i in range(3)]
            assert await queue.enqueue_many([task(i) for i in ids]) == [True] * 3
            claims = await queue.claim(["n"], worker_id="w", max_tasks=3, wait=2)
            assert len(claims) == 3
            if last_cas == "lost":
                await _lose_cas(backend, claims[-1].task.id)
            names = backend.connection.names
            await backend.connection.js.delete_consumer(names.task_stream, claims[0].lease_id.split(".")[3])
            inbox = replies._INBOXES[backend.connection.nc]
            with caplog.at_level("WARNING", logger="distributed_agents.adapters.nats"):
                outcomes = await asyncio.gather(*(queue.ack(c, {"id": c.task.id}) for c in claims),
                                                return_exceptions=True)
            warned = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
            results = await queue.wait_results(ids, timeout=5)
            assert inbox.waiting == {} and inbox.deadlines == {}
            return outcomes, warned, {i: r.output for i, r in results.items()}
        finally:
            await backend.close()

    outcomes, warned, results = run(scenario(), 60)
    assert outcomes == [None, None, None]
    assert results == {f"u{i}": {"id": f"u{i}"} for i in range(3)}
    # Every ack of the pass logged it (the lost CAS's ack confirms on its own path).
    assert sorted(w.split("'")[1] for w in warned) == ["u0", "u1", "u2"], warned


def test_acks_whose_callers_all_went_away_leave_nothing_in_the_inbox(nats_url: str) -> None:
    """Every ack of a pass cancelled while its batch is on its way: the batch still completes
    and its reply tokens are closed (no waiting handler, no deadline left)."""

    async def scenario() -> tuple[int, int, Any]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            ids = [f"a{i}" for i in range(4)]
            assert await queue.enqueue_many([task(i) for i in ids]) == [True] * 4
            claims = await queue.claim(["n"], worker_id="w", max_tasks=4, wait=2)
            inbox = replies._INBOXES[backend.connection.nc]
            acks = [asyncio.ensure_future(queue.ack(c, {"v": 1})) for c in claims]
            await asyncio.sleep(0)  # all joined the batch
            for ack in acks:
                ack.cancel()
            await asyncio.gather(*acks, return_exceptions=True)
            for _ in range(100):
                if not inbox.waiting and not inbox.deadlines:
                    break
                await asyncio.sleep(0.05)
            return len(inbox.waiting), len(inbox.deadlines), await queue.stats("n")
        finally:
            await backend.close()

    waiting, deadlines, stats = run(scenario(), 30)
    assert (waiting, deadlines) == (0, 0)
    assert (stats.queued, stats.in_flight) == (0, 0), stats
