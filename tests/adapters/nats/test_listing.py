"""``list_workflows(status)`` passes over records of another status without decoding them
(the recovery loop lists the running ones every few seconds among every record kept): it
lists exactly what the unfiltered listing holds with that status, whatever the ids, graph
names, states and metadata say, and records written by hand are still read and checked."""

from __future__ import annotations

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.core.codec import encode
from distributed_agents.core.ports.state_store import WorkflowRecord

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)

_STATUSES = ("running", "completed", "failed", "interrupted")


def test_a_status_listing_is_the_full_listing_filtered(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            tricky = '","status":"running'
            for index, status in enumerate(_STATUSES * 2):
                record = WorkflowRecord(f"w{index}{tricky if index % 3 == 0 else ''}", f"g{tricky}" if index % 2 else "g",
                                        status, {"status": "running", "note": tricky},
                                        metadata={"status": "running"} if index % 2 else {})
                await store.save(record, expected_version=0)
            bucket = backend.connection.bucket(backend.connection.names.state_bucket)
            # Written by hand: spaced, reordered (status after a nested one), not an object.
            by_hand = {"state": {"status": "completed"}, "workflow_id": "hand1", "graph_name": "g",
                       "status": "running", "step": 0, "version": 1, "frontier": {}, "metadata": {},
                       "created_at": 1.0, "updated_at": 1.0}
            await kv.put(backend.connection.js, bucket, "wf.hand1", encode(by_hand).replace(b":", b": "))
            await kv.put(backend.connection.js, bucket, "wf.hand2", b'{"workflow_id": "hand2", "status": "failed"}')
            await kv.put(backend.connection.js, bucket, "wf.hand3", b"[1, 2]")
            everything = await store.list_workflows()
            assert {r.workflow_id for r in everything} >= {"hand1", *(f"w{i}" for i in range(1, 8, 3))}
            for status in _STATUSES:
                listed = [r.workflow_id for r in await store.list_workflows(status)]
                assert listed == [r.workflow_id for r in everything if r.status == status], status
            assert "hand1" in [r.workflow_id for r in await store.list_workflows("running")]
        finally:
            await backend.close()

    run(scenario(), 45)
