"""Review of 5a980c4 (NATS task queue: claims accept older Da-Task-Id forms, a dedup hit on
another id's message, a stray message's dead letter, message-size checks with id headers,
purges answering True once, a requeue whose bind lost), on real nats-servers (one, and the
3-server cluster), with Redis as the control where the two adapters should agree, and
producers of older trees (3d8a7a8, 1e3c921: test_review_s13's fixtures) in subprocesses.

A task whose requeue died between its record write and its publish (the record queued
with seq 0, the letter still listed) is made as ``test_review_s13`` makes it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import PayloadTooLargeError
from distributed_agents.core.ports.task_queue import Task, task_to_dict

from .conftest import open_nats, settle
from .test_review_s13 import _drain, _make_dead, _prefix, _racing_purges, _task
from .test_review_s13 import old_tree, previous_tree  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def _header(task_id: str) -> dict[str, str]:
    """The header naming ``task_id`` as this version writes it."""
    from distributed_agents.adapters.nats.task_queue import _header_carries

    return {"Da-Task-Id": task_id} if _header_carries(task_id) else {"Da-Task-Token": token(task_id)}


async def _stray(backend: Any, task_id: str, data: bytes = b"{junk", node_type: str = "alpha") -> int:
    """Publish bytes naming ``task_id`` in its header on ``node_type``'s subject; its stream sequence."""
    ack = await backend.connection.js.publish(backend.connection.names.task_subject(node_type, 0), data,
                                              headers={"Nats-Msg-Id": uuid.uuid4().hex, **_header(task_id)})
    return int(ack.seq)


async def _die_midway(backend: Any, task_id: str) -> None:
    """The record of dead ``task_id`` as a requeue leaves it that died before publishing."""
    from distributed_agents.adapters.nats.task_queue import _new_record

    queue = backend.task_queue
    found = await queue._read_from_leader(task_id)
    assert found.record is not None and found.record["state"] == "dead"
    # As a requeue of this version leaves it, dead for longer than the takeover time.
    record = {**_new_record(task_id, "alpha", 0, 1, seq=0), "requeued_at": time.time() - 31}
    assert await kv.cas(backend.connection.js, queue._tasks, token(task_id), encode(record),
                        last=found.revision) is not None


# -- _dead_letter_raw / _record_is_of: stray messages naming tasks ----------------------------

@pytest.mark.parametrize("task_id", ["st", " st"], ids=["id", "token"])
def test_a_stray_message_naming_a_dead_task_leaves_its_letter_requeueable(nats_url: str, task_id: str) -> None:
    """Junk bytes whose header names a dead task (its record bound to its message): lettered
    as raw-<seq>, the task's own letter stays, its requeue answers True and it runs once."""

    async def scenario() -> tuple[list[str], bool, list[str], list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("sd"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, task_id)
            seq = await _stray(backend, task_id)
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1) == []
            letters = sorted(d.task_id for d in await queue.dead_letters())
            requeued = await queue.requeue_dead_letter(task_id)
            ran = await _drain(queue)
            return letters, requeued, ran, [f"raw-{seq}"]
        finally:
            await backend.close()

    letters, requeued, ran, raw = run(scenario(), 60)
    assert letters == sorted([task_id] + raw) and requeued and ran == [task_id], (letters, requeued, ran)


@pytest.mark.parametrize("task_id", ["sq", " sq"], ids=["id", "token"])
def test_a_stray_message_naming_a_queued_task_does_not_fail_it(nats_url: str, task_id: str) -> None:
    """Junk bytes naming a queued task, claimed before it: raw-<seq> is lettered, the task
    runs once and its result is its success (no failure reported for it)."""

    async def scenario() -> tuple[list[str], list[str], Any]:
        backend = await open_nats(nats_url, prefix=_prefix("sv"))
        queue = backend.task_queue
        try:
            seq = await _stray(backend, task_id)
            assert await queue.enqueue(_task(task_id))
            ran = await _drain(queue, max_tasks=1)
            letters = [d.task_id for d in await queue.dead_letters()]
            assert letters == [f"raw-{seq}"], letters
            return ran, letters, await queue.get_result(task_id)
        finally:
            await backend.close()

    ran, _, result = run(scenario(), 60)
    assert ran == [task_id] and result is not None and result.status == "succeeded", (ran, result)


