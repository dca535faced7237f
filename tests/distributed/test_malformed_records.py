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

import json
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


# -- NATS: records written by hand under keys the adapter never writes (N4) -------------
_RECORD = {"graph_name": "g", "status": "running", "state": {}, "step": 0, "version": 1, "frontier": {},
           "metadata": {}, "created_at": 1.0, "updated_at": 1.0}
# key token after "wf." -> bytes written there; no workflow id escapes to any of these tokens
FOREIGN = {
    "bad_key": b"\xff garbage",  # '_' unescaped
    "a.b": json.dumps({**_RECORD, "workflow_id": "a.b"}).encode(),  # a well-formed record, dots in its key
    "Hand_Made.x_2Ey": json.dumps({**_RECORD, "workflow_id": "someone"}).encode(),  # upper-case hex escape
    "wf_de": b"[" * 3_000 + b"]" * 3_000,  # an escape that is no UTF-8, and nested too deeply
}


@pytest.mark.timeout(120)
def test_nats_records_under_keys_no_id_escapes_to_list_as_malformed_and_delete_by_their_key(
        nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Left out of listings, logged naming the key and the id to delete them by (the key's token);
    reading that id says the record is malformed and where; store.delete and the CLI's delete remove it."""
    prefix = f"malrec{uuid.uuid4().hex[:8]}"
    common = ["--backend-url", nats_url, "--prefix", prefix]

    async def setup() -> tuple[list[str], dict[str, str]]:
        backend = open_backend(nats_url, prefix=prefix)
        await backend.connect()
        try:
            store = backend.state_store
            await store.save(WorkflowRecord("wf_good", "g", "completed", {"a": 1}), expected_version=0)
            await store.save(WorkflowRecord("a.b", "g", "completed", {"real": 1}), expected_version=0)  # wf.a_2eb
            bucket = await backend.connection.js.key_value(backend.connection.names.state_bucket)
            for name, data in FOREIGN.items():
                await bucket.put(f"wf.{name}", data)
            listed = sorted(r.workflow_id for r in await store.list_workflows())
            errors = {}
            for name in FOREIGN:
                if name != "a.b":  # "a.b" names the real workflow first
                    with pytest.raises(PayloadDecodeError) as raised:
                        await store.get(name)
                    errors[name] = str(raised.value)
            return listed, errors
        finally:
            await backend.close()

    async def remove_and_check() -> tuple[list[bool], list[str], list[str]]:
        backend = open_backend(nats_url, prefix=prefix)
        await backend.connect()
        try:
            store = backend.state_store
            deleted = [await store.delete("Hand_Made.x_2Ey"), await store.delete("Hand_Made.x_2Ey")]
            real = await store.get("a.b")
            deleted += [real is not None and real.state == {"real": 1}]
            bucket = await backend.connection.js.key_value(backend.connection.names.state_bucket)
            keys = sorted(e.key for e in await _scan_state(backend, bucket))
            return deleted, sorted(r.workflow_id for r in await store.list_workflows()), keys
        finally:
            await backend.close()

    with caplog.at_level(logging.ERROR, logger="distributed_agents.state_store"):
        listed, errors = run(setup(), timeout=60)
    assert listed == ["a.b", "wf_good"]
    left_out = [r.getMessage() for r in caplog.records if "left out of the listing" in r.getMessage()]
    for name in FOREIGN:
        assert any(f"workflow {name!r}" in m and f"wf.{name}" in m and "delete" in m for m in left_out), (name, left_out)
    for name, text in errors.items():
        assert f"workflow {name!r}" in text and f"wf.{name}" in text and "malformed" in text and "delete" in text, text
    status = _cli("status", "bad_key", *common)
    assert status.returncode != 0 and "Traceback" not in status.stderr and "wf.bad_key" in status.stderr, status
    gone = _cli("delete", "bad_key", "wf_de", "--yes", *common)
    assert gone.returncode == 0 and "deleted 2 workflow(s)" in gone.stdout, gone
    deleted, after, keys = run(remove_and_check(), timeout=60)
    assert deleted == [True, False, True]  # the second delete finds nothing; the real "a.b" is untouched
    assert after == ["a.b", "wf_good"]
    assert [k for k in keys if k.startswith("wf.")] == ["wf.a.b", "wf.a_2eb", "wf.wf_5fgood"]
    # "a.b" names the real workflow (wf.a_2eb) first; once it is gone, the one written by hand goes next.
    twice = _cli("delete", "a.b", "--yes", *common), _cli("delete", "a.b", "--yes", *common)
    assert [t.returncode for t in twice] == [0, 0], twice
    missing = _cli("delete", "a.b", "--yes", *common)
    assert missing.returncode == 1 and "a.b: not found" in missing.stderr, missing


async def _scan_state(backend: Any, bucket: Any) -> list[Any]:
    from distributed_agents.adapters.nats import kv

    return await kv.scan(backend.connection.js, bucket, ">")


@pytest.mark.timeout(120)
def test_nats_any_hand_written_record_key_is_listed_past_and_deleted_by_its_token(nats_url: str) -> None:
    """Hypothesis: keys a hand could write under ``wf.`` (any KV key token) holding any bytes: the
    listing still answers with the good record; the token read as an id is malformed, absent or a
    record; deleting the token (or the id it escapes) leaves no ``wf.`` key but the good one."""
    import os

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from distributed_agents.adapters.nats.naming import untoken

    prefix = f"malrec{uuid.uuid4().hex[:8]}"
    keys = st.from_regex(r"[-/_=A-Za-z0-9]{1,12}(\.[-/_=A-Za-z0-9]{1,6}){0,2}", fullmatch=True)
    bodies = st.binary(max_size=40) | st.builds(lambda wid: json.dumps({**_RECORD, "workflow_id": wid}).encode(),
                                                st.text(max_size=8))
    drawn: list[tuple[str, bytes]] = []

    @settings(max_examples=40 if os.environ.get("DA_TEST_PROFILE") == "thorough" else 10, deadline=None,
              database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(keys, bodies)
    def draw(name: str, body: bytes) -> None:
        drawn.append((name, body))

    draw()

    async def scenario() -> None:
        backend = open_backend(nats_url, prefix=prefix)
        await backend.connect()
        try:
            store = backend.state_store
            await store.save(WorkflowRecord("wf_good", "g", "completed", {"a": 1}), expected_version=0)
            bucket = await backend.connection.js.key_value(backend.connection.names.state_bucket)
            for name, body in drawn:
                if name == "wf_5fgood":
                    continue
                await bucket.put(f"wf.{name}", body)
                listed = [r.workflow_id for r in await store.list_workflows()]
                assert "wf_good" in listed and name not in listed or untoken(name) == name, (name, listed)
                target = untoken(name)
                workflow_id = name if target is None else target
                try:
                    await store.get(workflow_id)
                except PayloadDecodeError as exc:
                    assert f"wf.{name}" in str(exc), str(exc)
                await store.delete(workflow_id)
                left = sorted(e.key for e in await _scan_state(backend, bucket) if e.key.startswith("wf."))
                assert left == ["wf.wf_5fgood"], (name, left)
        finally:
            await backend.close()

    run(scenario(), timeout=100)
