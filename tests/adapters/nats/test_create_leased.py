"""``create_leased`` on NATS: an id the store has not seen is created without reading first
(the first lease CASed as absent, then the record), and every case where a key already
exists falls back to the full path with the port's outcome: a live lease of another owner
gives None, a record gives WorkflowExistsError with the lease left free, a deleted
workflow's id is created again under the next fencing token."""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.errors import FencingTokenRejectedError, WorkflowExistsError
from distributed_agents.core.ports.state_store import WorkflowRecord

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _record(workflow_id: str) -> WorkflowRecord:
    return WorkflowRecord(workflow_id=workflow_id, graph_name="g", status="running", state={"x": 1})


def test_create_leased_falls_back_when_a_key_exists(nats_url: str) -> None:
    async def scenario() -> None:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            a: Any = first.state_store
            b: Any = second.state_store
            # New id: created, token 1.
            created = await a.create_leased(_record("new"), owner="a", ttl=30)
            assert created is not None and created[1].fencing_token == 1
            assert (await a.get("new")).version == 1
            # Another store, not having seen the id, meets a live lease of another owner: None, nothing written.
            assert await b.create_leased(_record("new"), owner="b", ttl=30) is None
            assert (await b.lease_holder("new")).owner == "a"

            # A record saved without a lease: exists, and the grant made on the way is given back.
            await a.save(_record("plain"), expected_version=0)
            with pytest.raises(WorkflowExistsError):
                await b.create_leased(_record("plain"), owner="b", ttl=30)
            assert await b.lease_holder("plain") is None
            assert await a.acquire_lease("plain", "a", 30) is not None  # free for anyone

            # A deleted workflow's id: its lease key stays (tokens only grow), so the full path creates it.
            await a.release_lease(created[1])
            assert await a.delete("new")
            again = await b.create_leased(_record("new"), owner="b", ttl=30)
            assert again is not None and again[1].fencing_token == 2
            # The old holder's token is refused.
            with pytest.raises(FencingTokenRejectedError):
                await a.save(_record("new"), expected_version=1, fencing_token=1)
        finally:
            await first.close()
            await second.close()

    run(scenario(), 50)
