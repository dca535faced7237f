"""A worker process whose ack is held by the server, attacked: SIGTERM and a cancel of its workflow
arriving while the ack is under way; SIGKILL among quick acks; a cancelled map; long nodes' leases.

Real worker processes (the ``distributed-agents worker`` CLI) on a real redis-server. The node
(this module's ``registry``, served with ``--app test_review_s9``) makes the server hold every
client's commands for a while (``CLIENT PAUSE``) just before it returns, so that its ack is
written and waits for the server; the test meanwhile stops, cancels or kills the worker. The
task must end with exactly one stored result, nothing left queued, in flight or dead-lettered.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import uuid
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()

PAUSE_MS = 1500


@registry.register("held")
async def held(state: State, context: NodeContext) -> dict[str, Any]:
    """Marks its run, then has the server hold every command for PAUSE_MS: its own ack waits."""
    import redis

    marker = pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"run-{context.worker_id}-{context.attempt}"
    client = redis.Redis.from_url(os.environ["DA_REVIEW_REDIS"])
    try:
        if os.environ.get("DA_REVIEW_CANCEL") == "1":
            # The cancel reaches the worker's socket now; its loop reads it once this node returned
            # (the calls here block the loop), while the ack waits for the paused server.
            client.publish(f"{os.environ['DA_REVIEW_PREFIX']}:bus:control.cancel",
                           json.dumps({"workflow_id": context.workflow_id}))
        if os.environ.get("DA_REVIEW_PAUSE") == "1" and context.attempt == 1:
            client.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
    finally:
        client.close()
    marker.write_text(str(os.getpid()))
    return {"by": context.worker_id, "attempt": context.attempt}


@registry.register("long")
async def long(state: State, context: NodeContext) -> dict[str, Any]:
    """Runs past its task's lease (its worker must extend it); marks each run."""
    import asyncio

    marker = pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"long-{context.idempotency_key}-{context.worker_id}-{context.attempt}"
    marker.write_text(str(os.getpid()))
    await asyncio.sleep(float(os.environ.get("DA_REVIEW_SLEEP", "4")))
    return {"by": context.worker_id}


@registry.register("quick")
async def quick(state: State, context: NodeContext) -> dict[str, Any]:
    """A short node that marks each run."""
    import asyncio

    marker = pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"quick-{context.idempotency_key}-{context.worker_id}-{context.attempt}"
    marker.write_text(str(os.getpid()))
    await asyncio.sleep(0.02)
    return {"i": state["i"]}


