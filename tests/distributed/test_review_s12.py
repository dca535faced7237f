"""Review of this session's NATS speed-ups with real worker processes.

This session changed the NATS task queue's enqueue (each task encoded once, its record's
JSON completed from a prepared head), its claim (the claimed record written by editing the
bytes read) and its acks and done events, and the state store's write path. What must hold
end to end: with many workflows in flight (fan-outs and chains) and a worker process
SIGKILLed in the middle, every workflow ends with the result a fault-free run gives, every
node ran at least once and every step committed exactly once (one checkpoint per step),
nothing is left queued, in flight or dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import load_test_app

from distributed_agents.distributed import DistributedOrchestrator
from distributed_agents.plugins import open_backend

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

HERE = pathlib.Path(__file__).resolve().parent
app = load_test_app("review_s12_app")
VISIBILITY = 1.5


def _reap(processes: list[subprocess.Popen[str]]) -> None:
    """SIGKILL those of ``processes`` still running and wait for each (their return codes are set)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _worker(url: str, prefix: str, worker_id: str, tmp: pathlib.Path, capacity: int = 16) -> subprocess.Popen[str]:
    # PYTHONPATH keeps what this process was given (a tree under test), with the app's folder first.
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "DA_MARKER_DIR": str(tmp), "PYTHONPATH": path}
    with open(tmp / f"{worker_id}.log", "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "review_s12_app:registry",
             "--backend-url", url, "--prefix", prefix, "--worker-id", worker_id, "--capacity", str(capacity),
             "--visibility-timeout", str(VISIBILITY), "--heartbeat-interval", "0.5", "--shutdown-grace", "5"],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _runs(tmp: pathlib.Path) -> list[tuple[str, str, str, int]]:
    path = tmp / "runs"
    if not path.exists():
        return []
    return [(w, wf, what, int(a)) for w, wf, what, a in (line.split() for line in path.read_text().splitlines())]


def test_fan_outs_and_chains_survive_a_worker_sigkilled_mid_run_with_each_step_committed_once(
        nats_url: str, tmp_path: pathlib.Path) -> None:
    """Four 50-way fan-outs and eight 4-step chains at once on two workers (capacity 16);
    once 60 nodes ran, one worker is SIGKILLed (its leases lapse after 1.5 s) and a third
    starts. Every workflow ends with its fault-free result; every item and chain step ran
    (at least once); each workflow has one checkpoint per step; the queues end empty, with
    no dead letter."""
    prefix = f"rv12{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen[str]] = []
    items = list(range(50))

    async def scenario() -> tuple[list[Any], list[Any], dict[str, list[int]], list[Any]]:
        orchestrator = DistributedOrchestrator(backend_url=nats_url, prefix=prefix, visibility_timeout=VISIBILITY,
                                               worker_timeout=60)
        backend = open_backend(nats_url, prefix=prefix)
        await backend.connect()
        try:
            processes.append(_worker(nats_url, prefix, "w1", tmp_path))
            processes.append(_worker(nats_url, prefix, "w2", tmp_path))
            maps = [asyncio.ensure_future(orchestrator.execute(app.map_graph(), {"items": items, "pause": 0.05},
                                                               workflow_id=f"{prefix}-m{k}")) for k in range(4)]
            chain = app.chain_graph(4)
            chains = [asyncio.ensure_future(orchestrator.execute(chain, {"count": 0}, workflow_id=f"{prefix}-c{k}"))
                      for k in range(8)]
            give_up = time.monotonic() + 40
            while len(_runs(tmp_path)) < 60:
                assert time.monotonic() < give_up, "the workers did not get going"
                await asyncio.sleep(0.02)
            processes[0].send_signal(signal.SIGKILL)
            processes.append(_worker(nats_url, prefix, "w3", tmp_path))
            map_states = [dict(s) for s in await asyncio.gather(*maps)]
            chain_states = [dict(s) for s in await asyncio.gather(*chains)]
            steps = {}
            for wf in [f"{prefix}-m{k}" for k in range(4)] + [f"{prefix}-c{k}" for k in range(8)]:
                checkpoints = await backend.state_store.list_checkpoints(wf)
                steps[wf] = sorted(c.step for c in checkpoints)
                if "-c" in wf:  # a chain's checkpoint after step s holds count s: the state each commit wrote
                    assert [(c.step, c.state["count"]) for c in checkpoints] == [
                        (c.step, c.step) for c in checkpoints], (wf, [(c.step, dict(c.state)) for c in checkpoints])
                else:
                    newest = dict(checkpoints[0].state)
                    assert newest["total"] == sum(n ** 3 for n in items) and sorted(newest["order"]) == items
            queues = [await backend.task_queue.stats(t) for t in ("plan", "cube", "bump")]
            return map_states, chain_states, steps, queues
        finally:
            await backend.close()
            await orchestrator.close()

    try:
        map_states, chain_states, steps, queues = run(scenario(), 100)
    finally:
        _reap(processes)
    assert processes[0].returncode == -signal.SIGKILL
    for state in map_states:
        assert state["total"] == sum(n ** 3 for n in items) and sorted(state["order"]) == items
        assert len(state["order"]) == len(items), "an item's write was committed twice"
    assert [s["count"] for s in chain_states] == [4] * 8
    runs = _runs(tmp_path)
    ran = collections.Counter((wf, what) for _, wf, what, _ in runs)
    for k in range(4):
        assert {what for wf, what in ran if wf == f"{prefix}-m{k}"} == {str(n) for n in items}
    for k in range(8):
        assert {what for wf, what in ran if wf == f"{prefix}-c{k}"} == {f"bump{i}" for i in range(4)}
    for wf, found in steps.items():
        assert found == sorted(set(found)) and found == list(range(found[-1] + 1)), (wf, found)
    for stats in queues:
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), stats


