"""Hostile state: damaged checkpoint entries written straight into each backend's state store.

Hypothesis damages a workflow's stored checkpoint entries (``core.checkpoint_delta``:
snapshots and deltas): bad JSON, wrong types, truncated, a future layout, huge fields,
another workflow's entry, an entry reordered, repeated or dropped. They are written
below the engine: the memory store's entry list, the Redis list (``LSET``/``RPUSH`` with
redis-py), the NATS key-value entries (``put`` with nats-py). The properties:

- ``rebuild`` (the one place every store's entries are decoded) returns checkpoints or
  raises ``PayloadDecodeError`` naming the workflow and what to do, never another
  exception, and a reordered or repeated entry is always reported;
- on each backend, reading the damaged workflow (``list_checkpoints``,
  ``get_checkpoint``, ``get_state``, ``get_state_history``) raises that error, while
  another workflow reads back whole and ``list_workflows`` lists both;
- end to end: a workflow paused before its second node, whose state is large enough
  that the node's task names its checkpoint, is resumed after its checkpoints were
  damaged: that workflow fails with an error naming it and its checkpoints, the
  worker (a real process on Redis and NATS) keeps serving, and another workflow of
  the same graph completes.

Malformed workflow *records* are covered by ``test_hostile_input``. Example counts are
small by default; ``DA_TEST_PROFILE=thorough`` runs more.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.checkpoint_delta import ChainTip, next_entry, rebuild
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.plugins import open_backend

THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"
EXAMPLES = 300 if THOROUGH else 60
STORE_EXAMPLES = 12 if THOROUGH else 4
WF = "damaged"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ENTRY_FIELDS = ["workflow_id", "step", "state", "frontier", "writes", "metadata", "created_at", "id", "delta",
                "from_state"]
DELTA_FIELDS = ["base", "snap", "set", "append", "del"]


def checkpoints(count: int, workflow_id: str = WF) -> list[Checkpoint]:
    """``count`` checkpoints of a growing log (large enough to be stored as deltas), steps 0..count-1."""
    out = []
    log: list[str] = []
    for step in range(count):
        log.append(f"line {step} " + "x" * 400)
        out.append(Checkpoint(workflow_id, step, {"log": list(log), "at": step, "pad": "p" * 1200},
                              {"next": ["n"]}, writes={"n": {"at": step}}, created_at=100.0 + step))
    return out


def entries(count: int) -> list[bytes]:
    """The entries a store writes for ``checkpoints(count)``: a snapshot, then deltas."""
    raws: list[bytes] = []
    tip: ChainTip | None = None
    for index, checkpoint in enumerate(checkpoints(count)):
        raw, tip = next_entry(checkpoint, tip, index=index)
        raws.append(raw)
    return raws


GOOD = entries(5)
assert any(raw.startswith(b'{"delta":') for raw in GOOD)  # the damage below reaches deltas too


@st.composite
def damaged(draw: st.DrawFn, raws: list[bytes]) -> tuple[list[bytes], str]:
    """``raws`` with one kind of damage; returns the list and the kind."""
    out = list(raws)
    kind = draw(st.sampled_from(["json", "field", "delta-field", "version", "truncated", "huge", "bytes",
                                 "other-workflow", "swap", "repeat", "drop"]))
    at = draw(st.integers(0, len(out) - 1))
    item = json.loads(out[at])
    if kind == "json":
        out[at] = json.dumps(draw(JSON)).encode()
    elif kind == "field":
        item[draw(st.sampled_from(ENTRY_FIELDS))] = draw(JSON)
        out[at] = json.dumps(item).encode()
    elif kind == "delta-field":
        at = next(i for i, raw in enumerate(out) if raw.startswith(b'{"delta":'))
        item = json.loads(out[at])
        item["delta"][draw(st.sampled_from(DELTA_FIELDS))] = draw(JSON)
        out[at] = json.dumps(item).encode()
    elif kind == "version":  # a future layout: the entry nested under other keys
        out[at] = json.dumps({"format": draw(st.integers(2, 99)), "entry": item}).encode()
    elif kind == "truncated":
        out[at] = out[at][: draw(st.integers(0, len(out[at]) - 1))]
    elif kind == "huge":
        item["x" * 50_000] = "y" * 300_000
        item["step"] = "9" * 5000
        out[at] = json.dumps(item).encode()
    elif kind == "bytes":
        out[at] = draw(st.binary(max_size=64))
    elif kind == "other-workflow":
        item["workflow_id"] = "someone-else"
        out[at] = json.dumps(item).encode()
    elif kind == "swap":
        other = draw(st.integers(0, len(out) - 1).filter(lambda i: i != at))
        out[at], out[other] = out[other], out[at]
    elif kind == "repeat":
        out.insert(at, out[at])
    else:
        del out[at]
    return out, kind


def _read_all(raws: list[bytes], **page: Any) -> list[Checkpoint] | PayloadDecodeError:
    try:
        return rebuild(raws, 0, workflow_id=WF, where="the test's list", **page)
    except PayloadDecodeError as exc:
        return exc


@settings(max_examples=EXAMPLES, deadline=None)
@given(damaged(GOOD), st.sampled_from([{}, {"limit": 1}, {"limit": 2}, {"before": 3}]))
def test_damaged_entries_rebuild_to_checkpoints_or_an_error_naming_the_workflow(
        case: tuple[list[bytes], str], page: dict[str, Any]) -> None:
    raws, kind = case
    got = _read_all(raws, **page)
    if isinstance(got, PayloadDecodeError):
        text = str(got)
        assert f"workflow {WF!r}" in text and "the test's list" in text and "damaged" in text, text
        assert "delete" in text and "get_state_history" in text, text  # says what to do
        return
    steps = [cp.step for cp in got]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == len(steps)
    assert kind not in ("swap", "repeat", "other-workflow", "bytes", "version"), (kind, steps)
    for checkpoint in got:
        assert isinstance(checkpoint.state, dict) and checkpoint.workflow_id == WF


@pytest.mark.parametrize("kind", ["swap", "repeat"])
def test_a_reordered_or_repeated_entry_is_reported(kind: str) -> None:
    raws = list(GOOD)
    if kind == "swap":
        raws[1], raws[3] = raws[3], raws[1]
    else:
        raws.insert(2, raws[2])
    with pytest.raises(PayloadDecodeError, match=r"workflow 'damaged'.*(reordered or repeated|delta on entry)"):
        rebuild(raws, 0, workflow_id=WF)


def test_a_dropped_delta_is_reported_and_a_delta_pointing_at_itself_does_not_loop() -> None:
    delta_at = next(i for i, raw in enumerate(GOOD) if raw.startswith(b'{"delta":') and i > 0)
    raws = list(GOOD)
    del raws[delta_at]
    if delta_at < len(raws) and raws[delta_at].startswith(b'{"delta":'):
        with pytest.raises(PayloadDecodeError, match="delta on entry"):
            rebuild(raws, 0, workflow_id=WF)
    # Regression: a delta naming itself as its chain's snapshot looped for ever.
    item = json.loads(GOOD[delta_at])
    item["delta"]["snap"] = delta_at
    raws = [*GOOD[:delta_at], json.dumps(item).encode()]
    with pytest.raises(PayloadDecodeError, match="snapshot"):
        rebuild(raws[delta_at:], delta_at, workflow_id=WF, limit=1)


# -- each backend's store, written to below the engine ---------------------------------
async def _entries_of(kind: str, backend: Any, url: str, prefix: str, workflow_id: str) -> Any:
    """A handle to rewrite ``workflow_id``'s stored entries: ``await put(list_of_bytes)``."""
    if kind == "memory":
        async def put_memory(raws: list[bytes]) -> None:
            backend.state_store._data.workflows[workflow_id].checkpoints[:] = raws
        return put_memory
    if kind == "redis":
        import redis.asyncio

        from distributed_agents.adapters.redis.keys import StateKeys

        key = StateKeys(prefix).checkpoints(workflow_id)

        async def put_redis(raws: list[bytes]) -> None:
            client = redis.asyncio.from_url(url)
            try:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.delete(key)
                    pipe.rpush(key, *raws)
                    await pipe.execute()
            finally:
                await client.aclose()
        return put_redis

    bucket, keys, record_key, record = await _nats_chain(backend, workflow_id)
    held = len(_nats_held(record))
    links = [json.loads((await bucket.get(key)).value).get("_prev") for key in keys]
    links += [json.loads(raw).get("_prev") for raw in _nats_held(record)]

    async def put_nats(raws: list[bytes]) -> None:
        # Entries keep their keys and their links to the entry before (``_prev``); a drawn
        # entry whose JSON is an object gets the link of the entry it replaces, so the chain
        # walk reaches the damage instead of stopping short of it. The newest entries are
        # held in the record (``_cp_more``, ``_cp_inline``): those are replaced there, an
        # entry that is not a JSON object as a JSON string (what bytes in a record can be).
        fixed: list[Any] = []
        for link, raw in zip(links, raws):
            try:
                item = json.loads(raw)
            except ValueError:
                item = None
            if isinstance(item, dict):
                item["_prev"] = link
                fixed.append(item)
            else:
                fixed.append(raw.decode("utf-8", "replace"))
        for key, item in zip(keys, fixed):
            await bucket.put(key, item.encode() if isinstance(item, str) else json.dumps(item).encode())
        if held:
            rewritten = dict(record)
            in_record = fixed[len(keys):len(keys) + held]
            rewritten["_cp_more"] = [[pair[0], item] for pair, item in zip(record.get("_cp_more") or [], in_record[:-1])]
            rewritten["_cp_inline"] = in_record[-1]
            await bucket.put(record_key, json.dumps(rewritten).encode())
    return put_nats


