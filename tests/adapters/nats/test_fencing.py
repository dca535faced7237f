"""Fencing on NATS when the record is created after the newest grant, without a token.

A grant raises ``_fence`` in the record only if the record exists; a record created
later must still carry the newest token, or a superseded holder's save against this
store's cached record (no read) would be accepted. The conformance state machine found
this sequence: grant 1, release, grant 2, create without a token, save with token 1.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError
from distributed_agents.core.ports.state_store import WorkflowRecord

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)


def _record(value: int) -> WorkflowRecord:
    return WorkflowRecord(workflow_id="w1", graph_name="g", status="running", state={"v": value})


@pytest.mark.parametrize("create_token", [None, 2])
def test_a_superseded_token_is_refused_on_a_record_created_after_the_grant(nats_url: str,
                                                                          create_token: int | None) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        try:
            store: Any = backend.state_store
            first = await store.acquire_lease("w1", "a", 60.0)
            assert first is not None and first.fencing_token == 1
            await store.release_lease(first)
            second = await store.acquire_lease("w1", "b", 60.0)
            assert second is not None and second.fencing_token == 2
            await store.save(_record(1), expected_version=0, fencing_token=create_token)
            with pytest.raises((FencingTokenRejectedError, VersionConflictError)):
                await store.save(_record(2), expected_version=1, fencing_token=1)
            assert (await store.get("w1")).state == {"v": 1}
            saved = await store.save(_record(3), expected_version=1, fencing_token=2)
            assert saved.version == 2
        finally:
            await backend.close()

    run(scenario(), 50)
