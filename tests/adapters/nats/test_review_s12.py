"""Review of this session's NATS task-queue changes, on a real nats-server.

0142a04: ``enqueue_many`` encodes each task once, writes its header block directly and
completes its record's JSON from a head made before the publish. d25412b: a first claim
writes its record by editing the bytes its batched read returned. Later changes: one
confirmed +ACK per consumer for the acks of one pass.

What must hold, whatever the path a task takes: ``enqueue_many`` answers as ``enqueue``
does for repeated, pending, finished, expired and dead-lettered ids, and each task runs
exactly as often as those answers say; a message without a record (a producer that died
between its two writes, or a foreign producer with no headers at all), and a record
written by older code (other member order, extra members), are claimed exactly once; the
acks of one pass really remove every message from its consumer (nothing redelivered, no
ack pending), also when an ack in that pass loses its CAS.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from typing import Any

import pytest
from support.aio import run
from support.nats_cluster import NatsCluster

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token
from distributed_agents.adapters.nats.task_queue import _new_record
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.ports.task_queue import Task, task_to_dict

from .conftest import open_nats, settle

pytestmark = pytest.mark.timeout(60)


def _prefix(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8]}"


async def _drain(backend: NatsBackend, types: list[str], *, output: Any = None, rounds: int = 30,
                 wait: float = 0.3, max_tasks: int = 16) -> list[str]:
    """Claim and ack until a claim that waited ``wait`` seconds comes back empty: the ids
    claimed, in claim order (an id twice if it ran twice)."""
    ran: list[str] = []
    for _ in range(rounds):
        claims = await backend.task_queue.claim(types, worker_id="w", max_tasks=max_tasks, wait=wait)
        if not claims:
            return ran
        for claim in claims:
            ran.append(claim.task.id)
            await backend.task_queue.ack(claim, {"id": claim.task.id, "run": output})
    return ran


async def _ack_pending(backend: NatsBackend, node_type: str, priority: int = 0) -> tuple[int, int, int]:
    """The consumer's (ack pending, redelivered, messages waiting) for ``node_type`` at ``priority``."""
    names = backend.connection.names
    info = await backend.connection.js.consumer_info(names.task_stream, names.task_consumer(node_type, priority))
    return int(info.num_ack_pending or 0), int(info.num_redelivered or 0), int(info.num_pending or 0)


def _task(task_id: str, node_type: str = "alpha", **fields: Any) -> Task:
    return Task(task_id, "wf", "n", node_type, {"id": task_id}, **fields)


# -- enqueue_many answers as enqueue does ------------------------------------------------------

def test_enqueue_many_answers_like_enqueue_for_repeated_pending_finished_and_expired_ids(nats_url: str) -> None:
    """Twin queues (own prefixes), one fed by ``enqueue`` one task at a time, the other by
    ``enqueue_many``: the same answers in each phase (repeated within a call, pending,
    finished within its result's life, expired), and each id runs once per True."""

    async def phases(many: bool) -> list[Any]:
        backend = await open_nats(nats_url, prefix=_prefix("em"), result_ttl=1.0)
        queue = backend.task_queue

        async def put(ids: list[str]) -> list[bool]:
            tasks = [_task(i) for i in ids]
            if many:
                return await queue.enqueue_many(tasks)
            seen: set[str] = set()
            flags = []
            for task in tasks:
                flags.append(False if task.id in seen else await queue.enqueue(task))
                seen.add(task.id)
            return flags

        try:
            out: list[Any] = []
            out.append(await put(["a", "b", "a"]))  # repeated within a call
            out.append(await put(["a", "c", "c"]))  # pending
            out.append(sorted(await _drain(backend, ["alpha"], output=1)))
            out.append(await put(["a", "b"]))  # finished, result alive
            await asyncio.sleep(1.6)  # results expire (result_ttl 1 s)
            out.append(await put(["a", "b", "a"]))  # expired: new again
            out.append(await put(["b"]))  # pending again
            out.append(sorted(await _drain(backend, ["alpha"], output=2)))
            results = await queue.wait_results(["a", "b", "c"], timeout=5)
            out.append({k: (r.status, (r.output or {}).get("run")) for k, r in sorted(results.items())})
            return out
        finally:
            await backend.close()

    async def both() -> tuple[list[Any], list[Any]]:
        return await phases(False), await phases(True)

    one_by_one, batched = run(both(), 50)
    assert batched == one_by_one
    assert batched[:2] == [[True, True, False], [False, True, False]]
    assert batched[2] == ["a", "b", "c"]
    assert batched[3] == [False, False]
    assert batched[4] == [True, True, False] and batched[5] == [False]
    assert batched[6] == ["a", "b"]
    assert batched[7]["a"] == ("succeeded", 2) and batched[7]["b"] == ("succeeded", 2)


def test_enqueue_many_keeps_a_dead_letters_id_until_requeued_and_runs_a_requeued_task_once(nats_url: str) -> None:
    """A dead-lettered id: refused by both enqueue paths (also after its result would have
    expired), requeued once (a second requeue is False), then run exactly once more with a
    fresh attempt count; a purged one: True from purge, False from a second purge, and new
    again for ``enqueue_many`` once its result expired."""

    async def scenario() -> list[Any]:
        backend = await open_nats(nats_url, prefix=_prefix("dl"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            out: list[Any] = []
            assert await queue.enqueue_many([_task("d1", max_attempts=1), _task("d2", max_attempts=1)]) == [True] * 2
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=2)
            for claim in claims:
                await queue.nack(claim, "boom")
            out.append(sorted(c.task.id for c in claims))
            await asyncio.sleep(1.3)
            out.append((await queue.enqueue_many([_task("d1"), _task("d2")]), await queue.enqueue(_task("d1"))))
            out.append((await queue.requeue_dead_letter("d1"), await queue.requeue_dead_letter("d1")))
            out.append((await queue.purge_dead_letter("d2"), await queue.purge_dead_letter("d2")))
            again = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=2)
            out.append([(c.task.id, c.attempt) for c in again])
            for claim in again:
                await queue.ack(claim, {"again": True})
            await asyncio.sleep(1.3)
            out.append(await queue.enqueue_many([_task("d2"), _task("d1")]))
            out.append(sorted(await _drain(backend, ["alpha"])))
            return out
        finally:
            await backend.close()

    out = run(scenario(), 50)
    assert out[0] == ["d1", "d2"]
    assert out[1] == ([False, False], False)
    assert out[2] == (True, False)
    assert out[3] == (True, False)
    assert out[4] == [("d1", 1)]
    # d1 finished (acked) and its result expired, d2 was purged and its result expired: both new.
    assert out[5] == [True, True]
    assert out[6] == ["d1", "d2"]


# -- a message without its record, and records written otherwise ---------------------------------

