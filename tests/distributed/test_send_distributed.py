"""Send on Redis and NATS: a map runs as one task per item, spread over real worker processes.

The task payload carries each Send's argument instead of the shared state; the
orchestrator merges the results by Send index, so the reduced result is complete and in
item order whichever worker finished first.
"""

from __future__ import annotations

import importlib.util
import pathlib
import uuid
from types import ModuleType

import pytest
from support.aio import run
from support.worker_processes import HERE, WorkerProcesses

from distributed_agents import State
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(180)


def control_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("control_app", HERE / "control_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
