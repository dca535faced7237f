"""History, update_state and forks behave the same on memory, Redis and NATS."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.errors import ConfigurationError, ExecutionError, WorkflowNotFoundError
from distributed_agents.core.graph import START

pytestmark = pytest.mark.timeout(120)
BACKENDS = ["memory", "redis_url", "nats_url"]


def counter_graph() -> Graph:
    """inc runs until n reaches 3 (each run appends to log), then done: 4 steps from n=0."""
    graph = Graph("counter", reducers={"log": "append"})
    graph.add_node("inc", lambda s: {"n": s.get("n", 0) + 1, "log": f"inc{s.get('n', 0) + 1}"})
    graph.add_node("done", lambda s: {"finished": True})
    graph.set_entry_point("inc")
    graph.add_conditional_edge("inc", lambda s: "again" if s["n"] < 3 else "stop", {"again": "inc", "stop": "done"})
    return graph.set_finish_point("done").compile()


Scenario = Callable[[Callable[..., Orchestrator]], Awaitable[Any]]


def on_backend(backend: str, request: pytest.FixtureRequest | None, scenario: Scenario, timeout: float = 90) -> Any:
    """Run ``scenario(make)``; ``make(**kw)`` opens orchestrators sharing one fresh backend space."""
    url = "memory://" if backend == "memory" or request is None else str(request.getfixturevalue(backend))
    options = {"prefix": f"hist{uuid.uuid4().hex[:8]}"} if backend != "memory" else {}
    opened: list[Orchestrator] = []

    def make(**kwargs: Any) -> Orchestrator:
        orchestrator = Orchestrator(backend=url, backend_options=options, **kwargs)
        opened.append(orchestrator)
        return orchestrator

    async def bounded() -> Any:
        try:
            return await scenario(make)
        finally:
            for orchestrator in opened:
                await orchestrator.close()

    return run(bounded(), timeout=timeout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_history_lists_every_checkpoint_newest_first_with_parents(backend: str, request: pytest.FixtureRequest) -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make()
        await orchestrator.execute(counter_graph(), {"n": 0}, workflow_id="wf-h")
        history = await orchestrator.get_state_history("wf-h")
        assert [s.checkpoint_id for s in history] == ["wf-h:4", "wf-h:3", "wf-h:2", "wf-h:1", "wf-h:0"]
        assert [s.parent_checkpoint_id for s in history] == ["wf-h:3", "wf-h:2", "wf-h:1", "wf-h:0", None]
        assert [s.next for s in history] == [(), ("done",), ("inc",), ("inc",), ("inc",)]
        assert [s.values.get("n") for s in history] == [3, 3, 2, 1, 0]
        assert [s.metadata["source"] for s in history] == ["loop"] * 4 + ["input"]
        assert history[1].metadata["writes"] == {"inc": {"n": 3, "log": "inc3"}}
        assert history[0].values["log"] == ["inc1", "inc2", "inc3"] and history[0].values["finished"] is True
        # Only the latest carries the workflow's status; interrupts do not exist yet.
        assert [s.status for s in history] == ["completed", None, None, None, None]
        assert all(s.interrupts == () and s.error is None for s in history)
        latest = await orchestrator.get_state("wf-h")
        assert latest == history[0]
        # Pages: limit, then before= the last id of the page (or a step number) continues.
        first = await orchestrator.get_state_history("wf-h", limit=2)
        second = await orchestrator.get_state_history("wf-h", limit=2, before=first[-1].checkpoint_id)
        third = await orchestrator.get_state_history("wf-h", before=1)
        assert first + second + third == history
        # Another process (orchestrator) reads the same history from the backend.
        assert await make().get_state_history("wf-h") == history

    on_backend(backend, request, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_state_merges_through_reducers_and_routes_after_as_node(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make()
        graph = counter_graph()
        await orchestrator.execute(graph, {"n": 0}, workflow_id="wf-u")
        before = await orchestrator.get_state_history("wf-u")
        # As if inc had returned n=1: n < 3, so inc runs next; log's reducer appends.
        snapshot = await orchestrator.update_state("wf-u", {"n": 1, "log": "manual"}, as_node="inc")
        assert snapshot.checkpoint_id == "wf-u:5" and snapshot.parent_checkpoint_id == "wf-u:4"
        assert snapshot.next == ("inc",) and snapshot.status == "pending"
        assert snapshot.values["log"] == ["inc1", "inc2", "inc3", "manual"] and snapshot.values["n"] == 1
        assert snapshot.metadata["source"] == "update" and snapshot.metadata["as_node"] == "inc"
        assert snapshot.metadata["writes"] == {"inc": {"n": 1, "log": "manual"}}
        assert await orchestrator.get_state("wf-u") == snapshot
        status = await make().get_workflow_status("wf-u")
        assert status.status == "pending" and status.next_nodes == ("inc",)
        # A later resume, from another orchestrator, continues from there: inc twice, then done.
        result = await make().resume("wf-u", graph)
        assert result["n"] == 3 and result["log"] == ["inc1", "inc2", "inc3", "manual", "inc2", "inc3"]
        after = await orchestrator.get_state_history("wf-u")
        assert [s.checkpoint_id for s in after][:4] == ["wf-u:8", "wf-u:7", "wf-u:6", "wf-u:5"]
        assert after[4:] == [dataclasses.replace(s, status=None) for s in before]
        # As the node that finishes: nothing left to run, so the workflow completes.
        done = await orchestrator.update_state("wf-u", {"finished": "again"}, as_node="done")
        assert done.next == () and done.status == "completed"
        assert (await orchestrator.get_result("wf-u"))["finished"] == "again"

    on_backend(backend, request, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_state_is_refused_while_an_orchestrator_runs_the_workflow(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(state: State) -> dict[str, Any]:
            entered.set()
            await release.wait()
            return {"slow": True}

        graph = Graph("slow").add_node("slow", slow).set_entry_point("slow").set_finish_point("slow").compile()
        driver, other = make(), make()
        workflow_id = await driver.submit(graph, {}, workflow_id="wf-busy")
        # At once, before its step may even have started: this orchestrator holds the lease.
        with pytest.raises(ExecutionError, match="being run by this orchestrator"):
            await driver.update_state(workflow_id, {"x": 1}, as_node="slow")
        await entered.wait()
        with pytest.raises(ExecutionError, match="being run by another orchestrator .*cancel_workflow"):
            await other.update_state(workflow_id, {"x": 1}, as_node="slow", graph=graph)
        with pytest.raises(ExecutionError, match="being run by this orchestrator"):
            await driver.update_state(workflow_id, {"x": 1}, as_node="slow")
        release.set()
        assert (await other.wait(workflow_id, timeout=60))["slow"] is True
        assert [s.step for s in await other.get_state_history(workflow_id)] == [1, 0]  # no update slipped in

    on_backend(backend, request, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_from_a_past_checkpoint_runs_a_new_workflow_and_keeps_the_original(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Nodes run on a worker: the fork's tasks are its own, not the original's finished ones."""

    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make(local_nodes=False, wait_for_workers=True)
        url = orchestrator._backend_arg
        worker = Worker(backend=url, backend_options=orchestrator._backend_options, capacity=2, poll_wait=0.05)
        runs: list[int] = []

        def inc(state: State) -> dict[str, Any]:
            runs.append(state.get("n", 0))
            return {"n": state.get("n", 0) + 1, "log": f"inc{state.get('n', 0) + 1}"}

        worker.register_node("inc", inc)
        worker.register_node("done", lambda s: {"finished": True})
        serving = asyncio.ensure_future(worker.start())
        try:
            graph = counter_graph()
            await orchestrator.execute(graph, {"n": 0}, workflow_id="wf-o")
            original = await orchestrator.get_state_history("wf-o")
            runs.clear()
            result = await orchestrator.execute(graph, from_checkpoint="wf-o:1", workflow_id="wf-f")
            assert runs == [1, 2] and result["n"] == 3 and result["log"] == ["inc1", "inc2", "inc3"]
            assert await orchestrator.get_state_history("wf-o") == original
            forked = await orchestrator.get_state_history("wf-f")
            assert [s.checkpoint_id for s in forked] == ["wf-f:4", "wf-f:3", "wf-f:2", "wf-f:1"]
            assert forked[-1].parent_checkpoint_id == "wf-o:1" and forked[-1].metadata["source"] == "fork"
            assert forked[-1].values == original[-2].values and forked[-1].next == ("inc",)
            record = await orchestrator.backend.state_store.get("wf-f")
            assert record is not None
            assert record.metadata["forked_from"] == {"workflow_id": "wf-o", "checkpoint_id": "wf-o:1"}

            # fork() without running: change the branch, then resume it, from another orchestrator.
            other = make(local_nodes=False, wait_for_workers=True)
            branch = await other.fork("wf-o:2", workflow_id="wf-b", graph=graph)
            assert (await other.get_state(branch)).status == "pending"
            await other.update_state(branch, {"n": 5, "log": "jump"}, as_node="inc")
            assert (await other.get_state(branch)).next == ("done",)
            result = await other.resume(branch, graph)
            assert result["n"] == 5 and result["log"] == ["inc1", "inc2", "jump"] and result["finished"] is True
            assert await orchestrator.get_state_history("wf-o") == original
        finally:
            await worker.stop(grace=1)
            await serving

    on_backend(backend, request, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_submit_returns_the_id_and_any_orchestrator_waits_lists_and_cancels_by_id(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        release = asyncio.Event()

        async def gate(state: State) -> dict[str, Any]:
            await release.wait()
            return {"through": state["name"]}

        graph = Graph("gated").add_node("gate", gate).set_entry_point("gate").set_finish_point("gate").compile()
        driver, observer = make(), make()
        first = await driver.submit(graph, {"name": "first"}, workflow_id="wf-s1")
        second = await driver.submit(graph, {"name": "second"}, workflow_id="wf-s2")
        assert (first, second) == ("wf-s1", "wf-s2")
        assert (await observer.get_workflow_status(first)).status == "running"
        active = await observer.list_workflows("active", graph=graph)
        assert [info.workflow_id for info in active] == ["wf-s1", "wf-s2"]
        assert await observer.cancel_workflow(second) is True
        release.set()
        assert (await observer.wait(first, timeout=60))["through"] == "first"
        assert (await observer.get_result(first))["through"] == "first"
        with pytest.raises(ExecutionError, match="cancelled"):
            await observer.wait(second, timeout=60)
        assert [info.status for info in await observer.list_workflows(graph="gated")] == ["completed", "cancelled"]
        assert await observer.list_workflows("active") == []

    on_backend(backend, request, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_workflows_pages_with_cursors_and_filters_by_graph(backend: str, request: pytest.FixtureRequest) -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make()
        one = Graph("one").add_node("a", lambda s: {"a": 1}).set_entry_point("a").set_finish_point("a").compile()
        two = Graph("two").add_node("b", lambda s: {"b": 1}).set_entry_point("b").set_finish_point("b").compile()
        for index in range(5):
            await orchestrator.execute(one if index % 2 == 0 else two, {}, workflow_id=f"wf-p{index}")
        every = await orchestrator.list_workflows()
        pages, cursor = [], None
        while True:
            page = await orchestrator.list_workflows(limit=2, cursor=cursor)
            if not page:
                break
            pages.append([info.workflow_id for info in page])
            cursor = page[-1].cursor
        assert pages == [["wf-p0", "wf-p1"], ["wf-p2", "wf-p3"], ["wf-p4"]]
        assert [info.workflow_id for info in every] == [w for page in pages for w in page]
        ones = await orchestrator.list_workflows("completed", graph="one", limit=2)
        assert [info.workflow_id for info in ones] == ["wf-p0", "wf-p2"]
        rest = await orchestrator.list_workflows("completed", graph=one, cursor=ones[-1].cursor)
        assert [info.workflow_id for info in rest] == ["wf-p4"]
        # A cursor names a position: the page continues after its workflow is deleted.
        await orchestrator.backend.state_store.delete("wf-p1")
        after = await orchestrator.list_workflows(limit=2, cursor=every[1].cursor)
        assert [info.workflow_id for info in after] == ["wf-p2", "wf-p3"]

    on_backend(backend, request, scenario)


def test_history_errors_name_the_workflow_checkpoint_and_what_to_do() -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make()
        graph = counter_graph()
        await orchestrator.execute(graph, {"n": 0}, workflow_id="wf-e")
        with pytest.raises(WorkflowNotFoundError, match="no workflow 'nope'"):
            await orchestrator.get_state("nope")
        with pytest.raises(WorkflowNotFoundError, match=r"'wf-e' has checkpoints at steps 0\.\.4"):
            await orchestrator.fork("wf-e:9")
        with pytest.raises(ConfigurationError, match="not of the form '<workflow_id>:<step>'"):
            await orchestrator.fork("wf-e")
        with pytest.raises(ConfigurationError, match="belongs to workflow 'other'"):
            await orchestrator.get_state_history("wf-e", before="other:1")
        with pytest.raises(ConfigurationError, match="limit must be an int >= 1"):
            await orchestrator.get_state_history("wf-e", limit=0)
        with pytest.raises(ConfigurationError, match="as_node='ghost' is not a node of graph 'counter'"):
            await orchestrator.update_state("wf-e", {"n": 1}, as_node="ghost")
        with pytest.raises(ConfigurationError, match="pass no initial_state"):
            await orchestrator.execute(graph, {"n": 1}, from_checkpoint="wf-e:1")
        other = Graph("counter").add_node("inc", lambda s: {}).set_entry_point("inc").set_finish_point("inc").compile()
        with pytest.raises(ConfigurationError, match="differs from the given graph 'counter'"):
            await orchestrator.update_state("wf-e", {"n": 1}, as_node="inc", graph=other)
        # Nothing above wrote anything.
        assert [s.step for s in await orchestrator.get_state_history("wf-e")] == [4, 3, 2, 1, 0]
        # With as_node omitted: the single node that wrote last (done), or START before any step.
        snapshot = await orchestrator.update_state("wf-e", {"extra": 1})
        assert snapshot.metadata["as_node"] == "done" and snapshot.next == ()

    on_backend("memory", None, scenario)


def test_update_state_as_start_routes_the_entry_points_and_a_fresh_workflow_defaults_to_start() -> None:
    async def scenario(make: Callable[..., Orchestrator]) -> None:
        orchestrator = make()
        graph = counter_graph()
        fork = await orchestrator.fork(
            (await orchestrator.submit(graph, {"n": 0}, workflow_id="wf-s")) + ":0", workflow_id="wf-s0")
        snapshot = await orchestrator.update_state(fork, {"n": 2})  # step 0: as if it were input
        assert snapshot.metadata["as_node"] == START and snapshot.next == ("inc",)
        assert (await orchestrator.resume(fork, graph))["n"] == 3

    on_backend("memory", None, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_state_after_a_failed_parallel_step_keeps_the_finished_write(backend: str,
                                                                          request: pytest.FixtureRequest) -> None:
    graph = Graph("keep_pending", reducers={"log": "extend"})
    graph.add_node("s", lambda st: {"log": ["s"]}).add_node("a", lambda st: {"log": ["a"], "a_done": True})
    graph.add_node("b", lambda st: (_ for _ in ()).throw(RuntimeError("b down")))
    graph.add_node("j", lambda st: {"log": ["j"]})
    graph.set_entry_point("s").add_edge("s", "a").add_edge("s", "b").add_edge(["a", "b"], "j")
    graph.set_finish_point("j").compile()

    async def scenario(make: Callable[..., Orchestrator]) -> Any:
        orchestrator = make()
        with pytest.raises(Exception):
            await orchestrator.execute(graph, {}, workflow_id="wf-keep")
        snapshot = await orchestrator.update_state("wf-keep", {"log": ["b (manual)"]}, as_node="b")
        assert snapshot.next == ("j",) and snapshot.values["a_done"] is True
        return await orchestrator.resume("wf-keep")

    final = on_backend(backend, request, scenario)
    assert final["log"] == ["s", "a", "b (manual)", "j"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_on_the_orchestrator_running_the_workflow_is_refused(backend: str,
                                                                   request: pytest.FixtureRequest) -> None:
    calls: list[str] = []

    async def slow(state: Any) -> dict[str, Any]:
        calls.append("a")
        await asyncio.sleep(0.5)
        return {"x": len(calls)}

    graph = Graph("selfrun").add_node("a", slow).set_entry_point("a").set_finish_point("a").compile()

    async def scenario(make: Callable[..., Orchestrator]) -> Any:
        orchestrator = make()
        await orchestrator.submit(graph, {}, workflow_id="wf-self")
        while not calls:
            await asyncio.sleep(0.01)
        with pytest.raises(ExecutionError, match="already"):
            await orchestrator.resume("wf-self")
        return await orchestrator.wait("wf-self")

    assert dict(on_backend(backend, request, scenario)) == {"x": 1} and calls == ["a"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_migration_writes_nothing_and_the_original_graph_still_resumes(
        backend: str, request: pytest.FixtureRequest) -> None:
    broken = {"y": True}

    def y(state: Any) -> dict[str, Any]:
        if broken["y"]:
            raise RuntimeError("y broken")
        return {"y": 1}

    def version(second: str) -> Graph:
        graph = Graph("mig").add_node("x", lambda s: {"x": 1}).add_node(second, y)
        return graph.set_entry_point("x").add_edge("x", second).set_finish_point(second).compile()

    async def scenario(make: Callable[..., Orchestrator]) -> Any:
        orchestrator = make()
        with pytest.raises(Exception):
            await orchestrator.execute(version("y"), {}, workflow_id="wf-mig")
        before = await orchestrator.backend.state_store.get("wf-mig")
        with pytest.raises(ConfigurationError, match="nothing was changed"):
            await orchestrator.resume("wf-mig", version("z"), allow_graph_change=True)
        after = await orchestrator.backend.state_store.get("wf-mig")
        assert after == before and after.error["node"] == "y"
        broken["y"] = False
        return await orchestrator.resume("wf-mig", version("y"))

    assert dict(on_backend(backend, request, scenario)) == {"x": 1, "y": 1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("as_node", "next_nodes"), [(None, ("done",)), ("done", ())])
def test_update_state_at_a_breakpoint_keeps_the_paused_node_and_resume_runs_it(
        backend: str, as_node: str | None, next_nodes: tuple[str, ...], request: pytest.FixtureRequest) -> None:
    """interrupt_before=["done"], update_state, resume: done runs (not a second pause) on the edited state,
    read back by another orchestrator; as_node="done" stands in for it, so nothing is left to run."""
    async def scenario(make: Callable[..., Orchestrator]) -> tuple[Any, ...]:
        first, other = make(), make()
        paused = await first.execute(counter_graph(), {"n": 0}, workflow_id="wf-bp", interrupt_before=["done"])
        await other.update_state("wf-bp", {"n": 7}, as_node=as_node, graph=counter_graph())
        read = await first.get_state("wf-bp")
        return paused, read.next, await other.resume("wf-bp", counter_graph())

    paused, read_next, resumed = on_backend(backend, request, scenario)
    assert [pause["node"] for pause in paused["__interrupt__"]] == ["done"]
    assert read_next == next_nodes
    assert "__interrupt__" not in resumed and resumed["n"] == 7
    assert resumed.get("finished") is (True if as_node is None else None)
