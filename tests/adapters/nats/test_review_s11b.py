"""Review of the NATS state store's leader reads (accf4cf, 8e3b922, 219a8f3).

What must hold: a read this store makes after its own write never answers the key as it was
before that write (read-your-writes, as the module docstring promises for ``get``,
``list_checkpoints`` and ``lease_holder``), whatever the write was: a commit, a delete, a
lease release, or a commit followed by a lost CAS. A replica behind the stream's leader
(nats-server issue 4162: one just restarted answers with keys as they were) is played, as in
test_state_store_stale_reads.py, by direct gets of one key answering an earlier entry (or
none); the leader's reads and every write go to the real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.errors import VersionConflictError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

from .conftest import open_nats, settle, through_elections
from .test_state_store_stale_reads import _checkpoint, _record
from .test_state_store_stale_reads import _entry as _leader_entry
from .test_state_store_stale_reads import _lagging_keys as _lagging

pytestmark = pytest.mark.timeout(60)


def _stores(nats_url: str, monkeypatch: pytest.MonkeyPatch, body: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """``body(first, second)``: the state stores of two backends on one prefix; its result."""
    async def scenario() -> Any:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.connection.names.prefix)
        try:
            return await asyncio.wait_for(body(first.state_store, second.state_store), 30)
        finally:
            monkeypatch.undo()
            await second.close()
            await first.close()

    return run(scenario(), 60)


@pytest.mark.parametrize("read", ["get", "list_checkpoints"])
def test_a_read_after_this_stores_own_delete_does_not_see_the_deleted_record(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, read: str,
) -> None:
    async def body(store: Any, _: Any) -> Any:
        await store.save(_record("w"), expected_version=0, checkpoint=_checkpoint("w", 0))
        before = await _leader_entry(store, f"wf.{token('w')}")
        assert await store.delete("w")
        _lagging(monkeypatch, {f"wf.{token('w')}": before})
        if read == "get":
            return await store.get("w")
        return await store.list_checkpoints("w")

    found = _stores(nats_url, monkeypatch, body)
    assert found in (None, [])


def test_lease_holder_after_this_stores_own_release_reports_no_holder(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(store: Any, _: Any) -> Any:
        await store.save(_record("w"), expected_version=0)
        lease = await store.acquire_lease("w", "me", 30.0)
        assert lease is not None
        held = await _leader_entry(store, f"lease.{token('w')}")
        await store.release_lease(lease)
        _lagging(monkeypatch, {f"lease.{token('w')}": held})
        return await store.lease_holder("w")

    assert _stores(nats_url, monkeypatch, body) is None


def test_lease_holder_after_this_stores_own_save_releasing_reports_no_holder(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit that releases (its record names the released token) is the store's own last
    write of the record: a replica answering both keys as before it is read again from the leader."""
    async def body(store: Any, _: Any) -> Any:
        made = await store.create_leased(_record("w"), owner="me", ttl=30.0, checkpoint=_checkpoint("w", 0))
        assert made is not None
        current, lease = made
        held = await _leader_entry(store, f"lease.{token('w')}")
        record_before = await _leader_entry(store, f"wf.{token('w')}")
        await store.save_releasing(_record("w", 1), expected_version=current.version, lease=lease,
                                   checkpoint=_checkpoint("w", 1))
        _lagging(monkeypatch, {f"lease.{token('w')}": held, f"wf.{token('w')}": record_before})
        return await store.lease_holder("w"), await store.get("w")

    holder, got = _stores(nats_url, monkeypatch, body)
    assert holder is None
    assert got is not None and got.version == 2 and got.step == 1