async def _nats_chain(backend: Any, workflow_id: str) -> tuple[Any, list[str], str, dict[str, Any]]:
    """The state bucket, the keys of ``workflow_id``'s checkpoint entries (oldest first),
    its record's key and the record (which holds the newest entries itself)."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token

    bucket = await backend.connection.js.key_value(backend.connection.names.state_bucket)
    # The adapter's scan, not nats-py's keys(): its watcher can end before the data comes.
    keys = sorted(entry.key for entry in await kv.scan(backend.connection.js, bucket, f"cp.{token(workflow_id)}.>"))
    record_key = f"wf.{token(workflow_id)}"
    return bucket, keys, record_key, json.loads((await bucket.get(record_key)).value)


def _nats_held(record: dict[str, Any]) -> list[bytes]:
    """The checkpoint entries a NATS record holds, oldest first (``_cp_more``, then ``_cp_inline``)."""
    held = [json.dumps(pair[1]).encode() for pair in record.get("_cp_more") or []]
    if record.get("_cp_inline") is not None:
        held.append(json.dumps(record["_cp_inline"]).encode())
    return held


@pytest.fixture(params=["memory", "redis", "nats"])
def store_url(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    kind = request.param
    prefix = f"hstate{uuid.uuid4().hex[:8]}"
    url = f"memory://{prefix}" if kind == "memory" else str(request.getfixturevalue(f"{kind}_url"))
    yield kind, url, prefix


@pytest.mark.timeout(120)
def test_damaged_checkpoints_fail_reads_of_their_workflow_only(store_url: tuple[str, str, str]) -> None:
    kind, url, prefix = store_url
    drawn: list[tuple[list[bytes], str]] = []

    @settings(max_examples=STORE_EXAMPLES, deadline=None, database=None)
    @given(damaged(GOOD).filter(lambda case: case[1] not in ("swap", "repeat", "drop")
                                or kind != "nats"))  # NATS keeps entries by key: no list to reorder
    def draw(case: tuple[list[bytes], str]) -> None:
        drawn.append(case)

    draw()
    # One of each kind the NATS walk reaches, always (Hypothesis may draw few of them).
    fixed = [([GOOD[0], b"\xff not json", *GOOD[2:]], "bytes"),
             ([*GOOD[:3], json.dumps({**json.loads(GOOD[3]), "step": "3"}).encode(), GOOD[4]], "field"),
             ([*GOOD[:4], GOOD[4][:40]], "truncated")]
    if kind != "nats":
        fixed.append(([GOOD[0], GOOD[2], GOOD[1], *GOOD[3:]], "swap"))

    async def scenario() -> None:
        backend = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend.connect()
        orchestrator = Orchestrator(backend=backend)
        try:
            store = backend.state_store
            for workflow_id in ("good", WF):
                version = 0
                for checkpoint in checkpoints(5, workflow_id):
                    saved = await store.save(
                        WorkflowRecord(workflow_id, "g", WorkflowStatus.INTERRUPTED, checkpoint.state,
                                       step=checkpoint.step, frontier=checkpoint.frontier),
                        expected_version=version, checkpoint=checkpoint)
                    version = saved.version
            put = await _entries_of(kind, backend, url, prefix, WF)
            reported = 0
            for number, (raws, damage) in enumerate([*fixed, *drawn]):
                await put(raws)
                outcomes = []
                for read in (lambda: store.list_checkpoints(WF), lambda: store.list_checkpoints(WF, limit=1),
                             lambda: store.get_checkpoint(WF, 3), lambda: orchestrator.get_state(WF),
                             lambda: orchestrator.get_state_history(WF)):
                    try:
                        await read()
                        outcomes.append("read")
                    except PayloadDecodeError as exc:
                        assert f"workflow {WF!r}" in str(exc) and "damaged" in str(exc), (damage, str(exc))
                        outcomes.append("damaged")
                reported += "damaged" in outcomes
                if number < len(fixed):  # each fixed damage is reported (a drawn one may be harmless: metadata {})
                    assert "damaged" in outcomes, (damage, outcomes)
                good = await orchestrator.get_state("good")
                assert good.values["at"] == 4 and len(await orchestrator.get_state_history("good")) == 5
                assert {r.workflow_id for r in await store.list_workflows()} == {"good", WF}
            assert reported >= len(fixed)
            assert await store.delete(WF)
            assert await store.list_checkpoints(WF) == []
        finally:
            await orchestrator.close()
            await backend.close()

    run(scenario(), timeout=100)


# -- end to end: the damaged workflow fails, the worker and the other workflows go on ---
def two_steps() -> Graph:
    g = Graph("hostile_state")
    g.add_node("prepare").add_node("again", node_type="prepare")
    g.set_entry_point("prepare").add_edge("prepare", "again").set_finish_point("again")
    return g.compile(interrupt_before=["again"])


@pytest.fixture(params=["memory", "redis", "nats"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, Any]]:
    """(kind, url, prefix, workers or None): Redis and NATS get one worker process serving crash_app."""
    kind = request.param
    prefix = f"hstate{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield kind, f"memory://{prefix}", prefix, None
        return
    url = str(request.getfixturevalue(f"{kind}_url"))
    workers = WorkerProcesses(url, prefix, tmp_path_factory.mktemp("hstate"), "crash_app:registry")
    workers.start("w1")
    try:
        yield kind, url, prefix, workers
    finally:
        workers.close()


@pytest.mark.timeout(150)
def test_a_workflow_resumed_on_damaged_checkpoints_fails_alone(served: tuple[str, str, str, Any]) -> None:
    from distributed_agents.distributed import DistributedOrchestrator

    kind, url, prefix, workers = served
    big = {"query": "q", "big": "b" * 6000}  # past INLINE_STATE_LIMIT: tasks name their checkpoint

    async def scenario() -> tuple[Any, dict[str, Any], dict[str, Any]]:
        backend = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend.connect()
        local_worker = serving = None
        if kind == "memory":
            from support.worker_processes import load_test_app

            from distributed_agents import Worker

            local_worker = Worker(backend=backend, registry=load_test_app("crash_app").registry,
                                  worker_id="w1", poll_wait=0.05)
            serving = asyncio.ensure_future(local_worker.start())
            orchestrator: Any = Orchestrator(backend=backend)
        else:
            orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
        graph = two_steps()
        try:
            for workflow_id in (WF, "good"):
                paused = await orchestrator.execute(graph, big, workflow_id=workflow_id)
                assert paused["prepared"] == "prepared q"
            history = await orchestrator.get_state_history(WF)
            assert [s.step for s in history][:1] == [1]
            put = await _entries_of(kind, backend, url, prefix, WF)
            raws = await _stored_entries(kind, backend, url, prefix)
            await put([*raws[:-1], b'{"workflow_id": "damaged", "step": "one"'])  # the step "again" runs on
            raised: BaseException | None = None
            try:
                await orchestrator.resume(WF, graph)
            except Exception as exc:  # the workflow's failure, as resume reports it
                raised = exc
            status = await orchestrator.get_workflow_status(WF)
            good = dict(await orchestrator.resume("good", graph))
            record = await backend.state_store.get(WF)
            return raised, {"status": status.status, "error": dict(record.error or {})}, good
        finally:
            await orchestrator.close()
            if local_worker is not None:
                await local_worker.stop()
                await serving
            await backend.close()

    raised, failed, good = run(scenario(), timeout=130)
    assert good["prepared"] == "prepared q" and len(good["big"]) == 6000
    assert failed["status"] == WorkflowStatus.FAILED, failed
    text = json.dumps(failed["error"])
    assert f"workflow {WF!r}" in text.replace('\\"', '"').replace("\\'", "'") or WF in text, text
    assert "damaged" in text and "step 1" in text, text
    assert raised is not None and WF in str(raised), raised
    if workers is not None:
        assert workers.processes[0].poll() is None, workers.log("w1")


async def _stored_entries(kind: str, backend: Any, url: str, prefix: str) -> list[bytes]:
    if kind == "memory":
        return list(backend.state_store._data.workflows[WF].checkpoints)
    if kind == "redis":
        import redis.asyncio

        from distributed_agents.adapters.redis.keys import StateKeys

        client = redis.asyncio.from_url(url)
        try:
            return list(await client.lrange(StateKeys(prefix).checkpoints(WF), 0, -1))
        finally:
            await client.aclose()
    bucket, keys, _, record = await _nats_chain(backend, WF)
    return [(await bucket.get(key)).value for key in keys] + _nats_held(record)


# -- the dashboard: its list keeps working, the damaged workflow's page says what is wrong --
def test_the_dashboard_lists_a_damaged_workflow_and_its_page_names_the_damage() -> None:
    from starlette.testclient import TestClient

    from distributed_agents.dashboard import create_app

    prefix = f"hstate{uuid.uuid4().hex[:8]}"
    orchestrator = Orchestrator(backend=f"memory://{prefix}")
    app = create_app(orchestrator, graphs=[], own_orchestrator=True)
    with TestClient(app, base_url="http://127.0.0.1") as http:
        async def setup() -> None:
            store = orchestrator.backend.state_store
            for workflow_id in ("good", WF):
                version = 0
                for checkpoint in checkpoints(3, workflow_id):
                    saved = await store.save(
                        WorkflowRecord(workflow_id, "g", WorkflowStatus.INTERRUPTED, checkpoint.state,
                                       step=checkpoint.step, frontier=checkpoint.frontier),
                        expected_version=version, checkpoint=checkpoint)
                    version = saved.version
            store._data.workflows[WF].checkpoints[-1] = b'{"workflow_id": "damaged", "step": []}'

        http.portal.call(setup)
        listing = http.get("/")
        assert listing.status_code == 200 and "good" in listing.text and WF in listing.text
        page = http.get(f"/workflows/{WF}")
        assert page.status_code == 500 and "Stored data damaged" in page.text and "damaged" in page.text
        assert "delete" in page.text  # what to do
        api = http.get(f"/api/workflows/{WF}")
        assert api.status_code == 500 and f"workflow {WF!r}" in api.json()["error"]
        assert http.get("/workflows/good").status_code == 200
