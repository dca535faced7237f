"""``kv.get`` against a real nats-server: a direct get nobody answers is asked of the stream's leader."""

from __future__ import annotations

import uuid

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv

pytestmark = pytest.mark.timeout(60)


def test_a_direct_get_without_responders_is_answered_by_the_leader(nats_url: str) -> None:
    """A bucket whose stream takes no direct gets (as replicas that have not set up their
    responders yet): ``kv.get`` still answers, from the leader, and None for a missing key."""
    import nats
    from nats.js.api import KeyValueConfig

    async def scenario() -> tuple[kv.Entry | None, kv.Entry | None, int]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        bucket = f"nodirect{uuid.uuid4().hex[:8]}"
        try:
            store = await js.create_key_value(KeyValueConfig(bucket=bucket, direct=False))
            revision = await kv.put(js, store, "a.b", b"value")
            return await kv.get(store, "a.b"), await kv.get(store, "missing"), revision
        finally:
            await js.delete_key_value(bucket)
            await nc.close()

    found, missing, revision = run(scenario(), 30)
    assert found is not None and found.value == b"value" and found.revision == revision
    assert missing is None
