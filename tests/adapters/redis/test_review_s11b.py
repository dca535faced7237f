"""Review of 0ad7532 (each queue script defines only the Lua helpers it uses) and 304f9ee (a
create deletes a checkpoint list an earlier run of the id left), on a real redis-server.

0ad7532: a helper the dependency closure left out fails its script ("attempt to call a nil
value", or a read of an undefined global) only on the path that calls it. The paths driven
here are the rare ones: time applied inside a settling call (ack, nack, extend, release of a
run-out lease) that dead-letters one task, requeues another and releases a due delayed one;
a hand-edited hash met by push_ready inside stats; a cancel of a claimed and of a delayed
task; stats, requeue and purge on a type with dead letters; an undecodable delivery.

304f9ee: a create of an id whose record vanished while an earlier holder's lease is still
live is refused and writes nothing (the earlier run's history is not deleted by a refused
create); a store that drove the earlier run and still remembers its newest checkpoint entry
writes no delta on it into the new run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.ports.task_queue import Task

from .conftest import OpenRedis

pytestmark = pytest.mark.timeout(60)


def _task(task_id: str, max_attempts: int | None = None) -> Task:
    return Task(task_id, "wf", "n", "a", {"id": task_id}, max_attempts=max_attempts)


@pytest.mark.parametrize("call", ["ack", "nack", "extend", "release"])
def test_a_stale_settle_applies_time_to_its_type_through_every_helper(open_redis: OpenRedis, call: str) -> None:
    """Three leases run out (last attempt, attempt 1 of 2, and the caller's own) and a delayed
    task falls due; the stale call is refused and its time step moves each of them once."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis(max_attempts=3)
        queue = backend.task_queue
        try:
            await queue.enqueue_many([_task("last", 1), _task("again", 2), _task("mine"), _task("later")])
            claims = {c.task.id: c for c in await queue.claim(["a"], worker_id="w", max_tasks=4, lease_seconds=0.1)}
            assert sorted(claims) == ["again", "last", "later", "mine"]
            later = await queue.extend(claims["later"], 30.0)
            assert await queue.nack(later, "wait", delay=0.05)  # delayed, due before the others expire
            await asyncio.sleep(0.3)
            stale = claims["mine"]
            with pytest.raises(LeaseLostError):
                if call == "ack":
                    await queue.ack(stale, {"late": True})
                elif call == "nack":
                    await queue.nack(stale, "late")
                elif call == "extend":
                    await queue.extend(stale, 30.0)
                else:
                    await queue.release(stale)
            stats = await queue.stats("a")
            dead = await queue.dead_letters("a")
            result = await queue.get_result("last")
            again = await queue.claim(["a"], worker_id="w2", max_tasks=10, lease_seconds=30.0)
            return stats, dead, result, sorted((c.task.id, c.attempt) for c in again)
        finally:
            await backend.close()

    stats, dead, result, again = run(scenario(), 60)
    assert (stats.queued, stats.in_flight, stats.dead) == (3, 0, 1)
    assert [d.task_id for d in dead] == ["last"] and "lease expired" in dead[0].reason
    assert result is not None and result.status == "failed"
    assert again == [("again", 2), ("later", 2), ("mine", 2)]


def test_stats_meets_a_hand_edited_delayed_task_and_dead_letters_it(open_redis: OpenRedis, redis_url: str) -> None:
    """push_ready's malformed path (malformed, shown, count_of, dead_letter, the clock) inside stats."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        queue = backend.task_queue
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            await queue.enqueue_many([_task("bad")])
            [claim] = await queue.claim(["a"], worker_id="w", max_tasks=1, lease_seconds=30.0)
            assert await queue.nack(claim, "retry", delay=0.05)
            await probe.hset(queue._keys.task("bad"), "score", "not-a-number")
            await asyncio.sleep(0.15)
            stats = await queue.stats("a")
            dead = await queue.dead_letters("a")
            return stats, dead, await queue.get_result("bad")
        finally:
            await probe.aclose()
            await backend.close()

    stats, dead, result = run(scenario(), 60)
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
    assert [d.task_id for d in dead] == ["bad"] and "field 'score'" in dead[0].reason
    assert result is not None and result.status == "failed"


def test_cancel_stats_requeue_and_purge_on_a_type_with_dead_letters(open_redis: OpenRedis) -> None:
    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        queue = backend.task_queue
        try:
            await queue.enqueue_many([_task("dead1", 1), _task("dead2", 1), _task("claimed"), _task("delayed")])
            claims = {c.task.id: c for c in await queue.claim(["a"], worker_id="w", max_tasks=4, lease_seconds=30.0)}
            for name in ("dead1", "dead2"):
                assert not await queue.nack(claims[name], "boom")  # last attempt: dead-lettered
            assert await queue.nack(claims["delayed"], "later", delay=30.0)
            cancelled_claimed = await queue.cancel("claimed")
            cancelled_delayed = await queue.cancel("delayed")
            first = await queue.stats("a")
            requeued = await queue.requeue_dead_letter("dead1")
            purged = await queue.purge_dead_letter("dead2")
            second = await queue.stats("a")
            again = await queue.claim(["a"], worker_id="w2", max_tasks=5, lease_seconds=30.0)
            await queue.ack(claims["claimed"], {"ok": 1})  # the claimed task was not cancelled
            return (cancelled_claimed, cancelled_delayed, first, requeued, purged, second,
                    [(c.task.id, c.attempt) for c in again], await queue.get_result("claimed"))
        finally:
            await backend.close()

    cancelled_claimed, cancelled_delayed, first, requeued, purged, second, again, result = run(scenario(), 60)
    assert (cancelled_claimed, cancelled_delayed) == (False, True)
    assert (first.queued, first.in_flight, first.dead) == (0, 1, 2)
    assert (requeued, purged) == (True, True)
    assert (second.queued, second.in_flight, second.dead) == (1, 1, 0)
    assert again == [("dead1", 1)]
    assert result is not None and result.status == "succeeded" and result.output == {"ok": 1}


def test_an_undecodable_delivery_is_dead_lettered_raw(open_redis: OpenRedis) -> None:
    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        queue = backend.task_queue
        try:
            await queue.enqueue_raw("a", b"\xff not json")
            got = await queue.claim(["a"], worker_id="w", max_tasks=1, lease_seconds=30.0)
            return got, await queue.stats("a"), await queue.dead_letters("a")
        finally:
            await backend.close()

    got, stats, dead = run(scenario(), 60)
    assert got == []
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
    assert len(dead) == 1 and dead[0].task is None and dead[0].raw == b"\xff not json"


def _record(workflow_id: str, run_name: str) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", "running", {"run": run_name})


async def _vanish(probe: Any, key: str) -> None:
    await probe.pexpire(key, 1)
    for _ in range(500):
        if not await probe.exists(key):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} did not expire")


def test_a_create_refused_by_a_live_earlier_lease_deletes_nothing(open_redis: OpenRedis, redis_url: str) -> None:
    """The record vanished while its holder's lease is live: the create is refused ('held') and
    writes nothing, the earlier run's list stays whole; once that lease runs out the create
    succeeds with a greater token and reads back only its own history."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis(state_ttl=3600.0)
        store = backend.state_store
        probe = redis_asyncio.Redis.from_url(redis_url)
        keys = store._keys
        try:
            made = await store.create_leased(_record("w1", "old"), owner="old", ttl=0.5,
                                             checkpoint=Checkpoint("w1", 0, {"run": "old", "n": 0}))
            assert made is not None
            current, old_lease = made
            await store.save(current.evolve(state={"run": "old", "n": 1}), expected_version=1,
                             fencing_token=old_lease.fencing_token, checkpoint=Checkpoint("w1", 1, {"run": "old"}))
            await _vanish(probe, keys.record("w1"))
            refused = await store.create_leased(_record("w1", "new"), owner="new", ttl=30.0,
                                                checkpoint=Checkpoint("w1", 0, {"run": "new"}))
            kept = await probe.llen(keys.checkpoints("w1"))
            await asyncio.sleep(0.6)
            made = await store.create_leased(_record("w1", "new"), owner="new", ttl=30.0,
                                             checkpoint=Checkpoint("w1", 0, {"run": "new"}))
            assert made is not None
            history = [c.state.get("run") for c in await store.list_checkpoints("w1")]
            return refused, kept, old_lease.fencing_token, made[1].fencing_token, history
        finally:
            await probe.aclose()
            await backend.close()

    refused, kept, old_token, new_token, history = run(scenario(), 60)
    assert refused is None
    assert kept == 2
    assert new_token > old_token
    assert history == ["new"]


def test_a_store_remembering_the_earlier_runs_tip_writes_no_delta_on_it(open_redis: OpenRedis, redis_url: str) -> None:
    """The earlier run's driver (its tip still cached: its lease ran out, no release) takes the
    new run over later: its next checkpoint must not be a delta on the earlier run's entry."""

    async def scenario() -> tuple[Any, ...]:
        first = await open_redis(state_ttl=3600.0)
        second = await open_redis(prefix=first.options.prefix, state_ttl=3600.0)
        probe = redis_asyncio.Redis.from_url(redis_url)
        keys = first.state_store._keys
        big = {"text": "x" * 4000}
        try:
            made = await first.state_store.create_leased(_record("w1", "old"), owner="a", ttl=0.2,
                                                         checkpoint=Checkpoint("w1", 0, {"run": "old", **big}))
            assert made is not None
            current, lease = made
            for step in (1, 2):
                current = await first.state_store.save(
                    current.evolve(state={"run": "old", **big, "n": step}), expected_version=current.version,
                    fencing_token=lease.fencing_token,
                    checkpoint=Checkpoint("w1", step, {"run": "old", **big, "n": step}))
            await _vanish(probe, keys.record("w1"))
            await asyncio.sleep(0.25)
            made = await second.state_store.create_leased(_record("w1", "new"), owner="b", ttl=0.2,
                                                          checkpoint=Checkpoint("w1", 0, {"run": "new", **big}))
            assert made is not None
            await asyncio.sleep(0.25)  # b's lease runs out; a takes the new run over
            taken = await first.state_store.acquire_lease("w1", "a", 30.0)
            assert taken is not None
            record = await first.state_store.get("w1")
            assert record is not None
            await first.state_store.save(record.evolve(state={"run": "new", **big, "n": 1}),
                                         expected_version=record.version, fencing_token=taken.fencing_token,
                                         checkpoint=Checkpoint("w1", 1, {"run": "new", **big, "n": 1}))
            history = [(c.step, c.state.get("run"), c.state.get("n")) for c in
                       await second.state_store.list_checkpoints("w1")]
            return history, await probe.llen(keys.checkpoints("w1"))
        finally:
            await probe.aclose()
            await second.close()
            await first.close()

    history, length = run(scenario(), 60)
    assert history == [(1, "new", 1), (0, "new", None)]
    assert length == 2


def test_a_workflow_create_hands_its_first_task_to_a_parked_claimer(open_redis: OpenRedis) -> None:
    """The enqueue inside the state store's create-and-enqueue script (its helpers defined inside
    a function of that script) hands the task straight to a claimer parked on its type."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        queue = backend.task_queue
        try:
            waiting = asyncio.create_task(
                queue.claim(["a"], worker_id="w", max_tasks=4, lease_seconds=30.0, wait=10.0))
            await asyncio.sleep(0.3)  # parked: registered on the type, blocked on its hand-over list
            made = await backend.state_store.create_leased_enqueuing(
                WorkflowRecord("w1", "graph", "running", {}), owner="o", ttl=30.0,
                checkpoint=Checkpoint("w1", 0, {}), queue=queue, tasks=[Task("first", "w1", "n", "a", {"k": 1})])
            assert made is not None and made[2]
            claimed = await asyncio.wait_for(waiting, 15)
            for claim in claimed:
                await queue.ack(claim, {"done": claim.task.id})
            return [(c.task.id, c.attempt, dict(c.task.payload)) for c in claimed], await queue.stats("a")
        finally:
            await backend.close()

    claimed, stats = run(scenario(), 60)
    assert claimed == [("first", 1, {"k": 1})]
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


_SHAS = ("import hashlib; from distributed_agents.adapters.redis import queue_scripts as q, state_store as s;"
         "texts = [getattr(q, n) for n in sorted(q.__all__)] + [s._SAVE, s._CREATE_ENQUEUE];"
         "print(' '.join(hashlib.sha1(t.encode()).hexdigest() for t in texts))")


@pytest.mark.timeout(90)
def test_every_script_has_one_sha_whatever_the_hash_seed() -> None:
    """Processes with different string hash seeds (set orders) build byte-identical scripts,
    the state store's create-and-enqueue script (built from the queue's enqueue) included."""
    shas = {subprocess.run([sys.executable, "-c", _SHAS], capture_output=True, text=True, timeout=60, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("0", "1", "4242")}
    assert len(shas) == 1 and len(next(iter(shas)).split()) > 10
