"""Deferred nodes, remaining steps, static breakpoints, conditional entry and add_sequence on every backend.

Every node runs on a worker (``flow_app``): a worker process on Redis and NATS, an
in-process ``Worker`` on ``memory://``. One worker process serves all tests of a
backend. Breakpoint pauses are resumed by a second orchestrator, which knows of the
pause and of per-call breakpoints only through what the first one stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import Orchestrator, WorkflowStatus, Worker

pytestmark = pytest.mark.timeout(120)

APP: ModuleType = load_test_app("flow_app")
Cluster = tuple[str, str, str]  # backend url, prefix, worker id


@pytest.fixture(scope="module", params=["memory", "redis_url", "nats_url"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A backend and prefix with a worker serving ``flow_app`` (a process, except on memory://)."""
    if request.param == "memory":
        yield "memory://", "flow", "mem-worker"  # the in-process worker starts in each scenario's loop
        return
    url = str(request.getfixturevalue(request.param))
    prefix = f"flow{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path_factory.mktemp("flow"), "flow_app:registry")
    workers.start("w1", "--capacity", "4")
    try:
        yield url, prefix, "w1"
    finally:
        workers.close()


@contextlib.asynccontextmanager
async def orchestrators(cluster: Cluster) -> AsyncIterator[Callable[[], Orchestrator]]:
    """Yield a factory of orchestrators on ``cluster``; all are closed (and the memory worker stopped) at exit."""
    url, prefix, worker_id = cluster
    options = {"prefix": prefix}
    worker = None
    serving = None
    if url == "memory://":
        worker = Worker(backend=url, backend_options=options, registry=APP.registry, capacity=4, poll_wait=0.05,
                        worker_id=worker_id, heartbeat_interval=0.5)
        serving = asyncio.ensure_future(worker.start())
    made: list[Orchestrator] = []

    def make() -> Orchestrator:
        made.append(Orchestrator(backend=url, backend_options=options, wait_for_workers=True, worker_timeout=60))
        return made[-1]

    try:
        yield make
    finally:
        for orchestrator in made:
            await orchestrator.close()
        if worker is not None and serving is not None:
            await worker.stop(grace=1)
            await serving


def new_id(kind: str) -> str:
    return f"wf-{kind}-{uuid.uuid4().hex[:6]}"


def test_a_deferred_node_on_a_worker_runs_once_after_the_longer_branch_and_sees_both(cluster: Cluster) -> None:
    workflow_id = new_id("defer")

    async def scenario() -> tuple[dict[str, Any], list[tuple[list[str], list[str]]]]:
        async with orchestrators(cluster) as make:
            orchestrator = make()
            result = await orchestrator.execute(APP.uneven_graph(), {"aggregate": []}, workflow_id=workflow_id)
            checkpoints = await orchestrator.backend.state_store.list_checkpoints(workflow_id)
            steps = [(list(cp.frontier["next"]), list(cp.frontier.get("deferred", ())))
                     for cp in sorted(checkpoints, key=lambda cp: cp.step)]
            return dict(result), steps

    result, steps = run(scenario(), timeout=100)
    assert result["aggregate"] == ["A", "B", "C", "B_2", "B_3", "D"]  # d once, last
    assert result["join_saw"] == ["A", "B", "C", "B_2", "B_3"]  # both branches' writes
    assert set(result["ran_on"]) == {cluster[2]}
    # c finished at step 1 and triggered d, which waited (deferred) while b_2 and b_3 ran.
    assert [s for s in steps if s[0]][:5] == [(["a"], []), (["b", "c"], []), (["b_2"], ["d"]), (["b_3"], ["d"]),
                                             (["d"], [])]


def test_a_node_on_a_worker_reads_the_remaining_steps_and_wraps_up_before_the_limit(cluster: Cluster) -> None:
    async def scenario() -> dict[str, Any]:
        async with orchestrators(cluster) as make:
            return dict(await make().execute(APP.countdown_graph(), {}, workflow_id=new_id("steps"), step_limit=5))

    result = run(scenario(), timeout=100)
    assert result["seen"] == [4, 3, 2, 1]  # prep ran at step 0 (5 left); work at steps 1..4
    assert result["wrapped_up"] is True
    assert set(result["ran_on"]) == {cluster[2]}


