"""The node cache on Redis and NATS: written by one orchestrator, used by another; the node runs on a worker.

The cached node's function lives only in a real worker process. The first workflow's
task runs there (one marker file); a second workflow with the same input, driven by
another ``DistributedOrchestrator`` instance with its own backend connection, gets the
cached output without a task reaching any worker; ``clear_cache`` from either makes the
node run again. A map over repeated items runs each distinct item once.
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


async def execute_with_events(orchestrator: DistributedOrchestrator, graph: Any, state: dict[str, Any],
                              workflow_id: str) -> tuple[Any, list[dict[str, Any]]]:
    await orchestrator.connect()
    subscription = await orchestrator.backend.message_bus.subscribe(f"events.{workflow_id}.>")
    try:
        result = await orchestrator.execute(graph, state, workflow_id=workflow_id)
        events: list[dict[str, Any]] = []
        while (message := await subscription.get(timeout=10)) is not None:
            events.append(dict(message.data))
            if events[-1]["type"] in ("workflow.completed", "workflow.failed"):
                break
        return result, events
    finally:
        await subscription.close()


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_a_second_orchestrator_uses_the_output_a_worker_produced_for_the_first(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"cache{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "cache_app:registry")
    graph = load_test_app("cache_app").cache_graph()

    def runs() -> int:
        return len(list(tmp_path.glob("summarise-*")))

    async def scenario() -> dict[str, Any]:
        first = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        second = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        seen: dict[str, Any] = {}
        try:
            seen["one"] = await execute_with_events(first, graph, {"doc": "d1"}, "wf-cache-1")
            seen["runs_after_one"] = runs()
            seen["two"] = await execute_with_events(second, graph, {"doc": "d1", "reader": "other"}, "wf-cache-2")
            seen["runs_after_two"] = runs()
            seen["other_doc"] = await second.execute(graph, {"doc": "d2"}, workflow_id="wf-cache-3")
            seen["runs_after_other"] = runs()
            await second.clear_cache(graph)
            seen["after_clear"] = await first.execute(graph, {"doc": "d1"}, workflow_id="wf-cache-4")
            seen["runs_after_clear"] = runs()
            # A map over repeated docs: each distinct doc runs once, on the worker.
            seen["map"] = await second.execute(load_test_app("cache_app").map_graph(), {"docs": ["d7", "d8", "d7", "d7"]},
                                               workflow_id="wf-cache-map")
            seen["runs_after_map"] = runs()
            seen["queued"] = await first.backend.task_queue.stats("summarise")
            return seen
        finally:
            await first.close()
            await second.close()

    workers.start("w1")
    try:
        seen = run(scenario(), timeout=110)
    finally:
        workers.close()
    (one, one_events), (two, two_events) = seen["one"], seen["two"]
    assert seen["runs_after_one"] == 1 and one["summary"] == "summary of d1" and one["summarised_by"] == "w1"
    # The second orchestrator's workflow ran nothing: the worker's output came from the cache.
    assert seen["runs_after_two"] == 1
    assert two["summary"] == "summary of d1" and two["summarised_by"] == "w1" and two["reader"] == "other"
    [completed] = [e for e in two_events if e["type"] == "node.completed"]
    assert completed["cached"] is True and completed["worker"] == ""
    assert not [e for e in two_events if e["type"] == "node.started"]
    [completed] = [e for e in one_events if e["type"] == "node.completed"]
    assert "cached" not in completed and completed["worker"] == "w1"
    assert seen["runs_after_other"] == 2 and seen["other_doc"]["summary"] == "summary of d2"
    assert seen["runs_after_clear"] == 3 and seen["after_clear"]["summary"] == "summary of d1"
    assert seen["runs_after_map"] == 5
    assert seen["map"]["summary"] == ["summary of d7", "summary of d8", "summary of d7", "summary of d7"]
    assert seen["map"]["summarised_by"] == ["w1"] * 4
    assert seen["queued"].queued == 0 and seen["queued"].in_flight == 0


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_blocking_calls_reopen_the_cache_with_the_backend(backend: str, request: pytest.FixtureRequest) -> None:
    """Each ``invoke``/``sync`` call opens the backend in its own loop: the cache follows it."""
    from distributed_agents import CachePolicy, Graph, Orchestrator

    url = str(request.getfixturevalue(backend))
    runs: list[int] = []
    graph = (Graph(f"blocking_cache_{uuid.uuid4().hex[:6]}")
             .add_node("double", lambda s: runs.append(s["x"]) or {"y": s["x"] * 2}, cache_policy=CachePolicy())
             .set_entry_point("double").set_finish_point("double").compile())
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": f"cacheblk{uuid.uuid4().hex[:8]}"})
    assert orchestrator.invoke(graph, {"x": 2})["y"] == 4
    assert orchestrator.invoke(graph, {"x": 2})["y"] == 4
    assert runs == [2]
    orchestrator.sync.clear_cache(graph)
    assert orchestrator.invoke(graph, {"x": 2})["y"] == 4
    assert runs == [2, 2]
