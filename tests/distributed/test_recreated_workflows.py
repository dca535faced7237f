"""A workflow deleted and created again under its id runs its nodes again (core.incarnation).

What the task queue keeps per task id (results, enqueue dedup markers, done events,
dead letters) and the child workflows of subgraph tasks outlive ``StateStore.delete``.
The new workflow's tasks have ids of its own, so on memory, Redis and NATS, with every
node on a worker (real worker processes on Redis and NATS), each node runs once per
incarnation on that incarnation's input: a plain chain, a ``Send`` fan-out, a subgraph
(whose child of the deleted parent is replaced), a node whose old task was
dead-lettered, and a completed workflow continued as a new run.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import Orchestrator, Worker
from distributed_agents.core.dead_letters import requeue_dead_letter
from distributed_agents.core.errors import NodeExecutionError

pytestmark = pytest.mark.timeout(120)


def app() -> ModuleType:
    return load_test_app("incarnation_app")


def runs(tmp_path: pathlib.Path) -> Counter[str]:
    """How often each ``<node>-<input>`` ran (one marker file per run)."""
    return Counter(path.name.rsplit("-", 1)[0] for path in tmp_path.glob("*-*-*") if path.suffix != ".log")


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_a_workflow_created_again_under_a_deleted_ones_id_runs_every_node_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DA_MARKER_DIR", str(tmp_path))
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    prefix = f"again{uuid.uuid4().hex[:8]}"
    nodes = app()
    workers = WorkerProcesses(url, prefix, tmp_path, "incarnation_app:registry")
    worker = (Worker(capacity=4, registry=nodes.registry, backend=url, backend_options={"prefix": prefix},
                     poll_wait=0.05, heartbeat_interval=0.5) if backend == "memory" else None)

    async def twice(orchestrator: Orchestrator, graph: Any, first: dict[str, Any], second: dict[str, Any],
                    workflow_id: str) -> tuple[Any, Any]:
        before = await orchestrator.execute(graph, first, workflow_id=workflow_id)
        assert await orchestrator.backend.state_store.delete(workflow_id)  # the parent only: its children stay
        return before, await orchestrator.execute(graph, second, workflow_id=workflow_id)

    async def scenario() -> dict[str, Any]:
        serving = asyncio.ensure_future(worker.start()) if worker is not None else None
        orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True)
        try:
            out: dict[str, Any] = {}
            out["plain"] = await twice(orchestrator, nodes.plain(), {"v": 1}, {"v": 1}, "wf-plain")
            out["fan"] = await twice(orchestrator, nodes.fan_out(), {"vs": [2, 3]}, {"vs": [2, 3, 4]}, "wf-fan")
            out["nested"] = await twice(orchestrator, nodes.nested(), {"v": 5}, {"v": 6}, "wf-nested")
            # The same ids after a dead letter: the new workflow's check runs (and succeeds).
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(nodes.plain(), {"v": 7, "fail": True}, workflow_id="wf-dead")
            (letter,) = await orchestrator.backend.task_queue.dead_letters("check")
            await orchestrator.backend.state_store.delete("wf-dead")
            out["dead"] = await orchestrator.execute(nodes.plain(), {"v": 7}, workflow_id="wf-dead")
            out["requeue"] = await requeue_dead_letter(orchestrator.backend, letter.task_id)
            # A completed workflow taking a new input is a new run: its tasks are new too.
            out["continued"] = await orchestrator.execute(nodes.plain(), {"v": 1}, workflow_id="wf-plain",
                                                          continue_completed=True)
            return out
        finally:
            await orchestrator.close()
            if worker is not None and serving is not None:
                await worker.stop(grace=1)
                await serving

    if worker is None:
        workers.start("w1", "--capacity", "4")
    try:
        out = run(scenario(), timeout=110)
    finally:
        workers.close()
    assert [dict(result) for result in out["plain"]] == [{"v": 1, "out": [2], "checked": 1}] * 2
    assert sorted(out["fan"][1]["out"]) == [4, 6, 8]
    assert dict(out["nested"][1]) == {"v": 6, "out": [12], "checked": 6}
    assert dict(out["dead"]) == {"v": 7, "out": [14], "checked": 7}
    assert not out["requeue"].requeued and "deleted and created again" in out["requeue"].message
    assert out["continued"]["out"] == [2, 2] and out["continued"]["checked"] == 1
    assert runs(tmp_path) == Counter({
        "double-1": 3, "check-1": 3,  # twice under one id, then a new run of the second
        "double-2": 2, "double-3": 2, "double-4": 1,
        "double-5": 1, "check-5": 1, "double-6": 1, "check-6": 1,  # the subgraph ran again, on the new input
        "double-7": 2, "check-7": 2,
    })
