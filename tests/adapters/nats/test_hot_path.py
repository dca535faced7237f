"""The per-task path of a NATS worker, made cheaper without changing what it does: done
events of acks settled together go out as one message; subjects are checked as nats-py
checks them without a regex; messages of ``Direct`` subscriptions are built as nats-py
builds them; leases claimed together share one timer.

On a real nats-server: the messages on the done subject are read by a plain client, the
waiters are the queue's own (``wait_results``); nothing is timed."""

from __future__ import annotations

import asyncio
import logging
import uuid

import nats
import nats.aio.client
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats import replies
from distributed_agents.adapters.nats.done_events import BATCH_LIMIT, DoneBatch, parse_done_events
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task, TaskResult

from .conftest import open_nats
from distributed_agents.adapters.nats.message_bus import flush_in_order

pytestmark = pytest.mark.timeout(120)


def test_acks_settled_together_announce_their_results_in_one_message(nats_url: str) -> None:
    """Ten tasks claimed together and acked in one event-loop pass: one done message (an
    array of ten events, each with its result), and a producer's wait_results gets every
    result from it without reading the records."""
    async def scenario() -> None:
        prefix = f"db{uuid.uuid4().hex[:8]}"
        producer, worker = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        listener = await nats.connect(nats_url)
        try:
            seen: list[bytes] = []
            sub = await listener.subscribe(producer.connection.names.done_subject, cb=_collect(seen))
            await flush_in_order(listener)
            tasks = [Task(f"t{i}", "wf", f"n{i}", "alpha", {}) for i in range(10)]
            assert await producer.task_queue.enqueue_many(tasks) == [True] * 10
            claims = await worker.task_queue.claim(["alpha"], worker_id="w", max_tasks=10)
            assert len(claims) == 10
            await asyncio.gather(*(worker.task_queue.ack(c, {"i": c.task.id}) for c in claims))
            results = await producer.task_queue.wait_results([t.id for t in tasks], timeout=10)
            assert {k: r.output for k, r in results.items()} == {t.id: {"i": t.id} for t in tasks}
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                if sum(len(parse_done_events(data)) for data in seen) >= 10:
                    break
                await asyncio.sleep(0.05)
            events = [event for data in seen for event in parse_done_events(data)]
            assert sorted(task_id for task_id, _ in events) == sorted(t.id for t in tasks)
            assert all(isinstance(result, TaskResult) and result.output == {"i": task_id} for task_id, result in events)
            assert len(seen) < 10, f"{len(seen)} done messages for 10 acks made together"
            await sub.unsubscribe()
        finally:
            await listener.close()
            await worker.close()
            await producer.close()

    run(scenario(), 60)


def _collect(into: list[bytes]):  # type: ignore[no-untyped-def]
    async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
        into.append(msg.data)
    return on_message


def test_a_batched_done_event_wakes_every_waiter_it_names(nats_url: str) -> None:
    """An array event published by hand (as ``DoneBatch`` writes it) is read by a queue's done
    events: each id's waiter wakes with its result; items that are not events are skipped;
    an object and a bare id (older publishers) are still understood."""
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        other = await nats.connect(nats_url)
        try:
            done = backend.task_queue._done
            await done.ensure()
            for task_id in ("a", "b", "c", "d"):
                done.expect(task_id)
            result = TaskResult("a", "succeeded", output={"x": 1}).to_dict()
            subject = backend.connection.names.done_subject
            import json
            await other.publish(subject, json.dumps([{"id": "a", "result": result}, 5, {"id": 7}, {"id": "b"},
                                                    {"id": "e", "result": {"bad": 1}}]).encode())
            await other.publish(subject, json.dumps({"id": "c"}).encode())
            await other.publish(subject, b"d")
            await flush_in_order(other)
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                found, bare = done.take(["a", "b", "c", "d"])
                if found or bare:
                    break
                await asyncio.sleep(0.02)
            got: dict[str, object] = {}
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                got.update({k: v.output for k, v in found.items()})
                got.update({k: None for k in bare})
                if len(got) == 4:
                    break
                await asyncio.sleep(0.02)
                found, bare = done.take(["a", "b", "c", "d"])
            assert got == {"a": {"x": 1}, "b": None, "c": None, "d": None}
        finally:
            await other.close()
            await backend.close()

    run(scenario(), 60)


