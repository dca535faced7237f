"""``save_releasing`` on NATS: the commit and the lease's release are one record CAS.

The record names the released token (``_released``); every reader of the lease takes
that lease as free. These check each reader, on the releasing store and on another
one, that later saves keep the release, that a failed commit releases nothing, and
that a renewal that read the lease before the commit does not report it held.
"""

from __future__ import annotations

import pytest
from support.aio import run

from distributed_agents.core.errors import LeaseLostError, VersionConflictError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

from .conftest import open_nats


def _record(step: int) -> WorkflowRecord:
    return WorkflowRecord("w1", "g", "running", {"n": step}, step=step)


def test_a_released_lease_is_free_to_every_reader(nats_url: str) -> None:
    async def scenario() -> None:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        store, other = first.state_store, second.state_store
        try:
            created = await store.create_leased(_record(0), owner="a", ttl=60,
                                                checkpoint=Checkpoint("w1", 0, {"n": 0}))
            assert created is not None
            record, lease = created
            saved = await store.save_releasing(_record(1), expected_version=record.version, lease=lease,
                                               checkpoint=Checkpoint("w1", 1, {"n": 1}))
            assert await store.lease_holder("w1") is None and await other.lease_holder("w1") is None
            with pytest.raises(LeaseLostError):
                await store.renew_lease(lease, 60)
            with pytest.raises(LeaseLostError):
                await other.renew_lease(lease, 60)
            # A save without a lease (an update of the state, say) keeps the release.
            saved = await other.save(_record(2), expected_version=saved.version)
            taken = await other.acquire_lease("w1", "b", 60)
            assert taken is not None and taken.fencing_token == lease.fencing_token + 1
            holder = await store.lease_holder("w1")
            assert holder is not None and holder.owner == "b"
            assert await store.acquire_lease("w1", "a", 60) is None  # b holds it now
            # The new holder's own last commit releases its token, not the old one's.
            await other.save_releasing(_record(3), expected_version=saved.version, lease=taken)
            again = await store.acquire_lease("w1", "a", 60)
            assert again is not None and again.fencing_token == taken.fencing_token + 1
            assert [cp.step for cp in await other.list_checkpoints("w1")] == [1, 0]
        finally:
            await second.close()
            await first.close()

    run(scenario(), 60)


def test_a_failed_releasing_commit_keeps_the_lease(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            created = await store.create_leased(_record(0), owner="a", ttl=60)
            assert created is not None
            record, lease = created
            with pytest.raises(VersionConflictError):
                await store.save_releasing(_record(1), expected_version=record.version + 5, lease=lease)
            holder = await store.lease_holder("w1")
            assert holder is not None and holder.owner == "a" and holder.fencing_token == lease.fencing_token
            assert await store.acquire_lease("w1", "b", 60) is None
            renewed = await store.renew_lease(lease, 60)
            assert renewed.fencing_token == lease.fencing_token
        finally:
            await backend.close()

    run(scenario(), 60)


def test_a_renewal_read_before_the_releasing_commit_reports_the_lease_lost(nats_url: str) -> None:
    """The renewal reads lease and record, the commit releases the lease, then the
    renewal's CAS of the lease key lands: it must not report the lease held."""

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            created = await store.create_leased(_record(0), owner="a", ttl=60)
            assert created is not None
            record, lease = created
            store._leases.clear()  # the renewal takes its read path
            read = store._lease_and_record

            async def read_then_commit(workflow_id: str, **options: bool) -> object:
                found = await read(workflow_id, **options)
                await store.save_releasing(_record(1), expected_version=record.version, lease=lease)
                return found

            store._lease_and_record = read_then_commit  # type: ignore[method-assign]
            with pytest.raises(LeaseLostError):
                await store.renew_lease(lease, 60)
            store._lease_and_record = read  # type: ignore[method-assign]
            assert await store.lease_holder("w1") is None
            assert await store.acquire_lease("w1", "b", 60) is not None
        finally:
            await backend.close()

    run(scenario(), 60)
