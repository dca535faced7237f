"""Local execution through the step engine on the memory backend."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, NodeContext, Orchestrator, RetryPolicy, State
from distributed_agents.core.errors import (
    ConfigurationError,
    GraphNotCompiledError,
    InvalidNodeOutputError,
    NodeExecutionError,
    NodeNotFoundError,
    NodeTimeoutError,
    ReducerConflictError,
    StateNotSerializableError,
    StepLimitExceededError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)

pytestmark = pytest.mark.timeout(30)


def chain(name: str, *funcs: Any, **node_options: Any) -> Graph:
    graph = Graph(name)
    names = [f"n{i}" for i in range(len(funcs))]
    for node, func in zip(names, funcs):
        graph.add_node(node, func, **node_options)
    graph.set_entry_point(names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(names[-1]).compile()


def test_sequential_updates_accumulate_and_each_step_is_checkpointed() -> None:
    graph = chain("seq", lambda s: {"a": 1}, lambda s: {"b": s["a"] + 1}, lambda s: {"c": s["b"] * 10})

    async def scenario() -> tuple[State, list[Any], Any]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(graph, {"start": True})
        checkpoints = await orchestrator.backend.state_store.list_checkpoints(result.workflow_id)
        return result, checkpoints, await orchestrator.get_workflow_status(result.workflow_id)

    result, checkpoints, status = run(scenario())
    assert dict(result) == {"start": True, "a": 1, "b": 2, "c": 20}
    assert [cp.step for cp in checkpoints] == [3, 2, 1, 0]
    assert checkpoints[1].state == {"start": True, "a": 1, "b": 2}
    assert checkpoints[1].writes == {"n1": {"b": 2}}
    assert checkpoints[1].frontier["next"] == ["n2"]
    assert status.status == "completed" and status.step == 3 and status.done


def test_fan_out_runs_async_nodes_concurrently_and_plain_functions_in_threads() -> None:
    both_started = asyncio.Event()
    arrived: list[str] = []
    threads: dict[str, int] = {}

    async def a(state: State) -> dict[str, Any]:
        arrived.append("a")
        if len(arrived) == 2:
            both_started.set()
        await both_started.wait()  # deadlocks (and times out) unless b runs at the same time
        return {"notes": "a"}

    async def b(state: State) -> dict[str, Any]:
        arrived.append("b")
        if len(arrived) == 2:
            both_started.set()
        await both_started.wait()
        return {"notes": "b"}

    def c(state: State) -> dict[str, Any]:
        threads["c"] = threading.get_ident()
        return {"notes": "c"}

    graph = Graph("fan", reducers={"notes": "append"})
    graph.add_node("start", lambda s: None).add_node("a", a).add_node("b", b).add_node("c", c)
    graph.add_node("join", lambda s: {"seen": sorted(s["notes"])})
    graph.set_entry_point("start")
    for node in ("a", "b", "c"):
        graph.add_edge("start", node)
    graph.add_edge(["a", "b", "c"], "join").set_finish_point("join").compile()
    result = run(Orchestrator().execute(graph, {}), timeout=10)
    assert result["notes"] == ["a", "b", "c"]  # declaration order, whatever finished first
    assert result["seen"] == ["a", "b", "c"]
    assert threads["c"] != threading.get_ident()


def test_join_waits_for_sources_finishing_in_different_steps() -> None:
    ran: list[str] = []

    def record(name: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            ran.append(name)
            return {name: True}
        return node

    graph = Graph("join")
    for name in ("start", "short", "long1", "long2", "end"):
        graph.add_node(name, record(name))
    graph.set_entry_point("start").add_edge("start", "short").add_edge("start", "long1")
    graph.add_edge("long1", "long2").add_edge(["short", "long2"], "end").set_finish_point("end").compile()
    result = run(Orchestrator().execute(graph, {}))
    assert ran.count("end") == 1 and ran[-1] == "end"
    assert result["end"] and result["short"] and result["long2"]


def test_two_writers_without_reducer_fail_naming_both() -> None:
    graph = Graph("clash")
    graph.add_node("start", lambda s: None).add_node("x", lambda s: {"k": 1}).add_node("y", lambda s: {"k": 2})
    graph.set_entry_point("start").add_edge("start", "x").add_edge("start", "y")
    graph.set_finish_point("x").set_finish_point("y").compile()
    with pytest.raises(ReducerConflictError) as caught:
        run(Orchestrator().execute(graph, {}, workflow_id="clash-1"))
    assert caught.value.nodes == ("x", "y") and caught.value.key == "k"
    assert "'x'" in str(caught.value) and "'y'" in str(caught.value)


def test_revise_loop_and_step_limit_names_cycling_nodes() -> None:
    graph = Graph("loop")
    graph.add_node("writer", lambda s: {"n": s.get("n", 0) + 1})
    graph.add_node("reviewer", lambda s: {"ok": s["n"] >= 4})
    graph.add_node("done", lambda s: None)
    graph.set_entry_point("writer").add_edge("writer", "reviewer")
    graph.add_conditional_edge("reviewer", lambda s: "done" if s["ok"] else "writer", ["writer", "done"])
    graph.set_finish_point("done").compile()
    assert run(Orchestrator().execute(graph, {}))["n"] == 4
    with pytest.raises(StepLimitExceededError) as caught:
        run(Orchestrator().execute(graph, {}, step_limit=5))
    assert set(caught.value.nodes) == {"writer", "reviewer"}
    assert "step limit of 5" in str(caught.value)


def test_bad_node_output_and_non_json_values_name_the_culprit() -> None:
    with pytest.raises(NodeExecutionError) as caught:
        run(Orchestrator().execute(chain("bad", lambda s: ["not", "a", "dict"]), {}))
    assert caught.value.node == "n0" and caught.value.error_type == InvalidNodeOutputError.__name__
    assert "returned list" in str(caught.value)
    with pytest.raises(NodeExecutionError) as caught:
        run(Orchestrator().execute(chain("nonjson", lambda s: {"when": object()}), {}))
    assert caught.value.error_type == StateNotSerializableError.__name__ and "'when'" in str(caught.value)
    with pytest.raises(StateNotSerializableError, match="'bad'"):
        run(Orchestrator().execute(chain("init", lambda s: None), {"bad": {1, 2}}))


def test_failure_reports_node_attempts_and_traceback_in_status() -> None:
    calls: list[int] = []

    def flaky(state: State) -> dict[str, Any]:
        calls.append(1)
        raise ValueError("upstream said no")

    graph = chain("fails", flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.001, jitter=False, retry_on=Exception))

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError) as caught:
            await orchestrator.execute(graph, {}, workflow_id="wf-fails")
        assert caught.value.attempts == 3
        return await orchestrator.get_workflow_status("wf-fails")

    status = run(scenario())
    assert len(calls) == 3
    assert status.status == "failed"
    assert status.error["node"] == "n0" and status.error["attempts"] == 3
    assert status.error["error_type"] == "ValueError" and status.error["message"] == "upstream said no"
    assert "raise ValueError" in status.error["traceback"]


def test_retry_on_limits_which_exceptions_are_retried() -> None:
    calls: list[int] = []

    def node(state: State) -> dict[str, Any]:
        calls.append(1)
        raise KeyError("not retried")

    graph = chain("retry_on", node, retry=RetryPolicy(max_attempts=5, initial_interval=0, retry_on=ValueError))
    with pytest.raises(NodeExecutionError):
        run(Orchestrator().execute(graph, {}))
    assert len(calls) == 1


def test_retry_succeeds_and_node_sees_its_attempt_and_idempotency_key() -> None:
    seen: list[NodeContext] = []

    def node(state: State, context: NodeContext) -> dict[str, Any]:
        seen.append(context)
        if context.attempt < 3:
            raise ConnectionError("transient")
        return {"ok": context.attempt}

    graph = chain("retry_ok", node, retry=RetryPolicy(max_attempts=3, initial_interval=0.001, retry_on=Exception))
    result = run(Orchestrator().execute(graph, {}, workflow_id="wf-retry"))
    assert result["ok"] == 3
    assert [c.attempt for c in seen] == [1, 2, 3]
    assert len({c.idempotency_key for c in seen}) == 1 and seen[0].idempotency_key.startswith("wf-retry:")


def test_node_timeout_cancels_the_attempt() -> None:
    async def slow(state: State) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    with pytest.raises(NodeTimeoutError) as caught:
        run(Orchestrator().execute(chain("slow", slow, timeout=0.05), {}))
    assert caught.value.node == "n0"


def test_resume_continues_from_the_last_checkpoint_without_rerunning_steps() -> None:
    counts = {"a": 0, "b": 0, "c": 0}
    block = {"b": True}

    async def a(state: State) -> dict[str, Any]:
        counts["a"] += 1
        return {"a": 1}

    async def b(state: State) -> dict[str, Any]:
        counts["b"] += 1
        if block["b"]:
            await asyncio.sleep(60)  # the process is "interrupted" while b runs
        return {"b": state["a"] + 1}

    async def c(state: State) -> dict[str, Any]:
        counts["c"] += 1
        return {"c": state["b"] + 1}

    graph = chain("resumable", a, b, c)

    async def scenario() -> State:
        first = Orchestrator()
        running = asyncio.ensure_future(first.execute(graph, {}, workflow_id="wf-resume"))
        while counts["b"] == 0:
            await asyncio.sleep(0.005)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        status = await first.get_workflow_status("wf-resume")
        assert status.status == "running" and status.step == 1 and status.next_nodes == ("n1",)
        block["b"] = False
        return await Orchestrator().resume("wf-resume", graph)

    result = run(scenario())
    assert dict(result) == {"a": 1, "b": 2, "c": 3}
    assert counts == {"a": 1, "b": 2, "c": 1}


def test_resume_after_failure_retries_the_failed_step_only() -> None:
    counts = {"a": 0}
    broken = {"b": True}

    def a(state: State) -> dict[str, Any]:
        counts["a"] += 1
        return {"a": 1}

    def b(state: State) -> dict[str, Any]:
        if broken["b"]:
            raise RuntimeError("bug")
        return {"b": 2}

    graph = chain("fix_and_resume", a, b)

    async def scenario() -> State:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(graph, {}, workflow_id="wf-fix")
        broken["b"] = False
        return await orchestrator.resume("wf-fix")

    assert dict(run(scenario())) == {"a": 1, "b": 2}
    assert counts["a"] == 1


def test_cancel_workflow_cancels_running_node_tasks() -> None:
    async def scenario() -> Any:
        long = BlockingNode()
        orchestrator = Orchestrator()
        running = asyncio.ensure_future(orchestrator.execute(chain("cancel", long), {}, workflow_id="wf-cancel"))
        await long.started.wait()
        assert await orchestrator.cancel_workflow("wf-cancel") is True
        with pytest.raises(WorkflowCancelledError):
            await running
        await asyncio.wait_for(long.cancelled.wait(), 5)
        assert await orchestrator.cancel_workflow("wf-cancel") is False
        return await orchestrator.get_workflow_status("wf-cancel")

    assert run(scenario()).status == "cancelled"


def test_events_are_published_on_the_message_bus() -> None:
    graph = chain("events", lambda s: {"x": 1}, lambda s: None)

    async def scenario() -> list[dict[str, Any]]:
        orchestrator = Orchestrator()
        subscription = await orchestrator.backend.message_bus.subscribe("events.wf-events.>")
        await orchestrator.execute(graph, {}, workflow_id="wf-events")
        events = []
        while (message := await subscription.get(timeout=0.2)) is not None:
            events.append(dict(message.data))
        await subscription.close()
        return events

    events = run(scenario())
    kinds = [(e["type"], e.get("node")) for e in events]
    assert kinds == [
        ("workflow.started", None), ("node.started", "n0"), ("node.completed", "n0"), ("step.committed", None),
        ("node.started", "n1"), ("node.completed", "n1"), ("step.committed", None), ("workflow.completed", None),
    ]
    assert [e["checkpoint"] for e in events if e["type"] == "step.committed"] == ["wf-events:1", "wf-events:2"]
    completed = [e for e in events if e["type"] == "node.completed"]
    assert [e["step"] for e in completed] == [0, 1] and all(e["duration"] >= 0 for e in completed)


def test_status_listing_and_result_lookup() -> None:
    graph = chain("listing", lambda s: None)

    async def scenario() -> None:
        orchestrator = Orchestrator()
        await orchestrator.execute(graph, {}, workflow_id="wf-one")
        assert [w.workflow_id for w in await orchestrator.list_workflows("completed")] == ["wf-one"]
        assert await orchestrator.list_workflows("running") == []
        assert dict(await orchestrator.get_result("wf-one")) == {}
        with pytest.raises(WorkflowNotFoundError):
            await orchestrator.get_workflow_status("nope")
        with pytest.raises(ConfigurationError):
            await orchestrator.list_workflows("sleeping")

    run(scenario())


def test_misuse_gets_clear_errors() -> None:
    graph = Graph("uncompiled").add_node("a", lambda s: None)
    with pytest.raises(GraphNotCompiledError, match="compile"):
        run(Orchestrator().execute(graph, {}))
    with pytest.raises(ConfigurationError, match="workflow_id"):
        run(Orchestrator().execute(chain("ids", lambda s: None), {}, workflow_id="has.dot"))
    nowhere = Graph("nowhere").add_node("ghost").set_entry_point("ghost").set_finish_point("ghost").compile()
    with pytest.raises(NodeNotFoundError, match="ghost"):
        run(Orchestrator().execute(nowhere, {}))


@pytest.mark.parametrize("limit", [True, 1.5, "3", None, 0, -1])
def test_orchestrator_step_limit_must_be_an_int_of_at_least_one(limit: Any) -> None:
    from distributed_agents.core.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match="step_limit"):
        Orchestrator(step_limit=limit)


def test_two_graphs_of_one_name_and_structure_are_never_confused_when_looked_up_by_record() -> None:
    from distributed_agents import Command, interrupt

    def build(prefix: str) -> Graph:
        graph = Graph("State")  # as StateGraph(State) names every graph of one schema
        graph.add_node("agent", lambda s: {"a": prefix + interrupt("go?")} if prefix == "t:" else
                       {"a": "s:" + interrupt("go?")})
        return graph.set_entry_point("agent").set_finish_point("agent").compile()

    translator, summariser = build("t:"), build("s:")
    assert translator.fingerprint() == summariser.fingerprint()

    async def scenario() -> list[Any]:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(translator, {}, workflow_id="wf-t")
            await orchestrator.execute(summariser, {}, workflow_id="wf-s")
            with pytest.raises(ConfigurationError) as caught:
                await orchestrator.resume("wf-t", Command(resume="x"))
            # Given explicitly, each graph runs its own workflow.
            return [str(caught.value), (await orchestrator.resume("wf-t", translator, resume="x"))["a"],
                    (await orchestrator.resume("wf-s", summariser, resume="y"))["a"]]

    message, translated, summarised = run(scenario())
    assert "two different graphs named 'State'" in message and "node 'agent'" in message
    assert "resume('wf-t', graph)" in message and "StateGraph(State, name=...)" in message
    assert (translated, summarised) == ("t:x", "s:y")


def test_the_same_graph_built_twice_is_one_graph_to_the_orchestrator() -> None:
    from distributed_agents import Command, interrupt

    def build() -> Graph:
        graph = Graph("rebuilt_again").add_node("agent", lambda s: {"a": interrupt("go?")})
        return graph.set_entry_point("agent").set_finish_point("agent").compile()

    async def scenario() -> Any:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(build(), {}, workflow_id="wf-r1")
            await orchestrator.execute(build(), {}, workflow_id="wf-r2")
            return (await orchestrator.resume("wf-r1", Command(resume="ok")))["a"]

    assert run(scenario()) == "ok"


def test_resume_waits_for_a_lease_left_behind_and_says_who_holds_one_that_stays() -> None:
    from distributed_agents import Command, interrupt
    from distributed_agents.core.errors import ExecutionError

    graph = (Graph("leased").add_node("ask", lambda s: {"a": interrupt("go?")})
             .set_entry_point("ask").set_finish_point("ask").compile())

    async def scenario() -> tuple[str, str, Any]:
        async with Orchestrator(backend="memory://lease-wait", lease_ttl=5) as orchestrator:
            store = orchestrator.backend.state_store
            await orchestrator.execute(graph, {}, workflow_id="wf-leased")
            # As a killed orchestrator leaves it: a lease nobody renews.
            assert await store.acquire_lease("wf-leased", "orchestrator-killed", 60) is not None
            with pytest.raises(ExecutionError) as at_once:
                await orchestrator.resume("wf-leased", Command(resume="x"), wait_for_lease=0)
            with pytest.raises(ExecutionError) as after_waiting:
                await orchestrator.resume("wf-leased", "x", wait_for_lease=0.1)
            for bad in (-1, float("nan"), True, "10"):
                with pytest.raises(ConfigurationError, match="wait_for_lease"):
                    await orchestrator.resume("wf-leased", "x", wait_for_lease=bad)
            # A lease that runs out while resume waits (by default up to lease_ttl): resume continues.
            holder = await store.lease_holder("wf-leased")
            assert holder is not None
            await store.release_lease(holder)
            assert await store.acquire_lease("wf-leased", "orchestrator-killed-2", 0.3) is not None
            done = await orchestrator.resume("wf-leased", "x")
            return str(at_once.value), str(after_waiting.value), done["a"]

    at_once, after_waiting, answer = run(scenario())
    assert "its lease is held by 'orchestrator-killed', for another" in at_once
    assert "wait('wf-leased')" in at_once and "lease_ttl after its last renewal (default 30s" in at_once
    assert "wait_for_lease=seconds" in at_once and "still was after waiting" not in at_once
    assert "still was after waiting 0s" in after_waiting and "for another" in after_waiting
    assert answer == "x"


# -- what the constructors take as a backend ---------------------------------------------------


@pytest.mark.parametrize("backend", [b"redis://user:pw@127.0.0.1:6379/0", 5, {"url": "redis://h"}, ["memory://"],
                                     bytearray(b"nats://h")])
@pytest.mark.parametrize("who", ["Orchestrator", "Worker"])
def test_a_backend_that_is_no_url_or_backend_is_refused_not_run_on_memory(backend: Any, who: str) -> None:
    """The example (hostile-input trial): Orchestrator(backend=b"redis://...") and backend=5 ran on
    memory:// without a word, so workers on Redis never saw its tasks."""
    from distributed_agents import Worker

    cls = Orchestrator if who == "Orchestrator" else Worker
    with pytest.raises(ConfigurationError, match=rf"{who}\(backend=\.\.\.\) takes a backend URL string or a Backend, "
                                                 rf"got {type(backend).__name__}") as caught:
        cls(backend=backend)
    assert "pw" not in str(caught.value)  # credentials are masked wherever the URL is shown


@pytest.mark.parametrize("node_types", ["writer", b"writer"])
def test_a_worker_given_one_string_for_its_node_types_says_to_pass_a_set(node_types: Any) -> None:
    from distributed_agents import Worker

    with pytest.raises(ConfigurationError, match=r"collection of node type names, got one string .*node_types=\['writer'\]"):
        Worker(node_types=node_types)
    with pytest.raises(ConfigurationError, match=r"not a backend; pass the backend by keyword") as caught:
        Worker("redis://u:secret@h:6379/0")  # type: ignore[arg-type]
    assert "secret" not in str(caught.value)
