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