def test_a_lost_cas_does_not_make_get_return_a_version_older_than_this_stores_commit(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(first: Any, second: Any) -> Any:
        await first.save(_record("w"), expected_version=0)
        oldest = await _leader_entry(first, f"wf.{token('w')}")
        await first.save(_record("w", 1), expected_version=1)  # first's own commit: version 2
        await second.save(_record("w", 2), expected_version=2)  # another process: version 3
        with pytest.raises(VersionConflictError):  # first, on its cached version 2: the CAS loses
            await first.save(_record("w", 9), expected_version=2)
        _lagging(monkeypatch, {f"wf.{token('w')}": oldest})  # a replica still at version 1
        return await first.get("w")

    got = _stores(nats_url, monkeypatch, body)
    assert got is not None and got.version >= 2  # never older than first's own commit


def test_get_reads_this_stores_own_commit_after_it_commits_many_other_workflows(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(store: Any, _: Any) -> Any:
        await store.save(_record("w"), expected_version=0)
        before = await _leader_entry(store, f"wf.{token('w')}")
        await store.save(_record("w", 1), expected_version=1)
        await asyncio.gather(*(store.save(_record(f"other-{n}"), expected_version=0) for n in range(260)))
        _lagging(monkeypatch, {f"wf.{token('w')}": before})
        return await store.get("w")

    got = _stores(nats_url, monkeypatch, body)
    assert got is not None and got.version == 2 and got.step == 1


def test_lease_holder_after_this_stores_own_delete_reports_no_holder(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """delete frees the lease (keeping its token): a replica answering the lease and record as
    before the delete must not make lease_holder report this store's own freed lease."""
    async def body(store: Any, _: Any) -> Any:
        made = await store.create_leased(_record("w"), owner="me", ttl=30.0)
        assert made is not None
        held = await _leader_entry(store, f"lease.{token('w')}")
        record = await _leader_entry(store, f"wf.{token('w')}")
        assert await store.delete("w")
        _lagging(monkeypatch, {f"lease.{token('w')}": held, f"wf.{token('w')}": record})
        return await store.lease_holder("w")

    assert _stores(nats_url, monkeypatch, body) is None


def test_list_checkpoints_after_a_lost_cas_is_never_older_than_this_stores_commit(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(first: Any, second: Any) -> Any:
        await first.save(_record("w"), expected_version=0, checkpoint=_checkpoint("w", 0))
        oldest = await _leader_entry(first, f"wf.{token('w')}")
        await first.save(_record("w", 1), expected_version=1, checkpoint=_checkpoint("w", 1))
        await second.save(_record("w", 2), expected_version=2, checkpoint=_checkpoint("w", 2))
        with pytest.raises(VersionConflictError):
            await first.save(_record("w", 9), expected_version=2, checkpoint=_checkpoint("w", 9))
        _lagging(monkeypatch, {f"wf.{token('w')}": oldest})
        return [c.step for c in await first.list_checkpoints("w")]

    history = _stores(nats_url, monkeypatch, body)
    assert history and history[0] >= 1  # never older than first's own commit of step 1
    assert history == list(range(history[0], -1, -1))


def test_list_checkpoints_reads_entries_a_lagging_replica_lacks_from_the_leader(
    nats_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another store's entries moved out of the record (large states): a replica missing the
    newest of them (a direct get range answering none) does not cut the history short."""
    async def body(first: Any, second: Any) -> Any:
        big = "x" * 20_000  # too large to ride in the record: each entry under a key of its own
        current = await first.save(WorkflowRecord("w", "g", "running", {"s": big, "n": 0}), expected_version=0,
                                   checkpoint=Checkpoint("w", 0, {"s": big, "n": 0}))
        for step in range(1, 4):
            current = await first.save(current.evolve(state={"s": big + str(step), "n": step}),
                                       expected_version=current.version,
                                       checkpoint=Checkpoint("w", step, {"s": big + str(step), "n": step}))
        keys = [e.key for e in await kv.scan(first._conn.js, first._kv, f"cp.{token('w')}.>")]
        assert len(keys) >= 3
        direct_range = kv.get_range

        async def get_range(bucket: Any, pattern: str, **kwargs: Any) -> list[kv.Entry]:
            found = await direct_range(bucket, pattern, **kwargs)
            return [e for e in found if e.key not in sorted(keys)[-2:]]  # the two newest are not there yet

        monkeypatch.setattr(kv, "get_range", get_range)
        return [c.state["n"] for c in await second.list_checkpoints("w")]

    assert _stores(nats_url, monkeypatch, body) == [3, 2, 1, 0]


# -- a real three-server cluster: a replica down, restarted, and the leader killed mid-call ----


@pytest.fixture(scope="module")
def cluster(nats_cluster: Any) -> Any:
    return nats_cluster


async def _retrying(call: Callable[[], Awaitable[Any]], seconds: float = 30.0) -> Any:
    """``call()`` until it does not raise a backend error (a leader election under way)."""
    import nats.errors

    from distributed_agents.core.errors import BackendError

    give_up = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await call()
        except (BackendError, nats.errors.Error, asyncio.TimeoutError):
            if asyncio.get_running_loop().time() > give_up:
                raise
            await asyncio.sleep(0.2)


async def _commit(store: Any, current: WorkflowRecord, step: int, fencing_token: int) -> WorkflowRecord | None:
    """Save step ``step`` on ``current``; the record saved, or None if the save raised (a
    server away, an election) and did not land (the leader's record decides whether it did)."""
    from distributed_agents.core.errors import BackendError

    try:
        return await asyncio.wait_for(store.save(_record("w", step), expected_version=current.version,
                                                 fencing_token=fencing_token, checkpoint=_checkpoint("w", step)), 20)
    except (BackendError, asyncio.TimeoutError):
        entry = await _retrying(lambda: _leader_entry(store, f"wf.{token('w')}"))
        latest = json.loads(entry.value)
        return current.evolve(version=int(latest["version"]), step=step) if latest["step"] == step else None


async def _twin_commit(store: Any, current: WorkflowRecord, step: int, fencing_token: int) -> WorkflowRecord:
    """Save step ``step`` on ``current`` through ``store`` (another process of the holder, on a
    server just restarted), retried while it goes unanswered; a retry refused as a conflict after
    a try that raised is the first try's commit if the leader's record holds it."""
    saved, _ = await through_elections(lambda: store.save(
        _record("w", step), expected_version=current.version, fencing_token=fencing_token,
        checkpoint=_checkpoint("w", step)), landed=(VersionConflictError,))
    if saved is not None:
        return saved
    entry = await _retrying(lambda: _leader_entry(store, f"wf.{token('w')}"))
    latest = json.loads(entry.value)
    assert latest["step"] == step, latest  # the conflict was no landed first try of this commit
    return current.evolve(version=int(latest["version"]), step=step)


@pytest.mark.timeout(150)
def test_a_lease_held_through_a_replica_down_and_back_is_neither_granted_twice_nor_refused_falsely(
    cluster: Any,
) -> None:
    """The state bucket on three replicas: a follower is SIGKILLed while the holder commits,
    then started again (it catches up, and meanwhile may answer direct gets with keys as they
    were: nats-server issue 4162). Stores connected only to that server must not grant the
    live lease to another owner, nor refuse the holder's next commit as a conflict or a stale
    token; then the leader is SIGKILLed in the middle of commits: each commit that returned is
    in the history once, in order."""
    from support.nats_cluster import stream_leader

    async def scenario() -> tuple[Any, ...]:
        replicated = cluster.url + "?replicas=3"
        holder = await open_nats(replicated)
        prefix = holder.connection.names.prefix
        stream = f"KV_{holder.connection.names.state_bucket}"
        others: list[Any] = []
        killed: list[int] = []
        try:
            await settle(holder, ())  # the buckets just made answer before a server goes
            store = holder.state_store
            made = await store.create_leased(_record("w"), owner="a", ttl=60.0, checkpoint=_checkpoint("w", 0))
            assert made is not None
            current, lease = made
            leader, _ = await _retrying(lambda: stream_leader(cluster.url, stream))
            follower = next(i for i in range(3) if f"n{i}" != leader)
            cluster.kill(follower)
            killed.append(follower)
            committed = [0]
            for step in range(1, 6):  # committed while the follower is down
                saved = await _commit(store, current, step, lease.fencing_token)
                if saved is not None:
                    current = saved
                    committed.append(step)
            # A grant (and create) while the follower is down: the restarted server has never seen it.
            fresh, retried = await through_elections(lambda: store.create_leased(
                _record("w2"), owner="a", ttl=60.0, checkpoint=_checkpoint("w2", 0)))
            # (A retried create whose first try landed answers None: then a's lease is there.)
            if fresh is None and retried:
                holder_now = await _retrying(lambda: store.lease_holder("w2"))
                assert holder_now is not None and holder_now.owner == "a", holder_now
            else:
                assert fresh is not None
            cluster.restart(follower)
            killed.remove(follower)
            # At once (catching up): a rival and the holder's twin, both on the restarted server only.
            lone = cluster.server(follower).url + "?replicas=3"
            rival = await _retrying(lambda: open_nats(lone, prefix=prefix))
            others.append(rival)
            twin = await _retrying(lambda: open_nats(lone, prefix=prefix))
            others.append(twin)
            stolen = await _retrying(lambda: rival.state_store.acquire_lease("w", "b", 60.0))
            created = await _retrying(lambda: rival.state_store.create_leased(
                _record("w"), owner="b", ttl=60.0, checkpoint=_checkpoint("w", 0)))
            stolen_fresh = await _retrying(lambda: rival.state_store.acquire_lease("w2", "b", 60.0))
            created_fresh = await _retrying(lambda: rival.state_store.create_leased(
                _record("w2"), owner="b", ttl=60.0, checkpoint=_checkpoint("w2", 0)))
            saved = await _twin_commit(twin.state_store, current, 6, lease.fencing_token)
            # The leader killed while commits go on: a commit that raised may or may not have
            # landed (its CAS is then decided by the version read again).
            leader, _ = await _retrying(lambda: stream_leader(cluster.url, stream))
            committed.append(6)
            current = saved
            kill_at = 3
            for n, step in enumerate(range(7, 17)):
                if n == kill_at:
                    index = cluster.index_of(leader)
                    cluster.kill(index)
                    killed.append(index)
                landed = await _commit(store, current, step, lease.fencing_token)
                if landed is not None:
                    current = landed
                    committed.append(step)
            history = await _retrying(lambda: store.list_checkpoints("w"))
            final = await _retrying(lambda: store.get("w"))
            return ((stolen, stolen_fresh), (created, created_fresh), saved.version, committed,
                    [c.step for c in reversed(history)], final)
        finally:
            for index in killed:
                cluster.restart(index)
            for other in others:
                await other.close()
            await holder.close()

    stolen, created, saved_version, committed, history, final = run(scenario(), 140)
    assert stolen == (None, None) and created == (None, None)  # a's leases are live: never granted to b
    assert saved_version == len(committed[:committed.index(6) + 1])
    assert history == committed  # every returned commit once, in order, nothing else
    assert final is not None and final.step == committed[-1]
