"""Raw tasks over the size limit, written straight into the queue of Redis and NATS.

A task's own payload is bounded by ``max_payload_bytes`` (it names its checkpoint
instead of carrying a large state), so bytes on the queue longer than
``core.limits.task_bytes_limit`` (the limit plus the envelope) were not written by
``enqueue`` of a process with the same limit. They are dead-lettered at claim time with
the reason ``oversized task: <size> bytes, over the limit ...``, never decoded, and the
dead letter keeps only their first ``DEAD_RAW_KEPT`` bytes.

What bounds them before that:

- **Redis**: ``proto-max-bulk-len`` (512 MB by default) lets a 64 MB value in. The claim
  script checks the length inside the server (``HSTRLEN``) and dead-letters the task
  there: its bytes never leave the server (the test compares the server's
  ``total_net_output_bytes`` before and after the claim).
- **NATS**: the server's ``max_payload`` (1 MiB by default) refuses a larger message at
  publish (nats-py raises before sending), so 64 MB never gets on the stream; with the
  default ``max_payload_bytes`` the task limit *is* that 1 MiB. A worker run with a
  lower ``max_payload_bytes`` dead-letters longer messages unread; and an undecodable
  message near 1 MiB gets a dead letter that fits (before, its base64 copy did not, and
  the message was redelivered for ever).

Each backend runs a real worker process (the CLI) that keeps serving afterwards: a good
workflow completes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses

from distributed_agents import Graph
from distributed_agents.core.limits import DEAD_RAW_KEPT, ENVELOPE_BYTES, task_bytes_limit
from distributed_agents.core.ports.task_queue import Task, task_to_dict
from distributed_agents.distributed import DistributedOrchestrator
from distributed_agents.plugins import open_backend

NODE_TYPE = "prepare"
SMALL_LIMIT = 100_000  # max_payload_bytes of the worker in the "just over" cases
MB = 1024 * 1024


def graph() -> Graph:
    g = Graph("raw_limits_ok")
    g.add_node("prepare").set_entry_point("prepare").set_finish_point("prepare")
    return g.compile()


def task_of(size: int) -> bytes:
    """A well-formed task record of about ``size`` bytes (its Send-like payload is large)."""
    record = task_to_dict(Task(id=f"big-{uuid.uuid4().hex[:6]}", workflow_id="wf-x", node="prepare",
                               node_type=NODE_TYPE, payload={"state": {"query": "q"}, "arg": ""}))
    padding = size - len(json.dumps(record).encode())
    record["payload"]["arg"] = "a" * max(padding, 0)
    return json.dumps(record).encode()


async def _dead_letters(queue: Any, count: int) -> list[Any]:
    for _ in range(1200):
        letters = await queue.dead_letters()
        if len(letters) >= count:
            return list(letters)
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} dead letters, found {[(d.task_id, d.reason[:80]) for d in letters]}")


async def _good_workflow(url: str, prefix: str) -> dict[str, Any]:
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
    try:
        return dict(await orchestrator.execute(graph(), {"query": "q"}, workflow_id=f"{prefix}-ok"))
    finally:
        await orchestrator.close()


def _check_letters(letters: list[Any], sizes: list[int], limit: int) -> None:
    reasons = sorted(letter.reason for letter in letters)
    assert all(r.startswith("oversized task: ") and f"over the limit of {limit} bytes" in r for r in reasons), reasons
    assert sorted(int(r.split()[2]) for r in reasons) == sorted(sizes), reasons
    for letter in letters:
        assert letter.task is None and letter.raw is not None and 0 < len(letter.raw) <= DEAD_RAW_KEPT


def test_the_task_limit_is_the_payload_limit_plus_the_envelope() -> None:
    assert task_bytes_limit(SMALL_LIMIT) == SMALL_LIMIT + ENVELOPE_BYTES
    assert task_bytes_limit(1024 * 1024 - ENVELOPE_BYTES) == MB  # the default: NATS's default max_payload


@pytest.mark.timeout(180)
def test_redis_dead_letters_oversized_raw_tasks_inside_the_server(redis_url: str, tmp_path: Any) -> None:
    import redis.asyncio

    prefix = f"rawlim{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?max_payload_bytes={SMALL_LIMIT}" if "?" not in redis_url else redis_url
    limit = task_bytes_limit(SMALL_LIMIT)
    just_over, absurd = task_of(limit + 1), b'{"id": "' + b"x" * (64 * MB) + b'"}'

    async def claim_alone() -> tuple[list[Any], int, list[Any]]:
        # No worker yet: this process's claim meets the bytes; the server keeps them.
        backend = open_backend(url, prefix=prefix)
        await backend.connect()
        client = redis.asyncio.from_url(redis_url)
        try:
            queue = backend.task_queue
            await queue.enqueue_raw(NODE_TYPE, absurd)
            await queue.enqueue_raw(NODE_TYPE, just_over)
            before = int((await client.info("stats"))["total_net_output_bytes"])
            claimed = await queue.claim([NODE_TYPE], worker_id="probe", max_tasks=5)
            sent = int((await client.info("stats"))["total_net_output_bytes"]) - before
            return claimed, sent, await _dead_letters(queue, 2)
        finally:
            await client.aclose()
            await backend.close()

    claimed, sent, letters = run(claim_alone(), timeout=120)
    assert claimed == []
    assert sent < 2 * MB, f"the server sent {sent} bytes during the claim: the oversized tasks left it"
    _check_letters(letters, [len(absurd), len(just_over)], limit)

    workers = WorkerProcesses(url, prefix, tmp_path, "crash_app:registry")
    workers.start("w1")
    try:
        async def with_worker() -> tuple[list[Any], dict[str, Any]]:
            backend = open_backend(url, prefix=prefix)
            await backend.connect()
            try:
                await backend.task_queue.enqueue_raw(NODE_TYPE, absurd)
                letters = await _dead_letters(backend.task_queue, 3)
            finally:
                await backend.close()
            return letters, await _good_workflow(url, prefix)

        letters, result = run(with_worker(), timeout=150)
        assert result == {"query": "q", "prepared": "prepared q"}
        _check_letters(letters, [len(absurd), len(absurd), len(just_over)], limit)
        assert workers.processes[0].poll() is None, workers.log("w1")
    finally:
        workers.close()


@pytest.mark.timeout(180)
def test_nats_bounds_raw_tasks_by_max_payload_and_dead_letters_longer_ones_unread(nats_url: str, tmp_path: Any) -> None:
    import nats.errors

    prefix = f"rawlim{uuid.uuid4().hex[:8]}"
    url = f"{nats_url}?max_payload_bytes={SMALL_LIMIT}"
    limit = task_bytes_limit(SMALL_LIMIT)
    workers = WorkerProcesses(url, prefix, tmp_path, "crash_app:registry")
    workers.start("w1")
    try:
        async def scenario() -> tuple[list[Any], dict[str, Any], bool, list[Any]]:
            backend = open_backend(url, prefix=prefix)
            await backend.connect()
            try:
                conn = backend.connection
                subject = conn.names.task_subject(NODE_TYPE, 0)
                await backend.task_queue.enqueue_raw(NODE_TYPE, b"{}")  # creates the stream and consumer
                refused = False
                try:  # 64 MB: the server's max_payload (1 MiB) stops it at the publisher
                    await conn.js.publish(subject, b"x" * (64 * MB))
                except nats.errors.MaxPayloadError:
                    refused = True
                sizes = [limit + 1, 900_000]
                for size in sizes:
                    await conn.js.publish(subject, task_of(size))
                letters = await _dead_letters(backend.task_queue, 3)
            finally:
                await backend.close()
            # Undecodable bytes near the server's limit, claimed with the default limit: their letter must fit.
            default = open_backend(nats_url, prefix=f"{prefix}d")
            await default.connect()
            try:
                await default.task_queue.enqueue_raw(NODE_TYPE, b"\xff" * 1_000_000)
                assert await default.task_queue.claim([NODE_TYPE], worker_id="probe", wait=5) == []
                near_limit = await _dead_letters(default.task_queue, 1)
            finally:
                await default.close()
            return letters, await _good_workflow(url, prefix), refused, near_limit

        letters, result, refused, all_letters = run(scenario(), timeout=150)
        assert refused, "a 64 MB message was accepted by a server with the default max_payload"
        oversized = [letter for letter in letters if letter.reason.startswith("oversized")]
        _check_letters(oversized, [limit + 1, 900_000], limit)
        assert [(letter.reason[:20], len(letter.raw or b"")) for letter in all_letters] == [
            ("undecodable payload:", DEAD_RAW_KEPT)]
        assert result == {"query": "q", "prepared": "prepared q"}
        assert workers.processes[0].poll() is None, workers.log("w1")
    finally:
        workers.close()