def test_a_message_an_older_producer_stored_without_its_record_runs_once(nats_url: str) -> None:
    """The messages of three tasks are stored as an older version's ``enqueue`` published them
    (message first), their records never written (that producer died between its two
    writes), beside two tasks enqueued normally: ``enqueue_many`` of the same tasks again
    creates their records (True) and a new one's; a batched claim runs each of the six
    once (the second message of each of the three is acked away unrun) and stores its result."""

    async def scenario() -> tuple[list[bool], list[str], dict[str, Any]]:
        backend = await open_nats(nats_url, prefix=_prefix("pd"))
        queue, names, js = backend.task_queue, backend.connection.names, backend.connection.js
        try:
            assert await queue.enqueue_many([_task("ok1"), _task("ok2")]) == [True, True]
            orphans = [_task(f"orphan{i}") for i in range(3)]
            for task in orphans:
                await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(task)),
                                 headers={"Nats-Msg-Id": task.id, "Da-Task-Id": task.id})
            flags = await queue.enqueue_many([*orphans, _task("new")])
            ran = await _drain(backend, ["alpha"], max_tasks=8)
            records = {t: decode((await kv.get(queue._tasks, token(t))).value)["state"]
                       for t in ["ok1", "ok2", "new", *(o.id for o in orphans)]}
            return flags, ran, records
        finally:
            await backend.close()

    flags, ran, records = run(scenario(), 40)
    assert flags == [True, True, True, True]
    assert sorted(ran) == ["new", "ok1", "ok2", "orphan0", "orphan1", "orphan2"]
    assert set(records.values()) == {"done"}


@pytest.mark.parametrize("how", ["enqueue", "enqueue_many"])
def test_a_record_whose_producer_died_before_its_message_runs_once_when_enqueued_again(nats_url: str, how: str) -> None:
    """Records created as ``enqueue`` creates them, their messages never published (the producer
    died, or lost the server, between its two writes): enqueuing the same tasks again answers
    False (the ids are known) and, once the records are past the grace a live producer has
    to publish, sends their messages; each runs once, a second enqueue within the dedup
    window adds no copy, and stats count exactly what waits."""
    from distributed_agents.adapters.nats.task_queue import _fresh_record_bytes

    async def scenario() -> tuple[list[bool], Any, list[str], Any]:
        backend = await open_nats(nats_url, prefix=_prefix("pm"))
        queue, js = backend.task_queue, backend.connection.js
        try:
            assert await queue.enqueue_many([_task("warm")]) == [True]
            assert await _drain(backend, ["alpha"]) == ["warm"]
            orphans = [_task(f"lost{i}") for i in range(3)]
            for task in orphans:
                raw = encode(task_to_dict(task))
                assert await kv.cas(js, queue._tasks, token(task.id), _fresh_record_bytes(task, raw), last=0)
            if how == "enqueue":
                flags = [await queue.enqueue(task) for task in [*orphans, _task("new")]]
                flags += [await queue.enqueue(task) for task in orphans]
            else:
                flags = await queue.enqueue_many([*orphans, _task("new")])
                flags += await queue.enqueue_many(orphans)
            stats = await queue.stats("alpha")
            ran = await _drain(backend, ["alpha"], max_tasks=8)
            return flags, stats, ran, await queue.stats("alpha")
        finally:
            await backend.close()

    flags, before, ran, after = run(scenario(), 40)
    assert flags == [False, False, False, True, False, False, False]
    assert (before.queued, before.in_flight) == (4, 0)
    assert sorted(ran) == ["lost0", "lost1", "lost2", "new"]
    assert (after.queued, after.in_flight, after.dead) == (0, 0, 0)


def test_a_message_of_an_earlier_task_of_the_id_never_runs_under_the_new_record(nats_url: str) -> None:
    """A task queued (no worker yet), its record then lost past its message (deleted, as an
    expired record is), and the id enqueued again with another payload: the first message
    is not claimed under the new record (another task: its digest); only the new task runs."""

    async def scenario() -> list[Any]:
        backend = await open_nats(nats_url, prefix=_prefix("er"))
        queue, js = backend.task_queue, backend.connection.js
        try:
            assert await queue.enqueue(Task("x", "wf", "n", "alpha", {"v": 1}, created_at=1000.0)) is True
            await kv.remove(js, queue._tasks, token("x"))
            assert await queue.enqueue(Task("x", "wf", "n", "alpha", {"v": 2}, created_at=2000.0)) is True
            runs = []
            for _ in range(4):
                for claim in await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=0.3):
                    runs.append(claim.task.payload["v"])
                    await queue.ack(claim, None)
            return runs
        finally:
            await backend.close()

    assert run(scenario(), 40) == [2]


def test_messages_of_a_foreign_producer_without_headers_run_once_each_in_a_batched_claim(nats_url: str) -> None:
    """Task messages published with no header at all (no Nats-Msg-Id, no Da-Task-Id), one of
    them twice (two messages, one id), among tasks ``enqueue_many`` wrote, claimed in
    batches: every id runs exactly once and has its result."""

    async def scenario() -> tuple[list[str], dict[str, str]]:
        backend = await open_nats(nats_url, prefix=_prefix("fp"))
        queue, names, js = backend.task_queue, backend.connection.names, backend.connection.js
        try:
            assert await queue.enqueue_many([_task(f"own{i}") for i in range(3)]) == [True] * 3
            for task_id in ["bare0", "bare1", "bare0", "bare2"]:
                await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(_task(task_id))))
            assert await queue.enqueue_many([_task("own3")]) == [True]
            ran = await _drain(backend, ["alpha"], max_tasks=8)
            ids = ["own0", "own1", "own2", "own3", "bare0", "bare1", "bare2"]
            results = await queue.wait_results(ids, timeout=5)
            return ran, {k: r.status for k, r in results.items()}
        finally:
            await backend.close()

    ran, statuses = run(scenario(), 40)
    assert sorted(ran) == sorted(["own0", "own1", "own2", "own3", "bare0", "bare1", "bare2"]), ran
    assert statuses == dict.fromkeys(["own0", "own1", "own2", "own3", "bare0", "bare1", "bare2"], "succeeded")


_OLD_STYLE = [
    # Members in another order (an older writer): the claim must not edit these bytes as a new record's.
    lambda r: encode({k: r[k] for k in sorted(r)}),
    # An extra member after the tail a new record ends with.
    lambda r: encode({**r, "legacy": True}),
    # Pretty-printed (spaces after separators).
    lambda r: encode(r).replace(b'":', b'": ').replace(b',"', b', "'),
    # A member before seq that a newer writer added.
    lambda r: encode({"id": r["id"], "node_type": r["node_type"], "priority": r["priority"],
                      "max_attempts": r["max_attempts"], "note": '","seq":1,"state":"queued"', **r}),
]


