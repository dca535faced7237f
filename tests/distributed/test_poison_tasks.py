"""Poison tasks written below the engine: each is dead-lettered at once, never run, and every listing shows it.

The examples a user found by hand (issue 17, hostile input), on memory (an in-process
worker), Redis and NATS (a real worker process, the CLI):

- JSON nested 100,000 levels deep as the task body: dead-lettered at its first claim
  with ``undecodable payload: ... nested too deeply`` (before, NATS claims failed for
  ever with RecursionError and Redis needed three failed claims, after which
  ``dead-letters list``/``show``, ``queues`` and the dashboard crashed on it);
- a payload version the worker does not read (``"v": 99``), a negative ``timeout``, a
  negative ``remaining_steps``: ``malformed task: ...`` (before, they ran);
- a task whose id is not the id it is queued under (copied from another task):
  ``malformed task: it names task id ...`` (before: Redis ran it three times, NATS once
  as a success);
- a negative attempt count in the queue's own task record (Redis hash, NATS KV):
  ``malformed task: its attempt count ...`` (before, accepted: it undercut max_attempts);
  and a variant, that record damaged (a Redis count that is no integer, a NATS record
  that is not JSON): ``malformed task: ...``, where before every claim of the node type
  failed (Redis) or the task's claims failed for ever (NATS).

Each bad task targets the ``slow`` node, which leaves a marker file per run: none may
appear. A good task written the same way, after them, runs (so the writer is right,
and the worker keeps serving).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import Worker
from distributed_agents.core.ports.task_queue import Task, task_to_dict
from distributed_agents.operations import all_dead_letters, known_node_types, queue_stats
from distributed_agents.plugins import open_backend

DEEP = b"[" * 100_000 + b"]" * 100_000
NODE = "slow"  # crash_app's node that writes a marker file per run


def record(task_id: str, **payload: Any) -> dict[str, Any]:
    """A task record as the engine writes it, with ``payload`` fields replaced."""
    body = {"v": 1, "graph": "g", "step": 0, "state": {"prepared": "p"}, "retry": None, "timeout": None,
            "remaining_steps": 10, **payload}
    return task_to_dict(Task(id=task_id, workflow_id=f"wf-{task_id}", node=NODE, node_type=NODE, payload=body,
                             max_attempts=3, created_at=1.0))


# task id -> (raw bytes stored under that id, what the dead letter's reason must hold)
BAD: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "deep": (DEEP, ("undecodable payload: ", "nested too deeply")),
    "v99": (json.dumps(record("v99", v=99)).encode(), ("malformed task: ", "unknown payload version 99",
                                                         "upgrade the worker")),
    "negtimeout": (json.dumps(record("negtimeout", timeout=-5)).encode(), ("malformed task: ", "'timeout'")),
    "negsteps": (json.dumps(record("negsteps", remaining_steps=-1)).encode(), ("malformed task: ", "remaining_steps")),
    "copied": (json.dumps(record("someone-else")).encode(), ("malformed task: ", "'someone-else'",
                                                             "queued as 'copied'")),
    # json.dumps writes NaN and Infinity, which encode refuses to write: never read back
    # (NATS failed to write the dead letter of such a task and claims of it failed forever).
    "inftimeout": (json.dumps(record("inftimeout", timeout=float("inf"))).encode(), ("undecodable payload: ", "Infinity")),
    "nanretry": (json.dumps(record("nanretry", retry={"max_attempts": 2, "initial_interval": float("nan")})).encode(),
                 ("undecodable payload: ", "NaN")),
}
GOOD_ID = "good"


async def write_under_id(kind: str, url: str, backend: Any, task_id: str, raw: bytes) -> None:
    """Store ``raw`` as the task ``task_id`` of node type ``slow``, below the engine."""
    queue = backend.task_queue
    if kind == "memory":
        queue._add(task_id, NODE, raw, 0, None)
    elif kind == "redis":
        import redis.asyncio

        # A well-formed task under the id, then its bytes replaced (as a stranger with the server's password could).
        assert await queue.enqueue(Task(task_id, "wf", NODE, NODE, {"state": {}}))
        client = redis.asyncio.from_url(url)
        try:
            await client.hset(queue._keys.task(task_id), "raw", raw)
        finally:
            await client.aclose()
    else:
        names = backend.connection.names
        await queue._ensure_consumer(NODE, 0)
        await backend.connection.js.publish(names.task_subject(NODE, 0), raw,
                                            headers={"Nats-Msg-Id": task_id, "Da-Task-Id": task_id})


async def set_attempt(kind: str, url: str, backend: Any, task_id: str, attempt: int | str) -> None:
    """Enqueue a good task ``task_id``, then set the attempt count in the queue's own task record.

    A str replaces the whole NATS record with it (Redis: the count itself)."""
    queue = backend.task_queue
    assert await queue.enqueue(Task(task_id, "wf", NODE, NODE, {"state": {}}))
    if kind == "redis":
        import redis.asyncio

        client = redis.asyncio.from_url(url)
        try:
            await client.hset(queue._keys.task(task_id), "attempt", str(attempt))
        finally:
            await client.aclose()
    else:
        from distributed_agents.adapters.nats.naming import token

        bucket = await backend.connection.js.key_value(backend.connection.names.task_bucket)
        entry = await bucket.get(token(task_id))
        await bucket.put(token(task_id), attempt.encode() if isinstance(attempt, str) else
                         json.dumps({**json.loads(entry.value), "attempt": attempt}).encode())


@pytest.fixture(params=["memory", "redis", "nats"])
def served(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[str, str, str, Any]]:
    """(kind, url, prefix, workers): Redis and NATS workers are started by the test, once the tasks are written."""
    kind = request.param
    prefix = f"poison{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield kind, f"memory://{prefix}", prefix, None
        return
    url = str(request.getfixturevalue(f"{kind}_url"))
    workers = WorkerProcesses(url, prefix, tmp_path, "crash_app:registry")
    try:
        yield kind, url, prefix, workers
    finally:
        workers.close()


async def _letters(queue: Any, count: int) -> list[Any]:
    for _ in range(1200):
        letters = await queue.dead_letters()
        if len(letters) >= count:
            return list(letters)
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} dead letters: {[(d.task_id, d.reason[:100]) for d in letters]}")


@pytest.mark.timeout(150)
def test_poison_tasks_are_dead_lettered_at_once_never_run_and_listed(
        served: tuple[str, str, str, Any], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, url, prefix, workers = served
    monkeypatch.setenv("DA_MARKER_DIR", str(tmp_path))
    bad = dict(BAD)
    if kind != "memory":  # the memory queue's attempt count is no stored record anyone could write
        bad["negattempt"] = (b"", ("malformed task: ", "attempt count", "was -5"))
        bad["damaged"] = (b"", ("malformed task: ", "not an integer" if kind == "redis" else "is damaged"))

    async def scenario() -> dict[str, Any]:
        backend = open_backend(url) if kind == "memory" else open_backend(url, prefix=prefix)
        await backend.connect()
        queue = backend.task_queue
        local = serving = None
        try:
            for task_id, (raw, _) in bad.items():
                if task_id == "negattempt":
                    await set_attempt(kind, url, backend, task_id, -5)
                elif task_id == "damaged":
                    await set_attempt(kind, url, backend, task_id, "abc" if kind == "redis" else "{not a record")
                else:
                    await write_under_id(kind, url, backend, task_id, raw)
            await write_under_id(kind, url, backend, GOOD_ID, json.dumps(record(GOOD_ID)).encode())
            if workers is None:
                local = Worker(backend=backend, registry=load_test_app("crash_app").registry, worker_id="w1",
                               poll_wait=0.05)
                serving = asyncio.ensure_future(local.start())
            else:
                workers.start("w1")
            letters = await _letters(queue, len(bad))
            good = (await queue.wait_results([GOOD_ID], timeout=60)).get(GOOD_ID)
            # Every listing reads them: the queue's, the operations the CLI and dashboard use.
            listed = {d.task_id for d in await all_dead_letters(backend)}
            types = await known_node_types(backend)
            stats = {s.node_type: s for s in await queue_stats(backend, types)}
            return {"letters": letters, "good": good, "listed": listed, "types": types, "stats": stats}
        finally:
            if local is not None:
                await local.stop()
                await serving
            await backend.close()

    out = run(scenario(), timeout=140)
    letters = {d.task_id: d for d in out["letters"]}
    assert set(letters) == set(bad), sorted(letters)
    for task_id, (_, expected) in bad.items():
        letter = letters[task_id]
        assert letter.reason.startswith(expected[0]) and all(e in letter.reason for e in expected), (task_id,
                                                                                                      letter.reason)
        assert len(letter.errors) == 1, (task_id, letter.errors)  # at once: no failed claim or run before it
    assert out["good"] is not None and out["good"].status == "succeeded", out["good"]
    runs = sorted(p.name for p in tmp_path.glob("*.attempt*"))
    assert runs == ["w1.attempt1"], runs  # the good task ran, once; no bad one did
    assert out["listed"] >= set(bad) and NODE in out["types"] and out["stats"][NODE].dead == len(bad)
    if workers is not None:
        for command in (["dead-letters", "list"], ["dead-letters", "show", "deep"], ["queues"]):
            done = workers.cli(*command)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stdout, done.stderr)
            assert "deep" in done.stdout or NODE in done.stdout, (command, done.stdout)
        assert workers.processes[0].poll() is None, workers.log("w1")
