"""Review of this session's worker-side speed-ups with real worker processes (Redis, NATS).

afda711 (NATS): leases claimed together share one timer that starts their keepers, and the
done events of acks one reply read stored go out as one message. cc0deb6 (Redis): settling
a live lease no longer applies time to its type.

What must hold: a worker that claims many tasks at once and runs some of them past their
lease (others finishing quickly, so the shared timer loses most of its leases first) keeps
every lease: each node runs once, on its first attempt; and every workflow gets its own
result when many acks are announced together.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph
from distributed_agents.distributed import DistributedOrchestrator

HERE = pathlib.Path(__file__).resolve().parent
VISIBILITY = 1.5


@pytest.fixture(params=["redis", "nats"])
def backend_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def _graph() -> Graph:
    g = Graph("review_s11")
    g.add_node("pause").set_entry_point("pause").set_finish_point("pause")
    return g.compile()


def _worker(url: str, prefix: str, worker_id: str, tmp: pathlib.Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DA_MARKER_DIR": str(tmp), "PYTHONPATH": str(HERE)}
    with open(tmp / f"{worker_id}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "review_s11_app:registry",
             "--backend-url", url, "--prefix", prefix, "--worker-id", worker_id, "--capacity", "16",
             "--visibility-timeout", str(VISIBILITY), "--heartbeat-interval", "0.5", "--shutdown-grace", "5"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _runs(tmp: pathlib.Path) -> list[tuple[str, int, int]]:
    path = tmp / "runs"
    if not path.exists():
        return []
    return [(w, int(n), int(a)) for w, n, a in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.timeout(90)
def test_tasks_claimed_together_some_outliving_their_lease_each_run_once_with_their_own_result(
        backend_url: str, tmp_path: pathlib.Path) -> None:
    """24 single-node workflows started at once on one worker of capacity 16: most nodes end
    at once (their acks settled together), every fourth runs 2.6 s (well past the 1.5 s
    lease, so its lease is kept by the keeper the shared timer starts after its siblings
    were settled). Each workflow ends with its own result; each node ran once, attempt 1."""
    prefix = f"rv11{uuid.uuid4().hex[:8]}"
    orchestrator = DistributedOrchestrator(backend_url=backend_url, prefix=prefix,
                                           visibility_timeout=VISIBILITY, worker_timeout=60)
    worker: subprocess.Popen[str] | None = None
    try:
        async def scenario() -> list[dict[str, Any]]:
            nonlocal worker
            worker = _worker(backend_url, prefix, "w1", tmp_path)
            graph = _graph()
            # A first workflow so the worker is up (and parked) before the burst.
            first = dict(await orchestrator.execute(graph, {"n": 0, "pause": 0.0}, workflow_id=f"{prefix}-0"))
            rest = await asyncio.gather(*(
                orchestrator.execute(graph, {"n": n, "pause": 2.6 if n % 4 == 0 else 0.02}, workflow_id=f"{prefix}-{n}")
                for n in range(1, 25)))
            await orchestrator.close()
            return [first] + [dict(state) for state in rest]

        states = run(scenario(), 80)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    assert [(s["n"], s["out"]) for s in states] == [(n, 2 * n) for n in range(25)]
    runs = _runs(tmp_path)
    assert sorted((n, a) for _, n, a in runs) == [(n, 1) for n in range(25)], \
        (runs, (tmp_path / "w1.log").read_text()[-3000:])
