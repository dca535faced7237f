"""NATS checkpoints stored as deltas: small, always on the right base, read back as full states,
and a restore reads the newest chain only (from its snapshot on)."""

from __future__ import annotations

import uuid
from typing import Any

from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.checkpoint_delta import delta_snap
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

from .conftest import open_nats


def _states(count: int) -> list[dict[str, Any]]:
    doc = "d" * 20_000
    return [{"doc": doc, "n": n, "history": [f"message {i}" for i in range(n)]} for n in range(count)]


async def _save_all(backends: list[NatsBackend], states: list[dict[str, Any]], workflow_id: str,
                    first_version: int = 0) -> None:
    """Save each state as the next step, by the backends' stores in turn (``backends[step % len]``)."""
    version = first_version
    for step, state in enumerate(states):
        store = backends[step % len(backends)].state_store
        rec = WorkflowRecord(workflow_id, "graph", "running", state, step=step)
        saved = await store.save(rec, expected_version=version, checkpoint=Checkpoint(workflow_id, step, state))
        version = saved.version


async def _entries(backend: NatsBackend, workflow_id: str) -> list[bytes]:
    bucket = backend.connection.bucket(backend.connection.names.state_bucket)
    return [e.value for e in await kv.get_range(bucket, f"cp.{token(workflow_id)}.>")]


def test_unchanged_values_are_stored_once_and_read_back_whole(nats_url: str) -> None:
    states = _states(60)

    async def scenario() -> tuple[int, list[Any], list[Any], list[int | None]]:
        store = await open_nats(nats_url)
        restarted = await open_nats(nats_url, prefix=store.options.prefix)
        try:
            await _save_all([store], states, "w1")
            entries = await _entries(store, "w1")
            newest = [cp.state for cp in await store.state_store.list_checkpoints("w1", limit=3)]
            every = [cp.state for cp in await restarted.state_store.list_checkpoints("w1")]
            return sum(map(len, entries)), newest, every, [delta_snap(e) for e in entries]
        finally:
            await restarted.close()
            await store.close()

    stored, newest, every, snaps = run(scenario(), 60)
    assert stored < 2 * 20_000 + 60 * 1_000, stored  # full states would take 60 x 20 KB
    assert snaps[0] is None and snaps[-1] is not None
    assert newest == [states[59], states[58], states[57]]
    assert every == list(reversed(states))


def test_writers_taking_turns_never_chain_onto_a_stale_base(nats_url: str) -> None:
    """Two stores (two orchestrators) alternate on one workflow, then the workflow is
    deleted and created again: each write finds its true base or writes a snapshot."""
    states = _states(12)
    fresh = [{"doc": "other" * 1000, "n": n} for n in range(4)]

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            await _save_all([first, second], states, "w1")
            alternating = [cp.state for cp in await first.state_store.list_checkpoints("w1")]
            await _save_all([first], states[:6], "w2")
            await second.state_store.delete("w2")  # first still remembers w2's newest entry
            await _save_all([second, second, first, first], fresh, "w2")
            recreated = [cp.state for cp in await second.state_store.list_checkpoints("w2")]
            tail = [cp.state for cp in await first.state_store.list_checkpoints("w2", limit=1)]
            return alternating, recreated, tail
        finally:
            await first.close()
            await second.close()

    alternating, recreated, tail = run(scenario(), 60)
    assert alternating == list(reversed(states))
    assert recreated == list(reversed(fresh))
    assert tail == [fresh[-1]]


def test_a_caller_mutating_its_state_after_saving_changes_no_checkpoint(nats_url: str) -> None:
    async def scenario() -> list[Any]:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            state: dict[str, Any] = {"doc": "z" * 5_000, "items": [1, 2]}
            await store.save(WorkflowRecord("w1", "g", "running", state), expected_version=0,
                             checkpoint=Checkpoint("w1", 0, state))
            state["items"].append(3)  # in place: the store must have kept its own copy
            await store.save(WorkflowRecord("w1", "g", "running", state), expected_version=1,
                             checkpoint=Checkpoint("w1", 1, state))
            return [cp.state["items"] for cp in await store.list_checkpoints("w1")]
        finally:
            await backend.close()

    assert run(scenario(), 30) == [[1, 2, 3], [1, 2]]


def test_a_lost_save_leaves_no_entry_on_the_chain_and_the_next_one_rebases(nats_url: str) -> None:
    """A store whose cached record is stale (another store wrote since) loses its first CAS,
    re-reads, and is refused with a version conflict; its entry is not part of the chain."""
    from distributed_agents.core.errors import VersionConflictError

    states = _states(5)

    async def scenario() -> list[Any]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            await _save_all([first], states[:3], "w1")  # version 3, first caches it
            await second.state_store.save(WorkflowRecord("w1", "g", "running", states[3], step=3),
                                          expected_version=3, checkpoint=Checkpoint("w1", 3, states[3]))
            try:
                await first.state_store.save(WorkflowRecord("w1", "g", "running", {"lost": True}, step=3),
                                             expected_version=3, checkpoint=Checkpoint("w1", 3, {"lost": True}))
                raise AssertionError("a stale expected version was accepted")
            except VersionConflictError:
                pass
            await first.state_store.save(WorkflowRecord("w1", "g", "running", states[4], step=4),
                                         expected_version=4, checkpoint=Checkpoint("w1", 4, states[4]))
            return [cp.state for cp in await second.state_store.list_checkpoints("w1")]
        finally:
            await first.close()
            await second.close()

    assert run(scenario(), 30) == list(reversed(states))


