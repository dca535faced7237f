"""RedisStateManager beyond the conformance suite: indexes, TTLs, retries, the seed's API."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run

from distributed_agents.adapters.redis import RedisStateManager
from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord


def record(workflow_id: str, status: str = "running", **state: object) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", status, dict(state))


def test_seed_constructor_and_status_index_follow_status_changes(redis_url: str) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        store = RedisStateManager(redis_url=redis_url, prefix=f"m{uuid.uuid4().hex[:8]}", state_ttl=86400)
        try:
            first = await store.save(record("w1"), expected_version=0)
            await store.save(record("w2"), expected_version=0)
            await store.save(first.evolve(status="completed"), expected_version=1)
            running = [r.workflow_id for r in await store.list_workflows("running")]
            completed = [r.workflow_id for r in await store.list_workflows("completed")]
            everything = [r.workflow_id for r in await store.list_workflows()]
            return running, completed, everything
        finally:
            await store.close()

    assert run(scenario(), 20) == (["w2"], ["w1"], ["w1", "w2"])


def test_a_refused_save_changes_nothing(redis_url: str) -> None:
    async def scenario() -> tuple[int, dict[str, object], int]:
        store = RedisStateManager(redis_url, prefix=f"m{uuid.uuid4().hex[:8]}")
        try:
            await store.save(record("w1", v=1), expected_version=0, checkpoint=Checkpoint("w1", 0, {"v": 1}))
            lease = await store.acquire_lease("w1", "a", 0.1)
            assert lease is not None
            await asyncio.sleep(0.15)
            newer = await store.acquire_lease("w1", "b", 30)
            assert newer is not None and newer.fencing_token > lease.fencing_token
            with pytest.raises(FencingTokenRejectedError):
                await store.save(record("w1", v=2), expected_version=1, fencing_token=lease.fencing_token,
                                 checkpoint=Checkpoint("w1", 1, {"v": 2}))
            with pytest.raises(VersionConflictError) as caught:
                await store.save(record("w1", v=3), expected_version=5)
            assert caught.value.actual == 1
            current = await store.get("w1")
            assert current is not None
            return current.version, dict(current.state), len(await store.list_checkpoints("w1"))
        finally:
            await store.close()

    assert run(scenario(), 20) == (1, {"v": 1}, 1)


def test_a_repeated_save_after_a_lost_reply_is_not_a_false_conflict(redis_url: str) -> None:
    """The client retries a script whose reply was lost; the commit id makes that safe."""
    from distributed_agents.adapters.redis import state_store as module

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        store = RedisStateManager(redis_url, prefix=f"m{uuid.uuid4().hex[:8]}")
        try:
            keys = store._workflow_keys("w1")
            args = [store.prefix, "w1", 0, b'{"workflow_id":"w1","status":"running"}', "running", "1.0", b"", "", "",
                    "commit-1"]
            first = await store._script("state_save", module._SAVE, keys, args, "save")
            repeat = await store._script("state_save", module._SAVE, keys, args, "save")
            other = await store._script("state_save", module._SAVE, keys, args[:-1] + ["commit-2"], "save")
            return first, repeat, other
        finally:
            await store.close()

    first, repeat, other = run(scenario(), 20)
    assert first[:2] == [b"ok", 0] and repeat[:1] == [b"ok"] and other == [b"exists"]


def test_state_ttl_sets_expiry_on_record_checkpoints_and_lease(redis_url: str) -> None:
    prefix = f"m{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[int]:
        store = RedisStateManager(redis_url, prefix=prefix, state_ttl=100)
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            await store.acquire_lease("w1", "o", 30)  # before the record exists: no TTL to inherit
            await store.save(record("w1"), expected_version=0, checkpoint=Checkpoint("w1", 0, {}))
            return [await probe.pttl(f"{prefix}:wf:{kind}:w1") for kind in ("r", "c", "l")]
        finally:
            await probe.aclose()
            await store.close()

    ttls = run(scenario(), 20)
    assert all(90_000 < ttl <= 100_000 for ttl in ttls), ttls


def test_delete_keeps_fencing_tokens_growing(redis_url: str) -> None:
    async def scenario() -> tuple[bool, bool, int, int]:
        store = RedisStateManager(redis_url, prefix=f"m{uuid.uuid4().hex[:8]}")
        try:
            await store.save(record("w1"), expected_version=0)
            first = await store.acquire_lease("w1", "a", 30)
            assert first is not None
            existed = await store.delete("w1")
            again = await store.delete("w1")
            second = await store.acquire_lease("w1", "b", 30)
            assert second is not None
            return existed, again, first.fencing_token, second.fencing_token
        finally:
            await store.close()

    existed, again, first, second = run(scenario(), 20)
    assert existed is True and again is False and second > first


def test_list_checkpoints_limit_reads_the_tail(redis_url: str) -> None:
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        store = RedisStateManager(redis_url, prefix=f"m{uuid.uuid4().hex[:8]}")
        try:
            current = await store.save(record("w1"), expected_version=0, checkpoint=Checkpoint("w1", 0, {}))
            for step in range(1, 6):
                current = await store.save(current, expected_version=current.version,
                                           checkpoint=Checkpoint("w1", step, {"s": step}))
            newest = [c.step for c in await store.list_checkpoints("w1", limit=2)]
            before = [c.step for c in await store.list_checkpoints("w1", limit=2, before=3)]
            none = [c.step for c in await store.list_checkpoints("w1", limit=0)]
            return newest, before, none
        finally:
            await store.close()

    assert run(scenario(), 20) == ([5, 4], [2, 1], [])


def test_a_commit_writes_the_engines_kept_encoding_and_a_stale_one_is_not_used(redis_url: str) -> None:
    from distributed_agents.core.record_json import record_json, remember

    async def scenario() -> tuple[bytes, bytes, WorkflowRecord | None, list[Checkpoint]]:
        prefix = f"m{uuid.uuid4().hex[:8]}"
        store = RedisStateManager(redis_url, prefix=prefix)
        client = redis_asyncio.Redis.from_url(redis_url)
        try:
            first = record("wk", n=1)
            # Kept bytes that differ from a fresh encoding only in spacing: written as they are.
            remember(first, b'{"n": 1}', b'{"workflow_id":"wk","graph_name":"graph","status":"running","step":0,'
                     b'"frontier":{},"error":null,"graph":null,"metadata":{},"created_at":%s}'
                     % repr(first.created_at).encode())
            saved = await store.save(first, expected_version=0, checkpoint=Checkpoint("wk", 0, first.state, {}))
            raw = await client.hget(f"{prefix}:wf:r:wk", "rec")
            # A record evolved with another state drops the kept bytes: the new state is written.
            second = saved.evolve(state={"n": 2}, step=1)
            await store.save(second, expected_version=1, checkpoint=Checkpoint("wk", 1, second.state, {}))
            return raw, record_json(saved)[0], await store.get("wk"), await store.list_checkpoints("wk")
        finally:
            await client.aclose()
            await store.close()

    raw, expected, current, checkpoints = run(scenario(), 20)
    assert raw == expected and b'"state":{"n": 1}' in raw
    assert current is not None and dict(current.state) == {"n": 2} and current.step == 1
    assert [dict(c.state) for c in checkpoints] == [{"n": 2}, {"n": 1}]  # newest first