@pytest.mark.parametrize("task_id", ["mw", " mw"], ids=["id", "token"])
def test_a_stray_message_naming_a_task_whose_requeue_died_midway_leaves_it_requeueable(
        nats_url: str, task_id: str) -> None:
    """A requeue died between its record write and its publish (the letter listed, the next
    requeue finishes it: test_review_s13). Junk bytes naming the task are claimed then: the
    next requeue still answers True and the task runs once."""

    async def scenario() -> tuple[list[tuple[str, bool]], bool, list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("sm"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, task_id)
            await _die_midway(backend, task_id)
            await _stray(backend, task_id)
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1) == []
            letters = sorted((d.task_id, d.task is not None) for d in await queue.dead_letters())
            requeued = await queue.requeue_dead_letter(task_id)
            return letters, requeued, await _drain(queue)
        finally:
            await backend.close()

    letters, requeued, ran = run(scenario(), 60)
    assert (task_id, True) in letters and requeued and ran == [task_id], (letters, requeued, ran)


def test_a_stray_message_naming_a_task_whose_requeue_died_midway_reports_no_failure_of_its_own(
        nats_url: str) -> None:
    """As above: after the stray is claimed, the task's result is not the stray's decode
    failure (the task's record was never the stray message's)."""

    async def scenario() -> Any:
        backend = await open_nats(nats_url, prefix=_prefix("sf"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "mf")
            await _die_midway(backend, "mf")
            await _stray(backend, "mf")
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1) == []
            return await queue.get_result("mf")
        finally:
            await backend.close()

    result = run(scenario(), 60)
    assert result is None or result.error == "boom", result


def test_a_stray_message_naming_a_task_cancelled_in_its_requeues_window_leaves_it_cancelled(nats_url: str) -> None:
    """A task whose requeue died midway is cancelled (cancel answers True: its record was
    queued); junk bytes naming it are claimed then: it stays cancelled (no result, not failed)."""

    async def scenario() -> tuple[bool, Any]:
        backend = await open_nats(nats_url, prefix=_prefix("sc"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "cx")
            await _die_midway(backend, "cx")
            cancelled = await queue.cancel("cx")
            await _stray(backend, "cx")
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1) == []
            return cancelled, await queue.get_result("cx")
        finally:
            await backend.close()

    cancelled, result = run(scenario(), 60)
    # A cancelled task holds no result (the port's get_result: None); the stray must not make it failed.
    assert cancelled and result is None, (cancelled, result)


def test_a_stray_message_claimed_during_a_requeue_of_the_task_it_names_leaves_the_task_to_run(nats_url: str) -> None:
    """Junk bytes naming a dead task are queued; one backend requeues the task while another
    claims at once (after 0 to 2 ms): in every round the requeued task runs once. (Without
    a requeue that died: about a quarter of 30 rounds lost the task.)"""

    async def scenario() -> list[tuple[str, bool, list[str]]]:
        prefix = _prefix("sw")
        one, two = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        rounds = []
        try:
            for round_ in range(30):
                task_id = f"sw{round_}"
                await _make_dead(one.task_queue, task_id)
                await _stray(one, task_id)

                async def claim(delay: float) -> list[Any]:
                    await asyncio.sleep(delay)
                    return await two.task_queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.2)

                requeued, claims = await asyncio.gather(one.task_queue.requeue_dead_letter(task_id),
                                                        claim((round_ % 3) / 1000))
                ran = [c.task.id for c in claims]
                for c in claims:
                    await two.task_queue.ack(c, {})
                ran += await _drain(one.task_queue, wait=0.2)
                rounds.append((task_id, requeued, ran))
                for letter in await one.task_queue.dead_letters():
                    await one.task_queue.purge_dead_letter(letter.task_id)
            return rounds
        finally:
            await one.close()
            await two.close()

    rounds = run(scenario(), 100)
    assert all(requeued for _, requeued, _ in rounds), rounds
    assert [r for r in rounds if r[2] != [r[0]]] == [], rounds


