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