@pytest.mark.parametrize("style", range(len(_OLD_STYLE)))
def test_records_written_otherwise_are_claimed_once_and_keep_their_members(nats_url: str, style: int) -> None:
    """Four tasks enqueued, then their records rewritten (same revision chain, same content)
    as another writer lays them out: a batched claim claims each once, the stored records
    decode to claimed records with attempt 1 and every member the writer put there, and the
    acks store the results."""

    async def scenario() -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
        backend = await open_nats(nats_url, prefix=_prefix("ow"))
        queue, js = backend.task_queue, backend.connection.js
        try:
            ids = [f"t{i}" for i in range(4)]
            assert await queue.enqueue_many([_task(i) for i in ids]) == [True] * 4
            for task_id in ids:
                entry = await kv.get(queue._tasks, token(task_id))
                record = decode(entry.value)
                assert await kv.cas(js, queue._tasks, token(task_id), _OLD_STYLE[style](record), last=entry.revision)
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=2)
            stored = [decode((await kv.get(queue._tasks, token(c.task.id))).value) for c in claims]
            for claim in claims:
                await queue.ack(claim, {"ok": 1})
            results = await queue.wait_results(ids, timeout=5)
            left = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=0.3)
            return [c.task.id for c in claims] + [c.task.id for c in left], stored, {
                k: r.status for k, r in results.items()}
        finally:
            await backend.close()

    ran, stored, statuses = run(scenario(), 40)
    assert sorted(ran) == ["t0", "t1", "t2", "t3"]
    for record in stored:
        assert (record["state"], record["attempt"], record["errors"]) == ("claimed", 1, [])
        assert record["seq"] > 0 and record["lease"] and record["worker"] == "w"
        if style == 1:
            assert record["legacy"] is True
        if style == 3:
            assert record["note"] == '","seq":1,"state":"queued"'
    assert statuses == dict.fromkeys(["t0", "t1", "t2", "t3"], "succeeded")


def test_a_record_bound_to_no_message_yet_is_claimed_once_through_the_batched_claim(nats_url: str) -> None:
    """Records with seq 0 (bound to no message yet: a requeue, or a move to the end of a
    priority, between its record write and its publish) whose messages then arrive: the
    batched claim adopts each message once and binds the record to it."""

    async def scenario() -> tuple[list[tuple[str, int]], list[int], list[int]]:
        backend = await open_nats(nats_url, prefix=_prefix("s0"))
        queue, js = backend.task_queue, backend.connection.js
        try:
            ids = [f"z{i}" for i in range(3)]
            assert await queue.enqueue_many([_task(i) for i in ids]) == [True] * 3
            for task_id in ids:
                entry = await kv.get(queue._tasks, token(task_id))
                assert await kv.cas(js, queue._tasks, token(task_id), encode({**decode(entry.value), "seq": 0}),
                                    last=entry.revision)
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=3, wait=2)
            seqs = [decode((await kv.get(queue._tasks, token(c.task.id))).value)["seq"] for c in claims]
            from distributed_agents.adapters.nats.delivery import stream_sequence

            for claim in claims:
                await queue.ack(claim, None)
            left = await queue.claim(["alpha"], worker_id="w", max_tasks=3, wait=0.3)
            return [(c.task.id, c.attempt) for c in claims + left], seqs, [stream_sequence(c.lease_id) for c in claims]
        finally:
            await backend.close()

    ran, seqs, delivered = run(scenario(), 40)
    assert sorted(ran) == [("z0", 1), ("z1", 1), ("z2", 1)]
    assert seqs == delivered


# -- the acks of one pass ------------------------------------------------------------------------

