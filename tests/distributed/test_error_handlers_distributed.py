"""``on_error`` on Redis and NATS: the failing node and its handler run on a real worker process.

The handler's task payload carries the error, so the worker running it needs nothing
else; a failing handler fails the workflow naming both nodes. A failure the handler
took leaves no dead letter (the engine purges the one the worker's final nack left, once
the route is committed, or when it takes the workflow up again); a failed handler's does.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import Orchestrator, Worker
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


def error_handler_app() -> ModuleType:
    return load_test_app("error_handler_app")


def plain(task_id: str) -> str:
    """``task_id`` without its workflow's incarnation (``<workflow>:<run>.<incarnation>:...``, see core.incarnation)."""
    return re.sub(r"^([^:]*:[0-9]+)\.[0-9a-f]{8}:", r"\1:", task_id)


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_workers_final_failure_runs_the_handler_on_a_worker(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"onerr{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    app = error_handler_app()

    async def scenario() -> Any:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            result = await orchestrator.execute(app.error_graph(), {"url": "http://x"}, workflow_id="wf-onerr")
            with pytest.raises(NodeExecutionError) as failed:
                await orchestrator.execute(app.error_graph("bad_recover"), {"url": "http://y"},
                                           workflow_id="wf-onerr-bad")
            status = await orchestrator.get_workflow_status("wf-onerr-bad")
            store = orchestrator.backend.state_store
            ids = {wf: f"{wf}:0.{(await store.get(wf)).metadata['incarnation']}"  # type: ignore[union-attr]
                   for wf in ("wf-onerr", "wf-onerr-bad")}
            return result, failed.value, status, ids
        finally:
            await orchestrator.close()

    workers.start("w1")
    try:
        result, error, status, ids = run(scenario(), timeout=110)
        listed = workers.cli("dead-letters", "list")
        requeued = workers.cli("dead-letters", "requeue", f"{ids['wf-onerr']}:0:fetch")
    finally:
        workers.close()
    # A handled failure leaves no dead letter (nothing for an operator to re-drive); the
    # failure of the handler itself, which failed its workflow, does.
    assert f"{ids['wf-onerr']}:0:fetch" not in listed.stdout and f"{ids['wf-onerr-bad']}:0:fetch" not in listed.stdout
    assert f'"task_id": "{ids["wf-onerr-bad"]}:1:handler#0"' in listed.stdout
    assert requeued.returncode != 0 and "not found among the dead letters" in requeued.stderr
    assert result["handled"] == "fetch: ConnectionError: upstream http://x is down (2 attempts)"
    assert result["input"] == {"url": "http://x"} and result["handled_on"] == "w1"
    assert len(list(tmp_path.glob("fetch-*"))) == 4  # 2 attempts in each workflow, on the worker
    assert error.node == "handler" and "error handler 'handler' of node 'fetch'" in str(error)
    assert "ValueError: cannot recover" in str(error)
    assert status.error is not None and status.error["handles"] == "fetch"


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_the_pending_handler_task_is_committed_and_another_orchestrator_runs_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"onerrre{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    app = error_handler_app()

    async def scenario() -> Any:
        first = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:  # stops right after the step whose failure was routed: the handler is pending
            await first.execute(app.error_graph(), {"url": "http://z"}, workflow_id="wf-onerr-restart",
                                interrupt_before=["handler"])
            (checkpoint,) = await first.backend.state_store.list_checkpoints("wf-onerr-restart", limit=1)
        finally:
            await first.close()
        second = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            second.register_graph(app.error_graph())
            return checkpoint, await second.resume("wf-onerr-restart")
        finally:
            await second.close()

    workers.start("w1")
    try:
        checkpoint, result = run(scenario(), timeout=110)
    finally:
        workers.close()
    (send,) = checkpoint.frontier["sends"]
    assert send["node"] == "handler" and send["handles"] == "fetch"
    assert result["handled"] == "fetch: ConnectionError: upstream http://z is down (2 attempts)"
    assert len(list(tmp_path.glob("fetch-*"))) == 2  # the failed node did not run again


def test_on_a_memory_worker_a_handled_failure_leaves_no_dead_letter_and_a_failed_handler_does(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DA_MARKER_DIR", str(tmp_path))
    app = error_handler_app()
    worker = Worker(capacity=2, registry=app.registry, poll_wait=0.05, heartbeat_interval=0.5)

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start())
        orchestrator = Orchestrator()
        try:
            result = await orchestrator.execute(app.error_graph(), {"url": "http://m"}, workflow_id="wf-mem")
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(app.error_graph("bad_recover"), {"url": "http://n"}, workflow_id="wf-mem-bad")
            letters = await orchestrator.backend.task_queue.dead_letters()
            stats = await orchestrator.backend.task_queue.stats("fetch")
            return result, letters, stats
        finally:
            await orchestrator.close()
            await worker.stop(grace=1)
            await serving

    result, letters, stats = run(scenario(), timeout=60)
    assert result["handled"] == "fetch: ConnectionError: upstream http://m is down (2 attempts)"
    assert result["handled_on"] == worker.worker_id  # the failure really happened on the worker
    assert [plain(letter.task_id) for letter in letters] == ["wf-mem-bad:0:1:handler#0"]
    assert stats.dead == 0 and len(list(tmp_path.glob("fetch-*"))) == 4


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_a_handled_dead_letter_whose_purge_failed_is_purged_by_the_orchestrator_that_takes_the_workflow_up(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first orchestrator commits the route but cannot purge (as if it died right then): the next one does."""
    monkeypatch.setenv("DA_MARKER_DIR", str(tmp_path))
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    prefix = f"onerrpg{uuid.uuid4().hex[:8]}"
    app = error_handler_app()
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    worker = (Worker(capacity=2, registry=app.registry, backend=url, backend_options={"prefix": prefix}, poll_wait=0.05,
                     heartbeat_interval=0.5) if backend == "memory" else None)
    task_id = "wf-onerr-purge:0:0:fetch"

    async def refuse(task_id: str) -> bool:
        raise RuntimeError("purge refused")

    def orchestrator() -> Orchestrator:
        if worker is not None:  # memory://: everything in this process
            return Orchestrator(backend=url, backend_options={"prefix": prefix})
        return DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start()) if worker is not None else None
        try:
            first = orchestrator()
            try:
                await first.connect()
                monkeypatch.setattr(first.backend.task_queue, "purge_dead_letter", refuse)
                await first.execute(app.error_graph(), {"url": "http://p"}, workflow_id="wf-onerr-purge",
                                    interrupt_before=["handler"])
                left = [letter.task_id for letter in await first.backend.task_queue.dead_letters()]
            finally:
                await first.close()
            second = orchestrator()
            try:
                result = await second.resume("wf-onerr-purge", app.error_graph())
                after = [letter.task_id for letter in await second.backend.task_queue.dead_letters()]
                return left, result, after
            finally:
                await second.close()
        finally:
            if worker is not None and serving is not None:
                await worker.stop(grace=1)
                await serving

    if worker is None:
        workers.start("w1")
    try:
        left, result, after = run(scenario(), timeout=110)
    finally:
        workers.close()
    assert [plain(left_id) for left_id in left] == [task_id]  # the purge failed: the letter is still there
    assert result["handled"] == "fetch: ConnectionError: upstream http://p is down (2 attempts)"
    assert after == []


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_a_handler_of_a_node_that_failed_on_a_large_state_gets_it_through_a_reference(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 600 KB state under a 900 KB limit (NATS leaves 960 KB of its 1 MiB): the routed step's frontier
    and the handler's task name the failed step's checkpoint instead of copying the state, so the commit
    fits and the handler, on a worker, still gets the whole state."""
    monkeypatch.setenv("DA_MARKER_DIR", str(tmp_path))
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    prefix = f"onerrbig{uuid.uuid4().hex[:8]}"
    app = error_handler_app()
    options = {"prefix": prefix, "max_payload_bytes": 900_000}
    workers = WorkerProcesses(url, prefix, tmp_path, "error_handler_app:registry")
    worker = (Worker(capacity=2, registry=app.registry, backend=url, backend_options=options, poll_wait=0.05,
                     heartbeat_interval=0.5) if backend == "memory" else None)

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start()) if worker is not None else None
        orchestrator = Orchestrator(backend=url, backend_options=options, wait_for_workers=True)
        try:
            result = await orchestrator.execute(app.error_graph("recover_size"), {"url": "http://big",
                                                "doc": "d" * 600_000}, workflow_id="wf-onerr-big")
            routed = [checkpoint for checkpoint in await orchestrator.backend.state_store.list_checkpoints(
                "wf-onerr-big") if checkpoint.frontier.get("sends")]
            return result, routed
        finally:
            await orchestrator.close()
            if worker is not None and serving is not None:
                await worker.stop(grace=1)
                await serving

    if worker is None:
        workers.start("w1")
    try:
        result, routed = run(scenario(), timeout=110)
    finally:
        workers.close()
    assert result["handled"] == "fetch: upstream http://big is down"
    assert result["input_keys"] == ["doc", "url"] and result["input_doc"] == 600_000
    (checkpoint,) = routed
    (send,) = checkpoint.frontier["sends"]
    assert send["state_ref"]["step"] == 0 and "state" not in send["arg"] and send["arg"]["error"]["node"] == "fetch"
