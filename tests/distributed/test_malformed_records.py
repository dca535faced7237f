"""Malformed workflow records written below the engine: only their workflow fails, listings go on.

The examples a user found by hand (issue 17, hostile input), on memory, Redis and NATS:

- a record holding JSON nested 100,000 levels deep: ``list`` (NATS) and ``status`` (Redis)
  crashed with RecursionError;
- Redis: a plain string at the record's key (``<prefix>:wf:r:<id>``, indexed like a
  record): ``list`` failed for the whole prefix with WRONGTYPE.

Now a listing leaves the bad record out (logged, naming its key) and lists the others;
reading it raises ``PayloadDecodeError`` naming the workflow, its key and what to do;
``delete`` removes it. The CLI's ``list`` and ``status`` say the same without a traceback.
Variants: other deep shapes (objects, mixed), nested just past the limit.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.aio import run

from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import WorkflowRecord
from distributed_agents.plugins import open_backend

DEEP = [b"[" * 100_000 + b"]" * 100_000,  # the example
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,  # objects
        b'{"workflow_id":"bad","status":"running","state":' + b"[{" * 600 + b'"x":1' + b"}]" * 600 + b"}",  # mixed
        b"[" * 1_500 + b"]" * 1_500]  # just past the limit


@pytest.fixture(params=["memory", "redis", "nats"])
def store_url(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    kind = request.param
    prefix = f"malrec{uuid.uuid4().hex[:8]}"
    yield kind, (f"memory://{prefix}" if kind == "memory" else str(request.getfixturevalue(f"{kind}_url"))), prefix


async def _put_record(kind: str, url: str, backend: Any, workflow_id: str, data: bytes) -> str:
    """Overwrite ``workflow_id``'s stored record with ``data`` using the backend's raw client; returns its key."""
    if kind == "memory":
        backend.state_store._data.workflows[workflow_id].record = data
        return f"memory record {workflow_id!r}"
    if kind == "redis":
        import redis.asyncio

        key = backend.state_store._keys.record(workflow_id)
        client = redis.asyncio.from_url(url)
        try:
            await client.hset(key, "rec", data)
        finally:
            await client.aclose()
        return key
    from distributed_agents.adapters.nats.naming import token

    bucket = await backend.connection.js.key_value(backend.connection.names.state_bucket)
    await bucket.put(f"wf.{token(workflow_id)}", data)
    return f"wf.{token(workflow_id)}"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distributed_agents", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(120)
def test_a_deeply_nested_record_fails_only_its_workflow(store_url: tuple[str, str, str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    kind, url, prefix = store_url

    async def scenario() -> list[tuple[str, list[str], str]]:
        backend = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend.connect()
        store = backend.state_store
        seen = []
        try:
            await store.save(WorkflowRecord("good", "g", "running", {"a": 1}), expected_version=0)
            for data in DEEP:
                await store.save(WorkflowRecord("bad", "g", "running", {"a": 1}), expected_version=0)
                key = await _put_record(kind, url, backend, "bad", data)
                listed = [r.workflow_id for r in await store.list_workflows()]
                running = [r.workflow_id for r in await store.list_workflows(status="running")]
                assert listed == running == ["good"], (listed, running)
                with pytest.raises(PayloadDecodeError) as raised:
                    await store.get("bad")
                seen.append((str(raised.value), listed, key))
                assert await store.delete("bad")
                assert await store.get("bad") is None
        finally:
            await backend.close()
        return seen

    with caplog.at_level(logging.ERROR, logger="distributed_agents.state_store"):
        seen = run(scenario(), timeout=100)
    for text, _, key in seen:
        assert "workflow 'bad'" in text and key in text and "malformed" in text and "delete" in text, text
    assert any("nested too deeply" in text for text, _, _ in seen)
    left_out = [r.getMessage() for r in caplog.records if "left out of the listing" in r.getMessage()]
    assert len(left_out) >= len(DEEP) and all("malformed" in m for m in left_out), left_out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_the_cli_lists_past_a_deep_record_and_status_names_it(kind: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue(f"{kind}_url"))
    prefix = f"malrec{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        backend = open_backend(url, prefix=prefix)
        await backend.connect()
        try:
            for workflow_id in ("wf_good", "wf_deep"):
                await backend.state_store.save(WorkflowRecord(workflow_id, "g", "running", {"a": 1}),
                                               expected_version=0)
            await _put_record(kind, url, backend, "wf_deep", DEEP[0])
        finally:
            await backend.close()

    run(setup(), timeout=60)
    common = ["--backend-url", url, "--prefix", prefix]
    listed = _cli("list", *common)
    assert listed.returncode == 0 and "wf_good" in listed.stdout and "Traceback" not in listed.stderr, listed
    status = _cli("status", "wf_deep", *common)
    assert status.returncode != 0 and "Traceback" not in status.stderr, status
    assert "wf_deep" in status.stderr and "malformed" in status.stderr and "nested too deeply" in status.stderr, \
        status.stderr


@pytest.mark.timeout(120)
def test_redis_a_record_key_of_another_type_is_left_out_and_can_be_deleted(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import redis.asyncio

    prefix = f"malrec{uuid.uuid4().hex[:8]}"

    async def scenario() -> dict[str, Any]:
        backend = open_backend(redis_url, prefix=prefix)
        await backend.connect()
        store = backend.state_store
        client = redis.asyncio.from_url(redis_url)
        try:
            for workflow_id in ("wf_good", "wf_strrec"):
                await store.save(WorkflowRecord(workflow_id, "g", "running", {"a": 1}), expected_version=0)
            key = store._keys.record("wf_strrec")
            await client.delete(key)
            await client.set(key, "not a hash")  # still in the indexes, as the user's was
            out: dict[str, Any] = {"key": key}
            out["listed"] = [r.workflow_id for r in await store.list_workflows()]
            out["running"] = [r.workflow_id for r in await store.list_workflows(status="running")]
            out["counts"] = await store.count_workflows()
            with pytest.raises(PayloadDecodeError) as raised:
                await store.get("wf_strrec")
            out["error"] = str(raised.value)
            out["deleted"] = await store.delete("wf_strrec")
            out["gone"] = await store.get("wf_strrec") is None and not await client.exists(key)
            out["after"] = [r.workflow_id for r in await store.list_workflows()]
            return out
        finally:
            await client.aclose()
            await backend.close()

    with caplog.at_level(logging.ERROR, logger="distributed_agents.state_store"):
        out = run(scenario(), timeout=100)
    assert out["listed"] == out["running"] == ["wf_good"], out
    assert out["counts"].get("running") == 1, out["counts"]
    assert "workflow 'wf_strrec'" in out["error"] and out["key"] in out["error"] and "not a Redis hash" in out["error"]
    assert out["deleted"] and out["gone"] and out["after"] == ["wf_good"], out
    assert any(out["key"] in r.getMessage() and "WRONGTYPE" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
