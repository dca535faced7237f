"""Decisions the NATS state store takes on a read when a direct get answers from a replica
behind the stream's leader (nats-server issue 4162: a replica just restarted answers with
keys as they were): a refusal, a lease reported lost or held, a create refused or accepted,
a fence left unraised, or a reader shown a state older than one this store committed.

The lagging replica is played by direct gets (``kv.get``, ``kv.get_many``) answering, for
one key, an earlier entry (or none); the leader's reads (``kv.get_from_leader``) and every
write go to the real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError, WorkflowExistsError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _lagging(monkeypatch: pytest.MonkeyPatch, key: str, stale: kv.Entry | None) -> None:
    """Direct gets of ``key`` answer ``stale`` (None: absent) from now on (a replica behind)."""
    _lagging_keys(monkeypatch, {key: stale})


def _lagging_keys(monkeypatch: pytest.MonkeyPatch, answers: dict[str, kv.Entry | None]) -> None:
    """Direct gets of each key of ``answers`` answer its entry (None: absent) from now on."""
    direct_get, direct_get_many = kv.get, kv.get_many

    async def get(bucket: Any, wanted: str, **kwargs: Any) -> kv.Entry | None:
        return answers[wanted] if wanted in answers else await direct_get(bucket, wanted, **kwargs)

    async def get_many(bucket: Any, keys: list[str], **kwargs: Any) -> dict[str, kv.Entry]:
        entries = await direct_get_many(bucket, keys, **kwargs)
        for key, stale in answers.items():
            if key in keys:
                entries.pop(key, None)
                if stale is not None:
                    entries[key] = stale
        return entries

    monkeypatch.setattr(kv, "get", get)
    monkeypatch.setattr(kv, "get_many", get_many)


async def _entry(store: Any, key: str) -> kv.Entry:
    found = await kv.get_from_leader(store._conn.js, store._kv, key)
    assert found is not None
    return found


def _record(workflow_id: str, step: int = 0) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "g", "running", {"step": step}, step=step)


def _checkpoint(workflow_id: str, step: int) -> Checkpoint:
    return Checkpoint(workflow_id, step, {"step": step})


def _two_stores(nats_url: str, monkeypatch: pytest.MonkeyPatch,
                body: Callable[[Any, Any], Awaitable[None]]) -> None:
    """Run ``body(first, second)``: the state stores of two backends (processes) on one prefix.
    Direct gets answer normally again after it."""
    async def scenario() -> None:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.connection.names.prefix)
        try:
            await asyncio.wait_for(body(first.state_store, second.state_store), 30)
        finally:
            monkeypatch.undo()
            await second.close()
            await first.close()

    run(scenario(), 60)


def test_get_and_checkpoints_read_this_stores_own_last_commit(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-your-writes: after a commit, the direct get answering the record before it must not
    make ``get`` or ``list_checkpoints`` return the older state (nor none at all)."""
    async def body(store: Any, _: Any) -> None:
        await store.save(_record("w"), expected_version=0, checkpoint=_checkpoint("w", 0))
        before = await _entry(store, f"wf.{token('w')}")
        await store.save(_record("w", 1), expected_version=1, checkpoint=_checkpoint("w", 1))
        for stale in (before, None):
            _lagging(monkeypatch, f"wf.{token('w')}", stale)
            got = await store.get("w")
            assert got is not None and got.version == 2 and got.step == 1
            assert [c.step for c in await store.list_checkpoints("w", limit=1)] == [1]
            assert [c.step for c in await store.list_checkpoints("w")] == [1, 0]
            monkeypatch.undo()

    _two_stores(nats_url, monkeypatch, body)


