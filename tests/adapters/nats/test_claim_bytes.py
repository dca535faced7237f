"""A first claim's record is written by editing the bytes the claim read (``_claimed_bytes``)
instead of encoding the record again: for a record as ``_new_record`` writes it, the edit is
exactly ``encode`` of the claimed record; for any other bytes it decodes to the claimed
record or is not made (the claim encodes).

Compared with ``encode`` for any id, lease, worker and deadline (hypothesis); on a real
nats-server, the records of claimed tasks are read back, then acked from them."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token
from distributed_agents.adapters.nats.task_queue import (
    _claimed_bytes,
    _digest,
    _first_claim_bytes,
    _new_record,
    _new_record_bytes,
    _new_record_head,
)
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task, task_to_dict

pytestmark = pytest.mark.timeout(120)

_TEXT = st.text(min_size=1, max_size=30) | st.sampled_from(['"seq":', ',"seq":1', '\\"', "ünï", "\x00\n", "}"])
_LEASES = st.builds(lambda p, d, s: f"$JS.ACK.{p}_TASKS.alpha-p0.{d}.{s}.{s}.1796059978967162349.0",
                    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), st.integers(1, 5), st.integers(1, 2**40))


def _claimed(record: dict[str, Any], seq: int, lease_id: str, worker_id: str, deadline: float) -> dict[str, Any]:
    """What ``_take_queued`` makes of a queued ``record`` on its first claim."""
    return {**record, "seq": seq, "state": "claimed", "attempt": int(record["attempt"]) + 1,
            "errors": list(record.get("errors", [])), "lease": lease_id, "worker": worker_id, "deadline": deadline}


@given(task_id=_TEXT, node_type=_TEXT, priority=st.integers(-10**6, 10**6), max_attempts=st.none() | st.integers(1, 99),
       stored_seq=st.sampled_from([0, 1]) | st.integers(0, 2**50), lease_id=_LEASES, worker_id=_TEXT,
       deadline=st.floats(0, 4e9, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_a_new_records_claim_is_its_encoding(task_id: str, node_type: str, priority: int, max_attempts: int | None,
                                             stored_seq: int, lease_id: str, worker_id: str, deadline: float) -> None:
    record = _new_record(task_id, node_type, priority, max_attempts, seq=stored_seq)
    seq = stored_seq or 7
    made = _claimed_bytes(encode(record), record, seq, lease_id, encode(worker_id), deadline)
    assert made == encode(_claimed(record, seq, lease_id, worker_id, deadline))


@given(task_id=_TEXT, node_type=_TEXT, priority=st.integers(-10**6, 10**6), max_attempts=st.none() | st.integers(1, 99),
       seq=st.integers(1, 2**50), lease_id=_LEASES | _TEXT, worker_id=_TEXT, deadline=st.floats(0, 4e9, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_a_first_claim_of_an_enqueues_record_is_its_encoding(task_id: str, node_type: str, priority: int,
                                                             max_attempts: int | None, seq: int, lease_id: str,
                                                             worker_id: str, deadline: float) -> None:
    """The record a first delivery claims without reading it (``_take_queued``'s trusted path) is
    made from the head of the record its enqueue created: byte for byte ``encode`` of the
    claimed record, as ``_claimed_bytes`` of the stored bytes makes it."""
    digest = _digest(task_id.encode())
    record = _new_record(task_id, node_type, priority, max_attempts, seq=0, digest=digest)
    head = _new_record_head(task_id, node_type, priority, max_attempts, digest)
    assert _new_record_bytes(head, 0) == encode(record)
    made = _first_claim_bytes(head, seq, lease_id, encode(worker_id), deadline)
    assert made == encode(_claimed(record, seq, lease_id, worker_id, deadline))
    assert made == _claimed_bytes(encode(record), record, seq, lease_id, encode(worker_id), deadline)


def test_a_first_claim_refuses_a_deadline_json_cannot_hold() -> None:
    """An infinite deadline (an infinite lease) is refused as ``encode`` refuses it."""
    head = _new_record_head("t", "alpha", 0, None, _digest(b"t"))
    with pytest.raises(ValueError):
        _first_claim_bytes(head, 3, "lease", encode("w"), float("inf"))


@given(extra=st.dictionaries(_TEXT, st.integers() | _TEXT, max_size=3), deadline=st.floats(0, 4e9, allow_nan=False))
@settings(max_examples=100, deadline=None)
def test_other_members_before_seq_are_kept_and_the_edit_decodes_to_the_claim(extra: dict[str, Any],
                                                                               deadline: float) -> None:
    """Members a foreign writer put before ``seq`` (even ones named like the edited members,
    written twice in the bytes) stay; the edited bytes read back as the claimed record."""
    new = _new_record("t", "alpha", 0, None, seq=3)
    head = encode({**{k: v for k, v in extra.items() if k not in new}, **dict(list(new.items())[:4])})
    tail = encode(dict(list(new.items())[4:]))
    twice = b"".join(b',"%s":%s' % (name.encode(), encode(value))
                     for name, value in (("state", "dead"), ("attempt", 9)))
    for raw in (head[:-1] + b"," + tail[1:], head[:-1] + twice + b"," + tail[1:]):
        record = decode(raw)
        made = _claimed_bytes(raw, record, 3, "$JS.ACK.p_TASKS.alpha-p0.1.3.3.1.0", encode("w"), deadline)
        assert made is not None
        assert decode(made) == _claimed(record, 3, "$JS.ACK.p_TASKS.alpha-p0.1.3.3.1.0", "w", deadline)


@pytest.mark.parametrize("change", [
    {"attempt": 1}, {"errors": ["attempt 1: boom"]}, {"lease": "x"}, {"worker": "w"}, {"deadline": 1.5},
    {"state": "delayed"}, {"seq": 4}])
def test_bytes_that_do_not_end_as_a_new_record_are_not_edited(change: dict[str, Any]) -> None:
    record = {**_new_record("t", "alpha", 0, None, seq=3), **change}
    assert _claimed_bytes(encode(record), {**record, "seq": 3}, 3, "lease", encode("w"), 1.0) is None
    # A record that ends with more members after the tail's:
    extra = {**_new_record("t", "alpha", 0, None, seq=3), "purged": True}
    assert _claimed_bytes(encode(extra), extra, 3, "lease", encode("w"), 1.0) is None
    assert _claimed_bytes(None, record, 3, "lease", encode("w"), 1.0) is None


def test_claimed_records_are_stored_as_encoded_and_acked_from_there(nats_server: Any) -> None:
    """Five tasks enqueued together and claimed together: each stored record is ``encode`` of
    the claimed record; their acks (which edit those bytes again) store the results."""

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"cb{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        try:
            tasks = [Task(f"wf:n{i}:0", "wf", f"n{i}", "alpha", {"i": i}, max_attempts=None if i else 2)
                     for i in range(5)]
            assert await queue.enqueue_many(tasks) == [True] * 5
            before = time.time()
            claims = await queue.claim(["alpha"], worker_id="worker \"7\"", max_tasks=5)
            stored = [decode((await kv.get(queue._tasks, token(c.task.id))).value) for c in claims]
            raws = [(await kv.get(queue._tasks, token(c.task.id))).value for c in claims]
            for claim in claims:
                await queue.ack(claim, {"i": claim.task.payload["i"]})
            results = await queue.wait_results([t.id for t in tasks], timeout=10)
            return tasks, claims, stored, raws, results, before
        finally:
            await backend.close()

    tasks, claims, stored, raws, results, before = run(scenario(nats_server.url), 60)
    assert len(claims) == 5
    for claim, record, raw in zip(claims, stored, raws):
        task = claim.task
        expected = {**_new_record(task.id, task.node_type, task.priority, task.max_attempts, seq=record["seq"],
                                  digest=_digest(encode(task_to_dict(task)))),
                    "state": "claimed", "attempt": 1, "lease": claim.lease_id, "worker": "worker \"7\"",
                    "deadline": record["deadline"]}
        assert raw == encode(expected)
        assert before < record["deadline"] == claim.deadline
    assert {k: (r.status, r.output) for k, r in results.items()} == {
        t.id: ("succeeded", {"i": t.payload["i"]}) for t in tasks}