def test_acks_of_one_pass_over_several_consumers_leave_nothing_pending_or_redelivered(nats_url: str) -> None:
    """24 tasks over two node types and two priorities (four consumers), claimed together and
    acked in one event-loop pass: once the acks returned, another process's ``stats`` counts
    none in flight and every consumer has no ack pending; nothing was
    redelivered after AckWait (1 s) passed, and the stream holds no message."""

    async def scenario() -> tuple[dict[str, Any], list[str], int, dict[str, str]]:
        prefix = _prefix("ap")
        backend = await open_nats(nats_url, prefix=prefix, visibility_timeout=1.0)
        observer = await open_nats(nats_url, prefix=prefix, visibility_timeout=1.0)
        queue = backend.task_queue
        try:
            tasks = [Task(f"k{i}", "wf", "n", ("alpha", "beta")[i % 2], {"i": i}, priority=(i // 2) % 2)
                     for i in range(24)]
            assert await queue.enqueue_many(tasks) == [True] * 24
            claims = []
            while len(claims) < 24:
                got = await queue.claim(["alpha", "beta"], worker_id="w", max_tasks=24, wait=2)
                assert got, "a claim came back empty with tasks queued"
                claims += got
            await asyncio.gather(*(queue.ack(c, {"i": c.task.payload["i"]}) for c in claims))
            # What another process sees once the acks returned: nothing in flight.
            seen = [(await observer.task_queue.stats(t)).in_flight for t in ("alpha", "beta")]
            pending = {f"{t}-{p}": await _ack_pending(backend, t, p) for t in ("alpha", "beta") for p in (0, 1)}
            pending["other process's in_flight"] = tuple(seen)
            await asyncio.sleep(1.5)
            again = await queue.claim(["alpha", "beta"], worker_id="w2", max_tasks=24, wait=0.5)
            info = await backend.connection.js.stream_info(backend.connection.names.task_stream)
            results = await queue.wait_results([t.id for t in tasks], timeout=5)
            return pending, [c.task.id for c in again], int(info.state.messages), {
                k: r.status for k, r in results.items()}
        finally:
            await observer.close()
            await backend.close()

    pending, again, messages, statuses = run(scenario(), 40)
    assert pending.pop("other process's in_flight") == (0, 0), pending
    assert all(p[0] == 0 for p in pending.values()), pending
    assert again == [] and messages == 0
    assert len(statuses) == 24 and set(statuses.values()) == {"succeeded"}


def test_acks_of_one_pass_whose_last_cas_loses_still_take_the_others_messages_away(nats_url: str) -> None:
    """Eight tasks of one consumer claimed together; the record of the one acked last in the
    pass is rewritten behind the queue's back (same content, new revision), so its chained
    CAS loses (its ack takes the re-reading path): the seven acked before it in the pass
    (sent plain, with no confirmed ack of their consumer after them in the pass) are still
    acked: nothing pending once the acks returned, nothing redelivered after AckWait."""

    async def scenario() -> tuple[tuple[int, int, int], list[str], dict[str, str], tuple[int, int, int]]:
        backend = await open_nats(nats_url, prefix=_prefix("al"), visibility_timeout=1.0)
        queue, js = backend.task_queue, backend.connection.js
        try:
            ids = [f"q{i}" for i in range(8)]
            assert await queue.enqueue_many([_task(i) for i in ids]) == [True] * 8
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=2)
            assert len(claims) == 8
            last = claims[-1].task.id
            entry = await kv.get(queue._tasks, token(last))
            assert await kv.cas(js, queue._tasks, token(last), entry.value, last=entry.revision)
            await asyncio.gather(*(queue.ack(c, {"id": c.task.id}) for c in claims))
            pending = await _ack_pending(backend, "alpha")
            await asyncio.sleep(1.5)
            again = await queue.claim(["alpha"], worker_id="w2", max_tasks=8, wait=0.5)
            results = await queue.wait_results(ids, timeout=5)
            return pending, [c.task.id for c in again], {k: r.status for k, r in results.items()}, \
                await _ack_pending(backend, "alpha")
        finally:
            await backend.close()

    pending, again, statuses, after = run(scenario(), 40)
    assert pending[0] == 0, pending
    assert again == [] and after[1] == 0, (again, after)
    assert statuses == {f"q{i}": "succeeded" for i in range(8)}


def test_results_of_many_concurrent_producers_are_each_their_own(nats_url: str) -> None:
    """Eight producers (own connections) each enqueue 40 tasks and wait for them while two
    workers claim in batches of 32 and ack in passes: every producer gets exactly its own
    40 results, each the output computed from its own task."""

    async def scenario() -> dict[int, dict[str, Any]]:
        prefix = _prefix("mc")
        producers = [await open_nats(nats_url, prefix=prefix) for _ in range(8)]
        workers = [await open_nats(nats_url, prefix=prefix) for _ in range(2)]
        stop = asyncio.Event()

        async def work(backend: NatsBackend, name: str) -> None:
            while not stop.is_set():
                claims = await backend.task_queue.claim(["gamma"], worker_id=name, max_tasks=32, wait=0.2)
                await asyncio.gather(*(backend.task_queue.ack(c, {"echo": c.task.payload["id"], "by": name})
                                       for c in claims))

        async def produce(index: int, backend: NatsBackend) -> dict[str, Any]:
            ids = [f"p{index}-{i}" for i in range(40)]
            assert await backend.task_queue.enqueue_many([_task(i, "gamma") for i in ids]) == [True] * 40
            got: dict[str, Any] = {}
            deadline = time.monotonic() + 20
            while len(got) < 40 and time.monotonic() < deadline:
                results = await backend.task_queue.wait_results([i for i in ids if i not in got], timeout=5)
                got.update({k: r.output["echo"] for k, r in results.items()})
            return got

        try:
            loops = [asyncio.ensure_future(work(w, f"w{n}")) for n, w in enumerate(workers)]
            outcomes = await asyncio.gather(*(produce(i, p) for i, p in enumerate(producers)))
            stop.set()
            await asyncio.gather(*loops)
            return dict(enumerate(outcomes))
        finally:
            for backend in workers + producers:
                await backend.close()

    outcomes = run(scenario(), 50)
    for index, got in outcomes.items():
        assert got == {f"p{index}-{i}": f"p{index}-{i}" for i in range(40)}


# -- cancel, and ids used again --------------------------------------------------------------------

async def _shorten_dedup_window(backend: NatsBackend, seconds: float) -> None:
    """Make the task stream's dedup window ``seconds`` long (after every backend of the prefix
    connected: a connect sets it back), so "beyond the window" takes a second, not two minutes."""
    from nats.js import api

    js = backend.connection.js
    info = await js.stream_info(backend.connection.names.task_stream)
    config: api.StreamConfig = info.config
    config.duplicate_window = seconds
    await js.update_stream(config)


def test_a_task_cancelled_after_the_dedup_window_never_runs_as_its_id_used_again(nats_url: str) -> None:
    """A task queued (no worker yet), cancelled once its message is older than the stream's
    dedup window; once the cancelled record expired, the id is enqueued again with another
    payload (a workflow created again under its id): the one run of that id is the new
    task's, never the cancelled one's message."""

    async def scenario() -> list[Any]:
        backend = await open_nats(nats_url, prefix=_prefix("cw"), result_ttl=1.0)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(Task("x", "wf", "n", "alpha", {"v": 1})) is True
            await _shorten_dedup_window(backend, 1.0)
            await asyncio.sleep(1.2)
            assert await queue.cancel("x") is True
            await asyncio.sleep(1.3)  # the cancelled record's result_ttl passes
            again = await queue.enqueue(Task("x", "wf", "n", "alpha", {"v": 2}))
            runs = []
            for _ in range(6):
                for claim in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.3):
                    runs.append(claim.task.payload["v"])
                    await queue.ack(claim, None)
            return [again, runs]
        finally:
            await backend.close()

    again, runs = run(scenario(), 40)
    assert again is True
    assert runs == [2], runs


# -- a three-server cluster --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(nats_cluster: NatsCluster) -> NatsCluster:
    return nats_cluster


def test_on_a_cluster_cancelled_queued_tasks_leave_nothing_queued_and_the_rest_run_once(cluster: NatsCluster) -> None:
    """Three replicas, the producer on one server and the claimer on another: twelve tasks
    enqueued, every other one cancelled at once (True for each): ``stats`` counts the six
    left as queued, the claimer runs exactly those six once each, and the stream is empty."""

    async def scenario() -> tuple[list[bool], Any, list[str], int]:
        prefix = _prefix("cc")
        producer = await open_nats(cluster.server(0).url + "?replicas=3", prefix=prefix)
        claimer = await open_nats(cluster.server(1).url + "?replicas=3", prefix=prefix)
        try:
            # Streams and a consumer just made on a cluster: until their leaders answer.
            await settle(producer)
            await settle(claimer)
            ids = [f"c{i}" for i in range(12)]
            assert await producer.task_queue.enqueue_many([_task(i) for i in ids]) == [True] * 12
            cancelled = [await producer.task_queue.cancel(i) for i in ids[::2]]
            stats = await producer.task_queue.stats("alpha")
            ran = await _drain(claimer, ["alpha"], max_tasks=4, wait=2.0)
            info = await producer.connection.js.stream_info(producer.connection.names.task_stream)
            return cancelled, stats, ran, int(info.state.messages)
        finally:
            await claimer.close()
            await producer.close()

    cancelled, stats, ran, messages = run(scenario(), 50)
    assert cancelled == [True] * 6
    assert sorted(ran) == sorted(f"c{i}" for i in range(1, 12, 2))
    assert (stats.queued, stats.in_flight) == (6, 0), stats
    assert messages == 0


