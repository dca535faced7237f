"""Commands the Redis scripts run inside the server, counted by it (``INFO commandstats``
counts a script's commands too), each on a private server so no other test's count mixes in.

Each command a script runs costs the server about as much as a small script's whole logic
(~10k instructions): the server's clock is read at most once per script, even in a script
made of others (the create and its first enqueue, handed to a parked claimer), and a save
writes the workflow indexes only when the record is new or what they hold changes (its
status, its created_at).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(60)


async def _calls(probe: redis_asyncio.Redis, *commands: str) -> dict[str, int]:
    stats = await probe.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


async def _parked(probe: redis_asyncio.Redis, prefix: str, node_type: str) -> None:
    """Return once a claimer is parked on node_type (its registration is on the idle list)."""
    for _ in range(500):
        if await probe.llen(f"{prefix}:q:idle:{node_type}"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the claim did not park")


def _record(workflow_id: str, status: str = WorkflowStatus.RUNNING, created_at: float = 1000.5) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", status, {"x": 0}, frontier={"next": ["n"]}, created_at=created_at)


def test_a_create_handed_to_a_parked_claimer_reads_the_server_clock_once() -> None:
    """The lease's deadline (the save) and the task's (the hand-over) come from one TIME."""

    async def scenario(url: str) -> tuple[list[str], list[int]]:
        prefix = "clock"
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600))
        probe = redis_asyncio.Redis.from_url(url)
        store, queue = backend.state_store, backend.task_queue
        handed: list[str] = []
        times: list[int] = []
        try:
            await backend.connect()
            for n in range(3):  # the first loads the scripts
                workflow_id = f"w{n}"
                claim = asyncio.ensure_future(queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=10.0))
                await _parked(probe, prefix, "alpha")
                before = await _calls(probe, "time")
                record = _record(workflow_id)
                made = await store.create_leased_enqueuing(
                    record, owner="o", ttl=30.0, checkpoint=Checkpoint(workflow_id, 0, record.state, record.frontier),
                    queue=queue, tasks=[Task(f"{workflow_id}-t", workflow_id, "n", "alpha", {"state": {}})])
                times.append((await _calls(probe, "time"))["time"] - before["time"])
                assert made is not None and made[2]
                claimed = await claim
                handed += [c.task.id for c in claimed]
                for c in claimed:
                    await queue.ack(c, {"ok": 1})
            return handed, times
        finally:
            await probe.aclose()
            await backend.close()

    with RedisServer() as server:
        handed, times = run(scenario(server.url), 50)
    assert handed == ["w0-t", "w1-t", "w2-t"]
    assert times == [1, 1, 1]


def test_every_queue_and_store_script_reads_the_server_clock_at_most_once() -> None:
    """A mix of every kind of call (enqueues of several types handed to parked claimers and
    queued, claims, acks, nacks with and without delay, releases, extends, results, stats,
    saves with leases): never more TIME calls than scripts."""

    async def scenario(url: str) -> tuple[int, int]:
        prefix = "mix"
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600))
        probe = redis_asyncio.Redis.from_url(url)
        store, queue = backend.state_store, backend.task_queue
        try:
            await backend.connect()
            before = await _calls(probe, "time", "evalsha", "eval")
            parked = asyncio.ensure_future(queue.claim(["a", "b"], worker_id="p", max_tasks=3, wait=10.0))
            await _parked(probe, prefix, "a")
            await queue.enqueue_many([Task(f"t{i}", "wf", "n", "ab"[i % 2], {"i": i}) for i in range(8)])
            held = list(await parked)
            held += await queue.claim(["a", "b"], worker_id="q", max_tasks=8, wait=1.0)
            assert len(held) == 8
            await queue.extend(held[0], 30.0)
            await queue.ack(held[0], {"ok": 1})
            await queue.nack(held[1], "boom", delay=0.05)
            await queue.nack(held[2], "boom")
            await queue.release(held[3])
            for c in held[4:]:
                await queue.ack(c, {"ok": 1})
            await queue.wait_results([c.task.id for c in held], timeout=0.1)
            await queue.stats("a")
            lease = await store.acquire_lease("w", "o", 30.0)
            assert lease is not None
            record = _record("w")
            saved = await store.save(record, expected_version=0, fencing_token=lease.fencing_token,
                                     checkpoint=Checkpoint("w", 0, record.state, record.frontier))
            await store.renew_lease(lease, 30.0)
            await store.save(saved.evolve(status=WorkflowStatus.COMPLETED), expected_version=saved.version,
                             fencing_token=lease.fencing_token)
            await store.release_lease(lease)
            after = await _calls(probe, "time", "evalsha", "eval")
            return after["time"] - before["time"], (after["evalsha"] + after["eval"]
                                                     - before["evalsha"] - before["eval"])
        finally:
            await probe.aclose()
            await backend.close()

    with RedisServer() as server:
        times, scripts = run(scenario(server.url), 50)
    assert 0 < times <= scripts, (times, scripts)


def test_saves_write_the_workflow_indexes_only_when_what_they_hold_changes() -> None:
    """Saves that keep the status and created_at add no index entry; a new status moves the
    entry between status indexes; a new created_at re-scores both; the listings follow."""

    async def scenario(url: str) -> tuple[list[dict[str, int]], Any]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="ix", heartbeat_ttl=600))
        probe = redis_asyncio.Redis.from_url(url)
        store = backend.state_store
        counts = []
        try:
            await backend.connect()
            saved = await store.save(_record("w"), expected_version=0)

            async def step(record: WorkflowRecord) -> None:
                nonlocal saved
                before = await _calls(probe, "zadd", "zrem")
                saved = await store.save(record, expected_version=saved.version,
                                         checkpoint=Checkpoint("w", record.step, record.state))
                after = await _calls(probe, "zadd", "zrem")
                counts.append({c: after[c] - before[c] for c in after})

            for n in range(1, 4):
                await step(saved.evolve(state={"x": n}, step=n))
            await step(saved.evolve(status=WorkflowStatus.INTERRUPTED, step=4))
            await step(saved.evolve(created_at=2000.25, step=5))
            listings = (
                [(r.workflow_id, r.created_at) for r in await store.list_workflows()],
                [r.workflow_id for r in await store.list_workflows(WorkflowStatus.RUNNING)],
                [(r.workflow_id, r.created_at) for r in await store.list_workflows(WorkflowStatus.INTERRUPTED)],
                await probe.zscore("ix:wf:status:interrupted", "w"),
                await store.count_workflows(),
            )
            return counts, listings
        finally:
            await probe.aclose()
            await backend.close()

    with RedisServer() as server:
        counts, listings = run(scenario(server.url), 50)
    unchanged = {"zadd": 0, "zrem": 0}
    assert counts == [unchanged, unchanged, unchanged, {"zadd": 1, "zrem": 1}, {"zadd": 2, "zrem": 0}]
    everything, running, interrupted, score, by_status = listings
    assert everything == [("w", 2000.25)] and running == [] and interrupted == [("w", 2000.25)]
    assert score == 2000.25
    assert by_status[WorkflowStatus.INTERRUPTED] == 1 and by_status[WorkflowStatus.RUNNING] == 0


def test_settling_a_live_lease_applies_no_time_and_a_first_attempt_deletes_no_errors() -> None:
    """An ack, extend or nack of a lease whose deadline is ahead reads no delayed or leased set
    (time cannot move that task); an ack of a first attempt deletes no error list (it has none).
    A later attempt's ack removes the errors its earlier attempts left."""

    async def scenario(url: str) -> tuple[list[dict[str, int]], int, Any]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="st", heartbeat_ttl=600))
        probe = redis_asyncio.Redis.from_url(url)
        queue = backend.task_queue
        counts = []
        try:
            await backend.connect()
            await queue.enqueue_many([Task(f"t{i}", "wf", "n", "a", {"i": i}) for i in range(3)])
            held = await queue.claim(["a"], worker_id="w", max_tasks=3)
            for call in (lambda: queue.extend(held[0], 30.0), lambda: queue.ack(held[0], {"ok": 1}),
                         lambda: queue.nack(held[1], "boom"), lambda: queue.ack(held[2], {"ok": 2})):
                before = await _calls(probe, "zrangebyscore", "del")
                await call()
                after = await _calls(probe, "zrangebyscore", "del")
                counts.append({c: after[c] - before[c] for c in after})
            again = await queue.claim(["a"], worker_id="w", max_tasks=1)
            errors_before = await probe.llen("st:q:e:t1")
            await queue.ack(again[0], {"ok": 3})
            results = await queue.wait_results(["t0", "t1", "t2"], timeout=1.0)
            return counts, errors_before, (again[0].attempt, await probe.exists("st:q:e:t1"),
                                           sorted((k, r.output["ok"]) for k, r in results.items()))
        finally:
            await probe.aclose()
            await backend.close()

    with RedisServer() as server:
        counts, errors_before, (attempt, errors_after, outputs) = run(scenario(server.url), 50)
    nothing = {"zrangebyscore": 0, "del": 0}
    assert counts == [nothing, nothing, nothing, nothing]
    assert (attempt, errors_before, errors_after) == (2, 1, 0)
    assert outputs == [("t0", 1), ("t1", 3), ("t2", 2)]


