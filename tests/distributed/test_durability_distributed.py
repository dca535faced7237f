"""Durability modes on Redis (and NATS): real worker processes, and an orchestrator process SIGKILLed mid-run.

``"async"`` writes the same checkpoints as ``"sync"`` (one per step, in order) with nodes on
workers; ``"exit"`` writes only the first and the last. An orchestrator killed while an
``"exit"`` workflow runs has written nothing since the start: the takeover runs it again from
step 0 and completes it with the same result; killed in ``"async"``, the takeover goes on from
the last commit that landed and the history still has exactly one checkpoint per step.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import HERE, WorkerProcesses, load_test_app

from distributed_agents import Orchestrator

pytestmark = pytest.mark.timeout(120)
app = load_test_app("durability_app")


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_modes_with_nodes_on_worker_processes(backend: str, request: pytest.FixtureRequest,
                                              tmp_path: pathlib.Path) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"dura{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "durability_app:registry")
    workers.start("w1")
    workers.start("w2")

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True,
                                worker_timeout=30) as orchestrator:
            for graph in (app.chain_graph(), app.fan_graph()):
                for mode in ("sync", "async", "exit"):
                    workflow_id = f"{graph.name}-{mode}"
                    result = await orchestrator.execute(graph, {}, workflow_id=workflow_id, durability=mode)
                    history = await orchestrator.get_state_history(workflow_id)
                    record = await orchestrator.backend.state_store.get(workflow_id)
                    assert record is not None
                    parents = [None if s.parent_checkpoint_id is None else s.parent_checkpoint_id.rsplit(":", 1)[1]
                               for s in history]
                    seen[workflow_id] = (dict(result), [(s.step, s.values, s.next, parent)
                                                        for s, parent in zip(history, parents)], record.metadata.get("durability"))
        return seen

    try:
        seen = run(scenario(), timeout=100)
    finally:
        workers.close()
    for name, steps in (("durability-chain", 5), ("durability-fan", 4)):
        sync, asyn, exit_ = (seen[f"{name}-{mode}"] for mode in ("sync", "async", "exit"))
        assert sync[0] == asyn[0] == exit_[0]
        assert [entry[0] for entry in sync[1]] == list(range(steps, -1, -1))
        assert asyn[1] == sync[1]  # the same checkpoints, in the same order
        assert exit_[1] == [sync[1][0][:3] + ("0",), sync[1][-1]]  # only the last and the first
        assert (sync[2], asyn[2], exit_[2]) == (None, "async", "exit")
    assert seen["durability-chain-sync"][0]["path"] == app.NODES


def runs_by_node(marker_dir: pathlib.Path) -> Counter[str]:
    path = marker_dir / "runs"
    return Counter(line.split()[0] for line in path.read_text().splitlines()) if path.exists() else Counter()


@pytest.mark.parametrize("mode", ["exit", "async"])
def test_orchestrator_killed_mid_run_is_taken_over(mode: str, redis_url: str, tmp_path: pathlib.Path) -> None:
    prefix = f"durk{uuid.uuid4().hex[:8]}"
    workflow_id = f"killed-{mode}"
    env = {"PYTHONPATH": str(HERE), "DA_MARKER_DIR": str(tmp_path), "DA_HANG": "1", **_inherited()}
    with subprocess.Popen([sys.executable, str(HERE / "durability_app.py"), redis_url, prefix, workflow_id, mode],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            deadline = time.monotonic() + 60
            while runs_by_node(tmp_path)["hang"] == 0:  # step 2 is running: n0 and n1 are done
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                assert time.monotonic() < deadline, "the orchestrator process never reached step 2"
                time.sleep(0.05)
        finally:
            child.kill()  # SIGKILL: nothing is flushed
            child.communicate(timeout=30)

    async def take_over() -> tuple[int, list[int], dict[str, Any], list[int], Any]:
        async with Orchestrator(backend=redis_url, backend_options={"prefix": prefix}, recover=True,
                                recovery_interval=0.1, lease_ttl=1.0) as rescuer:
            before = await rescuer.get_state(workflow_id)
            written = [s.step for s in await rescuer.get_state_history(workflow_id)]
            rescuer.register_graph(app.chain_graph(local=True))
            result = await rescuer.wait(workflow_id, timeout=60)
            after = [s.step for s in await rescuer.get_state_history(workflow_id)]
            record = await rescuer.backend.state_store.get(workflow_id)
            assert record is not None
            return before.step, written, dict(result), after, record.metadata.get("durability")

    os.environ["DA_MARKER_DIR"] = str(tmp_path)  # the rescuer runs the local nodes here
    try:
        step_at_kill, written, result, after, kept = run(take_over(), timeout=90)
    finally:
        os.environ.pop("DA_MARKER_DIR", None)
    runs = runs_by_node(tmp_path)
    assert result["path"] == app.NODES and result["total"] == sum(map(len, app.NODES))
    assert kept == mode  # the takeover kept the workflow's mode
    if mode == "exit":
        # Nothing was written after the start: the takeover ran everything again.
        assert (step_at_kill, written) == (0, [0])
        assert runs == Counter({"n0": 2, "n1": 2, "hang": 2, "n3": 1, "n4": 1})
        assert after == [5, 0]
    else:
        # The commits that landed are kept: only the steps after them ran again.
        assert 1 <= step_at_kill <= 2 and written == list(range(step_at_kill, -1, -1))
        assert runs["n0"] == 1 and runs["n1"] == 1 + (step_at_kill == 1) and runs["hang"] == 2
        assert after == [5, 4, 3, 2, 1, 0]


def _inherited() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("DA_HANG", "DA_MARKER_DIR")}