@pytest.mark.parametrize(("compiled", "per_call", "pauses"), [
    ({"interrupt_before": ["b"]}, {}, [(["A"], ("b", "before"))]),
    ({"interrupt_after": ["b"]}, {}, [(["A", "B"], ("b", "after"))]),
    ({}, {"interrupt_before": ["c"]}, [(["A", "B"], ("c", "before"))]),
    # The per-call list replaces the compiled one (no pause before a), also for the orchestrators that resume.
    ({"interrupt_before": ["a"]}, {"interrupt_before": ["b", "c"]}, [(["A"], ("b", "before")),
                                                                     (["A", "B"], ("c", "before"))]),
    # As in LangGraph, each list given replaces the graph's list of its kind; the other kind stays.
    # The resume after a's pause runs b without a second pause before it at the same point.
    ({"interrupt_before": ["b"]}, {"interrupt_after": ["a"]}, [(["A"], ("a", "after"))]),
    ({"interrupt_before": ["c"]}, {"interrupt_after": ["a"]}, [(["A"], ("a", "after")),
                                                                (["A", "B"], ("c", "before"))]),
])
def test_a_breakpoint_pauses_on_a_worker_graph_and_another_orchestrator_resumes_it(
    cluster: Cluster, compiled: dict[str, Any], per_call: dict[str, Any],
    pauses: list[tuple[list[str], tuple[str, str]]],
) -> None:
    """Each pause is seen and resumed by a new orchestrator; the run ends with each node run once."""
    workflow_id = new_id("bp")
    name = "flow_chain_" + "_".join(f"{k}_{'_'.join(v)}" for k, v in sorted(compiled.items()))

    async def scenario() -> tuple[list[tuple[dict[str, Any], Any]], dict[str, Any]]:
        async with orchestrators(cluster) as make:
            result = await make().execute(APP.chain_graph(name, **compiled), {}, workflow_id=workflow_id, **per_call)
            seen = []
            for _ in pauses:  # one resume per expected pause: a missing or an extra pause shows in `done`
                other = make()
                seen.append((dict(result), await other.get_workflow_status(workflow_id)))
                result = await other.resume(workflow_id, APP.chain_graph(name, **compiled))
            return seen, dict(result)

    seen, done = run(scenario(), timeout=100)
    for (result, status), (aggregate, pause) in zip(seen, pauses, strict=True):
        assert result["aggregate"] == aggregate
        assert [(i["node"], i["kind"]) for i in result["__interrupt__"]] == [pause]
        assert status.status == WorkflowStatus.INTERRUPTED
        assert [(i.node, i.kind, i.value) for i in status.interrupts] == [(*pause, None)]
    assert "__interrupt__" not in done
    assert done["aggregate"] == ["A", "B", "C"]  # each node once
    assert set(done["ran_on"]) == {cluster[2]}


def test_a_conditional_entry_point_and_add_sequence_run_on_a_worker(cluster: Cluster) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with orchestrators(cluster) as make:
            orchestrator = make()
            sequence = await orchestrator.execute(APP.sequence_graph(), {"route": "sequence"})
            other = await orchestrator.execute(APP.sequence_graph(), {"route": "other"})
            return dict(sequence), dict(other)

    sequence, other = run(scenario(), timeout=100)
    assert sequence["aggregate"] == ["FIRST", "SECOND", "THIRD"]
    assert other["aggregate"] == ["ALT"]
    assert set(sequence["ran_on"]) == set(other["ran_on"]) == {cluster[2]}


def test_the_app_serves_every_node_type_its_graphs_use() -> None:
    graphs = [APP.uneven_graph(), APP.countdown_graph(), APP.chain_graph("flow_check"), APP.sequence_graph()]
    used = {node["node_type"] for graph in graphs for node in graph.spec()["nodes"]}
    assert used <= APP.registry.node_types()