# -- requeue_dead_letter: two at once ---------------------------------------------------------

async def _racing_requeues(one: Any, *others: Any, rounds: int) -> tuple[list[list[bool]], list[str]]:
    ids = [f"{'= '[round_ % 2]}rq{round_}" for round_ in range(rounds)]
    for task_id in ids:
        await _make_dead(one.task_queue, task_id)
    answers = []
    for task_id in ids:
        every = await asyncio.gather(*(b.task_queue.requeue_dead_letter(task_id) for b in (one, *others)))
        answers.append(sorted(bool(a) for a in every))
    return answers, sorted(await _drain(one.task_queue, max_tasks=16, wait=2.0))


IDS = [f"{'= '[i % 2]}rq{i}" for i in range(20)]


def test_three_racing_requeues_of_one_letter_answer_true_once_on_redis(redis_url: str) -> None:
    """The control: on Redis, of three requeues of one letter at once one answers True; each task runs once."""
    from distributed_agents.adapters.redis.backend import open_redis_backend
    from distributed_agents.core.ports.backend import BackendOptions

    async def scenario() -> tuple[list[list[bool]], list[str]]:
        prefix = _prefix("rq")
        backends = [open_redis_backend(redis_url, BackendOptions.from_url(redis_url, prefix=prefix)) for _ in "123"]
        for backend in backends:
            await backend.connect()
        try:
            return await _racing_requeues(*backends, rounds=len(IDS))
        finally:
            for backend in backends:
                await backend.close()

    answers, ran = run(scenario(), 90)
    assert answers == [[False, False, True]] * len(IDS) and ran == sorted(IDS), (answers, ran)


async def _nats_racing_requeues(urls: list[str]) -> tuple[list[list[bool]], list[str]]:
    prefix = _prefix("nq")
    backends = [await open_nats(url, prefix=prefix) for url in urls]
    try:
        for backend in backends:  # on the cluster: the streams and consumer just made answer through each
            await settle(backend)
        return await _racing_requeues(*backends, rounds=len(IDS))
    finally:
        for backend in backends:
            await backend.close()


@pytest.mark.parametrize("where", ["one_server", "cluster"])
def test_three_racing_requeues_of_one_letter_run_it_once_on_nats(where: str, request: pytest.FixtureRequest) -> None:
    """Three backends (on the three servers of a cluster, streams of three replicas) requeue
    one dead letter at once: at least one answers True, the task runs once (a requeue whose
    bind lost deletes its message), no letter is left."""
    if where == "cluster":
        cluster = request.getfixturevalue("nats_cluster")
        urls = [cluster.server(i).url + "?replicas=3" for i in range(3)]
    else:
        urls = [request.getfixturevalue("nats_url")] * 3
    answers, ran = run(_nats_racing_requeues(urls), 100)
    assert ran == sorted(IDS), ran
    assert all(True in a for a in answers), answers


def test_three_racing_requeues_of_one_letter_answer_true_once_on_nats(nats_url: str) -> None:
    """As on Redis: of requeues of one letter at once exactly one answers True (20 letters,
    three backends; about half the rounds answered True more than once)."""
    answers, ran = run(_nats_racing_requeues([nats_url] * 3), 90)
    assert answers == [[False, False, True]] * len(IDS), answers


