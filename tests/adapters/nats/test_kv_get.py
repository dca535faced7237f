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


def test_batched_and_started_direct_gets_without_responders_are_answered_by_the_leader(nats_url: str) -> None:
    """The same for the batched reads: ``get_many`` (keys present, missing, removed, duplicated),
    ``get_range`` (every message of a pattern from a sequence on, a key rewritten once) and a
    read started by ``start_get`` (present and missing) answer from the leader, as a direct get
    would have answered."""
    import nats
    from nats.js.api import KeyValueConfig

    async def scenario() -> dict[str, object]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        bucket = f"nodirect{uuid.uuid4().hex[:8]}"
        try:
            store = await js.create_key_value(KeyValueConfig(bucket=bucket, direct=False))
            revisions = {key: await kv.put(js, store, key, key.encode()) for key in ("a.1", "a.2", "b.1", "gone")}
            revisions["a.1"] = await kv.put(js, store, "a.1", b"a.1 again")
            await kv.remove(js, store, "gone")
            present, missing = await kv.start_get(store, "a.2"), await kv.start_get(store, "nothing")
            return {
                "revisions": revisions,
                "many": await kv.get_many(store, ["a.1", "b.1", "missing", "gone", "a.1"]),
                "range": await kv.get_range(store, "a.>"),
                "range_later": await kv.get_range(store, "a.>", start=revisions["a.2"] + 1),
                "started": kv.entry_of(await present.reply(), "a.2"),
                "started_missing": kv.entry_of(await missing.reply(), "nothing"),
            }
        finally:
            await js.delete_key_value(bucket)
            await nc.close()

    got = run(scenario(), 30)
    revisions = got["revisions"]
    assert isinstance(revisions, dict)
    assert got["many"] == {"a.1": kv.Entry("a.1", b"a.1 again", revisions["a.1"]),
                           "b.1": kv.Entry("b.1", b"b.1", revisions["b.1"])}
    assert got["range"] == [kv.Entry("a.2", b"a.2", revisions["a.2"]),
                            kv.Entry("a.1", b"a.1 again", revisions["a.1"])]
    assert got["range_later"] == [kv.Entry("a.1", b"a.1 again", revisions["a.1"])]
    assert got["started"] == kv.Entry("a.2", b"a.2", revisions["a.2"])
    assert got["started_missing"] is None