def test_a_copy_of_a_running_tasks_message_naming_its_records_revision_steals_no_lease(nats_url: str) -> None:
    """A task claimed by worker A; then a message with the same task is published by hand,
    with headers naming the task and the revision the claim stored (a forged or replayed
    header, not one its enqueue wrote): a claim by B does not take the task while A holds
    it, A's ack stores its result, and the task ran once (attempt 1)."""
    from distributed_agents.core.errors import LeaseLostError

    async def scenario() -> tuple[list[str], Any, dict[str, Any]]:
        prefix = _prefix("hr")
        a = await open_nats(nats_url, prefix=prefix)
        b = await open_nats(nats_url, prefix=prefix)
        js, names = a.connection.js, a.connection.names
        try:
            task = _task("held")
            assert await a.task_queue.enqueue(task) is True
            [claim] = await a.task_queue.claim(["alpha"], worker_id="A", wait=2)
            entry = await kv.get(a.task_queue._tasks, token("held"))
            await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(task)),
                             headers={"Nats-Msg-Id": "held/copy", "Da-Task-Id": "held", "Da-Rev": str(entry.revision)})
            stolen = [c.worker_id for c in await b.task_queue.claim(["alpha"], worker_id="B", wait=0.5)]
            try:
                await a.task_queue.ack(claim, {"by": "A"})
                acked: Any = "acked"
            except LeaseLostError as error:
                acked = error
            record = decode((await kv.get(a.task_queue._tasks, token("held"))).value)
            return stolen, acked, record
        finally:
            await b.close()
            await a.close()

    stolen, acked, record = run(scenario(), 30)
    assert stolen == [] and acked == "acked", (stolen, acked)
    assert (record["state"], record["attempt"], record["result"]["output"]) == ("done", 1, {"by": "A"})


def test_cancelling_an_id_that_differs_from_another_only_in_whitespace_leaves_the_other_to_run(nats_url: str) -> None:
    """Tasks "a", " a", "a " and "=a" enqueued (by both paths); " a" and "a " cancelled while
    queued: "a" and "=a" each run exactly once, the cancelled ones never (whatever an enqueue
    or a cancel of an id a header cannot carry as it is answered)."""

    async def scenario() -> tuple[list[str], list[bool]]:
        backend = await open_nats(nats_url, prefix=_prefix("ws"))
        queue = backend.task_queue
        try:
            await queue.enqueue_many([_task("a"), _task(" a")])
            await queue.enqueue(_task("a "))
            await queue.enqueue(_task("=a"))
            cancels = [await queue.cancel(" a"), await queue.cancel("a ")]
            ran = await _drain(backend, ["alpha"], max_tasks=1)
            return ran, cancels
        finally:
            await backend.close()

    ran, cancels = run(scenario(), 30)
    assert sorted(ran) == ["=a", "a"], (ran, cancels)


# -- the state store's commits, leases and fencing --------------------------------------------------

def test_a_stale_holders_commit_from_its_cached_revision_is_refused_after_another_took_the_lease(
        nats_url: str) -> None:
    """Two stores (processes) on one prefix. A creates a workflow under a 0.4 s lease and
    commits twice (from its cached revision); its lease lapses, B acquires it (a greater
    token) and commits; A's next commit, fenced by its old token at the version it knows,
    is refused (nothing written), and so is one at B's version; the record and the
    checkpoints are B's, each step once."""
    from distributed_agents.core.errors import FencingTokenRejectedError, LeaseLostError, VersionConflictError
    from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

    async def scenario() -> tuple[list[str], Any, list[tuple[int, Any]]]:
        first = await open_nats(nats_url, prefix=_prefix("sf"))
        second = await open_nats(nats_url, prefix=first.connection.names.prefix)
        a, b = first.state_store, second.state_store
        try:
            state = {"n": 0, "by": "a"}
            made = await a.create_leased(WorkflowRecord("wf", "g", "running", state), owner="A", ttl=0.4,
                                         checkpoint=Checkpoint("wf", 0, state))
            assert made is not None
            record, lease = made
            for step in (1, 2):
                state = {"n": step, "by": "a"}
                record = await a.save(record.evolve(state=state, step=step), expected_version=record.version,
                                      checkpoint=Checkpoint("wf", step, state), fencing_token=lease.fencing_token)
            await asyncio.sleep(0.6)
            taken = await b.acquire_lease("wf", "B", 5.0)
            assert taken is not None and taken.fencing_token > lease.fencing_token
            seen = await b.get("wf")
            state_b = {"n": 3, "by": "b"}
            await b.save(seen.evolve(state=state_b, step=3), expected_version=seen.version,
                         checkpoint=Checkpoint("wf", 3, state_b), fencing_token=taken.fencing_token)
            refused = []
            for version in (record.version, record.version + 1):
                stale = {"n": 3, "by": "a"}
                try:
                    await a.save(record.evolve(state=stale, step=3), expected_version=version,
                                 checkpoint=Checkpoint("wf", 3, stale), fencing_token=lease.fencing_token)
                    refused.append("written")
                except (FencingTokenRejectedError, VersionConflictError, LeaseLostError) as error:
                    refused.append(type(error).__name__)
            try:
                await a.save_releasing(record.evolve(state={"n": 4}, step=4), expected_version=record.version + 1,
                                       lease=lease, checkpoint=Checkpoint("wf", 4, {"n": 4}))
                refused.append("written")
            except (FencingTokenRejectedError, VersionConflictError, LeaseLostError) as error:
                refused.append(type(error).__name__)
            final = await second.state_store.get("wf")
            checkpoints = await a.list_checkpoints("wf")
            return refused, final, [(c.step, dict(c.state)) for c in checkpoints]
        finally:
            await second.close()
            await first.close()

    refused, final, checkpoints = run(scenario(), 40)
    assert "written" not in refused, refused
    assert dict(final.state) == {"n": 3, "by": "b"} and final.step == 3
    assert checkpoints == [(3, {"n": 3, "by": "b"}), (2, {"n": 2, "by": "a"}), (1, {"n": 1, "by": "a"}),
                           (0, {"n": 0, "by": "a"})]