def test_two_racing_purges_of_one_letter_answer_true_once_on_a_cluster(nats_cluster: Any) -> None:
    """As test_review_s13's single-server check, with the two backends on two servers of a
    3-server cluster (streams of three replicas): exactly one purge answers True."""

    async def scenario() -> list[list[bool]]:
        prefix = _prefix("cp")
        one = await open_nats(nats_cluster.server(0).url + "?replicas=3", prefix=prefix)
        two = await open_nats(nats_cluster.server(1).url + "?replicas=3", prefix=prefix)
        try:
            await settle(one)  # the streams and consumer just made answer through each
            await settle(two)
            return await _racing_purges(one, two, 10)
        finally:
            await one.close()
            await two.close()

    assert run(scenario(), 100) == [[False, True]] * 10


# -- _check_letter_fits: the largest task accepted with a long id ------------------------------

@pytest.mark.parametrize("task_id", ["k" * 1500, " " + "\U0001F600" * 100], ids=["ascii", "token"])
def test_the_largest_task_enqueue_accepts_with_a_long_id_is_queued_dead_lettered_and_requeued(
        nats_url: str, task_id: str) -> None:
    """The largest payload enqueue accepts for a long id (one byte more is refused with
    PayloadTooLargeError by enqueue and enqueue_many, nothing written): enqueue_many queues
    it, it is claimed, its dead letter holds the task, requeue answers True (its message id
    is longer) and it runs again."""

    async def scenario() -> tuple[list[str], list[str], bool, list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("mx"))
        queue = backend.task_queue
        try:
            def task(size: int) -> Task:
                return Task(task_id, "wf", "n", "alpha", {"f": "x" * size}, created_at=1.0, max_attempts=1)

            low, high = 0, int(backend.connection.nc.max_payload)
            while high - low > 1:  # the largest size the check accepts: low
                middle = (low + high) // 2
                try:
                    queue._check_letter_fits(task(middle), encode(task_to_dict(task(middle))))
                    low = middle
                except PayloadTooLargeError:
                    high = middle
            refused = []
            for call in (lambda: queue.enqueue(task(low + 1)), lambda: queue.enqueue_many([task(low + 1)])):
                try:
                    await call()
                except PayloadTooLargeError:
                    refused.append("too large")
            assert await queue.enqueue_many([task(low)]) == [True]
            [claim] = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=5)
            await queue.nack(claim, "boom", final=True)
            letters = [d.task_id for d in await queue.dead_letters() if d.task is not None and d.task.payload == {"f": "x" * low}]
            requeued = await queue.requeue_dead_letter(task_id)
            ran = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=5)]
            return refused, letters, requeued, ran
        finally:
            await backend.close()

    refused, letters, requeued, ran = run(scenario(), 90)
    assert refused == ["too large"] * 2 and letters == [task_id] and requeued and ran == [task_id], (
        refused, [t[:5] for t in letters], requeued, [t[:5] for t in ran])


# -- older producers' messages dead-lettered at claim -------------------------------------------

# Run with PYTHONPATH set to an older tree: enqueue each id with a payload of ``size`` bytes.
BIG_CHILD = r"""
import asyncio, json, sys
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

async def main(job):
    backend = NatsBackend(job["url"], BackendOptions.from_url(job["url"], prefix=job["prefix"]))
    await backend.connect()
    try:
        out = [await backend.task_queue.enqueue(Task(i, "wf", "n", "alpha", {"f": "x" * job["size"]}))
               for i in job["ids"]]
    finally:
        await backend.close()
    print("RESULT " + json.dumps(out))

asyncio.run(main(json.loads(sys.stdin.read())))
"""


def _big_child(tree: Path, job: dict[str, Any]) -> list[bool]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", BIG_CHILD], input=json.dumps(job), capture_output=True, text=True,
                          timeout=90, env=env, cwd=tempfile.gettempdir())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT "):])


