"""The NATS state store writes the engine's encoding of a record (``core.record_json``) and
splices the state's JSON into the checkpoint saved with it only when that checkpoint holds
the record's very state object: a checkpoint of another state keeps its own, whatever the
engine kept. Checked through every write path (the unread create, the fenced create after
a lease exists, the cached save, the releasing commit), read back by a second store."""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.codec import encode
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.record_json import encode_rest, remember

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _kept(record: WorkflowRecord) -> WorkflowRecord:
    """``record`` with its encoding kept, as the engine keeps it before a save."""
    remember(record, encode(dict(record.state)), encode_rest(record, keep=True))
    return record


@pytest.mark.parametrize("same_state", [True, False])
@pytest.mark.parametrize("lease_first", [False, True])
def test_records_and_checkpoints_read_back_as_saved(nats_url: str, same_state: bool, lease_first: bool) -> None:
    async def scenario() -> None:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        store, other = first.state_store, second.state_store
        try:
            if lease_first:  # the create then takes the full path: a lease key exists
                held = await store.acquire_lease("w", "a", 60)
                assert held is not None
                await store.release_lease(held)
            states: list[dict[str, Any]] = []
            record = _kept(WorkflowRecord("w", "g", "running", {"step": 0, "text": "é\u2028"}, step=0,
                                          metadata={"m": 1}))
            checkpoint_state = record.state if same_state else {"checkpoint": 0}
            states.append(dict(checkpoint_state))
            made = await store.create_leased(record, owner="a", ttl=60,
                                             checkpoint=Checkpoint("w", 0, checkpoint_state))
            assert made is not None
            saved, lease = made
            for step in (1, 2):
                record = _kept(saved.evolve(state={"step": step}, step=step))
                checkpoint_state = record.state if same_state else {"checkpoint": step}
                states.append(dict(checkpoint_state))
                saved = await store.save(record, expected_version=saved.version,
                                         checkpoint=Checkpoint("w", step, checkpoint_state),
                                         fencing_token=lease.fencing_token)
            record = _kept(saved.evolve(state={"step": 3}, step=3, status="completed"))
            checkpoint_state = record.state if same_state else {"checkpoint": 3}
            states.append(dict(checkpoint_state))
            final = await store.save_releasing(record, expected_version=saved.version, lease=lease,
                                               checkpoint=Checkpoint("w", 3, checkpoint_state))
            for reader in (store, other):
                read = await reader.get("w")
                assert read is not None and read == final
                assert read.state == {"step": 3} and read.version == 4 and read.metadata == {"m": 1}
                assert [cp.state for cp in await reader.list_checkpoints("w")] == states[::-1]
            assert [r.workflow_id for r in await other.list_workflows("completed")] == ["w"]
            assert await other.list_workflows("running") == []
        finally:
            await second.close()
            await first.close()

    run(scenario(), 60)


def test_a_record_the_engine_did_not_encode_is_encoded_by_the_store(nats_url: str) -> None:
    """No kept encoding (a caller of the store's API): the record is encoded at the save, and a
    kept encoding that no longer matches the record (its state replaced) is not used."""
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            record = WorkflowRecord("plain", "g", "running", {"a": [1, 2]}, step=0)
            made = await store.create_leased(record, owner="a", ttl=60, checkpoint=Checkpoint("plain", 0, record.state))
            assert made is not None
            saved, lease = made
            stale = _kept(saved.evolve(state={"a": "kept"}))
            changed = stale.evolve(state={"a": "changed"}, step=1)  # evolve copies the kept encoding along
            final = await store.save_releasing(changed, expected_version=saved.version, lease=lease,
                                               checkpoint=Checkpoint("plain", 1, changed.state))
            read = await store.get("plain")
            assert read is not None and read == final and read.state == {"a": "changed"}
            assert [cp.state for cp in await store.list_checkpoints("plain")] == [{"a": "changed"}, {"a": [1, 2]}]
        finally:
            await backend.close()

    run(scenario(), 60)