@given(st.lists(st.tuples(st.text(max_size=12), st.booleans()), max_size=12))
def test_parse_done_events_reads_each_item_of_an_array(items: list[tuple[str, bool]]) -> None:
    """Each event of an array (with or without its result) comes back, in order; a single object
    is one event."""
    import json

    events = [{"id": task_id, **({"result": TaskResult(task_id, "succeeded", output=None).to_dict()} if inline else {})}
              for task_id, inline in items]
    parsed = parse_done_events(json.dumps(events).encode())
    assert [(task_id, result is not None) for task_id, result in parsed] == items
    for task_id, _ in items:
        assert parse_done_events(json.dumps({"id": task_id}).encode()) == [(task_id, None)]


def test_a_done_batch_splits_at_its_limit_and_keeps_order(nats_url: str) -> None:
    """Events over ``BATCH_LIMIT`` bytes together go out in several messages, each within it,
    all events once, in order; a lone event goes out as it is (an object, not an array)."""
    async def scenario() -> None:
        nc, listener = await nats.connect(nats_url), await nats.connect(nats_url)
        try:
            subject = f"done{uuid.uuid4().hex[:8]}"
            seen: list[bytes] = []
            await listener.subscribe(subject, cb=_collect(seen))
            await flush_in_order(listener)
            batch = DoneBatch(nc, subject)
            big = [b'{"id":"t%d","result":{"output":"%s"}}' % (i, b"x" * 20_000) for i in range(9)]
            for event in big:
                batch.add(event)
            await asyncio.sleep(0)  # the pass ends: published
            batch.add(b'{"id":"lone"}')
            await asyncio.sleep(0)
            await flush_in_order(nc)
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                if len(seen) >= 2 and b"lone" in seen[-1]:
                    break
                await asyncio.sleep(0.02)
            assert all(len(data) <= BATCH_LIMIT for data in seen)
            assert len(seen) > 2
            assert [task_id for data in seen[:-1] for task_id, _ in parse_done_events(data)] == [f"t{i}" for i in range(9)]
            assert seen[-1] == b'{"id":"lone"}'
        finally:
            await listener.close()
            await nc.close()

    run(scenario(), 30)


def test_a_done_batch_that_cannot_be_published_is_logged_not_raised(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Done events are best effort (waiters poll): a closed client when the pass ends is a
    warning naming how many were dropped; a later add on a new loop publishes again."""
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        batch = DoneBatch(nc, "done.x")
        await nc.close()
        batch.add(b'{"id":"a"}')
        batch.add(b'{"id":"b"}')
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="distributed_agents.adapters.nats"):
        run(scenario(), 30)
    assert any("2 done event(s) not published" in r.getMessage() for r in caplog.records), caplog.text


def test_events_left_by_a_stopped_loop_go_out_with_the_next_loops(nats_url: str) -> None:
    """An event added in a loop that stopped before its pass ended is not stranded: the next
    add, in another loop, publishes both."""
    subject = f"done{uuid.uuid4().hex[:8]}"
    batch = DoneBatch(None, subject)  # its client is set below, in the loop that publishes
    loop = asyncio.new_event_loop()

    def add_then_stop() -> None:
        batch.add(b'{"id":"first"}')
        loop.stop()  # this pass's batch of callbacks ends the loop: the flush it scheduled never runs

    try:
        loop.call_soon(add_then_stop)
        loop.run_forever()
    finally:
        loop.close()

    async def scenario() -> None:
        nc, listener = await nats.connect(nats_url), await nats.connect(nats_url)
        try:
            seen: list[bytes] = []
            await listener.subscribe(subject, cb=_collect(seen))
            await flush_in_order(listener)
            batch.nc = nc
            batch.add(b'{"id":"second"}')
            await asyncio.sleep(0)
            await flush_in_order(nc)
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert [task_id for data in seen for task_id, _ in parse_done_events(data)] == ["first", "second"]
        finally:
            await listener.close()
            await nc.close()

    run(scenario(), 30)


_CLOSED: list[nats.aio.client.Client] = []


def _closed_client(url: str) -> nats.aio.client.Client:
    """A real client, connected once and closed: ``send`` checks the subject before the client's state."""
    if not _CLOSED:
        async def closed() -> nats.aio.client.Client:
            nc = await nats.connect(url)
            await nc.close()
            return nc
        _CLOSED.append(run(closed(), 30))
    return _CLOSED[0]


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("ab. \t\r\n\x0b\x0c\u00a0_$>*"), min_size=0, max_size=12),
       st.text(st.sampled_from("ab. \t\r\n\x0b_"), max_size=8))