def _oversized_for_a_small_claimer(url: str, tree: Path, ids: list[str]) -> tuple[list[str], dict[str, Any]]:
    """An older producer enqueues ``ids`` with 200 KB tasks; a claimer whose max_payload_bytes
    is 100000 (its max_task_bytes under them) dead-letters them unrun. The ids letters are
    listed under, and each id's result."""
    prefix = _prefix("ob")
    assert _big_child(tree, {"url": url, "prefix": prefix, "ids": ids, "size": 200_000}) == [True] * len(ids)

    async def consume() -> tuple[list[str], dict[str, Any]]:
        backend = await open_nats(url, prefix=prefix, max_payload_bytes=100_000)
        queue = backend.task_queue
        try:
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=2) == []
            letters = sorted(d.task_id for d in await queue.dead_letters())
            results = {i: (lambda r: None if r is None else r.status)(await queue.get_result(i)) for i in ids}
            return letters, results
        finally:
            await backend.close()

    return run(consume(), 60)


def test_an_older_producers_oversized_task_of_a_carried_id_is_lettered_under_its_id(
        nats_url: str, old_tree: Path) -> None:  # noqa: F811
    """The control: 3d8a7a8 enqueues "plain" and "=eq" (ids a header carries): a claimer for
    which they are oversized letters them under their own ids, their results failed."""
    letters, results = _oversized_for_a_small_claimer(nats_url, old_tree, ["plain", "=eq"])
    assert letters == ["=eq", "plain"] and results == {"plain": "failed", "=eq": "failed"}, (letters, results)


def test_an_older_producers_oversized_task_of_an_id_a_header_cannot_carry_is_lettered_under_its_id(
        nats_url: str, old_tree: Path) -> None:  # noqa: F811
    """3d8a7a8 wrote Da-Task-Id " a" (delivered as "a") for " a": a claimer for which the task
    is oversized letters it under " a" (or as raw-<seq>), never under "a", another task's id;
    the task's own result is its failure."""
    letters, results = _oversized_for_a_small_claimer(nats_url, old_tree, [" a"])
    assert "a" not in letters and results[" a"] == "failed", (letters, results)


def test_a_previous_producers_oversized_task_of_a_tokened_id_is_lettered_under_its_id(
        nats_url: str, previous_tree: Path) -> None:  # noqa: F811
    """1e3c921 wrote Da-Task-Id "=_20a" for " a" (and "=_3deq" for "=eq"): a claimer for which
    they are oversized letters them under their own ids (or as raw-<seq>), never under the
    header's literal, which is another task's id; their results are failures."""
    letters, results = _oversized_for_a_small_claimer(nats_url, previous_tree, [" a", "=eq"])
    assert "=_20a" not in letters and "=_3deq" not in letters, letters
    assert results == {" a": "failed", "=eq": "failed"}, (letters, results)


def test_an_id_too_long_for_a_kv_subject_is_refused_before_anything_is_written(nats_url: str) -> None:
    """A small task whose id is 5000 characters (its record's key alone passes nats-server's
    4 KiB control line): enqueue refuses it with PayloadTooLargeError, nothing written; a
    claimer of the same queue then runs a small task and acks it."""

    async def scenario() -> tuple[str, str]:
        prefix = _prefix("ll")
        producer = await open_nats(nats_url, prefix=prefix)
        try:
            try:
                outcome = f"returned {await producer.task_queue.enqueue(_task('k' * 5000))}"
            except PayloadTooLargeError:
                outcome = "too large"
            except Exception as error:  # noqa: BLE001 - what else it raises is the finding
                outcome = type(error).__name__
        finally:
            await producer.close()
        claimer = await open_nats(nats_url, prefix=prefix)
        try:
            assert await claimer.task_queue.enqueue(_task("small"))
            try:
                ran = ",".join(t[:8] for t in await _drain(claimer.task_queue, wait=1.0))
            except Exception as error:  # noqa: BLE001
                ran = type(error).__name__
            return outcome, ran
        finally:
            await claimer.close()

    outcome, ran = run(scenario(), 90)
    assert (outcome, ran) == ("too large", "small"), (outcome, ran)