def test_an_expired_lease_is_still_lost_to_its_ack_and_re_delivered() -> None:
    """The deadline check that spares a live lease the time step does not spare an expired one:
    its ack is refused (LeaseLostError) and the task goes back to the queue with the error kept."""
    from distributed_agents.core.errors import LeaseLostError

    async def scenario(url: str) -> tuple[bool, int, Any]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="ex", heartbeat_ttl=600))
        queue = backend.task_queue
        try:
            await backend.connect()
            await queue.enqueue_many([Task("t", "wf", "n", "a", {})])
            first = await queue.claim(["a"], worker_id="w", max_tasks=1, lease_seconds=0.05)
            await asyncio.sleep(0.2)
            lost = False
            try:
                await queue.ack(first[0], {"ok": 1})
            except LeaseLostError:
                lost = True
            second = await queue.claim(["a"], worker_id="w2", max_tasks=1)
            await queue.ack(second[0], {"ok": 2})
            result = (await queue.wait_results(["t"], timeout=1.0))["t"]
            return lost, second[0].attempt, result.output
        finally:
            await backend.close()

    with RedisServer() as server:
        lost, attempt, output = run(scenario(server.url), 50)
    assert lost and attempt == 2 and output == {"ok": 2}


def test_saves_without_a_state_ttl_remove_no_expiry_after_the_first_and_one_left_by_a_ttl_store_goes() -> None:
    """A store without state_ttl: the save after one without a ttl runs no PERSIST (no key has
    an expiry), and a delta save reads nothing more of the record than its first HMGET. After a
    save by a store with state_ttl, the next save without one removes the expiries (the three
    keys live for ever again), as before."""
    from distributed_agents.adapters.redis import RedisStateManager

    async def scenario(url: str) -> tuple[list[dict[str, int]], list[int], list[int]]:
        plain = RedisStateManager(url, prefix="pt")
        expiring = RedisStateManager(url, prefix="pt", state_ttl=600)
        probe = redis_asyncio.Redis.from_url(url)
        keys = ["pt:wf:r:w", "pt:wf:c:w", "pt:wf:l:w"]
        counts = []
        try:
            lease = await plain.acquire_lease("w", "o", 30.0)
            assert lease is not None
            saved = await plain.save(_record("w"), expected_version=0, fencing_token=lease.fencing_token,
                                     checkpoint=Checkpoint("w", 0, {"x": 0}))
            for n in range(1, 4):
                before = await _calls(probe, "persist", "hget", "pexpire")
                saved = await plain.save(saved.evolve(state={"x": n}, step=n), expected_version=saved.version,
                                         fencing_token=lease.fencing_token, checkpoint=Checkpoint("w", n, {"x": n}))
                after = await _calls(probe, "persist", "hget", "pexpire")
                counts.append({c: after[c] - before[c] for c in after})
            saved = await expiring.save(saved.evolve(state={"x": 9}, step=4), expected_version=saved.version,
                                        fencing_token=lease.fencing_token, checkpoint=Checkpoint("w", 4, {"x": 9}))
            ttls = [await probe.pttl(k) for k in keys]
            await plain.save(saved.evolve(state={"x": 10}, step=5), expected_version=saved.version,
                             fencing_token=lease.fencing_token, checkpoint=Checkpoint("w", 5, {"x": 10}))
            return counts, ttls, [await probe.pttl(k) for k in keys]
        finally:
            await probe.aclose()
            await plain.close()
            await expiring.close()

    with RedisServer() as server:
        counts, ttls, after = run(scenario(server.url), 50)
    assert counts == [{"persist": 0, "hget": 0, "pexpire": 0}] * 3
    assert all(0 < t <= 600_000 for t in ttls), ttls
    assert after == [-1, -1, -1]