def test_many_concurrent_workflows_get_their_own_results_and_their_events_in_order(
        nats_url: str, tmp_path: pathlib.Path) -> None:
    """120 workflows at once through one orchestrator and two workers (chains of 1 and 3
    steps, each starting from its own count): each ends with its own count plus its length,
    and a subscriber on ``events.>`` (another connection) sees, per workflow, exactly its
    events in the order the step loop emits them: started, then per step the node started
    and completed and the step committed, then completed."""
    prefix = f"rv12e{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen[str]] = []

    async def scenario() -> tuple[dict[str, int], dict[str, list[tuple[str, Any, Any]]]]:
        orchestrator = DistributedOrchestrator(backend_url=nats_url, prefix=prefix, worker_timeout=60)
        listener = open_backend(nats_url, prefix=prefix)
        await listener.connect()
        events: dict[str, list[tuple[str, Any, Any]]] = collections.defaultdict(list)
        try:
            subscription = await listener.message_bus.subscribe("events.>")
            processes.extend(_worker(nats_url, prefix, f"w{i}", tmp_path, capacity=32) for i in (1, 2))
            graphs = {1: app.chain_graph(1), 3: app.chain_graph(3)}
            ids = {f"{prefix}-{k}": (k * 10, 1 + 2 * (k % 2)) for k in range(120)}
            states = await asyncio.gather(*(
                orchestrator.execute(graphs[length], {"count": start}, workflow_id=wf)
                for wf, (start, length) in ids.items()))
            counts = {wf: dict(state)["count"] - ids[wf][0] for wf, state in zip(ids, states)}
            give_up = time.monotonic() + 20
            while not all(events[wf] and events[wf][-1][0] == "workflow.completed" for wf in ids):
                message = await subscription.get(timeout=max(0.1, give_up - time.monotonic()))
                if message is None:
                    break
                data = message.data
                events[data["workflow_id"]].append((data["type"], data.get("step"), data.get("node")))
            return counts, {wf: events[wf] for wf in ids}
        finally:
            await listener.close()
            await orchestrator.close()

    try:
        counts, events = run(scenario(), 90)
    finally:
        _reap(processes)
    for wf, length in ((f"{prefix}-{k}", 1 + 2 * (k % 2)) for k in range(120)):
        assert counts[wf] == length, (wf, counts[wf])
        expected = [("workflow.started", 0, None)]
        for step in range(length):
            expected += [("node.started", step, f"b{step}"), ("node.completed", step, f"b{step}"),
                         ("step.committed", step + 1, None)]
        assert events[wf] == [*expected, ("workflow.completed", length, None)], wf


