"""Hostile input: malformed tasks written straight into each backend's queue.

Hypothesis makes the records (bad JSON, wrong types, huge fields, unknown versions,
numbers no int or float holds, truncated records); they go in below the engine
(``enqueue_raw`` on memory and Redis, which stores the bytes as they are; a plain
JetStream publish on the task subject, with nats-py, on NATS). The properties:

- decoding a task record gives a task or ``ValueError`` naming the problem, never
  another exception (one escaped from a claim would stop a worker);
- a real worker process (Redis, NATS; an in-process worker on memory) dead-letters each
  bad task with a reason and keeps serving: a good workflow after them completes.

Example counts are small by default; ``DA_TEST_PROFILE=thorough`` runs more.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.ports.task_queue import Task, task_from_dict, task_to_dict
from distributed_agents.distributed import DistributedOrchestrator
from distributed_agents.plugins import open_backend

THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"
EXAMPLES = 200 if THOROUGH else 25
WORKER_EXAMPLES = 20 if THOROUGH else 3
NODE_TYPE = "prepare"

GOOD = task_to_dict(Task(id="t-1", workflow_id="wf-1", node="prepare", node_type=NODE_TYPE, payload={"state": {}}))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Numbers JSON carries that int() or float() cannot take: 1e999 is inf, 10**400 overflows a float.
HUGE_NUMBERS = st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity", b"1" + b"0" * 400])


def _is_task(data: bytes) -> bool:
    try:
        task_from_dict(json.loads(data))
    except ValueError:
        return False
    return True


@st.composite
def bad_task_records(draw: st.DrawFn) -> bytes:
    """One malformed task record, as bytes."""
    kind = draw(st.sampled_from(["json", "wrong-type", "number", "version", "truncated", "huge", "bytes"]))
    if kind == "json":  # any JSON value, almost never a task
        return json.dumps(draw(JSON)).encode()
    if kind == "wrong-type":  # a field of a type it cannot have (a record that still decodes is not drawn)
        field = draw(st.sampled_from(sorted(GOOD)))
        data = json.dumps({**GOOD, field: draw(JSON)}).encode()
        assume(not _is_task(data))
        return data
    if kind == "number":
        field = draw(st.sampled_from(["priority", "max_attempts", "created_at"]))
        text = json.dumps({**GOOD, field: 0}, separators=(",", ":")).encode()
        bad = text.replace(f'"{field}":0'.encode(), f'"{field}":'.encode() + draw(HUGE_NUMBERS))
        assert bad != text
        assume(not _is_task(bad))  # created_at may be NaN or infinite: still a task
        return bad
    if kind == "version":  # a record from a future version: other fields, no payload
        return json.dumps({"version": draw(st.integers(2, 99)), "task": GOOD}).encode()
    if kind == "truncated":
        text = json.dumps(GOOD).encode()
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "huge":  # huge field names and values (not a task either: no payload)
        return json.dumps({"id": "x" * 200_000, "n" * 10_000: 1}).encode()
    return draw(st.binary(max_size=64))


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(bad_task_records())
def test_a_task_record_decodes_to_a_task_or_a_value_error(data: bytes) -> None:
    try:
        value = json.loads(data)
    except ValueError:
        return  # the codec's PayloadDecodeError: dead-lettered as undecodable
    try:
        task_from_dict(value)
    except ValueError as exc:
        assert str(exc)


@pytest.mark.parametrize(("field", "number"), [
    ("priority", b"1e999"), ("max_attempts", b"-1e999"), ("created_at", b"1" + b"0" * 400)])
def test_numbers_too_big_for_int_or_float_are_a_value_error_naming_the_field(field: str, number: bytes) -> None:
    # Regression: OverflowError escaped task_from_dict (inf into int(), 10**400 into float()).
    text = json.dumps({**GOOD, field: 0}, separators=(",", ":")).encode().replace(f'"{field}":0'.encode(), f'"{field}":'.encode() + number)
    assert number in text
    with pytest.raises(ValueError, match="invalid field"):
        task_from_dict(json.loads(text))


# -- a real worker process on each backend --------------------------------------------
def graph() -> Graph:
    g = Graph("hostile_ok")
    g.add_node("prepare").set_entry_point("prepare").set_finish_point("prepare")
    return g.compile()


@pytest.fixture(params=["memory", "redis", "nats"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Any]]:
    """(kind, url, workers or None): Redis and NATS get one worker process serving crash_app."""
    kind = request.param
    prefix = f"hostile{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield kind, f"memory://{prefix}", None
        return
    url = str(request.getfixturevalue(f"{kind}_url"))
    workers = WorkerProcesses(url, prefix, tmp_path_factory.mktemp("hostile"), "crash_app:registry")
    workers.start("w1")
    try:
        yield kind, url, workers
    finally:
        workers.close()


async def _write_raw(kind: str, queue: Any, backend: Any, data: bytes) -> None:
    if kind == "nats":
        # Straight onto the task stream with nats-py, as a stranger on the bus would.
        names = backend.connection.names
        await backend.connection.js.publish(names.task_subject(NODE_TYPE, 0), data)
    else:
        await queue.enqueue_raw(NODE_TYPE, data)


async def _dead_reasons(queue: Any, count: int) -> list[str]:
    for _ in range(600):
        letters = await queue.dead_letters()
        if len(letters) >= count:
            return [str(letter.reason) for letter in letters]
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} dead letters, found {len(letters)}: "
                         f"{[(letter.task_id, letter.reason[:80]) for letter in letters]}")


@pytest.mark.timeout(180)
def test_a_worker_dead_letters_malformed_tasks_and_keeps_serving(backend: tuple[str, str, Any]) -> None:
    kind, url, workers = backend
    prefix = workers.prefix if workers is not None else url.split("://", 1)[1]
    sent: list[bytes] = []

    @settings(max_examples=WORKER_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(bad_task_records(), min_size=1, max_size=4))
    def send(records: list[bytes]) -> None:
        sent.extend(records)

    if THOROUGH:
        send()  # Hypothesis-drawn records; the default run uses one fixed record of each kind
    else:
        sent.extend([b"null", b"[1, 2]", json.dumps({**GOOD, "payload": [1]}).encode(),
                     json.dumps({**GOOD, "node": None}).encode(), json.dumps({**GOOD, "priority": 0}, separators=(",", ":")).encode().replace(b'"priority":0', b'"priority":1e999'),
                     json.dumps({"version": 7, "task": GOOD}).encode(), b"\xff\xfe not json",
                     json.dumps({"id": "x" * 200_000, "n" * 10_000: 1}).encode()])
    assert sent
    records = [*sent, b'{"id": "t-1", "workflow_id": "wf-1", "node": "prepare", "node_type": "prepa']  # truncated

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        backend_ = open_backend(url, prefix=prefix) if kind != "memory" else open_backend(url)
        await backend_.connect()
        queue = backend_.task_queue
        local_worker = None
        if kind == "memory":
            from distributed_agents import Worker
            from support.worker_processes import load_test_app

            local_worker = Worker(backend=backend_, registry=load_test_app("crash_app").registry,
                                  worker_id="w1", poll_wait=0.05)
            serving = asyncio.ensure_future(local_worker.start())
        for data in records:
            await _write_raw(kind, queue, backend_, data)
        reasons = await _dead_reasons(queue, len(records))
        orchestrator: Any = (Orchestrator(backend=backend_) if kind == "memory" else
                             DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60))
        result = dict(await orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{prefix}-ok"))
        if kind != "memory":
            await orchestrator.close()
        if local_worker is not None:
            await local_worker.stop()
            await serving
        await backend_.close()
        return reasons, result

    reasons, result = run(scenario(), timeout=150)
    assert result == {"query": "q", "prepared": "prepared q"}
    assert len(reasons) == len(records)
    assert all(reason.startswith(("undecodable payload: ", "malformed task: ")) for reason in reasons), reasons
    if workers is not None:
        assert workers.processes[0].poll() is None, workers.log("w1")


# -- malformed workflow records in each backend's state store -------------------------
GOOD_RECORD = {"workflow_id": "bad", "graph_name": "g", "status": "running", "state": {"a": 1}, "step": 1,
               "version": 1, "frontier": {}, "error": None, "graph": None, "metadata": {}, "created_at": 1.0,
               "updated_at": 1.0}


@st.composite
def bad_workflow_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "wrong-type", "version", "truncated", "huge", "bytes", "other-id"]))
    if kind == "json":
        return json.dumps(draw(JSON.filter(lambda v: not isinstance(v, dict) or "status" not in v))).encode()
    if kind == "wrong-type":
        field = draw(st.sampled_from(["workflow_id", "status", "state", "step", "version", "frontier", "created_at"]))
        value = draw(JSON.filter(lambda v: v is not None and type(v) is not type(GOOD_RECORD[field])
                                 and not (field == "created_at" and type(v) is int)))
        return json.dumps({**GOOD_RECORD, field: value}).encode()
    if kind == "version":  # a future layout: the record nested under other keys
        return json.dumps({"format": draw(st.integers(2, 99)), "record": GOOD_RECORD}).encode()
    if kind == "truncated":
        text = json.dumps(GOOD_RECORD).encode()
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "huge":
        return json.dumps({**GOOD_RECORD, "status": None, "x" * 100_000: "y" * 500_000}).encode()
    if kind == "other-id":  # a record copied under another workflow's key
        return json.dumps({**GOOD_RECORD, "workflow_id": "someone-else"}).encode()
    return draw(st.binary(max_size=64).filter(lambda b: not b.startswith(b"{")))


async def _write_record(kind: str, url: str, prefix: str, backend_: Any, workflow_id: str, data: bytes) -> None:
    """Overwrite a workflow's stored record with ``data``, with the backend's raw client and key naming."""
    if kind == "memory":
        backend_.state_store._data.workflows[workflow_id].record = data
    elif kind == "redis":
        import redis.asyncio

        from distributed_agents.adapters.redis.keys import StateKeys

        client = redis.asyncio.from_url(url)
        await client.hset(StateKeys(prefix).record(workflow_id), "rec", data)
        await client.aclose()
    else:
        from distributed_agents.adapters.nats.naming import token

        names = backend_.connection.names
        bucket = await backend_.connection.js.key_value(names.state_bucket)
        await bucket.put(f"wf.{token(workflow_id)}", data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["memory", "redis", "nats"])
def test_a_malformed_workflow_record_fails_only_its_workflow_naming_it(kind: str, request: pytest.FixtureRequest) -> None:
    from distributed_agents.core.errors import PayloadDecodeError
    from distributed_agents.core.ports.state_store import WorkflowRecord

    prefix = f"hostile{uuid.uuid4().hex[:8]}"
    url = f"memory://{prefix}" if kind == "memory" else str(request.getfixturevalue(f"{kind}_url"))
    drawn: list[bytes] = []

    @settings(max_examples=WORKER_EXAMPLES * 3, deadline=None, database=None)
    @given(bad_workflow_records())
    def draw(record: bytes) -> None:
        drawn.append(record)

    draw()

    async def scenario() -> None:
        backend_ = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend_.connect()
        store = backend_.state_store
        for workflow_id in ("good", "bad"):
            await store.save(WorkflowRecord(workflow_id, "g", "running", {"a": 1}), expected_version=0)
        for data in drawn:
            await _write_record(kind, url, prefix, backend_, "bad", data)
            with pytest.raises(PayloadDecodeError) as raised:
                await store.get("bad")
            assert "workflow 'bad'" in str(raised.value) and "malformed" in str(raised.value)
            good = await store.get("good")
            assert good is not None and good.state == {"a": 1}
            # Listed: the good one, never the bad one (a record copied from another workflow's key
            # may list under its own id: a listing reads records, not keys).
            listed = [r.workflow_id for r in await store.list_workflows()]
            assert "good" in listed and "bad" not in listed
        assert await store.delete("bad")
        assert await store.get("bad") is None
        await backend_.close()

    run(scenario(), timeout=100)


# -- task results (a result key, or a done event anyone on the bus may publish) --------
GOOD_RESULT = {"task_id": "t-1", "status": "succeeded", "output": {"a": 1}, "error": None, "attempts": 1,
               "worker_id": "w", "finished_at": 1.0}


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(st.sampled_from(sorted(GOOD_RESULT)), JSON | HUGE_NUMBERS.map(lambda b: json.loads(b)))
def test_a_task_result_decodes_to_a_result_or_a_value_error(field: str, value: Any) -> None:
    from distributed_agents.core.ports.task_queue import TaskResult

    try:
        result = TaskResult.from_dict({**GOOD_RESULT, field: value})
    except ValueError as exc:
        assert str(exc)
        return
    assert result.status in ("succeeded", "failed") and isinstance(result.task_id, str)
    assert result.output is None or isinstance(result.output, dict)


@pytest.mark.parametrize(("field", "value"), [("attempts", float("inf")), ("output", "text"), ("status", "done"),
                                              ("task_id", 7), ("finished_at", 10**400), ("error", {"x": 1})])
def test_a_malformed_task_result_is_a_value_error_naming_the_field(field: str, value: Any) -> None:
    # Regression: these were accepted (output "text", status "done") or escaped as OverflowError.
    from distributed_agents.core.ports.task_queue import TaskResult

    with pytest.raises(ValueError, match="task result|field"):
        TaskResult.from_dict({**GOOD_RESULT, field: value})


# -- Redis task hashes edited by hand, under a real worker process (N5) ------------------
@pytest.mark.timeout(120)
def test_redis_a_worker_dead_letters_hand_edited_task_hashes_naming_key_and_field_and_keeps_serving(
        redis_url: str, tmp_path: pathlib.Path) -> None:
    """Hashes with a field missing, of the wrong kind or garbage, deleted, written over, and a task
    whose bytes name another node type the worker also serves ("finish" in the "prepare" queue):
    none runs, each is a dead letter naming its key, and the worker then runs a good workflow.
    ``tests/adapters/redis/test_hostile_task_hashes.py`` covers each edit on its own."""
    import redis.asyncio

    prefix = f"hostile{uuid.uuid4().hex[:8]}"
    other = json.dumps(task_to_dict(Task("t-json", "wf-1", "prepare", "finish", {"state": {"analysis": "x"}}))).encode()
    edits: dict[str, list[tuple[str, Any]]] = {
        "t-type": [("hdel", "type")], "t-score": [("hset", "score", b"\xff\xfe")], "t-max": [("hset", "max", b"lots")],
        "t-raw": [("hset", "raw", b"\x00garbage")], "t-gone": [("delete",)], "t-string": [("delete",), ("set", b"x")],
        "t-json": [("hset", "raw", other)],
    }

    async def prepare() -> None:
        backend_ = open_backend(redis_url, prefix=prefix)
        await backend_.connect()
        client = redis.asyncio.from_url(redis_url)
        queue = backend_.task_queue
        for task_id, steps in edits.items():
            await queue.enqueue(Task(task_id, "wf-1", "prepare", NODE_TYPE, {"state": {"query": "q"}}))
            key = queue._keys.task(task_id)
            for step in steps:
                await getattr(client, step[0])(key, *step[1:])
        await client.aclose()
        await backend_.close()

    async def serve() -> tuple[dict[str, str], dict[str, Any]]:
        backend_ = open_backend(redis_url, prefix=prefix)
        await backend_.connect()
        reasons = await _dead_reasons(backend_.task_queue, len(edits))
        letters = {letter.task_id: letter.reason for letter in await backend_.task_queue.dead_letters()}
        for task_id in edits:  # none ran: each has the failed result of its dead letter
            got = await backend_.task_queue.get_result(task_id)
            assert got is not None and got.status == "failed" and got.error == letters[task_id]
        orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, worker_timeout=60)
        result = dict(await orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{prefix}-ok"))
        await orchestrator.close()
        await backend_.close()
        assert len(reasons) == len(letters)
        return letters, result

    run(prepare(), timeout=30)
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "crash_app:registry")
    workers.start("w1")
    try:
        letters, result = run(serve(), timeout=100)
        assert workers.processes[0].poll() is None, workers.log("w1")
    finally:
        workers.close()
    assert result == {"query": "q", "prepared": "prepared q"}
    assert sorted(letters) == sorted(edits)
    for task_id, reason in letters.items():
        assert reason.startswith(("malformed task: ", "undecodable payload: ")), reason
        assert f"{prefix}:q:t:{task_id}" in reason, reason
    assert "field 'type'" in letters["t-type"] and "field 'score'" in letters["t-score"]
    assert "field 'max'" in letters["t-max"] and "field 'raw'" in letters["t-raw"]
    assert "names node type 'finish' but sits in the queue of node type 'prepare'" in letters["t-json"]


# -- a task naming another node type than the queue it sits in, on every backend --------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["memory", "redis", "nats"])
@pytest.mark.parametrize("served", [["prepare"], ["finish", "prepare"]])
def test_a_task_naming_another_node_type_than_its_queue_is_dead_lettered_never_run(
        kind: str, served: list[str], request: pytest.FixtureRequest) -> None:
    """Its bytes (and id) are a real task's, but they name "finish" while it sits in "prepare"'s
    queue: no claimer gets it, also one serving both types; its dead letter keeps the bytes and
    says both types. The good task behind it is claimed."""
    prefix = f"hostile{uuid.uuid4().hex[:8]}"
    url = f"memory://{prefix}" if kind == "memory" else str(request.getfixturevalue(f"{kind}_url"))
    stray = Task("t-stray", "wf-1", "prepare", "finish", {"state": {"analysis": "x"}})
    data = json.dumps(task_to_dict(stray)).encode()

    async def scenario() -> tuple[list[str], list[Any]]:
        backend_ = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend_.connect()
        queue = backend_.task_queue
        try:
            if kind == "memory":  # the stored bytes of a task queued as "prepare", replaced
                await queue.enqueue(Task("t-stray", "wf-1", "prepare", NODE_TYPE, {"state": {}}))
                queue._data.entries["t-stray"].raw = data
            elif kind == "redis":
                import redis.asyncio

                await queue.enqueue(Task("t-stray", "wf-1", "prepare", NODE_TYPE, {"state": {}}))
                client = redis.asyncio.from_url(url)
                await client.hset(queue._keys.task("t-stray"), "raw", data)
                await client.aclose()
            else:  # published on prepare's subject under its own id, as enqueue would
                subject = backend_.connection.names.task_subject(NODE_TYPE, 0)
                await backend_.connection.js.publish(subject, data, headers={"Da-Task-Id": "t-stray"})
            await queue.enqueue(Task("t-good", "wf-1", "prepare", NODE_TYPE, {"state": {}}))
            claimed: list[str] = []
            for _ in range(3):
                for claim in await queue.claim(served, worker_id="w", max_tasks=5, wait=0.2):
                    claimed.append(claim.task.id)
                    await queue.ack(claim, {"ok": True})
                if "t-good" in claimed:
                    break
            return claimed, await queue.dead_letters()
        finally:
            await backend_.close()

    claimed, letters = run(scenario(), timeout=60)
    assert claimed == ["t-good"]
    [letter] = letters
    assert letter.task_id == "t-stray" and letter.node_type == NODE_TYPE
    assert letter.raw == data or letter.task == stray  # its bytes are kept (as they are, or decoded)
    assert "names node type 'finish' but sits in the queue of node type 'prepare'" in letter.reason, letter.reason
