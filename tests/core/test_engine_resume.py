"""What ``resume`` re-runs, and with which graph.

A failed step keeps the writes of its nodes that succeeded (pending writes in the
record), so ``resume`` runs only the nodes that failed - in process and on workers.
Recovery and ``resume`` refuse a graph whose fingerprint differs from the one the
workflow was started with, unless ``allow_graph_change=True`` migrates it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.errors import ConfigurationError, ExecutionError, NodeExecutionError

pytestmark = pytest.mark.timeout(60)


def fan(name: str, funcs: dict[str, Any], *, remote: bool = False, reducers: Any = None) -> Graph:
    """start -> each of ``funcs`` in parallel -> END."""
    graph = Graph(name, reducers=reducers).add_node("start", lambda s: None)
    for node, func in funcs.items():
        if remote:
            graph.add_node(node, node_type=node)
        else:
            graph.add_node(node, func)
        graph.add_edge("start", node).set_finish_point(node)
    return graph.set_entry_point("start").compile()


def test_issue_example_resume_reruns_only_the_failed_node() -> None:
    runs: Counter[str] = Counter()
    broken = {"b": True}

    def a(state: State) -> dict[str, Any]:
        runs["a"] += 1  # the side effect
        return {"a": "sent"}

    def b(state: State) -> dict[str, Any]:
        runs["b"] += 1
        if broken["b"]:
            raise RuntimeError("b is broken")
        return {"b": "done"}

    graph = fan("pending_writes", {"a": a, "b": b})

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-pw")
        record = await orchestrator.backend.state_store.get("wf-pw")
        assert record is not None and record.frontier["pending_writes"] == {"a": {"a": "sent"}}
        broken["b"] = False
        result = await orchestrator.resume("wf-pw")
        checkpoints = await orchestrator.backend.state_store.list_checkpoints("wf-pw", limit=1)
        return result, checkpoints[0]

    result, last = run(scenario())
    assert dict(result) == {"a": "sent", "b": "done"}
    assert runs == {"a": 1, "b": 2}
    assert last.writes == {"a": {"a": "sent"}, "b": {"b": "done"}} and "pending_writes" not in last.frontier


def test_several_failures_then_a_partial_fix_keep_every_success() -> None:
    runs: Counter[str] = Counter()
    broken = {"b": True, "c": True}

    def node(name: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            runs[name] += 1
            if broken.get(name):
                raise RuntimeError(f"{name} broken")
            return {name: 1}
        return run_node

    graph = fan("partial_fix", {n: node(n) for n in "abcd"})

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-partial")
        status = await orchestrator.get_workflow_status("wf-partial")
        assert status.error is not None and status.error["failed_nodes"] == ["b", "c"]
        broken["b"] = False
        with pytest.raises(NodeExecutionError) as again:
            await orchestrator.resume("wf-partial")
        assert again.value.node == "c"
        broken["c"] = False
        return await orchestrator.resume("wf-partial")

    assert dict(run(scenario())) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert runs == {"a": 1, "b": 2, "c": 3, "d": 1}


def test_a_merge_failure_keeps_all_node_writes_and_resume_runs_no_node_again() -> None:
    runs: Counter[str] = Counter()
    reducer_broken = {"on": True}

    def fold(old: Any, new: Any) -> Any:
        if reducer_broken["on"]:
            raise ValueError("fold bug")
        return (old or []) + new

    def node(name: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            runs[name] += 1
            return {"items": [name]}
        return run_node

    graph = fan("merge_fail", {"a": node("a"), "b": node("b")}, reducers={"items": fold})

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(ExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-merge")
        reducer_broken["on"] = False
        return await orchestrator.resume("wf-merge")

    assert dict(run(scenario())) == {"items": ["a", "b"]}
    assert runs == {"a": 1, "b": 1}


def test_on_workers_a_resumed_step_reuses_finished_tasks() -> None:
    runs: Counter[str] = Counter()
    broken = {"b": True}

    def a(state: State) -> dict[str, Any]:
        runs["a"] += 1
        return {"a": 1}

    def b(state: State) -> dict[str, Any]:
        runs["b"] += 1
        if broken["b"]:
            raise RuntimeError("b broken")
        return {"b": 2}

    graph = fan("remote_pending", {"a": a, "b": b}, remote=True)
    worker = Worker(capacity=2, poll_wait=0.05)
    worker.register_node("a", a)
    worker.register_node("b", b)
    worker.register_node("start", lambda s: None)

    async def scenario() -> State:
        serving = asyncio.ensure_future(worker.start())
        try:
            orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True)
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(graph, {}, workflow_id="wf-remote-pw")
            broken["b"] = False
            return await orchestrator.resume("wf-remote-pw")
        finally:
            await worker.stop(grace=1)
            await serving

    assert dict(run(scenario())) == {"a": 1, "b": 2}
    assert runs == {"a": 1, "b": 2}


# -- graph identity ------------------------------------------------------------------------


def demo(second: str, runs: Counter[str] | None = None, gate: asyncio.Event | None = None) -> Graph:
    """Graph "demo": a -> ``second``; ``a`` waits for ``gate`` when one is given."""
    async def a(state: State) -> dict[str, Any]:
        if runs is not None:
            runs["a"] += 1
        if gate is not None:
            await gate.wait()
        return {"a": 1}

    def last(state: State) -> dict[str, Any]:
        if runs is not None:
            runs[second] += 1
        return {second: state["a"] + 1}

    graph = Graph("demo").add_node("a", a).add_node(second, last)
    return graph.set_entry_point("a").add_edge("a", second).set_finish_point(second).compile()


async def abandoned(workflow_id: str) -> Orchestrator:
    """A "demo" a->b workflow whose orchestrator stopped driving it mid-step (lease released)."""
    first = Orchestrator()
    gate = asyncio.Event()
    running = asyncio.ensure_future(first.execute(demo("b", gate=gate), {}, workflow_id=workflow_id))
    while await first.backend.state_store.get(workflow_id) is None:
        await asyncio.sleep(0.005)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    return first


def test_recovery_skips_a_workflow_of_another_graph_version_and_the_right_one_takes_it() -> None:
    runs: Counter[str] = Counter()

    async def scenario() -> Any:
        observer = await abandoned("wf-ident")
        wrong = Orchestrator(lease_ttl=0.2)
        wrong.register_graph(demo("x", runs))
        assert await wrong.recover_workflows() == []
        assert await wrong.recover_workflows() == []  # still skipped, logged once
        status = await observer.get_workflow_status("wf-ident")
        assert status.status == "running" and status.step == 0
        right = Orchestrator(lease_ttl=0.2)
        right.register_graph(demo("b", runs))
        assert await right.recover_workflows() == ["wf-ident"]
        result = await right.wait("wf-ident", timeout=20)
        await right.close()
        await wrong.close()
        return result

    assert dict(run(scenario())) == {"a": 1, "b": 2}
    assert runs == {"a": 1, "b": 1}


def test_resume_refuses_another_graph_version_naming_both_and_changes_nothing() -> None:
    async def scenario() -> Any:
        observer = await abandoned("wf-refuse")
        before = await observer.backend.state_store.get("wf-refuse")
        with pytest.raises(ConfigurationError) as caught:
            await Orchestrator().resume("wf-refuse", demo("x"))
        after = await observer.backend.state_store.get("wf-refuse")
        return caught.value, before, after

    error, before, after = run(scenario())
    message = str(error)
    assert before.graph["sha256"][:12] in message and demo("x").fingerprint()["sha256"][:12] in message
    assert "allow_graph_change=True" in message
    assert after == before


def test_allow_graph_change_migrates_the_workflow_to_the_new_version() -> None:
    runs: Counter[str] = Counter()

    async def scenario() -> Any:
        observer = await abandoned("wf-migrate")
        old = (await observer.backend.state_store.get("wf-migrate")).graph
        # The new version keeps 'a' (the pending node) and goes on to 'x'.
        result = await Orchestrator().resume("wf-migrate", demo("x", runs), allow_graph_change=True)
        record = await observer.backend.state_store.get("wf-migrate")
        return result, old, record

    result, old, record = run(scenario())
    assert dict(result) == {"a": 1, "x": 2} and runs == {"a": 1, "x": 1}
    assert record.graph == demo("x").fingerprint() and record.metadata["previous_graph"] == old


def test_a_failed_workflow_is_resumable_with_the_right_graph_after_a_refusal() -> None:
    broken = {"b": True}

    def b(state: State) -> dict[str, Any]:
        if broken["b"]:
            raise RuntimeError("b broken")
        return {"b": 1}

    graph = Graph("ident2").add_node("b", b).set_entry_point("b").set_finish_point("b").compile()
    other = Graph("ident2").add_node("b", b, timeout=5).set_entry_point("b").set_finish_point("b").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-ident2")
        broken["b"] = False
        with pytest.raises(ConfigurationError):
            await Orchestrator().resume("wf-ident2", other)
        assert (await orchestrator.get_workflow_status("wf-ident2")).status == "failed"
        return await Orchestrator().resume("wf-ident2", graph)

    assert dict(run(scenario())) == {"b": 1}


def test_one_orchestrator_knowing_two_versions_drives_each_workflow_with_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: Counter[str] = Counter()

    async def scenario() -> Any:
        observer = await abandoned("wf-old")
        only_new = Orchestrator(lease_ttl=0.2)
        only_new.register_graph(demo("x", runs))
        with caplog.at_level("WARNING", logger="distributed_agents.orchestrator"):
            assert await only_new.recover_workflows() == []
            assert await only_new.recover_workflows() == []
        await only_new.close()
        # A workflow of the new version, abandoned the same way.
        first = Orchestrator()
        gate = asyncio.Event()
        running = asyncio.ensure_future(first.execute(demo("x", gate=gate), {}, workflow_id="wf-new"))
        while await first.backend.state_store.get("wf-new") is None:
            await asyncio.sleep(0.005)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        both = Orchestrator(lease_ttl=0.2)
        both.register_graph(demo("b", runs))
        both.register_graph(demo("x", runs))
        assert sorted(await both.recover_workflows()) == ["wf-new", "wf-old"]
        results = (dict(await both.wait("wf-old", timeout=20)), dict(await both.wait("wf-new", timeout=20)))
        await both.close()
        await observer.close()
        return results

    (old, new) = run(scenario())
    assert old == {"a": 1, "b": 2} and new == {"a": 1, "x": 2}
    skipped = [r for r in caplog.records if "not taking over workflow 'wf-old'" in r.getMessage()]
    assert len(skipped) == 1  # logged once, however many recovery rounds skip it


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(width=st.integers(min_value=1, max_value=5), data=st.data())
def test_every_node_succeeds_exactly_once_across_failures_and_resumes(width: int, data: st.DataObject) -> None:
    """Any pattern of failing parallel nodes, fixed over several resumes: each node's success happens once."""
    names = [f"n{i}" for i in range(width)]
    # failures[name] = how many runs of that node fail before it is fixed
    failures = {name: data.draw(st.integers(min_value=0, max_value=2), label=name) for name in names}
    successes: Counter[str] = Counter()
    attempts: Counter[str] = Counter()

    def node(name: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            attempts[name] += 1
            if attempts[name] <= failures[name]:
                raise RuntimeError(f"{name} fails")
            successes[name] += 1
            return {name: attempts[name]}
        return run_node

    graph = fan("property_pending", {name: node(name) for name in names})
    from distributed_agents.adapters.memory import reset_memory_spaces
    reset_memory_spaces()

    async def scenario() -> State:
        orchestrator = Orchestrator()
        try:
            return await orchestrator.execute(graph, {}, workflow_id="wf-prop")
        except NodeExecutionError:
            pass
        for _ in range(max(failures.values()) + 1):
            try:
                return await orchestrator.resume("wf-prop")
            except NodeExecutionError:
                continue
        raise AssertionError("never completed")

    result = run(scenario())
    assert successes == {name: 1 for name in names}
    assert {name: attempts[name] for name in names} == {name: failures[name] + 1 for name in names}
    assert dict(result) == {name: failures[name] + 1 for name in names}


def test_resume_waits_for_a_requeued_task_that_has_not_run_yet() -> None:
    """A dead letter requeued (through the port alone) but not yet run: resume waits for it, no second run."""
    runs: Counter[str] = Counter()
    broken = {"on": True}

    def flaky(state: State) -> dict[str, Any]:
        runs["flaky"] += 1
        if broken["on"]:
            raise RuntimeError("down")
        return {"flaky": "ok"}

    graph = Graph("requeued_pending").add_node("flaky", retry=None).set_entry_point("flaky")
    graph.set_finish_point("flaky").compile()

    async def scenario() -> State:
        orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True)
        worker = Worker(capacity=1, poll_wait=0.05)
        worker.register_node("flaky", flaky)
        serving = asyncio.ensure_future(worker.start())
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-rq")
        await worker.stop(grace=1)
        await serving
        (letter,) = await orchestrator.backend.task_queue.dead_letters("flaky")
        broken["on"] = False
        assert await orchestrator.backend.task_queue.requeue_dead_letter(letter.task_id)
        resumed = asyncio.ensure_future(orchestrator.resume("wf-rq"))
        while (await orchestrator.get_workflow_status("wf-rq")).status != "running":
            await asyncio.sleep(0.01)
        worker = Worker(capacity=1, poll_wait=0.05)
        worker.register_node("flaky", flaky)
        serving = asyncio.ensure_future(worker.start())
        try:
            return await resumed
        finally:
            await worker.stop(grace=1)
            await serving

    assert dict(run(scenario())) == {"flaky": "ok"}
    assert runs == {"flaky": 2}  # the failed attempt, then the requeued task - never a third run


