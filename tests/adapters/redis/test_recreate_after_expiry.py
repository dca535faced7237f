"""A workflow id created again after its record vanished (expired, evicted, deleted by hand).

The record, its checkpoint list and its lease hash get the same expiry from each save, but
keys can still go one at a time: a record evicted under ``maxmemory``, deleted by hand, or
given a shorter expiry by an operator. Whatever the earlier workflow of the id left behind,
a create of that id starts afresh: no checkpoint of the earlier run is read back as the new
run's history, the fencing tokens keep growing (a lease holder of the earlier run cannot
write to the new one), and the status indexes list the new record under its own status only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.adapters.redis import RedisStateManager
from distributed_agents.core.errors import FencingTokenRejectedError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.ports.task_queue import Task

from .conftest import OpenRedis

OLD_STEPS = 4  # checkpoints the earlier run of the id leaves (steps 0..3)


def _record(workflow_id: str, run: str, status: str = "running") -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", status, {"run": run})


async def _vanish(probe: Any, key: str) -> None:
    """Expire ``key`` alone (the other keys of its workflow keep their expiry) and wait until it is gone."""
    await probe.pexpire(key, 1)
    for _ in range(500):
        if not await probe.exists(key):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} did not expire")


async def _earlier_run(store: RedisStateManager, workflow_id: str, status: str = "running") -> WorkflowRecord:
    """The earlier workflow of the id: OLD_STEPS checkpoints (snapshot then deltas), lease released."""
    made = await store.create_leased(_record(workflow_id, "old"), owner="old-owner", ttl=30.0,
                                     checkpoint=Checkpoint(workflow_id, 0, {"run": "old", "n": 0}))
    assert made is not None
    current, lease = made
    for step in range(1, OLD_STEPS):
        current = await store.save(current.evolve(state={"run": "old", "n": step}), expected_version=current.version,
                                   fencing_token=lease.fencing_token,
                                   checkpoint=Checkpoint(workflow_id, step, {"run": "old", "n": step}))
    return await store.save_releasing(current.evolve(status=status), expected_version=current.version, lease=lease)


# The ways a workflow is created: each returns the new record (version 1).
Create = Callable[[RedisStateManager, Any, str], Awaitable[WorkflowRecord]]


async def _create_leased(store: RedisStateManager, backend: Any, workflow_id: str) -> WorkflowRecord:
    made = await store.create_leased(_record(workflow_id, "new"), owner="new-owner", ttl=30.0,
                                     checkpoint=Checkpoint(workflow_id, 0, {"run": "new", "n": 0}))
    assert made is not None
    return made[0]


async def _create_enqueuing(store: RedisStateManager, backend: Any, workflow_id: str) -> WorkflowRecord:
    made = await store.create_leased_enqueuing(
        _record(workflow_id, "new"), owner="new-owner", ttl=30.0,
        checkpoint=Checkpoint(workflow_id, 0, {"run": "new", "n": 0}), queue=backend.task_queue,
        tasks=[Task(f"{workflow_id}-{uuid.uuid4().hex[:6]}", workflow_id, "n", "alpha", {})])
    assert made is not None and made[2]
    return made[0]


async def _create_plain(store: RedisStateManager, backend: Any, workflow_id: str) -> WorkflowRecord:
    return await store.save(_record(workflow_id, "new"), expected_version=0,
                            checkpoint=Checkpoint(workflow_id, 0, {"run": "new", "n": 0}))


async def _create_without_checkpoint(store: RedisStateManager, backend: Any, workflow_id: str) -> WorkflowRecord:
    # Its first checkpoint comes with the next save (the store still remembers the earlier run's tip).
    created = await store.save(_record(workflow_id, "new"), expected_version=0)
    await store.save(created, expected_version=1, checkpoint=Checkpoint(workflow_id, 0, {"run": "new", "n": 0}))
    return created.evolve(version=2)


CREATES = {"create_leased": _create_leased, "create_leased_enqueuing": _create_enqueuing,
           "save": _create_plain, "save_without_checkpoint": _create_without_checkpoint}


@pytest.mark.parametrize("how", sorted(CREATES))
@pytest.mark.parametrize("state_ttl", [3600.0, None], ids=["state_ttl", "no_ttl"])
@pytest.mark.parametrize("same_store", [True, False], ids=["same_store", "other_store"])
def test_a_recreated_id_reads_back_only_its_own_checkpoints(
    open_redis: OpenRedis, redis_url: str, how: str, state_ttl: float | None, same_store: bool,
) -> None:
    async def scenario() -> tuple[list[tuple[int, Any]], Any, Any, int, int]:
        backend = await open_redis(state_ttl=3600.0)
        again = backend if same_store else await open_redis(prefix=backend.options.prefix, state_ttl=state_ttl)
        probe = redis_asyncio.Redis.from_url(redis_url)
        keys = backend.state_store._keys
        try:
            await _earlier_run(backend.state_store, "w1")
            await _vanish(probe, keys.record("w1"))
            store = again.state_store
            if same_store:
                store.state_ttl = state_ttl
            current = await CREATES[how](store, again, "w1")
            current = await store.save(current.evolve(state={"run": "new", "n": 1}), expected_version=current.version,
                                       checkpoint=Checkpoint("w1", 1, {"run": "new", "n": 1}))
            history = [(c.step, c.state.get("run")) for c in await store.list_checkpoints("w1")]
            newest = await store.list_checkpoints("w1", limit=1)
            old_step = await store.get_checkpoint("w1", OLD_STEPS - 1)
            return (history, newest[0].state, old_step, await probe.llen(keys.checkpoints("w1")),
                    await probe.pttl(keys.checkpoints("w1")))
        finally:
            await probe.aclose()
            if again is not backend:
                await again.close()
            await backend.close()

    history, newest, old_step, length, ttl = run(scenario(), 60)
    assert history == [(1, "new"), (0, "new")]
    assert newest == {"run": "new", "n": 1}
    assert old_step is None  # step 3 of the earlier run is not the new run's
    assert length == 2
    if state_ttl is None:
        assert ttl == -1  # the new run's list keeps no expiry of the earlier run's
    else:
        assert 3_500_000 < ttl <= 3_600_000


@pytest.mark.parametrize("how", ["create_leased", "save_after_acquire"])
def test_a_recreated_id_fences_the_earlier_runs_lease_holder(open_redis: OpenRedis, redis_url: str, how: str) -> None:
    """The lease hash outlives the record: tokens keep growing, so the earlier holder's writes are refused."""

    async def scenario() -> tuple[int, int, int, type[BaseException] | None, int, int]:
        backend = await open_redis(state_ttl=3600.0)
        store = backend.state_store
        probe = redis_asyncio.Redis.from_url(redis_url)
        keys = store._keys
        try:
            made = await store.create_leased(_record("w1", "old"), owner="old-owner", ttl=0.2,
                                             checkpoint=Checkpoint("w1", 0, {"run": "old"}))
            assert made is not None
            old, old_lease = made
            await _vanish(probe, keys.record("w1"))
            await asyncio.sleep(0.25)  # the earlier holder's lease runs out (it does not know)
            store.state_ttl = None  # the new run keeps no expiry: the lease hash's earlier one goes
            if how == "create_leased":
                made = await store.create_leased(_record("w1", "new"), owner="new-owner", ttl=30.0,
                                                 checkpoint=Checkpoint("w1", 0, {"run": "new"}))
                assert made is not None
                new, lease = made
            else:  # the orchestrator's other way: acquire the lease first, then create under it
                acquired = await store.acquire_lease("w1", "new-owner", 30.0)
                assert acquired is not None
                lease = acquired
                new = await store.save(_record("w1", "new"), expected_version=0, fencing_token=lease.fencing_token,
                                       checkpoint=Checkpoint("w1", 0, {"run": "new"}))
            refused: type[BaseException] | None = None
            try:  # the earlier holder commits its version 2 onto the new run's version 1
                await store.save(old.evolve(state={"run": "old", "n": 1}), expected_version=1,
                                 fencing_token=old_lease.fencing_token,
                                 checkpoint=Checkpoint("w1", 1, {"run": "old", "n": 1}))
            except FencingTokenRejectedError as exc:
                refused = type(exc)
            stored = await store.get("w1")
            assert stored is not None and stored.state == {"run": "new"} and new.version == 1
            return (old_lease.fencing_token, lease.fencing_token, len(await store.list_checkpoints("w1")), refused,
                    await probe.pttl(keys.lease("w1")), await probe.pttl(keys.record("w1")))
        finally:
            await probe.aclose()
            await backend.close()

    old_token, new_token, checkpoints, refused, lease_ttl, record_ttl = run(scenario(), 60)
    assert new_token > old_token
    assert refused is FencingTokenRejectedError
    assert checkpoints == 1
    assert (lease_ttl, record_ttl) == (-1, -1)  # no expiry left from the earlier run on the new run's keys


def test_a_recreated_id_is_listed_under_its_own_status_only(open_redis: OpenRedis, redis_url: str) -> None:
    """The earlier run's index entries are ignored (and dropped) by listings and counts."""

    async def scenario() -> tuple[list[str], list[str], list[str], dict[str, int], list[str]]:
        backend = await open_redis(state_ttl=3600.0)
        store = backend.state_store
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            await _earlier_run(store, "w1", status="completed")
            await _vanish(probe, store._keys.record("w1"))
            await _create_leased(store, backend, "w1")
            counts = await store.count_workflows()
            return ([r.workflow_id for r in await store.list_workflows()],
                    [r.workflow_id for r in await store.list_workflows("running")],
                    [r.workflow_id for r in await store.list_workflows("completed")],
                    {status: n for status, n in counts.items() if n},
                    [m.decode() for m in await probe.zrange(store._keys.status_index("completed"), 0, -1)])
        finally:
            await probe.aclose()
            await backend.close()

    everything, running, completed, counts, left = run(scenario(), 60)
    assert (everything, running, completed) == (["w1"], ["w1"], [])
    assert counts == {"running": 1}
    assert left == []
