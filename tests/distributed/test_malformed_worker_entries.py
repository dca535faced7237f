"""Malformed worker-registry entries are left out of the listing and logged; nothing fails because of them.

The example a user found (hostile input): on Redis, ``<prefix>:w:i:<id>`` holding ``not
json`` (with the id in ``<prefix>:w:beats``), or a hash there (WRONGTYPE); on NATS, key
``w.garbage1`` of the ``<prefix>_workers`` bucket holding ``not json``. ``list_workers``
raised, so every workflow whose node ran over a second failed at step 0 (the
orchestrator asks the registry which types have workers), and the ``workers`` and
``queues`` commands exited 1 with an error naming no key.

Now each bad entry is left out, logged once naming its key and how to remove it; live
workers are listed, workflows run, the commands succeed. Variants: records of the right
JSON shape with wrong contents (``node_types`` a string, a negative capacity, a record
naming another worker than its key, a key that names no worker id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.ports.worker_registry import WorkerInfo, stored_worker
from distributed_agents.plugins import open_backend

pytestmark = pytest.mark.timeout(120)


def _record(**changes: Any) -> bytes:
    record = WorkerInfo("x", frozenset({"slow"}), capacity=2).to_dict()
    record.update(changes)
    return json.dumps(record).encode()


# (worker id the key names, stored bytes); what each must be refused for is in the log.
BAD = [
    ("garbage1", b"not json"),  # the example
    ("strtypes", _record(worker_id="strtypes", node_types="slow")),  # would serve 's', 'l', 'o', 'w'
    ("negcap", _record(worker_id="negcap", capacity=-3)),
    ("impostor", _record(worker_id="someone-else")),
    ("nulls", b"null"),
    ("infbeat", b'{"worker_id": "infbeat", "node_types": ["slow"], "last_heartbeat": 1e999}'),
]


async def _plant(kind: str, url: str, backend: Any, prefix: str) -> list[str]:
    """Write the ``BAD`` entries (and, on Redis, a hash) below the registry; returns their keys."""
    if kind == "redis":
        import redis.asyncio

        keys = backend.worker_registry._keys
        client = redis.asyncio.from_url(url)
        try:
            (now, _) = await client.time()
            for worker_id, raw in BAD:
                await client.set(keys.info(worker_id), raw, px=60_000)
                await client.zadd(keys.beats, {worker_id: now * 1000})
            await client.hset(keys.info("hashed"), "a", "b")  # WRONGTYPE for a GET
            await client.zadd(keys.beats, {"hashed": now * 1000})
            await client.set(keys.info("future"), _record(worker_id="future"))  # a well-formed record, but
            await client.zadd(keys.beats, {"future": 1e17})  # a beat in the year 5138: it was listed for ever
        finally:
            await client.aclose()
        return [keys.info(worker_id) for worker_id, _ in BAD] + [keys.info("hashed"), keys.info("future")]
    bucket = await backend.connection.js.key_value(backend.connection.names.worker_bucket)
    for worker_id, raw in BAD:
        await bucket.put(f"w.{worker_id}", raw)
    await bucket.put("w._zz", _record(worker_id="_zz", last_heartbeat=time.time()))  # no id makes token '_zz'
    await bucket.put("w.future", _record(worker_id="future", last_heartbeat=time.time() + 1e8))  # listed for ever
    return [f"w.{worker_id}" for worker_id, _ in BAD] + ["w._zz", "w.future"]


@pytest.fixture(params=["redis", "nats"])
def target(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    kind = request.param
    return kind, str(request.getfixturevalue(f"{kind}_url")), f"badw{uuid.uuid4().hex[:8]}"


def test_bad_entries_are_left_out_logged_and_harm_no_workflow(target: tuple[str, str, str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    kind, base, prefix = target
    url = f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
    worker = Worker(backend=url, node_types={"slow"}, poll_wait=0.1)

    async def slow(state: Any) -> dict[str, Any]:
        await asyncio.sleep(1.3)  # over a second: the orchestrator asks the registry for live workers
        return {"done": True}

    worker.register_node("slow", slow)
    graph = Graph("slowly").add_node("slow").set_entry_point("slow").set_finish_point("slow").compile()

    async def scenario() -> tuple[list[str], list[str], list[str], Any]:
        backend = open_backend(url)
        await backend.connect()
        serving = asyncio.ensure_future(worker.start())
        orchestrator = Orchestrator(backend=url, local_nodes=False)
        try:
            while not await backend.worker_registry.list_workers("slow"):
                await asyncio.sleep(0.05)
            keys = await _plant(kind, base, backend, prefix)
            listed = [w.worker_id for w in await backend.worker_registry.list_workers()]
            serving_slow = [w.worker_id for w in await backend.worker_registry.list_workers("s")]
            result = await orchestrator.execute(graph, {}, workflow_id=f"wf-{uuid.uuid4().hex[:6]}")
            return keys, listed, serving_slow, result
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()
            await backend.close()

    with caplog.at_level(logging.WARNING, logger="distributed_agents.worker_registry"):
        keys, listed, serving_s, result = run(scenario(), timeout=90)
    assert listed == [worker.worker_id]
    assert serving_s == []  # a node_types string is not read as its characters
    assert result["done"] is True
    messages = [r.getMessage() for r in caplog.records if r.name == "distributed_agents.worker_registry"]
    for key in keys:
        named = [m for m in messages if repr(key) in m]
        assert len(named) == 1, (key, messages)  # logged once, however often the registry is listed
        assert "malformed" in named[0] and "delete it there" in named[0]
    assert any("must be a JSON object, got NoneType" in m for m in messages)  # null
    assert any("not the key's 'impostor'" in m for m in messages)
    assert any("'capacity' is -3" in m for m in messages)
    if kind == "redis":
        assert any("a Redis hash, not a string" in m for m in messages)
    assert any("future'" in m and "ahead of" in m for m in messages)

    listing = subprocess.run([sys.executable, "-m", "distributed_agents", "workers", "--backend-url", url],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == ""  # the worker stopped; the bad entries are not workers
    assert "malformed" in listing.stderr and "garbage1" in listing.stderr
    queues = subprocess.run([sys.executable, "-m", "distributed_agents", "queues", "--backend-url", url],
                            capture_output=True, text=True, timeout=60)
    assert queues.returncode == 0, queues.stderr


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\xff\xfe", "not valid UTF-8"),
    (b"[1]", "must be a JSON object"),
    (b'{"worker_id": ""}', "'worker_id' is empty"),
    (b'{"worker_id": "a", "node_types": [1]}', "other than strings"),
    (b'{"worker_id": "a", "capacity": true}', "'capacity' is a JSON bool"),
    (b'{"worker_id": "a", "capacity": 0}', "'capacity' is 0"),
    (b'{"worker_id": "a", "pid": -1}', "'pid' is -1"),
    (b'{"worker_id": "a", "metadata": []}', "'metadata' is a JSON list"),
])
def test_stored_worker_names_the_problem_and_the_key(raw: bytes, problem: str) -> None:
    from distributed_agents.core.errors import PayloadDecodeError

    with pytest.raises(PayloadDecodeError) as caught:
        stored_worker(raw, "key 'k1'", "a")
    assert problem in str(caught.value) and "key 'k1'" in str(caught.value)


def test_stored_worker_reads_what_a_worker_writes() -> None:
    info = WorkerInfo("w-1", frozenset({"a", "b"}), capacity=3, host="h", pid=9, metadata={"zone": "eu"})
    assert stored_worker(json.dumps(info.to_dict()), "key 'k'", "w-1") == info


def test_redis_a_damaged_heartbeat_index_fails_no_workflow_and_is_repaired(redis_url: str,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """From a trial: ``SET <p>:w:beats garbage`` mid-run failed the running workflow (WRONGTYPE from the
    registry read the orchestrator makes while a node runs over a second), and ``workers`` said
    WRONGTYPE without the key. Now the listing names the key, the workflow goes on (logged), and a
    registering worker replaces the index; a live worker whose own entry was written over
    registers again on its next heartbeat instead of staying hidden."""
    import redis.asyncio

    prefix = f"beats{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?prefix={prefix}"
    worker = Worker(backend=url, node_types={"slow"}, poll_wait=0.1, heartbeat_interval=0.2)

    async def slow(state: Any) -> dict[str, Any]:
        await asyncio.sleep(1.3)
        return {"done": True}

    worker.register_node("slow", slow)
    graph = Graph("slowly_b").add_node("slow").set_entry_point("slow").set_finish_point("slow").compile()

    async def scenario() -> tuple[Any, str, list[str], list[str]]:
        backend = open_backend(url)
        await backend.connect()
        client = redis.asyncio.from_url(redis_url)
        serving = asyncio.ensure_future(worker.start())
        orchestrator = Orchestrator(backend=url, local_nodes=False)
        keys = backend.worker_registry._keys
        try:
            while not await backend.worker_registry.list_workers("slow"):
                await asyncio.sleep(0.05)
            await client.delete(keys.beats)
            await client.set(keys.beats, "garbage")
            try:
                await backend.worker_registry.list_workers()
                listing_error = ""
            except Exception as exc:
                listing_error = str(exc)
            result = await orchestrator.execute(graph, {}, workflow_id=f"wf-{uuid.uuid4().hex[:6]}")
            await backend.worker_registry.register(WorkerInfo("other", frozenset({"x"})))  # replaces the index
            await client.set(keys.info(worker.worker_id), "written over")
            listed: list[str] = []
            for _ in range(100):  # the live worker's next heartbeats register it again
                listed = [w.worker_id for w in await backend.worker_registry.list_workers("slow")]
                if listed:
                    break
                await asyncio.sleep(0.05)
            return result, listing_error, listed, [worker.worker_id]
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()
            await client.aclose()
            await backend.close()

    with caplog.at_level(logging.WARNING):
        result, listing_error, listed, expected = run(scenario(), timeout=90)
    assert f"heartbeat index at Redis key '{prefix}:w:beats' is a Redis string" in listing_error
    assert result["done"] is True  # the step went on
    assert any("the worker registry could not be read" in r.getMessage() for r in caplog.records)
    assert any("was not a sorted set" in r.getMessage() and "replaced" in r.getMessage() for r in caplog.records)
    assert listed == expected