def test_an_orchestrator_sigkilled_while_it_enqueues_a_fan_out_is_taken_over_and_every_item_runs(
        nats_url: str, tmp_path: pathlib.Path) -> None:
    """An orchestrator process submits a 1,000-way fan-out and is SIGKILLed while it enqueues the
    map's tasks (once the task bucket holds some of their records, before it holds all): its
    messages and records are then written for some tasks, perhaps one without the other for
    a few. Another orchestrator takes the workflow over and re-drives the step: the workflow
    ends with every item's result, every item ran, one checkpoint per step, and the queues
    end empty with no dead letter."""
    import nats

    prefix = f"rv12k{uuid.uuid4().hex[:8]}"
    workflow_id = f"{prefix}-map"
    items = 1000
    processes: list[subprocess.Popen[str]] = []
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)

    async def kill_mid_enqueue() -> tuple[int, int]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            with open(tmp_path / "child.log", "w") as log:
                child = subprocess.Popen([sys.executable, str(HERE / "review_s12_app.py"), nats_url, prefix, workflow_id,
                                          str(items)], env={**os.environ, "PYTHONPATH": path}, cwd=HERE,
                                         stdout=log, stderr=subprocess.STDOUT, text=True)
            processes.append(child)
            bucket = f"KV_{prefix}_tasks"
            give_up = time.monotonic() + 40
            while True:
                assert child.poll() is None, (tmp_path / "child.log").read_text()
                assert time.monotonic() < give_up, "the fan-out's records never appeared"
                try:
                    records = (await js.stream_info(bucket)).state.messages
                except Exception:
                    records = 0
                if records > 1:  # the plan's record and some of the map's
                    child.send_signal(signal.SIGKILL)
                    child.wait(timeout=10)
                    break
                await asyncio.sleep(0.001)
            stored = (await js.stream_info(bucket)).state.messages
            queued = (await js.stream_info(f"{prefix}_TASKS")).state.messages
            return stored, queued
        finally:
            await nc.close()

    async def take_over() -> tuple[dict[str, Any], list[int], list[Any]]:
        orchestrator = DistributedOrchestrator(backend_url=nats_url, prefix=prefix, recover=True, lease_ttl=1.0,
                                               worker_timeout=60)
        orchestrator.register_graph(app.map_graph())
        backend = open_backend(nats_url, prefix=prefix)
        await backend.connect()
        try:
            state = dict(await orchestrator.wait(workflow_id, timeout=60))
            steps = sorted(c.step for c in await backend.state_store.list_checkpoints(workflow_id))
            return state, steps, [await backend.task_queue.stats(t) for t in ("plan", "cube")]
        finally:
            await backend.close()
            await orchestrator.close()

    try:
        processes.append(_worker(nats_url, prefix, "w1", tmp_path, capacity=64))
        stored, queued = run(kill_mid_enqueue(), 60)
        processes.append(_worker(nats_url, prefix, "w2", tmp_path, capacity=64))
        state, steps, queues = run(take_over(), 80)
    finally:
        _reap(processes)
    assert processes[0].returncode == -signal.SIGKILL
    assert 1 < stored, (stored, queued)
    assert state["total"] == sum(n ** 3 for n in range(items)), (stored, queued)
    assert sorted(state["order"]) == list(range(items))
    ran = {what for _, wf, what, _ in _runs(tmp_path) if wf == workflow_id}
    assert ran == {str(n) for n in range(items)}
    assert steps == list(range(steps[-1] + 1)), steps
    for stats in queues:
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), stats