def test_a_save_is_not_refused_on_a_lagging_replicas_version(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process saves on the version it last read; the direct get answering an older
    record must not make that a VersionConflictError: the leader's record decides."""
    async def body(first: Any, second: Any) -> None:
        await first.save(_record("w"), expected_version=0)
        before = await _entry(first, f"wf.{token('w')}")
        await first.save(_record("w", 1), expected_version=1)
        _lagging(monkeypatch, f"wf.{token('w')}", before)
        saved = await second.save(_record("w", 2), expected_version=2)
        assert saved.version == 3
        with pytest.raises(VersionConflictError) as conflict:  # a real conflict still is one, with the real version
            await second.save(_record("w", 9), expected_version=1)
        assert conflict.value.actual == 3
        monkeypatch.undo()
        got = await first.get("w")
        assert got is not None and got.version == 3 and got.step == 2

    _two_stores(nats_url, monkeypatch, body)


@pytest.mark.parametrize("leased", [False, True])
def test_a_create_decides_on_the_leaders_record(nats_url: str, monkeypatch: pytest.MonkeyPatch, leased: bool) -> None:
    """An id deleted is free again, even while a direct get still answers its old record; an id
    that exists is refused as existing (WorkflowExistsError, not a version conflict), even
    while a direct get answers no record."""
    async def create(store: Any, record: WorkflowRecord) -> None:
        if leased:
            assert await store.create_leased(record, owner="o", ttl=60) is not None
        else:
            await store.save(record, expected_version=0)

    async def body(first: Any, second: Any) -> None:
        assert await first.create_leased(_record("gone"), owner="o", ttl=60) is not None
        old = await _entry(first, f"wf.{token('gone')}")
        assert await first.delete("gone")
        _lagging(monkeypatch, f"wf.{token('gone')}", old)
        await create(second, _record("gone", 5))
        monkeypatch.undo()
        got = await first.get("gone")
        assert got is not None and got.step == 5

        assert await first.create_leased(_record("here"), owner="o", ttl=60) is not None
        _lagging(monkeypatch, f"wf.{token('here')}", None)
        with pytest.raises(WorkflowExistsError):
            await create(second, _record("here", 7))
        monkeypatch.undo()
        got = await first.get("here")
        assert got is not None and got.step == 0

    _two_stores(nats_url, monkeypatch, body)


def test_a_released_lease_is_granted_while_a_replica_shows_it_held(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease released (by ``release_lease``, or by the commit of ``save_releasing``) is free;
    a direct get answering it still held must not refuse the grant."""
    async def body(first: Any, second: Any) -> None:
        created = await first.create_leased(_record("a"), owner="o", ttl=60)
        assert created is not None
        held = await _entry(first, f"lease.{token('a')}")
        await first.release_lease(created[1])
        _lagging(monkeypatch, f"lease.{token('a')}", held)
        lease = await second.acquire_lease("a", "p", 60)
        assert lease is not None and lease.fencing_token == 2
        monkeypatch.undo()

        created = await first.create_leased(_record("b"), owner="o", ttl=60)
        assert created is not None
        record, lease = created
        unreleased = await _entry(first, f"wf.{token('b')}")
        await first.save_releasing(_record("b", 1), expected_version=record.version, lease=lease)
        _lagging(monkeypatch, f"wf.{token('b')}", unreleased)
        granted = await second.acquire_lease("b", "p", 60)
        assert granted is not None and granted.fencing_token == 2
        monkeypatch.undo()

    _two_stores(nats_url, monkeypatch, body)


def test_a_grant_lost_to_a_lagging_revision_is_retried_on_the_leader(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct get answering the lease key at an older revision makes the grant's CAS lose:
    the retry reads the leader (it does not loop on the same old revision)."""
    async def body(first: Any, second: Any) -> None:
        created = await first.create_leased(_record("w"), owner="o", ttl=0.2)
        assert created is not None
        old = await _entry(first, f"lease.{token('w')}")
        assert await first.renew_lease(created[1], 0.2)
        await asyncio.sleep(0.3)  # expired: free for anyone
        _lagging(monkeypatch, f"lease.{token('w')}", old)
        lease = await second.acquire_lease("w", "p", 60)
        assert lease is not None and lease.owner == "p" and lease.fencing_token == 2
        monkeypatch.undo()

    _two_stores(nats_url, monkeypatch, body)


def test_a_new_grant_fences_the_record_while_a_replica_lags(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new grant raises ``_fence`` in the record before returning, so the older holder's next
    commit (a CAS against its own last write) loses. A direct get answering the record at an
    older revision, or none, must not leave the record unfenced."""
    async def body(first: Any, second: Any) -> None:
        for name, stale_record in (("old", True), ("none", False)):
            created = await first.create_leased(_record(name), owner="o", ttl=0.2)
            assert created is not None
            record, lease = created
            old = await _entry(first, f"wf.{token(name)}")
            record = await first.save(_record(name, 1), expected_version=record.version,
                                      fencing_token=lease.fencing_token)
            await asyncio.sleep(0.3)  # the lease expired; the holder does not know yet
            _lagging(monkeypatch, f"wf.{token(name)}", old if stale_record else None)
            taken = await second.acquire_lease(name, "p", 60)
            monkeypatch.undo()
            assert taken is not None and taken.fencing_token == 2
            with pytest.raises((FencingTokenRejectedError, VersionConflictError)):
                await first.save(_record(name, 2), expected_version=record.version, fencing_token=lease.fencing_token)
            got = await second.get(name)
            assert got is not None and got.step == 1

    _two_stores(nats_url, monkeypatch, body)


def test_a_held_lease_is_renewed_and_released_from_another_process_while_a_replica_lags(
        nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that did not write the lease reads it to renew or release it; a direct get
    answering the lease from before its grant (another token) must not report a live lease
    lost, nor leave it held after a release."""
    async def body(first: Any, second: Any) -> None:
        created = await first.create_leased(_record("w"), owner="o", ttl=0.2)
        assert created is not None
        first_lease = await _entry(first, f"lease.{token('w')}")
        await asyncio.sleep(0.3)
        lease = await first.acquire_lease("w", "o", 60)
        assert lease is not None and lease.fencing_token == 2
        _lagging(monkeypatch, f"lease.{token('w')}", first_lease)
        renewed = await second.renew_lease(lease, 60)
        assert renewed.fencing_token == 2
        await second.release_lease(renewed)
        monkeypatch.undo()
        assert await first.lease_holder("w") is None

    _two_stores(nats_url, monkeypatch, body)


def test_lease_holder_and_delete_answer_the_leaders_keys(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lease_holder`` reports the lease this store just granted, and ``delete`` reports the
    record there was, while direct gets answer those keys as absent."""
    async def body(store: Any, _: Any) -> None:
        created = await store.create_leased(_record("w"), owner="o", ttl=60)
        assert created is not None
        _lagging(monkeypatch, f"lease.{token('w')}", None)
        holder = await store.lease_holder("w")
        assert holder is not None and holder.owner == "o"
        monkeypatch.undo()
        _lagging(monkeypatch, f"wf.{token('w')}", None)
        assert await store.delete("w")
        monkeypatch.undo()
        assert await store.get("w") is None
        assert await store.lease_holder("w") is None

    _two_stores(nats_url, monkeypatch, body)


@pytest.mark.parametrize("limit", [None, 3, 8])
def test_checkpoints_moved_out_of_the_record_are_listed_while_a_replica_lags(
        nats_url: str, monkeypatch: pytest.MonkeyPatch, limit: int | None) -> None:
    """The oldest entries move from the record to keys of their own; a batched direct get not
    answering the newest of them yet (a replica behind) must not cut the history short."""
    async def body(store: Any, _: Any) -> None:
        for step in range(8):
            await store.save(_record("w", step), expected_version=step, checkpoint=_checkpoint("w", step))
        pattern = f"cp.{token('w')}.>"
        stored = await kv.get_range(store._kv, pattern)
        assert len(stored) >= 2, stored  # entries of their own, outside the record
        missing = {entry.key for entry in stored[-2:]}
        get_range = kv.get_range

        async def lagging_range(bucket: Any, wanted: str, **kwargs: Any) -> list[kv.Entry]:
            return [e for e in await get_range(bucket, wanted, **kwargs) if e.key not in missing]

        monkeypatch.setattr(kv, "get_range", lagging_range)
        listed = await store.list_checkpoints("w", limit=limit)
        monkeypatch.undo()
        assert [c.step for c in listed] == list(range(7, -1, -1))[:limit]
        assert [c.state for c in listed] == [{"step": step} for step in range(7, -1, -1)][:limit]

    _two_stores(nats_url, monkeypatch, body)


def test_checkpoints_a_scan_missed_get_their_ttl_renewed(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``state_ttl`` the chain behind the record is rewritten with a fresh TTL while the
    record lives; an entry the scan of that rewrite does not return (a replica behind) must
    be rewritten all the same, or it and the entries before it expire under a live record."""
    async def scenario() -> None:
        backend = await open_nats(nats_url, state_ttl=2)
        store = backend.state_store
        try:
            for step in range(8):
                await store.save(_record("w", step), expected_version=step, checkpoint=_checkpoint("w", step))
            written = await kv.get_range(store._kv, f"cp.{token('w')}.>")
            assert written, "entries of their own, outside the record"
            missing = written[-1].key
            scan = kv.scan

            async def lagging_scan(js: Any, bucket: Any, pattern: str = ">") -> list[kv.Entry]:
                return [e for e in await scan(js, bucket, pattern) if e.key != missing]

            monkeypatch.setattr(kv, "scan", lagging_scan)
            version = 8
            for _ in range(12):  # 6 s: past the entries' first TTL (4 s), the record kept alive
                await asyncio.sleep(0.5)
                await store.save(_record("w", 7), expected_version=version)
                version += 1
            monkeypatch.undo()
            assert [c.step for c in await store.list_checkpoints("w")] == list(range(7, -1, -1))
        finally:
            monkeypatch.undo()
            await backend.close()

    run(scenario(), 60)