def test_checkpoints_that_share_the_records_state_read_back_whole_through_deltas_and_snapshots(nats_url: str) -> None:
    """60 commits of a state above the delta threshold (a 3 KB value that never changes, a
    list that grows, a key that comes and goes), each checkpoint holding the very state
    object of its record, some with a checkpoint holding an equal copy instead: every
    checkpoint, read back by a second store, is its step's state exactly, and the record
    the last one."""
    from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

    def state_at(step: int) -> dict[str, Any]:
        state: dict[str, Any] = {"big": "b" * 3000, "log": list(range(step)), "step": step, "u": "ü\"\\"}
        if step % 3 == 0:
            state["sometimes"] = {"at": step}
        return state

    async def scenario() -> tuple[list[tuple[int, Any]], Any]:
        first = await open_nats(nats_url, prefix=_prefix("sd"))
        second = await open_nats(nats_url, prefix=first.connection.names.prefix)
        store = first.state_store
        try:
            state = state_at(0)
            made = await store.create_leased(WorkflowRecord("wd", "g", "running", state), owner="A", ttl=30,
                                             checkpoint=Checkpoint("wd", 0, state))
            assert made is not None
            record, lease = made
            for step in range(1, 60):
                state = state_at(step)
                held = state if step % 7 else dict(state)
                record = await store.save(record.evolve(state=state, step=step), expected_version=record.version,
                                          checkpoint=Checkpoint("wd", step, held), fencing_token=lease.fencing_token)
            checkpoints = await second.state_store.list_checkpoints("wd")
            return [(c.step, dict(c.state)) for c in checkpoints], await second.state_store.get("wd")
        finally:
            await second.close()
            await first.close()

    checkpoints, final = run(scenario(), 40)
    assert [step for step, _ in checkpoints] == list(range(59, -1, -1))
    for step, state in checkpoints:
        assert state == state_at(step), step
    assert dict(final.state) == state_at(59) and final.step == 59


# -- events ------------------------------------------------------------------------------------------

def test_events_published_in_batches_reach_each_subscription_in_order_and_only_its_own(nats_url: str) -> None:
    """Two publishers (own connections) each publish 1,200 events over 30 workflows and four
    kinds in batches of varied sizes, interleaved with single publishes; subscriptions on
    another connection, to everything, to node events only, to one workflow and to one
    subject, each receive exactly the events matching them, in each publisher's order."""
    kinds = ["workflow.started", "node.started", "node.completed", "step.committed"]

    def events(publisher: int) -> list[tuple[str, dict[str, Any]]]:
        return [(f"events.w{i % 30}.{kinds[i % 4]}", {"p": publisher, "i": i, "type": kinds[i % 4]})
                for i in range(1200)]

    patterns = ["events.>", "events.*.node.*", "events.w7.>", "events.w7.node.completed"]

    async def scenario() -> dict[str, list[tuple[str, int, int]]]:
        prefix = _prefix("ev")
        listener = await open_nats(nats_url, prefix=prefix)
        publishers = [await open_nats(nats_url, prefix=prefix) for _ in range(2)]
        try:
            subs = {p: await listener.message_bus.subscribe(p) for p in patterns}

            async def publish(index: int) -> None:
                items, at, size = events(index), 0, 1
                while at < len(items):
                    if size % 5 == 0:
                        await publishers[index].message_bus.publish(*items[at])
                        at += 1
                    else:
                        await publishers[index].message_bus.publish_many(items[at:at + size])
                        at += size
                    size = size % 97 + 1

            await asyncio.gather(publish(0), publish(1))
            got: dict[str, list[tuple[str, int, int]]] = {}
            for pattern, sub in subs.items():
                expected = sum(1 for p in (0, 1) for c, _ in events(p) if _matches(pattern, c))
                got[pattern] = []
                while len(got[pattern]) < expected:
                    message = await sub.get(timeout=5)
                    if message is None:
                        break
                    got[pattern].append((message.channel, message.data["p"], message.data["i"]))
                extra = await sub.get(timeout=0.2)
                assert extra is None, (pattern, extra)
            return got
        finally:
            for backend in publishers:
                await backend.close()
            await listener.close()

    got = run(scenario(), 40)
    for pattern in patterns:
        for publisher in (0, 1):
            want = [(c, publisher, d["i"]) for c, d in events(publisher) if _matches(pattern, c)]
            assert [g for g in got[pattern] if g[1] == publisher] == want, pattern


def _matches(pattern: str, channel: str) -> bool:
    from distributed_agents.core.ports.message_bus import pattern_matches

    return pattern_matches(pattern, channel)


def test_leases_around_creates_and_releasing_commits_hold_between_two_stores(nats_url: str) -> None:
    """Two stores (processes) on one prefix: a create under another owner's live lease writes
    nothing (of a new workflow or an existing one); a releasing commit by
    a holder whose lease lapsed and was taken is refused and leaves the taker's lease in
    place; the taker's releasing commit frees the lease at once for a third owner, with a
    greater token; renewing a lease that was taken raises."""
    from distributed_agents.core.errors import (
        FencingTokenRejectedError,
        LeaseLostError,
        VersionConflictError,
        WorkflowExistsError,
    )
    from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

    refusals = (FencingTokenRejectedError, VersionConflictError, LeaseLostError)

    async def scenario() -> dict[str, Any]:
        first = await open_nats(nats_url, prefix=_prefix("sl"))
        second = await open_nats(nats_url, prefix=first.connection.names.prefix)
        a, b = first.state_store, second.state_store
        out: dict[str, Any] = {}
        try:
            held = await b.acquire_lease("w1", "B", 5.0)
            assert held is not None
            out["create under a live lease"] = await a.create_leased(
                WorkflowRecord("w1", "g", "running", {"n": 1}), owner="A", ttl=5.0, checkpoint=Checkpoint("w1", 0, {"n": 1}))
            out["record after it"] = await b.get("w1")
            made = await b.create_leased(WorkflowRecord("w2", "g", "running", {"n": 0}), owner="B", ttl=0.4,
                                         checkpoint=Checkpoint("w2", 0, {"n": 0}))
            assert made is not None
            record, lease = made
            try:
                again = await a.create_leased(WorkflowRecord("w2", "g", "running", {"n": 9}), owner="A", ttl=5.0)
                out["create of an existing one"] = "created" if again is not None else "none"
            except WorkflowExistsError:
                out["create of an existing one"] = "exists"
            out["record kept"] = dict((await a.get("w2")).state)
            await asyncio.sleep(0.6)  # B's lease on w2 lapses
            taken = await a.acquire_lease("w2", "A", 5.0)
            out["taken"] = taken is not None and taken.fencing_token > lease.fencing_token
            try:
                await b.save_releasing(record.evolve(state={"n": 1}, step=1, status="completed"),
                                       expected_version=record.version, lease=lease,
                                       checkpoint=Checkpoint("w2", 1, {"n": 1}))
                out["stale releasing commit"] = "written"
            except refusals as error:
                out["stale releasing commit"] = type(error).__name__
            holder = await b.lease_holder("w2")
            out["holder after it"] = None if holder is None else (holder.owner, holder.fencing_token == taken.fencing_token)
            try:
                await b.renew_lease(lease, 5.0)
                out["renew of a taken lease"] = "renewed"
            except LeaseLostError:
                out["renew of a taken lease"] = "lost"
            seen = await a.get("w2")
            saved = await a.save_releasing(seen.evolve(state={"n": 2}, step=1, status="completed"),
                                           expected_version=seen.version, lease=taken,
                                           checkpoint=Checkpoint("w2", 1, {"n": 2}))
            third = await b.acquire_lease("w2", "C", 5.0)
            out["third"] = third is not None and third.fencing_token > taken.fencing_token
            final = await b.get("w2")
            out["final"] = (dict(final.state), final.status, final.version == saved.version)
            out["checkpoints"] = [(c.step, dict(c.state)) for c in await b.list_checkpoints("w2")]
            # A create of an existing workflow whose lease is free: refused, and the lease it took not kept.
            made3 = await b.create_leased(WorkflowRecord("w3", "g", "running", {"n": 0}), owner="B", ttl=5.0)
            assert made3 is not None
            await b.save_releasing(made3[0].evolve(status="completed"), expected_version=made3[0].version,
                                   lease=made3[1])
            try:
                await a.create_leased(WorkflowRecord("w3", "g", "running", {"n": 9}), owner="A", ttl=5.0)
                out["create of an existing free one"] = "created"
            except WorkflowExistsError:
                out["create of an existing free one"] = "exists"
            fourth = await b.acquire_lease("w3", "D", 5.0)
            out["lease after it"] = None if fourth is None else fourth.owner
            out["w3"] = (dict((await b.get("w3")).state), (await b.get("w3")).status)
            return out
        finally:
            await second.close()
            await first.close()

    out = run(scenario(), 40)
    assert out["create under a live lease"] is None and out["record after it"] is None
    assert out["create of an existing one"] in ("none", "exists") and out["record kept"] == {"n": 0}
    assert out["taken"] is True
    assert out["stale releasing commit"] != "written"
    assert out["holder after it"] == ("A", True)
    assert out["renew of a taken lease"] == "lost"
    assert out["third"] is True
    assert out["final"] == ({"n": 2}, "completed", True)
    assert out["checkpoints"] == [(1, {"n": 2}), (0, {"n": 0})]
    assert out["create of an existing free one"] == "exists" and out["lease after it"] == "D"
    assert out["w3"] == ({"n": 0}, "completed")