def test_send_refuses_a_subject_or_reply_exactly_when_nats_py_does(nats_url: str, subject: str, reply: str) -> None:
    """``send``'s subject check (substring tests) refuses what nats-py's regex refuses (space, tab,
    CR, LF, an empty subject) and nothing else (other whitespace is the server's to judge)."""
    import re

    refused = not subject or re.search(r"[ \t\r\n]", subject) is not None or (
        bool(reply) and re.search(r"[ \t\r\n]", reply) is not None)
    nc = _closed_client(nats_url)
    with pytest.raises(nats.errors.BadSubjectError if refused else nats.errors.ConnectionClosedError):
        replies.send(nc, subject, b"", reply)


def test_messages_of_direct_subscriptions_are_built_as_nats_py_builds_them(nats_url: str) -> None:
    """``read_directly`` builds the installed nats-py's ``Msg`` with positional arguments (its
    fields in the order it knows): the same message as with keywords; a class with other
    fields, or another order, is built with keywords."""
    import dataclasses

    from nats.aio.msg import Msg

    assert replies._positional_msg(Msg)
    made = Msg(None, "s.x", "r.1", b"d", {"A": "b"}, None, False, 7)  # type: ignore[arg-type]
    assert made == Msg(subject="s.x", reply="r.1", data=b"d", headers={"A": "b"}, _client=None, _sid=7)  # type: ignore[arg-type]

    def message_class(names: list[str], acked: bool) -> type:
        defaults = {"_ackd": acked, "data": b"", "subject": "", "reply": ""}
        return dataclasses.make_dataclass("M", [(name, object, dataclasses.field(default=defaults.get(name)))
                                                for name in names])

    fields = list(replies._MSG_FIELDS)
    Reordered = message_class([fields[1], fields[0], *fields[2:]], False)
    Acked = message_class(fields, True)
    assert replies._positional_msg(message_class(fields, False))
    assert not replies._positional_msg(Reordered)
    assert not replies._positional_msg(Acked)
    assert not replies._positional_msg(object)

    async def scenario() -> None:
        nc, other = await nats.connect(nats_url), await nats.connect(nats_url)
        try:
            replies.read_directly(nc)
            got: list[Msg] = []
            await nc.subscribe("positional.>", future=replies.Direct(got.append))
            await flush_in_order(nc)
            await other.publish("positional.a", b"x", reply="back.1", headers={"H": "v"})
            await flush_in_order(other)
            for _ in range(500):  # up to 10 s: a loaded machine delays delivery, a passing run does not wait
                if got:
                    break
                await asyncio.sleep(0.02)
            [msg] = got
            assert type(msg) is Msg and (msg.subject, msg.reply, msg.data, msg.headers) == (
                "positional.a", "back.1", b"x", {"H": "v"})
            assert msg._client is nc and msg._sid is not None and msg._metadata is None and msg._ackd is False
        finally:
            await other.close()
            await nc.close()

    run(scenario(), 30)


def _tasks(prefix: str, count: int) -> list[Task]:
    return [Task(f"{prefix}{i}", "wf", "n", "n", {}) for i in range(count)]