def test_resume_after_waiting_for_a_worker_timed_out_runs_the_node_once() -> None:
    # The failed wait withdrew its task (named in the failure's withdrawn_tasks): the resumed
    # run queues the node under its own task id instead of waiting for the withdrawn one.
    runs: Counter[str] = Counter()

    def slow_to_come(state: State) -> dict[str, Any]:
        runs["late"] += 1
        return {"late": True}

    graph = Graph("late_worker").add_node("late").set_entry_point("late").set_finish_point("late").compile()

    async def scenario() -> State:
        orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True, worker_timeout=0.1)
        with pytest.raises(ExecutionError, match="no live worker"):
            await orchestrator.execute(graph, {}, workflow_id="wf-late")
        assert (await orchestrator.get_workflow_status("wf-late")).status == "failed"
        worker = Worker(capacity=1, poll_wait=0.05)
        worker.register_node("late", slow_to_come)
        serving = asyncio.ensure_future(worker.start())
        try:
            return await Orchestrator(local_nodes=False, wait_for_workers=True).resume("wf-late", graph)
        finally:
            await worker.stop(grace=1)
            await serving

    assert dict(run(scenario())) == {"late": True}
    assert runs == {"late": 1}  # the resumed run's task only: the failed wait's was withdrawn


def test_resume_on_the_orchestrator_already_running_the_workflow_is_refused_and_runs_nothing_twice() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def slow(state: State) -> dict[str, Any]:
        calls.append("a")
        await release.wait()
        return {"x": len(calls)}

    graph = Graph("selfrun").add_node("a", slow).set_entry_point("a").set_finish_point("a").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        await orchestrator.submit(graph, {}, workflow_id="w1")
        while not calls:
            await asyncio.sleep(0.01)
        with pytest.raises(ExecutionError, match="running workflow 'w1' already"):
            await orchestrator.resume("w1")
        release.set()
        return await orchestrator.wait("w1")

    assert dict(run(scenario())) == {"x": 1}
    assert calls == ["a"]


def test_resume_of_a_completed_workflow_with_a_different_graph_is_refused() -> None:
    done = Graph("finished").add_node("a", lambda s: {"a": 1}).set_entry_point("a").set_finish_point("a").compile()
    other = Graph("unrelated").add_node("z", lambda s: {}).set_entry_point("z").set_finish_point("z").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        await orchestrator.execute(done, {}, workflow_id="wf-done")
        with pytest.raises(ConfigurationError, match="completed"):
            await orchestrator.resume("wf-done", other)
        return await orchestrator.resume("wf-done", done)

    assert dict(run(scenario())) == {"a": 1}