def test_task_messages_with_odd_revision_headers_are_claimed_once_each_and_junk_is_dead_lettered(nats_url: str) -> None:
    """Task messages published by hand with a ``Da-Rev`` header that is not a number, negative,
    zero, huge, non-ASCII digits, spaced, or naming another task's record revision, each
    beside its own record written as an enqueue writes one; plus bytes that are no task,
    with such headers: every claim returns normally, each task runs exactly once, and the
    junk ends as dead letters."""
    odd = ["abc", "-1", "0", "9" * 30, "\uff11\uff12", " 5 ", "1e3", ""]

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("od"))
        queue, js, names = backend.task_queue, backend.connection.js, backend.connection.names
        try:
            assert await queue.enqueue(_task("anchor")) is True
            anchor_rev = (await kv.get(queue._tasks, token("anchor"))).revision
            values = [*odd, str(anchor_rev)]
            ids = [f"odd{i}" for i in range(len(values))]
            for task_id, value in zip(ids, values):
                task = _task(task_id)
                record = _new_record(task_id, "alpha", 0, None, seq=0)
                assert await kv.cas(js, queue._tasks, token(task_id), encode(record), last=0)
                await js.publish(names.task_subject("alpha", 0), encode(task_to_dict(task)),
                                 headers={"Nats-Msg-Id": task_id, "Da-Task-Id": task_id, "Da-Rev": value})
            for value in ("1", "abc"):
                await js.publish(names.task_subject("alpha", 0), b"\x00not a task",
                                 headers={"Da-Task-Id": f"junk-{value}", "Da-Rev": value})
            ran = await _drain(backend, ["alpha"], max_tasks=5)
            dead = [d.task_id for d in await queue.dead_letters("alpha")]
            return ran, dead, ids
        finally:
            await backend.close()

    ran, dead, ids = run(scenario(), 40)
    assert sorted(ran) == sorted(["anchor", *ids]), ran
    assert sorted(dead) == ["junk-1", "junk-abc"], dead