def test_the_newest_checkpoint_is_read_from_its_snapshot_on(nats_url: str) -> None:
    """A restore reads the newest chain only: once a new snapshot was taken, the entries
    before it are not read for ``limit=1`` (bounded restore), but still for the full history."""
    # Each step changes the 2 KB value: the deltas add up to the state's size after a few
    # steps, so snapshots recur and each chain is short.
    states = [{"doc": "s" * 20_000, "v": f"{n:04d}" * 500} for n in range(40)]

    async def scenario() -> tuple[Any, int, int, list[Any]]:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            await _save_all([backend], states, "w1")
            read: list[int] = []
            original = kv.get_range

            async def counting(bucket: Any, pattern: str, *, start: int = 1, timeout: float = 5.0) -> list[kv.Entry]:
                entries = await original(bucket, pattern, start=start, timeout=timeout)
                read.append(len(entries))
                return entries

            kv.get_range = counting  # type: ignore[assignment]
            try:
                [newest] = await store.list_checkpoints("w1", limit=1)
                newest_reads = list(read)
                every = await store.list_checkpoints("w1")
            finally:
                kv.get_range = original  # type: ignore[assignment]
            return newest.state, sum(newest_reads), read[-1], [cp.state for cp in every]
        finally:
            await backend.close()

    newest, newest_read, all_read, every = run(scenario(), 60)
    assert newest == states[-1]
    # The newest entries (up to four, 32 KB together) are held in the record itself.
    assert len(states) - 4 <= all_read <= len(states) - 1, all_read
    assert newest_read < len(states) // 2, newest_read  # only the newest chain
    assert every == list(reversed(states))


def test_entries_held_in_the_record_and_entries_of_their_own_make_one_history(nats_url: str) -> None:
    """The newest entry rides in the record when small and has its own key when large
    (over 32 KB): any mix, written by two stores in turn (each save by one finds the
    record written by the other), reads back as the whole history, newest first; the
    newest alone is read without reading the bucket when the record holds a snapshot."""
    sizes = [10, 50_000, 10, 10, 60_000, 70_000, 10, 100]
    states = [{"n": n, "blob": f"{n}" * size} for n, size in enumerate(sizes)]

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            await _save_all([first, second], states, "w1")
            await _save_all([first], states[:1], "w2")  # one small snapshot, held in the record
            read: list[str] = []
            original = kv.get_range

            async def counting(bucket: Any, pattern: str, *, start: int = 1, timeout: float = 5.0) -> list[kv.Entry]:
                read.append(pattern)
                return await original(bucket, pattern, start=start, timeout=timeout)

            kv.get_range = counting  # type: ignore[assignment]
            try:
                only = [cp.state for cp in await second.state_store.list_checkpoints("w2", limit=1)]
            finally:
                kv.get_range = original  # type: ignore[assignment]
            assert read == [], read
            every = [cp.state for cp in await second.state_store.list_checkpoints("w1")]
            newest = [cp.state for cp in await first.state_store.list_checkpoints("w1", limit=2)]
            return every, newest, only
        finally:
            await first.close()
            await second.close()

    every, newest, only = run(scenario(), 60)
    assert every == list(reversed(states))
    assert newest == [states[-1], states[-2]]
    assert only == [states[0]]


def test_a_few_small_steps_write_no_entry_key_and_more_move_the_oldest_out(nats_url: str) -> None:
    """The newest small entries ride in the record (up to four): a workflow of a few
    steps writes no checkpoint key at all; later steps move the oldest entries to keys
    of their own. Either way the whole history reads back, by another store too, and
    a store that finds the record written by another chains onto it."""
    states = [{"n": n, "log": [f"m{i}" for i in range(n)]} for n in range(11)]

    async def scenario() -> tuple[int, list[Any], int, list[Any], list[Any]]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            await _save_all([first], states[:3], "w1")
            few_keys = len(await _entries(first, "w1"))
            few = [cp.state for cp in await second.state_store.list_checkpoints("w1")]
            for step in range(3, len(states)):  # by the two stores in turn
                store = (first, second)[step % 2].state_store
                rec = WorkflowRecord("w1", "graph", "running", states[step], step=step)
                await store.save(rec, expected_version=step, checkpoint=Checkpoint("w1", step, states[step]))
            many_keys = len(await _entries(first, "w1"))
            every = [cp.state for cp in await second.state_store.list_checkpoints("w1")]
            newest = [cp.state for cp in await first.state_store.list_checkpoints("w1", limit=5)]
            return few_keys, few, many_keys, every, newest
        finally:
            await second.close()
            await first.close()

    few_keys, few, many_keys, every, newest = run(scenario(), 60)
    assert few_keys == 0 and few == list(reversed(states[:3]))
    assert len(states) - 4 <= many_keys < len(states), many_keys
    assert every == list(reversed(states))
    assert newest == list(reversed(states))[:5]
