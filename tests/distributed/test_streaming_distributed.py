"""Streaming with nodes on workers: memory (in-process worker), Redis and NATS (worker processes).

Tokens a node emits on a worker reach the caller in order, before the step's values;
a second process attaches to a running workflow by id, replays, then follows it; a slow
caller loses only live chunks, told by a StreamGap, never values.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import HERE, WorkerProcesses, load_test_app

from distributed_agents import Graph, Orchestrator, StreamGap, Worker

pytestmark = pytest.mark.timeout(120)
app = load_test_app("stream_app")
BACKENDS = ["memory", "redis_url", "nats_url"]


async def with_workers(backend: str, request: pytest.FixtureRequest, tmp: pathlib.Path,
                       scenario: Callable[[Orchestrator, str, str], Any]) -> Any:
    """Run ``scenario(orchestrator, url, prefix)`` with every node on a worker (processes, or in-process on memory)."""
    if backend == "memory":
        orchestrator = Orchestrator(backend="memory://", local_nodes=False, wait_for_workers=True)
        worker = Worker(registry=app.registry, backend="memory://", capacity=4, poll_wait=0.05)
        serving = asyncio.ensure_future(worker.start())
        try:
            return await scenario(orchestrator, "memory://", "")
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()
    url = str(request.getfixturevalue(backend))
    prefix = f"strm{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp, "stream_app:registry")
    workers.start("w1", "--capacity", "2")
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, local_nodes=False,
                                wait_for_workers=True)
    try:
        return await scenario(orchestrator, url, prefix)
    finally:
        await orchestrator.close()
        workers.close()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_from_a_worker_reach_the_caller_in_order_before_the_steps_values(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> list[Any]:
        return await collect(orchestrator.astream(app.talk_graph(), {"tokens": 50},
                                                  stream_mode=["messages", "custom", "updates"]))

    chunks = run(with_workers(backend, request, tmp_path, scenario), timeout=100)
    tokens = [chunk for mode, (chunk, meta) in [c for c in chunks if c[0] == "messages"]]
    assert tokens == [f"t{i}" for i in range(50)]
    metas = [meta for mode, (chunk, meta) in [c for c in chunks if c[0] == "messages"]]
    assert all(m["node"] == "talk" and m["step"] == 0 and m["model"] == "test" for m in metas)
    assert [m["seq"] for m in metas] == list(range(1, 51))
    kinds = [mode if mode != "updates" else next(iter(chunk)) for mode, chunk in chunks]
    # Every chunk of a step precedes that step's update: the worker publishes before it reports.
    assert kinds.index("talk") > max(i for i, k in enumerate(kinds) if k == "messages")
    assert [c for m, c in chunks if m == "custom"] == [{"talked": True}, *({"i": i} for i in range(5))]
    assert kinds.index("count") > max(i for i, (m, c) in enumerate(chunks) if m == "custom")


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_another_process_attaches_to_a_running_workflow_replays_then_follows(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "open"

    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> tuple[list[Any], str]:
        workflow_id = await orchestrator.submit(app.gate_graph(), {"tokens": 3, "marker": str(marker)})
        while (await orchestrator.get_state(workflow_id)).step < 1:  # talk committed; gate is waiting
            await asyncio.sleep(0.05)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "stream_app.py"), "attach", url, prefix, workflow_id,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
        assert child.stdout is not None
        lines = []
        while True:  # the replay: input values, talk's update, values after step 1
            line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
            assert line, (await child.stderr.read()).decode() if child.stderr else ""
            lines.append(json.loads(line))
            if len([x for x in lines if x[0] == "values"]) == 2:
                break
        marker.touch()
        out, err = await asyncio.wait_for(child.communicate(), 60)
        lines += [json.loads(line) for line in out.decode().splitlines() if line != "END"]
        await orchestrator.wait(workflow_id, timeout=60)
        return lines, out.decode() + err.decode()

    lines, output = run(with_workers(backend, request, tmp_path, scenario), timeout=110)
    assert "END" in output, output
    steps = [[mode, chunk] for mode, chunk in lines if mode != "custom"]
    assert steps == [
        ["values", {"tokens": 3, "marker": str(marker)}],
        ["updates", {"talk": {"talked": 3}}], ["values", {"tokens": 3, "marker": str(marker), "talked": 3}],
        ["updates", {"gate": {"opened": True}}],
        ["values", {"tokens": 3, "marker": str(marker), "talked": 3, "opened": True}],
        ["updates", {"count": {"counted": 5}}],
        ["values", {"tokens": 3, "marker": str(marker), "talked": 3, "opened": True, "counted": 5}],
    ]
    custom = [chunk for mode, chunk in lines if mode == "custom"]
    assert custom[-6:] == ["released", *({"i": i} for i in range(5))]  # live after the replay


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_caller_gets_a_gap_for_dropped_tokens_and_every_value(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> list[Any]:
        stream = orchestrator.astream(app.talk_graph(), {"tokens": 200}, stream_mode=["messages", "values"],
                                      buffer_size=10, workflow_id="wf-slow", on_gap="yield")
        chunks = [await stream.__anext__()]  # the input's values
        while (await orchestrator.get_workflow_status("wf-slow")).status != "completed":
            await asyncio.sleep(0.02)  # the consumer is busy: tokens pile up in its buffer
        return chunks + await collect(stream)

    chunks = run(with_workers(backend, request, tmp_path, scenario), timeout=100)
    gaps = [chunk for mode, chunk in chunks if mode == "gap"]
    tokens = [chunk[0] for mode, chunk in chunks if mode == "messages"]
    assert gaps and all(isinstance(g, StreamGap) and g.source == "caller" for g in gaps)
    assert sum(g.dropped["messages"] for g in gaps) + len(tokens) == 200 and len(tokens) <= 10
    assert tokens == [f"t{i}" for i in range(200 - len(tokens), 200)]
    assert [chunk for mode, chunk in chunks if mode == "values"] == [
        {"tokens": 200}, {"tokens": 200, "talked": 200}, {"tokens": 200, "talked": 200, "counted": 5}]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_burst_arrives_intact_a_left_stream_still_ends_and_inline_nodes_run_on_workers(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> tuple[list[int], str, Any]:
        # 25,000 tokens from an async node that never awaits: past both former bounds (10,000 chunks).
        stream = orchestrator.astream(app.talk_graph(), {"tokens": 25_000}, stream_mode="messages", on_gap="raise")
        tokens = [int(token[1:]) async for token, metadata in stream]
        # Leaving the loop at the first token: the workflow still runs to its end.
        async for _ in orchestrator.astream(app.talk_graph(), {"tokens": 50}, stream_mode="messages",
                                            workflow_id="wf-left"):
            break
        left = dict(await orchestrator.wait("wf-left", timeout=60))
        # Inline functions (a subgraph's too) are not sent anywhere: workers run their node types.
        child = Graph("inline_child").add_node("count", lambda state: {"counted": -1})
        parent = Graph("inline").add_node("talk", lambda state: {"talked": -1})
        parent.add_node("sub", child.set_entry_point("count").set_finish_point("count").compile())
        parent.set_entry_point("talk").add_edge("talk", "sub").set_finish_point("sub").compile()
        inline = dict(await orchestrator.execute(parent, {"tokens": 3}))
        return tokens, str(left), inline

    tokens, left, inline = run(with_workers(backend, request, tmp_path, scenario), timeout=110)
    assert tokens == list(range(25_000))
    assert "'counted': 5" in left and "'talked': 50" in left
    assert inline == {"tokens": 3, "talked": 3, "counted": 5}


@pytest.mark.parametrize("backend", ["memory", "redis_url"])
def test_tasks_and_checkpoints_streams_of_nodes_run_on_workers(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """stream_mode "tasks"/"checkpoints" read the checkpoints workers' results made: each task's
    start and result in order, one snapshot per committed step."""
    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> list[Any]:
        return await collect(orchestrator.astream(app.talk_graph(), {"tokens": 3}, workflow_id="wf-task-modes",
                                                  stream_mode=["tasks", "checkpoints"]))

    chunks = run(with_workers(backend, request, tmp_path, scenario), timeout=100)
    tasks = [chunk for mode, chunk in chunks if mode == "tasks"]
    assert [(t["id"], "input" in t) for t in tasks] == [
        ("wf-task-modes:0:talk", True), ("wf-task-modes:0:talk", False),
        ("wf-task-modes:1:count", True), ("wf-task-modes:1:count", False)]
    assert tasks[0]["input"] == {"tokens": 3} and all(t.get("error") is None for t in tasks)
    snapshots = [chunk for mode, chunk in chunks if mode == "checkpoints"]
    assert [s["config"]["configurable"]["checkpoint_id"] for s in snapshots] == [
        "wf-task-modes:0", "wf-task-modes:1", "wf-task-modes:2"]
    assert [s["next"] for s in snapshots] == [["talk"], ["count"], []]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_list_of_modes_runs_the_workers_nodes_to_the_end_streaming_nothing(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """LangGraph's stream_mode=[]: nothing is yielded, and the workflow still completes on the workers."""
    async def scenario(orchestrator: Orchestrator, url: str, prefix: str) -> tuple[list[Any], Any]:
        chunks = await collect(orchestrator.astream(app.talk_graph(), {"tokens": 3}, workflow_id="wf-no-modes",
                                                    stream_mode=[]))
        return chunks, await orchestrator.get_state("wf-no-modes")

    chunks, snapshot = run(with_workers(backend, request, tmp_path, scenario), timeout=100)
    assert chunks == [] and snapshot.next == () and snapshot.metadata["step"] == 2