def test_claims_through_a_lagging_replica_neither_run_a_cancelled_task_nor_drop_a_queued_one(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct gets answer as a replica behind the leader would (nats-server issue 4162): for a
    cancelled task, its record from before the cancel (queued); for a queued task whose
    record was since rewritten, no record at all. Claims in a batch and one at a time: the
    cancelled task never runs, the queued one runs exactly once."""
    from .test_state_store_stale_reads import _lagging_keys

    async def scenario() -> list[str]:
        backend = await open_nats(nats_url, prefix=_prefix("lr"))
        queue, js = backend.task_queue, backend.connection.js
        try:
            assert await queue.enqueue_many([_task("gone"), _task("kept"), _task("other")]) == [True] * 3
            before = await kv.get(queue._tasks, token("gone"))
            assert await queue.cancel("gone") is True
            entry = await kv.get(queue._tasks, token("kept"))
            assert await kv.cas(js, queue._tasks, token("kept"), entry.value, last=entry.revision)
            _lagging_keys(monkeypatch, {token("gone"): before, token("kept"): None})
            ran = []
            for max_tasks in (3, 1, 1, 1):
                for claim in await queue.claim(["alpha"], worker_id="w", max_tasks=max_tasks, wait=0.3):
                    ran.append(claim.task.id)
                    await queue.ack(claim, None)
            return ran
        finally:
            monkeypatch.undo()
            await backend.close()

    ran = run(scenario(), 40)
    assert sorted(ran) == ["kept", "other"], ran


def test_enqueue_many_over_several_chunks_with_known_and_repeated_ids_runs_each_task_once(nats_url: str) -> None:
    """300 tasks enqueued, 100 of them claimed and acked; then one ``enqueue_many`` of 700
    (over three 256-task chunks): the 300 known ids (pending, in flight, finished) answer
    False, 400 new ones True, ids repeated within the call False after their first; in the
    end each of the 700 distinct ids ran exactly once."""

    async def scenario() -> tuple[list[bool], list[str], list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("ch"))
        queue = backend.task_queue
        try:
            old = [f"o{i}" for i in range(300)]
            assert await queue.enqueue_many([_task(i) for i in old]) == [True] * 300
            first = []
            while len(first) < 100:
                claims = await queue.claim(["alpha"], worker_id="w", max_tasks=100 - len(first), wait=1)
                for claim in claims:
                    await queue.ack(claim, None)
                first += [c.task.id for c in claims]
            held = await queue.claim(["alpha"], worker_id="w", max_tasks=20, wait=1)  # in flight during the call
            new = [f"n{i}" for i in range(400)]
            mixed = [x for pair in zip(old, new) for x in pair] + new[300:] + new[:5]
            flags = await queue.enqueue_many([_task(i) for i in mixed])
            for claim in held:
                await queue.ack(claim, None)
            rest = await _drain(backend, ["alpha"], max_tasks=64)
            return flags, first + [c.task.id for c in held] + rest, mixed
        finally:
            await backend.close()

    flags, ran, mixed = run(scenario(), 50)
    seen: set[str] = set()
    for task_id, flag in zip(mixed, flags):
        assert flag == (task_id.startswith("n") and task_id not in seen), (task_id, flag)
        seen.add(task_id)
    counts = collections.Counter(ran)
    assert set(counts) == {f"o{i}" for i in range(300)} | {f"n{i}" for i in range(400)}
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1][:10]


_AWKWARD_IDS = [" lead", "trail ", " both ", "line\nbreak", "cr\rlf", "=eq", "=", "a", "=_20lead", "\ttab"]


def test_ids_that_headers_cannot_carry_as_they_are_go_through_every_path_of_the_queue(nats_url: str) -> None:
    """Ids with surrounding whitespace, line breaks or a leading "=" (and ids that differ from
    each other only in those ways: " lead" and "=_20lead", "a"): enqueued by both paths
    (each True once, False again), claimed in a batch and alone; one cancelled while queued
    (it never runs), one nacked with a delay (its message published again), one dead-lettered
    and requeued, one finished and enqueued again once its result expired: each runs as often
    as those say, under its own id, and nothing is dead-lettered as queued under another id."""

    async def scenario() -> dict[str, Any]:
        backend = await open_nats(nats_url, prefix=_prefix("aw"), result_ttl=1.0)
        queue = backend.task_queue
        out: dict[str, Any] = {}
        try:
            half = len(_AWKWARD_IDS) // 2
            out["first"] = (await queue.enqueue_many([_task(i) for i in _AWKWARD_IDS[:half]]),
                            [await queue.enqueue(_task(i)) for i in _AWKWARD_IDS[half:]])
            out["again"] = (await queue.enqueue_many([_task(i) for i in _AWKWARD_IDS]),
                            await queue.enqueue(_task(" lead")))
            out["cancelled"] = await queue.cancel("line\nbreak")
            runs: list[tuple[str, int]] = []
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=2)
            for _ in range(len(_AWKWARD_IDS)):  # the rest one at a time (each claim alone)
                claims += await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.3)
            for claim in claims:
                runs.append((claim.task.id, claim.attempt))
                if claim.task.id == "trail ":
                    await queue.nack(claim, "later", delay=0.2)
                elif claim.task.id == " both ":
                    await queue.nack(claim, "dead", final=True)
                else:
                    await queue.ack(claim, {"id": claim.task.id})
            out["requeued"] = await queue.requeue_dead_letter(" both ")
            runs += [(i, a) for i, a in [(c.task.id, c.attempt) for c in await _claim_all(queue)]]
            await asyncio.sleep(1.3)  # results expire
            out["expired"] = [*await queue.enqueue_many([_task("=eq"), _task(" lead")]),
                              await queue.enqueue(_task("cr\rlf"))]
            runs += [(c.task.id, c.attempt) for c in await _claim_all(queue)]
            out["runs"] = sorted(runs)
            out["dead"] = [d.task_id for d in await queue.dead_letters("alpha")]
            results = await queue.wait_results([i for i in _AWKWARD_IDS if i != "line\nbreak"], timeout=5)
            out["results"] = {k: r.status for k, r in results.items()}
            return out
        finally:
            await backend.close()

    out = run(scenario(), 50)
    half = len(_AWKWARD_IDS) // 2
    assert out["first"] == ([True] * half, [True] * (len(_AWKWARD_IDS) - half))
    assert out["again"] == ([False] * len(_AWKWARD_IDS), False)
    assert out["cancelled"] is True and out["requeued"] is True and out["expired"] == [True, True, True]
    expected = sorted([(i, 1) for i in _AWKWARD_IDS if i != "line\nbreak"]
                      + [("trail ", 2), (" both ", 1), ("=eq", 1), (" lead", 1), ("cr\rlf", 1)])
    assert out["runs"] == expected, out["runs"]
    assert out["dead"] == [], out["dead"]


async def _claim_all(queue: Any) -> list[Any]:
    """Claim (and ack) until a claim that waited 0.5 s finds nothing; the claims."""
    claims: list[Any] = []
    while True:
        got = await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=0.5)
        if not got:
            return claims
        for claim in got:
            await queue.ack(claim, {"id": claim.task.id})
        claims += got


def test_tasks_whose_holders_vanished_are_taken_over_with_their_attempts_counted_then_dead_lettered(
        nats_url: str) -> None:
    """Three tasks (max 2 attempts) claimed together by a queue whose process then goes away
    (closed without settling: its keepers stop); after AckWait (1 s) another queue claims
    them as attempt 2 with "lease expired" recorded; it goes away too, and a third finds
    them dead-lettered with the reason, never claimed a third time."""

    async def scenario() -> tuple[list[int], list[list[str]], list[Any], list[str]]:
        prefix = _prefix("hv")
        first = await open_nats(nats_url, prefix=prefix, visibility_timeout=1.0)
        ids = [f"h{i}" for i in range(3)]
        assert await first.task_queue.enqueue_many([_task(i, max_attempts=2) for i in ids]) == [True] * 3
        assert len(await first.task_queue.claim(["alpha"], worker_id="one", max_tasks=3, wait=2)) == 3
        await first.close()
        second = await open_nats(nats_url, prefix=prefix, visibility_timeout=1.0)
        claims = []
        give_up = time.monotonic() + 10
        while len(claims) < 3 and time.monotonic() < give_up:
            claims += await second.task_queue.claim(["alpha"], worker_id="two", max_tasks=3, wait=0.5)
        errors = [list(decode((await kv.get(second.task_queue._tasks, token(c.task.id))).value)["errors"])
                  for c in claims]
        await second.close()
        third = await open_nats(nats_url, prefix=prefix, visibility_timeout=1.0)
        try:
            later: list[Any] = []
            dead: list[Any] = []
            give_up = time.monotonic() + 6
            while len(dead) < 3 and time.monotonic() < give_up:
                later += await third.task_queue.claim(["alpha"], worker_id="three", max_tasks=3, wait=0.3)
                dead = await third.task_queue.dead_letters("alpha")
            return [c.attempt for c in claims], errors, [c.task.id for c in later], sorted(
                f"{d.task_id}: {d.reason}" for d in dead)
        finally:
            await third.close()

    attempts, errors, later, dead = run(scenario(), 40)
    assert attempts == [2, 2, 2]
    assert all(len(e) == 1 and "lease expired" in e[0] and "'one'" in e[0] for e in errors), errors
    assert later == []
    assert [d.split(":")[0] for d in dead] == ["h0", "h1", "h2"]
    assert all("lease expired on attempt 2 of 2" in d for d in dead), dead
