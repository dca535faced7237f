"""GC-tracked objects an orchestrator keeps per workflow run in flight, on a real Redis and in memory.

Every object the collector tracks is visited by the young and old collections for as
long as it lives; an orchestrator with hundreds of single-node workflows waiting on
their workers keeps each run's objects through many collections (a run with the
collector off took 5-10% less orchestrator CPU). The counts are deterministic: the
objects a run keeps while its one task waits for a worker, measured as the difference
between K and 2K runs in flight (what the process holds anyway cancels out).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.engine import StepEngine
from distributed_agents.core.executors import NodeCall, TaskQueueExecutor, _by_task_id, _call_of, _ids_outside

pytestmark = pytest.mark.timeout(120)
HERE = pathlib.Path(__file__).resolve().parent

# Measured on Python 3.11: 71-74 per run on Redis and 67 in memory before per-run bound methods, a
# partial, context-variable tokens, a deque, the options and the step's lists and dicts went (now 46-57, 50-52).
REDIS_BOUND = 63
MEMORY_BOUND = 58


def _graph() -> Graph:
    # A node no process here runs: its task waits on the queue, with no worker to take it.
    return Graph("gc_per_run").add_node("n", node_type="gc_nobody").set_entry_point("n").set_finish_point("n").compile()


def _engines() -> int:
    return sum(1 for item in gc.get_objects() if type(item) is StepEngine)


async def _in_flight(orchestrator: Orchestrator, count: int) -> tuple[int, Counter[str]]:
    """The GC-tracked objects (all, and by type) that ``count`` runs waiting on their task add."""
    graph = _graph()
    gc.collect()
    before = Counter(type(item).__name__ for item in gc.get_objects())
    runs = [asyncio.ensure_future(orchestrator.execute(graph, {})) for _ in range(count)]
    try:
        for _ in range(400):
            await asyncio.sleep(0.02)
            if _engines() >= count:
                break
        await asyncio.sleep(0.2)  # past the create and the first step's bookkeeping: every run waits
        assert not any(run.done() for run in runs), [run.exception() for run in runs if run.done()][:1]
        gc.collect()
        after = Counter(type(item).__name__ for item in gc.get_objects())
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        del runs
    return sum(after.values()) - sum(before.values()), after - before


async def _per_run(backend: str) -> tuple[float, dict[str, float]]:
    """Objects per run in flight: the difference between 10 and 30 runs, each in a fresh orchestrator."""
    counts = []
    for count in (10, 30):
        orchestrator = Orchestrator(backend=backend, local_nodes=False, wait_for_workers=True, worker_timeout=600)
        try:
            await orchestrator.connect()
            counts.append((count, *await _in_flight(orchestrator, count)))
        finally:
            await orchestrator.close()
    (few, total_few, types_few), (many, total_many, types_many) = counts
    per_type = {name: (types_many[name] - types_few[name]) / (many - few) for name in types_many}
    return (total_many - total_few) / (many - few), per_type


def _per_run_alone(backend: str) -> tuple[float, dict[str, float]]:
    """``_per_run`` in a fresh interpreter: the count depends on what the process holds
    besides (the context variables other tests left set make every run's context copy
    larger), so a test run after others in the same pytest process counted more."""
    code = ("import asyncio, json, sys; import test_gc_tracked_per_run as t; "
            "print(json.dumps(asyncio.run(t._per_run(sys.argv[1]))))")
    path = os.pathsep.join([str(HERE), str(HERE.parent)])
    done = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": path}, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    per_run, per_type = json.loads(done.stdout.strip().splitlines()[-1])
    return per_run, per_type


def _explain(per_type: dict[str, float]) -> str:
    return ", ".join(f"{name} {count:.1f}" for name, count in sorted(per_type.items(), key=lambda kv: -kv[1])
                     if count >= 0.5)


def test_a_redis_run_in_flight_keeps_few_gc_tracked_objects(redis_url: str) -> None:
    separator = "&" if "?" in redis_url else "?"
    per_run, per_type = _per_run_alone(f"{redis_url}{separator}prefix=gc{uuid.uuid4().hex[:8]}")
    assert per_run <= REDIS_BOUND, f"{per_run:.1f} GC-tracked objects per run in flight: {_explain(per_type)}"
    # One of each per-run object, none made twice (a wrapper, a second dict of the first calls).
    for name in ("StepEngine", "TaskQueueExecutor", "NotingStore", "WaitingReporter", "NodeCall"):
        assert round(per_type.get(name, 0.0), 1) == 1.0, (name, _explain(per_type))
    for name in ("Token", "partial", "deque", "DriveOptions", "_Progress"):
        assert per_type.get(name, 0.0) < 0.5, (name, _explain(per_type))


def test_a_memory_run_in_flight_keeps_few_gc_tracked_objects() -> None:
    per_run, per_type = _per_run_alone(f"memory://gc-{uuid.uuid4().hex[:8]}")
    assert per_run <= MEMORY_BOUND, f"{per_run:.1f} GC-tracked objects per run in flight: {_explain(per_type)}"
    for name in ("Token", "deque", "DriveOptions", "_Progress"):
        assert per_type.get(name, 0.0) < 0.5, (name, _explain(per_type))


def _call(task_id: str) -> NodeCall:
    return NodeCall("w", "g", 0, task_id.split(":")[0], "t", task_id, b"{}")


def test_the_executors_lookups_answer_alike_for_one_call_and_for_many() -> None:
    one = [_call("a:1")]
    many = [_call("a:1"), _call("b:1"), _call("c:1")]
    assert _by_task_id(one) is None
    by_id = _by_task_id(many)
    assert by_id is not None
    assert _call_of(one, None, "a:1") is one[0]
    assert _call_of(many, by_id, "b:1") is many[1]
    for calls, index in ((one, None), (many, by_id)):
        with pytest.raises(KeyError):
            _call_of(calls, index, "z:1")
    assert _ids_outside(one, None, {}) == ("a:1",)
    assert _ids_outside(one, None, {"a:1": object()}) == ()
    assert _ids_outside(many, by_id, {"b:1": object()}) == ("a:1", "c:1")


def test_a_cancelled_workflows_queued_task_is_withdrawn_and_another_workflows_is_not() -> None:
    # withdraw_on_cancel is asked about the workflow of the step's calls (one callable per orchestrator).
    async def scenario() -> list[str]:
        orchestrator = Orchestrator(backend=f"memory://wd-{uuid.uuid4().hex[:8]}", local_nodes=False,
                                    wait_for_workers=True, worker_timeout=600)
        try:
            await orchestrator.connect()
            graph = _graph()
            kept = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="kept"))
            gone = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="gone"))
            for _ in range(200):
                await asyncio.sleep(0.02)
                if _engines() >= 2:
                    break
            await asyncio.sleep(0.1)
            assert await orchestrator.cancel_workflow("gone")
            await asyncio.gather(gone, return_exceptions=True)
            claimed = await orchestrator.backend.task_queue.claim(["gc_nobody"], worker_id="probe", max_tasks=10)
            kept.cancel()
            await asyncio.gather(kept, return_exceptions=True)
            return [claim.task.workflow_id for claim in claimed]
        finally:
            await orchestrator.close()

    assert TaskQueueExecutor.withdraw_on_cancel is None  # the default: nothing is withdrawn
    assert run(scenario(), 60) == ["kept"]
