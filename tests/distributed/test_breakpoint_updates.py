"""interrupt_after / interrupt_before, then update_state, then resume, with every node on a worker.

As in LangGraph: a resume continues past the pause it answers. After a pause at a
static breakpoint (before or after a step), the step the resume runs first does not
pause before it, whether or not update_state changed the state in between; the
breakpoints of later steps pause as usual. Memory, Redis and NATS behave the same; each
resume is made by a new orchestrator that knows the pause only through the store.
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

from distributed_agents import Orchestrator, Worker

pytestmark = pytest.mark.timeout(120)

APP: ModuleType = load_test_app("flow_app")
Cluster = tuple[str, str, str]  # backend url, prefix, worker id


@pytest.fixture(scope="module", params=["memory", "redis_url", "nats_url"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A backend and prefix with a worker serving ``flow_app`` (a process, except on memory://)."""
    if request.param == "memory":
        yield "memory://", "bpup", "mem-worker"
        return
    url = str(request.getfixturevalue(request.param))
    prefix = f"bpup{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path_factory.mktemp("bpup"), "flow_app:registry")
    workers.start("w1", "--capacity", "4")
    try:
        yield url, prefix, "w1"
    finally:
        workers.close()


@contextlib.asynccontextmanager
async def orchestrators(cluster: Cluster) -> AsyncIterator[Callable[[], Orchestrator]]:
    url, prefix, worker_id = cluster
    options = {"prefix": prefix}
    worker = serving = None
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


def pauses_of(result: Any) -> list[tuple[str, str]]:
    return [(pause["node"], pause["kind"]) for pause in result.get("__interrupt__", [])]


# (breakpoints, as_node of the update or "-" for no update, the pauses each later resume meets, the nodes run)
CASES = [
    ({"interrupt_after": ["a"]}, None, [], ["A", "B", "C"]),
    ({"interrupt_after": ["a"]}, "a", [], ["A", "B", "C"]),
    ({"interrupt_after": ["a"]}, "b", [], ["A", "C"]),
    ({"interrupt_after": ["a"], "interrupt_before": ["b"]}, None, [], ["A", "B", "C"]),
    ({"interrupt_after": ["a"], "interrupt_before": ["b"]}, "-", [], ["A", "B", "C"]),
    ({"interrupt_after": ["a"], "interrupt_before": ["b"]}, "a", [], ["A", "B", "C"]),
    ({"interrupt_after": ["a", "b"]}, "a", [("b", "after")], ["A", "B", "C"]),
    ({"interrupt_after": ["*"], "interrupt_before": ["*"]}, "-", [("a", "after"), ("b", "after"), ("c", "after")], ["A", "B", "C"]),
    ({"interrupt_before": ["b"]}, None, [], ["A", "B", "C"]),
    ({"interrupt_before": ["b"]}, "b", [], ["A", "C"]),
    ({"interrupt_before": ["b", "c"]}, "a", [("c", "before")], ["A", "B", "C"]),
]


@pytest.mark.parametrize(("breakpoints", "as_node", "later", "aggregate"), CASES)
def test_resume_after_a_breakpoint_and_an_update_continues_instead_of_pausing_there_again(
    cluster: Cluster, breakpoints: dict[str, list[str]], as_node: str | None, later: list[tuple[str, str]],
    aggregate: list[str],
) -> None:
    workflow_id = f"wf-bpup-{uuid.uuid4().hex[:6]}"
    name = "bpup_" + "_".join(f"{k}_{'_'.join(v).replace('*', 'all')}" for k, v in sorted(breakpoints.items()))

    async def scenario() -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]], dict[str, Any]]:
        async with orchestrators(cluster) as make:
            graph = APP.chain_graph(name, **breakpoints)
            first = pauses_of(await make().execute(graph, {}, workflow_id=workflow_id))
            if as_node != "-":
                await make().update_state(workflow_id, {"edited": True}, as_node=as_node, graph=graph)
            seen: list[list[tuple[str, str]]] = []
            result = await make().resume(workflow_id, graph)
            while "__interrupt__" in result and len(seen) < 6:
                seen.append(pauses_of(result))
                result = await make().resume(workflow_id, graph)
            return first, seen, dict(result)

    first, seen, done = run(scenario(), timeout=100)
    assert len(first) == 1
    assert seen == [[pause] for pause in later]
    assert done["aggregate"] == aggregate
    assert done.get("edited") is (None if as_node == "-" else True)