if not os.environ.get("DA_REVIEW_WORKER"):  # the test process (the workers import only the registry)
    import asyncio

    import pytest
    from support.aio import run
    from support.worker_processes import WorkerProcesses

    from distributed_agents.core.ports.task_queue import Task
    from distributed_agents.plugins import open_backend

    pytestmark = pytest.mark.timeout(90)

    TESTS = pathlib.Path(__file__).resolve().parent.parent

    def _workers(url: str, prefix: str, tmp: pathlib.Path, *, pause: bool) -> WorkerProcesses:
        workers = WorkerProcesses(url, prefix, tmp, "test_review_s9:registry")
        workers.env.update({"DA_REVIEW_WORKER": "1", "DA_REVIEW_REDIS": url, "DA_REVIEW_PAUSE": "1" if pause else "0",
                            "DA_REVIEW_PREFIX": prefix,
                            "PYTHONPATH": os.pathsep.join([workers.env["PYTHONPATH"], str(TESTS)])})
        return workers

    def _wait_for(predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async def _enqueue(url: str, prefix: str, task: Task) -> None:
        backend = open_backend(url, prefix=prefix)
        await backend.connect()
        try:
            assert await backend.task_queue.enqueue(task)
        finally:
            await backend.close()

    async def _outcome(url: str, prefix: str, task_id: str, *, wait: float = 20) -> dict[str, Any]:
        backend = open_backend(url, prefix=prefix)
        await backend.connect()
        try:
            queue = backend.task_queue
            results = await queue.wait_results([task_id], timeout=wait)
            stats = await queue.stats("held")
            return {"result": results.get(task_id), "stats": (stats.queued, stats.in_flight, stats.dead),
                    "dead": await queue.dead_letters("held")}
        finally:
            await backend.close()

    def _task(task_id: str, workflow_id: str) -> Task:
        return Task(task_id, workflow_id, "held", "held", {"state": {}, "step": 0})

    def test_sigterm_while_the_ack_is_held_lets_it_land_and_counts_it(redis_url: str, tmp_path: pathlib.Path) -> None:
        prefix = f"s9t{uuid.uuid4().hex[:8]}"
        workers = _workers(redis_url, prefix, tmp_path, pause=True)
        try:
            worker = workers.start("w1", "--shutdown-grace", "0")
            run(_enqueue(redis_url, prefix, _task("t-term", "wf-term")))
            _wait_for(lambda: list(tmp_path.glob("run-*")), 40, "the node to run")
            worker.send_signal(signal.SIGTERM)  # the ack is written and held by the server
            code = worker.wait(timeout=40)
            out = run(_outcome(redis_url, prefix, "t-term"), 40)
        finally:
            workers.close()
        log = workers.log("w1")
        assert code == 0, log
        assert out["result"] is not None and out["result"].status == "succeeded", (out, log)
        assert out["stats"] == (0, 0, 0) and out["dead"] == []
        assert "1 succeeded" in log and "0 released" in log and "0 lost leases" in log, log
        assert len(list(tmp_path.glob("run-*"))) == 1

    def test_a_cancel_while_the_ack_is_held_leaves_the_result_and_no_dead_letter(
            redis_url: str, tmp_path: pathlib.Path) -> None:
        prefix = f"s9c{uuid.uuid4().hex[:8]}"
        workers = _workers(redis_url, prefix, tmp_path, pause=True)
        try:
            workers.env["DA_REVIEW_CANCEL"] = "1"  # the node publishes its workflow's cancel as it returns
            worker = workers.start("w1")
            run(_enqueue(redis_url, prefix, _task("t-cancel", "wf-cancel")))
            _wait_for(lambda: list(tmp_path.glob("run-*")), 40, "the node to run")
            out = run(_outcome(redis_url, prefix, "t-cancel"), 40)
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=40)
        finally:
            workers.close()
        log = workers.log("w1")
        assert code == 0, log
        assert out["result"] is not None and out["result"].status == "succeeded", (out, log)
        assert out["stats"] == (0, 0, 0) and out["dead"] == []
        assert "1 succeeded" in log and "0 failed" in log, log

    def test_nodes_started_at_every_phase_of_the_lease_watch_keep_their_leases(
            redis_url: str, tmp_path: pathlib.Path) -> None:
        """Nodes run past their lease, started at different moments relative to the worker's one lease
        watch timer, with a second worker waiting for any lease that lapses: each runs once."""
        prefix = f"s9l{uuid.uuid4().hex[:8]}"
        workers = _workers(redis_url, prefix, tmp_path, pause=False)
        ids = [f"long-{i}" for i in range(6)]
        try:
            workers.start("w1", "--visibility-timeout", "3", "--capacity", "6")
            _wait_for(lambda: "serving" in workers.log("w1"), 40, "w1 to serve")
            workers.start("w2", "--visibility-timeout", "3", "--capacity", "6")

            async def enqueue_staggered() -> None:
                import asyncio

                backend = open_backend(redis_url, prefix=prefix)
                await backend.connect()
                try:
                    for task_id in ids:
                        await backend.task_queue.enqueue(Task(task_id, "wf-long", "long", "long", {"state": {}}))
                        await asyncio.sleep(0.37)
                finally:
                    await backend.close()

            run(enqueue_staggered(), 40)

            async def outcome() -> tuple[dict[str, Any], Any]:
                backend = open_backend(redis_url, prefix=prefix)
                await backend.connect()
                try:
                    found: dict[str, Any] = {}
                    for _ in range(60):
                        found.update(await backend.task_queue.wait_results([i for i in ids if i not in found],
                                                                             timeout=1))
                        if len(found) == len(ids):
                            break
                    return found, await backend.task_queue.stats("long")
                finally:
                    await backend.close()

            results, stats = run(outcome(), 80)
        finally:
            workers.close()
        runs = sorted(p.name for p in tmp_path.glob("long-*"))
        assert sorted(results) == ids and all(r.status == "succeeded" for r in results.values())
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
        assert len(runs) == len(ids), runs  # no lease lapsed: no task ran twice
        assert all(r.attempts == 1 for r in results.values())

    @pytest.mark.parametrize("backend_name", ["redis", "nats"])
    def test_a_worker_killed_among_quick_acks_leaves_one_result_per_task_and_exact_stats(
            backend_name: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> None:
        """SIGKILL while a worker acks a stream of quick tasks (some between the result's write and the
        message's ack, on NATS): each task ends with one result, its own; nothing queued, in flight or
        dead once the survivor cleaned up."""
        url = str(request.getfixturevalue(f"{backend_name}_url"))
        prefix = f"s9q{uuid.uuid4().hex[:8]}"
        workers = _workers(url, prefix, tmp_path, pause=False)
        ids = [f"q-{i}" for i in range(40)]

        async def enqueue_all() -> None:
            backend = open_backend(url, prefix=prefix)
            await backend.connect()
            try:
                await backend.task_queue.enqueue_many(
                    [Task(task_id, "wf-quick", "quick", "quick", {"state": {"i": i}}) for i, task_id in enumerate(ids)])
            finally:
                await backend.close()

        async def settled() -> tuple[dict[str, Any], Any, list[Any]]:
            backend = open_backend(url, prefix=prefix)
            await backend.connect()
            try:
                found: dict[str, Any] = {}
                for _ in range(60):
                    found.update(await backend.task_queue.wait_results([i for i in ids if i not in found], timeout=1))
                    if len(found) == len(ids):
                        break
                stats = await backend.task_queue.stats("quick")
                for _ in range(40):  # a message whose result is stored is cleaned up once redelivered
                    if (stats.queued, stats.in_flight) == (0, 0):
                        break
                    await asyncio.sleep(0.5)
                    stats = await backend.task_queue.stats("quick")
                return found, stats, await backend.task_queue.dead_letters("quick")
            finally:
                await backend.close()

        try:
            victim = workers.start("w1", "--visibility-timeout", "2", "--capacity", "4")
            _wait_for(lambda: "serving" in workers.log("w1"), 40, "w1 to serve")
            run(enqueue_all(), 40)
            _wait_for(lambda: len(list(tmp_path.glob("quick-*"))) >= 6, 40, "some tasks to run")
            victim.kill()
            victim.wait(timeout=20)
            workers.start("w2", "--visibility-timeout", "2", "--capacity", "4")
            results, stats, dead = run(settled(), 90)
        finally:
            workers.close()
        assert sorted(results) == sorted(ids)
        assert all(r.status == "succeeded" and r.output == {"i": ids.index(k)} for k, r in results.items())
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0) and dead == []

    @pytest.mark.parametrize("backend_name", ["redis", "nats"])
    def test_a_map_cancelled_while_its_tasks_run_leaves_nothing_queued_in_flight_or_dead(
            backend_name: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> None:
        """cancel_workflow during an 80-way Send map served by two worker processes: execute raises
        the cancellation, and once the workers settled what they held no task of the map is left
        queued, in flight or dead-lettered (cancelled tasks are withdrawn or finish as cancelled)."""
        from support.worker_processes import load_test_app

        from distributed_agents.core.errors import WorkflowCancelledError
        from distributed_agents.distributed import DistributedOrchestrator

        url = str(request.getfixturevalue(f"{backend_name}_url"))
        prefix = f"s9m{uuid.uuid4().hex[:8]}"
        app = load_test_app("control_app")
        workers = WorkerProcesses(url, prefix, tmp_path, "control_app:registry")

        async def scenario() -> tuple[str, Any, list[Any]]:
            orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
            try:
                running = asyncio.ensure_future(orchestrator.execute(
                    app.map_graph(), {"items": list(range(80)), "pause": 0.05, "mark": True}, workflow_id="wf-cx"))
                for _ in range(400):  # some items ran: the map is under way
                    if len(list(tmp_path.glob("square-*"))) >= 5 or running.done():
                        break
                    await asyncio.sleep(0.05)
                await orchestrator.cancel_workflow("wf-cx")
                try:
                    await running
                    outcome = "completed"
                except WorkflowCancelledError:
                    outcome = "cancelled"
                queue = orchestrator.backend.task_queue
                stats = await queue.stats("square")
                for _ in range(100):  # the workers finish or give back what they held
                    if (stats.queued, stats.in_flight) == (0, 0):
                        break
                    await asyncio.sleep(0.25)
                    stats = await queue.stats("square")
                return outcome, stats, await queue.dead_letters("square")
            finally:
                await orchestrator.close()

        # Default (30 s) leases: a task left in flight (as one cancelled between its claim and its first step
        # was, see tests/core/test_review_s9.py) outlasts the wait below instead of being delivered again.
        workers.start("w1", "--capacity", "4")
        workers.start("w2", "--capacity", "4")
        try:
            for worker_id in ("w1", "w2"):
                _wait_for(lambda worker_id=worker_id: "serving" in workers.log(worker_id), 40, f"{worker_id} to serve")
            outcome, stats, dead = run(scenario(), 80)
        finally:
            workers.close()
        assert outcome == "cancelled"
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), stats
        assert dead == []
