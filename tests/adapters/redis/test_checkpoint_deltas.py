"""Redis checkpoints stored as deltas: small, always on the right base, read back as full states."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.adapters.redis import RedisStateManager
from distributed_agents.core.checkpoint_delta import delta_snap
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord


def _states(count: int) -> list[dict[str, Any]]:
    doc = "d" * 20_000
    return [{"doc": doc, "n": n, "history": [f"message {i}" for i in range(n)]} for n in range(count)]


async def _save_all(stores: list[RedisStateManager], states: list[dict[str, Any]], workflow_id: str) -> None:
    """Save each state as the next step, by the stores in turn (``stores[step % len]``)."""
    version = 0
    for step, state in enumerate(states):
        store = stores[step % len(stores)]
        rec = WorkflowRecord(workflow_id, "graph", "running", state, step=step)
        saved = await store.save(rec, expected_version=version, checkpoint=Checkpoint(workflow_id, step, state))
        version = saved.version


def test_unchanged_values_are_stored_once_and_read_back_whole(redis_url: str) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    states = _states(60)

    async def scenario() -> tuple[int, list[Any], list[Any], list[int | None]]:
        store = RedisStateManager(redis_url, prefix=prefix)
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            await _save_all([store], states, "w1")
            entries = await probe.lrange(f"{prefix}:wf:c:w1", 0, -1)
            newest = [cp.state for cp in await store.list_checkpoints("w1", limit=3)]
            restarted = RedisStateManager(redis_url, prefix=prefix)
            try:
                every = [cp.state for cp in await restarted.list_checkpoints("w1")]
            finally:
                await restarted.close()
            return sum(map(len, entries)), newest, every, [delta_snap(e) for e in entries]
        finally:
            await probe.aclose()
            await store.close()

    stored, newest, every, snaps = run(scenario(), 30)
    assert stored < 2 * 20_000 + 60 * 1_000, stored  # full states would take 60 x 20 KB
    assert snaps[0] is None and snaps[-1] is not None
    assert newest == [states[59], states[58], states[57]]
    assert every == list(reversed(states))


def test_writers_taking_turns_never_chain_onto_a_stale_base(redis_url: str) -> None:
    """Two stores (two orchestrators) alternate on one workflow, then one store is replaced
    and the workflow deleted and created again: each write finds its true base or writes a snapshot."""
    prefix = f"d{uuid.uuid4().hex[:8]}"
    states = _states(12)

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        first = RedisStateManager(redis_url, prefix=prefix)
        second = RedisStateManager(redis_url, prefix=prefix)
        try:
            await _save_all([first, second], states, "w1")
            alternating = [cp.state for cp in await first.list_checkpoints("w1")]
            await _save_all([first], states[:6], "w2")
            await second.delete("w2")  # first still remembers w2's newest entry
            fresh = [{"doc": "other" * 1000, "n": n} for n in range(4)]
            await _save_all([second, second, first, first], fresh, "w2")
            recreated = [cp.state for cp in await second.list_checkpoints("w2")]
            tail = [cp.state for cp in await first.list_checkpoints("w2", limit=1)]
            return alternating, recreated, tail
        finally:
            await first.close()
            await second.close()

    alternating, recreated, tail = run(scenario(), 30)
    assert alternating == list(reversed(states))
    fresh = [{"doc": "other" * 1000, "n": n} for n in range(4)]
    assert recreated == list(reversed(fresh))
    assert tail == [fresh[-1]]


def test_a_caller_mutating_its_state_after_saving_changes_no_checkpoint(redis_url: str) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[Any]:
        store = RedisStateManager(redis_url, prefix=prefix)
        try:
            state: dict[str, Any] = {"doc": "z" * 5_000, "items": [1, 2]}
            await store.save(WorkflowRecord("w1", "g", "running", state), expected_version=0,
                             checkpoint=Checkpoint("w1", 0, state))
            state["items"].append(3)  # in place: the store must have kept its own copy
            await store.save(WorkflowRecord("w1", "g", "running", state), expected_version=1,
                             checkpoint=Checkpoint("w1", 1, state))
            return [cp.state["items"] for cp in await store.list_checkpoints("w1")]
        finally:
            await store.close()

    assert run(scenario(), 30) == [[1, 2, 3], [1, 2]]


def test_a_released_workflow_leaves_no_tip_and_a_later_run_commits_a_snapshot_then_deltas(redis_url: str) -> None:
    """The releasing save (a run's last commit) forgets the workflow's newest entry; a later run
    of the same workflow by the same store starts a fresh chain and every state reads back whole."""
    prefix = f"d{uuid.uuid4().hex[:8]}"
    states = _states(8)

    async def scenario() -> tuple[bool, bool, list[bytes], list[Any], list[Any]]:
        store = RedisStateManager(redis_url, prefix=prefix)
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            rec = WorkflowRecord("w1", "graph", "running", states[0])
            saved = await store.save(rec, expected_version=0, checkpoint=Checkpoint("w1", 0, states[0]))
            for run_states, status in ((range(1, 4), "completed"), (range(4, 8), "interrupted")):
                lease = await store.acquire_lease("w1", "me", 30.0)
                assert lease is not None
                for step in run_states:
                    last = step == run_states[-1]
                    rec = saved.evolve(status=status if last else "running", state=states[step], step=step)
                    cp = Checkpoint("w1", step, states[step])
                    if last:
                        saved = await store.save_releasing(rec, expected_version=saved.version, lease=lease,
                                                           checkpoint=cp)
                    else:
                        saved = await store.save(rec, expected_version=saved.version, checkpoint=cp,
                                                 fencing_token=lease.fencing_token)
                if status == "completed":
                    tip_after_first_run = "w1" in store._tips  # noqa: SLF001 - what the store keeps in memory
            tip_after_second_run = "w1" in store._tips  # noqa: SLF001
            entries = await probe.lrange(f"{prefix}:wf:c:w1", 0, -1)
            every = [cp.state for cp in await store.list_checkpoints("w1")]
            restarted = RedisStateManager(redis_url, prefix=prefix)
            try:
                newest = [cp.state for cp in await restarted.list_checkpoints("w1", limit=2)]
            finally:
                await restarted.close()
            return tip_after_first_run, tip_after_second_run, entries, every, newest
        finally:
            await probe.aclose()
            await store.close()

    first, second, entries, every, newest = run(scenario(), 30)
    assert not first and not second
    snaps = [delta_snap(e) for e in entries]
    # Steps 0-3: one chain; the first save after the release (step 4) is a snapshot, 5-7 deltas on it.
    assert snaps[4] is None and snaps[5:] == [4, 4, 4], snaps
    assert snaps[1:4] == [0, 0, 0], snaps
    assert every == list(reversed(states))
    assert newest == [states[7], states[6]]


def test_the_index_scores_follow_the_records_created_at_across_saves(redis_url: str) -> None:
    """The created_at text a store reuses between saves is the record's own: a record saved with
    another created_at (a caller's new record, a delete and create again) is indexed by that one."""
    prefix = f"d{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[float | None]:
        store = RedisStateManager(redis_url, prefix=prefix)
        probe = redis_asyncio.Redis.from_url(redis_url)
        scores: list[float | None] = []
        try:
            saved = await store.save(WorkflowRecord("w1", "g", "running", {"n": 0}, created_at=1000.25),
                                     expected_version=0, checkpoint=Checkpoint("w1", 0, {"n": 0}))
            for step, created in ((1, None), (2, 2000.5), (3, None)):
                rec = saved.evolve(state={"n": step}, step=step)
                if created is not None:
                    rec = rec.evolve(created_at=created)
                saved = await store.save(rec, expected_version=saved.version,
                                         checkpoint=Checkpoint("w1", step, {"n": step}))
                scores.append(await probe.zscore(f"{prefix}:wf:all", "w1"))
            await store.delete("w1")
            await store.save(WorkflowRecord("w1", "g", "running", {"n": 9}, created_at=3000.75),
                             expected_version=0, checkpoint=Checkpoint("w1", 0, {"n": 9}))
            scores.append(await probe.zscore(f"{prefix}:wf:all", "w1"))
            scores.append((await store.list_workflows())[0].created_at)
            return scores
        finally:
            await probe.aclose()
            await store.close()

    assert run(scenario(), 30) == [1000.25, 2000.5, 2000.5, 3000.75, 3000.75]
