"""Send on Redis and NATS: a map runs as one task per item, spread over real worker processes.

The task payload carries each Send's argument instead of the shared state; the
orchestrator merges the results by Send index, so the reduced result is complete and in
item order whichever worker finished first.
"""

from __future__ import annotations

import asyncio
import collections
import pathlib
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app, sigkill_orchestrator_child

from distributed_agents import State
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(180)


def control_app() -> ModuleType:
    return load_test_app("control_app")


@pytest.mark.parametrize(("backend", "size"), [("redis_url", 1000), ("nats_url", 200)])
def test_a_map_runs_one_task_per_item_over_two_worker_processes(
    backend: str, size: int, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"send{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "control_app:registry")
    items = list(range(size))
    app = control_app()

    async def scenario() -> State:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            # Both serving before the map starts: else a worker that starts slowly under load can
            # find every item taken by the other (the assertion below is about sharing, not start-up).
            await orchestrator.connect()
            for _ in range(600):
                if len(await orchestrator.backend.worker_registry.list_workers()) >= 2:
                    break
                await asyncio.sleep(0.1)
            return await orchestrator.execute(app.map_graph(), {"items": items}, workflow_id="wf-map")
        finally:
            await orchestrator.close()

    workers.start("w1", "--capacity", "8")
    workers.start("w2", "--capacity", "8")
    try:
        result = run(scenario(), timeout=170)
    finally:
        workers.close()
    assert result["total"] == sum(n * n for n in items)
    assert result["order"] == items  # merged by Send index
    assert len(result["ran_on"]) == size
    assert set(result["ran_on"]) == {"w1", "w2"}  # both workers took part


def test_an_orchestrator_sigkilled_mid_map_is_taken_over_and_every_item_runs_once(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    prefix = f"sendkill{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(redis_url, prefix, tmp_path, "control_app:registry")
    app = control_app()
    workers.start("w1", "--capacity", "4")
    workers.start("w2", "--capacity", "4")
    try:
        # Killed once the map is under way (10 items squared).
        assert sigkill_orchestrator_child("map_child.py", redis_url, prefix, "wf-midmap", tmp_path,
                                          markers="square-*", count=10) == "wf-midmap"

        async def take_over() -> tuple[Any, State]:
            orchestrator = DistributedOrchestrator(backend_url=redis_url, prefix=prefix, recover=True, lease_ttl=1.0)
            orchestrator.register_graph(app.map_graph())
            try:
                # Read before the first recovery round (one interval after connecting).
                status = await orchestrator.get_workflow_status("wf-midmap")
                return status, await orchestrator.wait("wf-midmap", timeout=120)
            finally:
                await orchestrator.close()

        status, result = run(take_over(), timeout=150)
    finally:
        workers.close()
    items = list(range(120))
    assert (status.status, status.step) == ("running", 1)  # killed mid-map: the map's step had not committed
    assert status.next_nodes == ("square",)
    assert result["total"] == sum(n * n for n in items) and result["order"] == items
    runs = collections.Counter(path.name.split("-")[1] for path in tmp_path.glob("square-*"))
    assert sorted(map(int, runs)) == items and set(runs.values()) == {1}  # finished tasks were reused
