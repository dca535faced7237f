"""Batched direct gets (``adapters.nats.kv``) against a real server: how their errors are classed."""

from __future__ import annotations

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.core.errors import BackendUnavailableError

pytestmark = pytest.mark.nats


def test_a_stream_nobody_serves_is_an_outage_not_a_failure(nats_url: str) -> None:
    """A 503 answer (no server serves the stream now, as while a restarted server recovers it) is retried
    like a lost connection; once it failed the workflow (the chaos soak found it after a restart)."""

    async def direct_get() -> None:
        import nats

        nc = await nats.connect(nats_url)
        try:
            with nats_errors(nats_url, "read entries"):
                await kv._direct_batch(nc, "KV_no_such_bucket", {"multi_last": ["$KV.no_such_bucket.k"],  # noqa: SLF001
                                                                 "batch": 1}, 5.0)
        finally:
            await nc.close()

    with pytest.raises(BackendUnavailableError, match="unavailable"):
        run(direct_get())


@pytest.mark.timeout(60)
def test_remove_through_a_revision_keeps_a_value_written_after_it(nats_url: str) -> None:
    """``remove_through(key, r)`` removes the key's values up to revision r: one written after r
    (a new dead letter under the same key, written while a requeue removed the old one) stays;
    removing through the newest revision removes the key."""
    import uuid

    import nats

    async def scenario() -> tuple[object, object, object, object]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            bucket = await js.create_key_value(bucket=f"rt{uuid.uuid4().hex[:8]}", history=1)
            first = await bucket.put("k", b"old")
            second = await bucket.put("k", b"new")
            await bucket.put("other", b"x")
            await kv.remove_through(js, bucket, "k", first)
            kept = await kv.get(bucket, "k")
            other = await kv.get(bucket, "other")
            await kv.remove_through(js, bucket, "k", second)
            gone = await kv.get(bucket, "k")
            return (kept.value, kept.revision), second, other and other.value, gone
        finally:
            await nc.close()

    kept, second, other, gone = run(scenario(), 30)
    assert kept == (b"new", second) and other == b"x" and gone is None, (kept, other, gone)