def test_leases_claimed_together_are_kept_past_ack_wait_and_end_at_their_deadline(nats_url: str) -> None:
    """Four tasks claimed together share one timer: one settled early leaves the others kept
    past AckWait (no other claimer gets them); leases shorter than AckWait claimed together
    all expire on time (another claimer gets each as its second attempt)."""
    async def scenario() -> None:
        backend = await open_nats(nats_url, visibility_timeout=1.0)
        queue = backend.task_queue
        try:
            assert await queue.enqueue_many(_tasks("long", 4)) == [True] * 4
            held = await queue.claim(["n"], worker_id="w", max_tasks=4, lease_seconds=3.0)
            assert len(held) == 4
            assert len({id(queue._held[c.lease_id].timer) for c in held}) == 1  # one timer for the four
            await queue.ack(held[0], {"early": True})
            await asyncio.sleep(2.0)  # past AckWait: in_progress() keeps the other three
            assert await queue.claim(["n"], worker_id="x", max_tasks=4) == []
            for claim in held[1:]:
                await queue.ack(claim, {"kept": True})
            results = await queue.wait_results([c.task.id for c in held], timeout=10)
            assert len(results) == 4 and all(r.status == "succeeded" for r in results.values())

            assert await queue.enqueue_many(_tasks("short", 3)) == [True] * 3
            short = await queue.claim(["n"], worker_id="w", max_tasks=3, lease_seconds=0.3)
            assert len(short) == 3
            again: list = []  # type: ignore[type-arg]
            for _ in range(30):
                again += await queue.claim(["n"], worker_id="x", max_tasks=3, wait=0.2)
                if len(again) == 3:
                    break
            assert sorted(c.task.id for c in again) == sorted(c.task.id for c in short)
            assert all(c.attempt == 2 for c in again)
            for claim in short:
                with pytest.raises(LeaseLostError):
                    await queue.extend(claim)
            for claim in again:
                await queue.ack(claim, None)
        finally:
            await backend.close()

    run(scenario(), 60)


def test_a_shared_timer_is_cancelled_once_every_lease_it_arms_is_settled(nats_url: str) -> None:
    """Leases claimed together and all settled before their first interval: the loop keeps no
    live timer of theirs (cancelled), and no keeper starts; settling only some keeps it live."""
    async def scenario() -> None:
        backend = await open_nats(nats_url, visibility_timeout=30.0)
        queue = backend.task_queue
        try:
            assert await queue.enqueue_many(_tasks("t", 3)) == [True] * 3
            claims = await queue.claim(["n"], worker_id="w", max_tasks=3)
            timer = queue._held[claims[0].lease_id].timer
            assert timer is not None and timer.handle is not None  # type: ignore[union-attr]
            await queue.ack(claims[0], None)
            await queue.ack(claims[1], None)
            assert not timer.handle.cancelled()  # type: ignore[union-attr]
            await queue.ack(claims[2], None)
            assert timer.handle.cancelled()  # type: ignore[union-attr]
            assert queue._held == {}
        finally:
            await backend.close()

    run(scenario(), 30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30) | st.sampled_from(['"state":"claimed"', '"lease":"$JS.ACK.x.y.1.2.3.4.0"', "}"]),
                max_size=4),
       st.text(max_size=12) | st.just('"state":"claimed"'), st.sampled_from(["$JS.ACK.x.y.1.2.3.4.0", "lease\"q"]),
       st.booleans(), st.floats(0, 1e10, allow_nan=False))
def test_an_ack_edits_the_claims_bytes_into_the_record_encoding_would_write(
        errors: list[str], worker: str, lease_id: str, had_expiry: bool, expires_at: float) -> None:
    """``_done_bytes``: the record an ack stores, made from the claim's stored bytes, decodes to
    (and is byte for byte) what encoding ``{**record, **change, "result": ...}`` writes, whatever the record's
    strings hold (text like a member, braces); or it is None and the caller encodes."""
    from distributed_agents.adapters.nats.task_queue import _done_bytes, _Held, _new_record
    from distributed_agents.core.codec import decode, encode

    record = {**_new_record("t", "n", 0, None, seq=3), "state": "claimed", "attempt": 1, "errors": errors,
              "lease": lease_id, "worker": worker, "deadline": 1.5}
    if had_expiry:
        record["expires_at"] = 2.5
    held = _Held(record, 7, 30.0, raw=encode(record))
    change = {"state": "done", "lease": "", "expires_at": expires_at}
    raw_result = encode(TaskResult("t", "succeeded", output={"o": [1, "}"]}).to_dict())
    made = _done_bytes(held, lease_id, expires_at, raw_result)
    expected = {**record, **change, "result": decode(raw_result)}
    if made is None:
        assert had_expiry or any('"state":"claimed"' in e or "lease" in e for e in errors) or "claimed" in worker \
            or '"' in lease_id
        return
    assert not had_expiry
    assert decode(made) == expected and made == encode(expected)
    assert _done_bytes(_Held(record, 7, 30.0), lease_id, expires_at, raw_result) is None  # no bytes kept
