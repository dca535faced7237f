"""Subgraphs (a compiled Graph as a node) on the in-process (memory) backend.

The subgraph node runs its graph as a child workflow driven by the same engine; its
interrupts surface at the parent, ``Command.PARENT`` routes in the parent, failures fail
the node, cancelling the parent cancels the child.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, START, Command, Graph, Orchestrator, RetryPolicy, Send, State, WorkflowStatus, interrupt
from distributed_agents.core.errors import (
    ConfigurationError,
    GraphValidationError,
    InvalidNodeOutputError,
    NodeExecutionError,
    WorkflowCancelledError,
)
from distributed_agents.core.errors import ExecutionError as RoutingErrorOrExecution
from distributed_agents.core.subgraphs import child_workflow_id

pytestmark = pytest.mark.timeout(60)


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


def chain(name: str, *nodes: tuple[str, Any]) -> Graph:
    """A compiled graph running ``nodes`` in sequence."""
    graph = Graph(name)
    for node, func in nodes:
        graph.add_node(node, func)
    names = [node for node, _ in nodes]
    graph.add_edge(START, names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.add_edge(names[-1], END).compile()


def inner() -> Graph:
    return chain("inner", ("a", lambda s: {"foo": s["foo"] + "+a", "inner_only": 1}),
                 ("b", lambda s: {"foo": s["foo"] + "+b"}))


# -- shared keys, mapped in/out, nesting -----------------------------------------------


def test_shared_keys_subgraph_runs_as_a_node_and_its_state_flows_back() -> None:
    parent = chain("outer", ("first", lambda s: {"foo": "x"}), ("sub", inner()),
                   ("last", lambda s: {"foo": s["foo"] + "+last"}))
    workflow_id = new_id()

    async def go() -> tuple[State, Any, Any]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        child = await orchestrator.get_workflow_status(child_workflow_id(workflow_id, 1, "sub"))
        history = await orchestrator.get_state_history(child_workflow_id(workflow_id, 1, "sub"))
        return result, child, history

    result, child, history = run(go())
    assert result.values_copy() == {"foo": "x+a+b+last", "inner_only": 1}
    assert child.status == WorkflowStatus.COMPLETED
    # The child's steps are checkpointed under its own (namespaced) id.
    assert [snap.step for snap in history] == [2, 1, 0]


def test_a_typed_parent_keeps_only_the_keys_it_declares() -> None:
    class Outer(TypedDict, total=False):
        foo: str

    parent = Graph("typed_outer", state_schema=Outer)
    parent.add_node("sub", inner()).add_edge(START, "sub").add_edge("sub", END).compile()
    assert run(Orchestrator().execute(parent, {"foo": "x"})).values_copy() == {"foo": "x+a+b"}


def test_mapped_input_and_output_for_a_subgraph_with_another_schema() -> None:
    child = chain("child", ("shout", lambda s: {"text": s["text"].upper()}))
    parent = Graph("mapper")
    parent.add_node("sub", child, input=lambda s: {"text": s["question"]},
                    output=lambda s: {"answer": s["text"] + "!"})
    parent.add_edge(START, "sub").add_edge("sub", END).compile()
    assert run(Orchestrator().execute(parent, {"question": "hi"})).values_copy() == {"question": "hi", "answer": "HI!"}


def test_a_mapping_returning_no_dict_fails_the_node_naming_it() -> None:
    parent = Graph("bad_map")
    parent.add_node("sub", inner(), output=lambda s: ["not", "a", "dict"])
    parent.add_edge(START, "sub").add_edge("sub", END).compile()
    with pytest.raises(NodeExecutionError, match="output= mapping of subgraph node 'sub' returned list"):
        run(Orchestrator().execute(parent, {"foo": ""}))


def test_nested_two_deep_and_sends_to_a_subgraph() -> None:
    middle = chain("middle", ("pre", lambda s: {"foo": s["foo"] + "+pre"}), ("deep", inner()))
    parent = Graph("top", reducers={"results": "append"})
    parent.add_node("mid", middle)
    # Each Send's child ends with its own "n": only its results go back (mapped output).
    parent.add_node("each", chain("each", ("double", lambda s: {"results": [s["n"] * 2]})),
                    output=lambda s: {"results": s["results"]})
    parent.add_edge(START, "mid")
    parent.add_conditional_edge("mid", lambda s: [Send("each", {"n": n}) for n in (1, 2, 3)], ["each"])
    parent.add_edge("each", END).compile()
    result = run(Orchestrator().execute(parent, {"foo": "x", "results": []}))
    assert result["foo"] == "x+pre+a+b"
    assert sorted(result["results"]) == [2, 4, 6]


def test_add_node_refuses_what_is_no_compiled_graph_and_a_timeout() -> None:
    with pytest.raises(GraphValidationError, match="not compiled"):
        Graph("p").add_node("sub", Graph("raw"))
    with pytest.raises(GraphValidationError, match="input= and output= map the state of a subgraph node"):
        Graph("p").add_node("sub", lambda s: {}, input=lambda s: s)
    with pytest.raises(GraphValidationError, match="takes no timeout"):
        Graph("p").add_node("sub", inner(), timeout=3)


def test_the_subgraph_is_part_of_the_parent_fingerprint() -> None:
    one = Graph("p").add_node("sub", inner()).add_edge(START, "sub").add_edge("sub", END).compile()
    other_inner = chain("inner", ("a", lambda s: {}), ("c", lambda s: {}))
    two = Graph("p").add_node("sub", other_inner).add_edge(START, "sub").add_edge("sub", END).compile()
    assert one.fingerprint()["sha256"] != two.fingerprint()["sha256"]


# -- interrupts ----------------------------------------------------------------------


def asking_parent() -> Graph:
    def ask(state: State) -> dict[str, Any]:
        name = interrupt({"question": "name?"})
        age = interrupt({"question": "age?"})
        return {"answer": f"{name}/{age}"}

    middle = Graph("middle")
    middle.add_node("deep", chain("deep", ("ask", ask)))
    middle.add_edge(START, "deep").add_edge("deep", END).compile()
    parent = Graph("asking")
    parent.add_node("mid", middle)
    parent.add_node("after", lambda s: {"done": True})
    return parent.add_edge(START, "mid").add_edge("mid", "after").add_edge("after", END).compile()


def test_interrupt_two_deep_surfaces_at_the_parent_and_resumes_by_order_and_by_id() -> None:
    graph = asking_parent()
    workflow_id = new_id()

    async def go() -> list[Any]:
        orchestrator = Orchestrator()
        first = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
        status = await orchestrator.get_workflow_status(workflow_id)
        snapshot = await orchestrator.get_state(workflow_id, subgraphs=True)
        second = await orchestrator.resume(workflow_id, Command(resume="ada"))  # by order
        pause_id = second["__interrupt__"][0]["id"]
        with pytest.raises(ConfigurationError, match="not a pending interrupt id"):
            await orchestrator.resume(workflow_id, Command(resume={pause_id + "x": 1, pause_id: 2}))
        done = await orchestrator.resume(workflow_id, Command(resume={pause_id: 36}))  # by id
        return [first, status, snapshot, second, done]

    first, status, snapshot, second, done = run(go())
    (pause,) = first["__interrupt__"]
    assert pause["id"] == "0:mid/0:deep/0:ask:0"
    assert pause["value"] == {"question": "name?"} and pause["node"] == "ask"
    assert len(pause["namespace"]) == 2 and pause["namespace"][0].startswith("mid:")
    assert status.status == WorkflowStatus.INTERRUPTED
    deep = snapshot.subgraphs["mid"].subgraphs["deep"]
    assert deep.next == ("ask",) and deep.status == WorkflowStatus.INTERRUPTED
    assert second["__interrupt__"][0]["id"] == "0:mid/0:deep/0:ask:1"
    assert done.values_copy() == {"answer": "ada/36", "done": True}


def test_parallel_interrupts_inside_a_subgraph_are_answered_by_id_one_at_a_time() -> None:
    inside = Graph("two_asks")
    inside.add_node("x", lambda s: {"x": interrupt("x?")})
    inside.add_node("y", lambda s: {"y": interrupt("y?")})
    inside.add_edge(START, "x").add_edge(START, "y").add_edge("x", END).add_edge("y", END).compile()
    parent = Graph("holder").add_node("sub", inside).add_edge(START, "sub").add_edge("sub", END).compile()

    async def go() -> tuple[State, State, State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        paused = await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        ids = {p["value"]: p["id"] for p in paused["__interrupt__"]}
        again = await orchestrator.resume(workflow_id, Command(resume={ids["x?"]: 1}))
        done = await orchestrator.resume(workflow_id, Command(resume={ids["y?"]: 2}))
        return paused, again, done

    paused, again, done = run(go())
    assert len(paused["__interrupt__"]) == 2
    assert [p["value"] for p in again["__interrupt__"]] == ["y?"]
    assert done.values_copy() == {"x": 1, "y": 2}


def test_a_breakpoint_inside_a_subgraph_pauses_the_parent_and_resume_continues() -> None:
    inside = Graph("inside_bp")
    inside.add_node("a", lambda s: {"n": 1}).add_node("b", lambda s: {"n": s["n"] + 1})
    inside.add_edge(START, "a").add_edge("a", "b").add_edge("b", END).compile(interrupt_before=["b"])
    parent = Graph("bp_holder").add_node("sub", inside).add_edge(START, "sub").add_edge("sub", END).compile()

    async def go() -> tuple[State, State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        paused = await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        return paused, await orchestrator.resume(workflow_id)

    paused, done = run(go())
    assert paused["__interrupt__"][0]["kind"] == "before" and paused["__interrupt__"][0]["node"] == "b"
    assert done.values_copy() == {"n": 2}


# -- Command.PARENT ------------------------------------------------------------------


def test_command_parent_ends_the_subgraph_and_routes_in_the_parent() -> None:
    def decide(state: State) -> Command[Any]:
        return Command(graph=Command.PARENT, goto="escalate", update={"route": "escalated"})

    inside = chain("inside_cmd", ("decide", decide), ("never", lambda s: {"never": True}))
    parent = Graph("cmd_parent")
    parent.add_node("sub", inside, destinations=["escalate"])
    parent.add_node("escalate", lambda s: {"handled": s["route"]})
    parent.add_edge(START, "sub").add_edge("sub", END).add_edge("escalate", END).compile()
    result = run(Orchestrator().execute(parent, {}))
    assert result.values_copy() == {"route": "escalated", "handled": "escalated"}


def test_command_parent_outside_a_subgraph_fails_naming_the_node() -> None:
    graph = Graph("no_parent")
    graph.add_node("a", lambda s: Command(graph=Command.PARENT, goto="x"))
    graph.set_entry_point("a").set_finish_point("a").compile()
    with pytest.raises(InvalidNodeOutputError, match="node 'a' of graph 'no_parent'.*not as a subgraph"):
        run(Orchestrator().execute(graph))


def test_command_parent_goto_must_be_among_the_subgraph_node_destinations() -> None:
    inside = chain("inside_bad", ("decide", lambda s: Command(graph=Command.PARENT, goto="elsewhere")))
    parent = Graph("cmd_strict")
    parent.add_node("sub", inside, destinations=["ok"]).add_node("ok", lambda s: {}).add_node("elsewhere", lambda s: {})
    parent.add_edge(START, "sub").add_edge("sub", END).add_edge("ok", END).add_edge("elsewhere", END)
    parent.add_edge("sub", "elsewhere").compile()
    with pytest.raises(RoutingErrorOrExecution, match="not among its declared destinations"):
        run(Orchestrator().execute(parent, {}))


# -- failure, retry, on_error, cancel ----------------------------------------------------


def test_a_failure_inside_fails_the_subgraph_node_and_resume_retries_the_child() -> None:
    calls = {"n": 0}

    def flaky(state: State) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("first time")
        return {"ok": True}

    parent = Graph("failing").add_node("sub", chain("inner_fail", ("flaky", flaky)))
    parent.add_edge(START, "sub").add_edge("sub", END).compile()

    async def go() -> tuple[Any, State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        with pytest.raises(NodeExecutionError) as info:
            await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        return info.value, await orchestrator.resume(workflow_id)

    error, done = run(go())
    assert "subgraph 'inner_fail' of node 'sub'" in str(error) and "ValueError: first time" in str(error)
    assert error.node == "sub"
    assert done.values_copy() == {"ok": True}


def test_retry_resumes_the_failed_child_and_on_error_handles_a_final_failure() -> None:
    calls = {"n": 0}

    def flaky(state: State) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError(f"attempt {calls['n']}")
        return {"ok": calls["n"]}

    retried = Graph("retried")
    retried.add_node("sub", chain("inner_retry", ("flaky", flaky)), retry=RetryPolicy(max_attempts=3, initial_interval=0, retry_on=Exception))
    retried.add_edge(START, "sub").add_edge("sub", END).compile()
    assert run(Orchestrator().execute(retried, {})).values_copy() == {"ok": 3}

    handled = Graph("handled")
    handled.add_node("sub", chain("inner_boom", ("boom", lambda s: 1 / 0)), on_error="fallback")
    handled.add_node("fallback", lambda s: {"fallback": s["error"]["node"]})
    handled.add_edge(START, "sub").add_edge("sub", END).add_edge("fallback", END).compile()
    assert run(Orchestrator().execute(handled, {})).values_copy() == {"fallback": "sub"}


def test_cancelling_the_parent_cancels_the_child() -> None:
    started = asyncio.Event()

    async def slow(state: State) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(30)
        return {}

    parent = Graph("cancelled").add_node("sub", chain("inner_slow", ("slow", slow)))
    parent.add_edge(START, "sub").add_edge("sub", END).compile()

    async def go() -> tuple[str, str]:
        orchestrator = Orchestrator()
        workflow_id = await orchestrator.submit(parent, {})
        await started.wait()
        assert await orchestrator.cancel_workflow(workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await orchestrator.wait(workflow_id, timeout=20)
        child = await orchestrator.get_workflow_status(child_workflow_id(workflow_id, 0, "sub"))
        return (await orchestrator.get_workflow_status(workflow_id)).status, child.status

    assert run(go()) == (WorkflowStatus.CANCELLED, WorkflowStatus.CANCELLED)


def test_recovery_leaves_children_to_their_parent() -> None:
    async def go() -> list[str]:
        orchestrator = Orchestrator(recover=False)
        graph = asking_parent()
        workflow_id = new_id()
        await orchestrator.execute(graph, {}, workflow_id=workflow_id)
        # Mark the child running with no owner: only its parent's driver may continue it.
        store = orchestrator.backend.state_store
        child_id = child_workflow_id(workflow_id, 0, "mid")
        child = await store.get(child_id)
        assert child is not None
        await store.save(child.evolve(status=WorkflowStatus.RUNNING), expected_version=child.version)
        return await orchestrator.recover_workflows()

    assert run(go()) == []


# -- events and drawing -------------------------------------------------------------


def test_events_from_inside_carry_the_namespace_on_the_root_channel() -> None:
    parent = chain("evented", ("sub", chain("evented_inner", ("a", lambda s: {"x": 1}))))

    async def go() -> list[dict[str, Any]]:
        orchestrator = Orchestrator()
        await orchestrator.connect()
        workflow_id = new_id()
        subscription = await orchestrator.backend.message_bus.subscribe(f"events.{workflow_id}.>")
        await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        events = []
        while True:
            message = await subscription.get(timeout=0.5)
            if message is None:
                break
            events.append(dict(message.data))
        await subscription.close()
        await orchestrator.close()
        return events

    events = run(go())
    inside = [e for e in events if e.get("namespace")]
    assert {e["type"] for e in inside} >= {"workflow.started", "node.started", "node.completed"}
    assert all(e["namespace"][0].startswith("sub:") and e["workflow_id"] != e["subgraph_workflow_id"] for e in inside)
    assert any(e["type"] == "node.completed" and e["node"] == "a" for e in inside)
    assert not any(e.get("namespace") for e in events if e["type"] == "node.completed" and e["node"] == "sub")


def test_drawing_shows_the_subgraph_as_a_nested_block() -> None:
    parent = chain("drawn", ("first", lambda s: {}), ("sub", inner()))
    mermaid = parent.draw_mermaid()
    assert 'subgraph n1["sub (subgraph inner)"]' in mermaid
    assert 'n1_n0["a"]' in mermaid and "n1_n0 --> n1_n1" in mermaid and "n0 --> n1" in mermaid
    text = parent.draw_ascii()
    assert "[sub]  (subgraph 'inner')" in text
    assert "    [a]" in text


def test_the_child_inherits_the_parent_durability_and_priority() -> None:
    parent = Graph("durable").add_node("sub", inner(), priority=3).add_edge(START, "sub").add_edge("sub", END).compile()

    async def go() -> Any:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        await orchestrator.execute(parent, {"foo": ""}, workflow_id=workflow_id, durability="exit", priority=7)
        return await orchestrator.backend.state_store.get(child_workflow_id(workflow_id, 0, "sub"))

    child = run(go())
    assert child.metadata["durability"] == "exit" and child.metadata["priority"] == 7 + 3
    assert child.metadata["parent"] == child.workflow_id.split(":sub:")[0]


def _looping(seen: list[Any]) -> Graph:
    """A subgraph whose node loops until the step limit stops it, noting each config's recursion_limit."""
    def spin(state: State, config: Any) -> dict[str, Any]:
        seen.append(config.get("recursion_limit"))
        return {"n": state.get("n", 0) + 1}

    graph = Graph("spinner").add_node("spin", spin).add_edge(START, "spin")
    return graph.add_conditional_edge("spin", lambda s: "spin").compile()


@pytest.mark.parametrize("how", ["execute", "invoke", "nested", "resumed"])
def test_the_child_runs_under_its_parents_step_limit(how: str) -> None:
    """The example (LangGraph parity trial): a loop in a subgraph ran to the default 10,000
    steps whatever execute(step_limit=) / config["recursion_limit"] said, and its nodes saw
    recursion_limit 10000. As LangGraph hands its recursion_limit down, the child now gets its
    parent's run's limit (counted in its own steps)."""
    seen: list[Any] = []
    child = _looping(seen)
    if how == "nested":  # two deep: the limit reaches the grandchild
        child = Graph("middle").add_node("inner", child).add_edge(START, "inner").add_edge("inner", END).compile()
    parent = Graph(f"limited_{how}").add_node("sub", child).add_edge(START, "sub").add_edge("sub", END).compile()
    workflow_id = new_id()

    async def go() -> Any:
        orchestrator = Orchestrator()
        if how == "resumed":  # paused before the subgraph, continued with a limit of the resume
            paused = await orchestrator.execute(parent, {}, workflow_id=workflow_id, interrupt_before=["sub"])
            assert "__interrupt__" in paused
            return await orchestrator.resume(workflow_id, step_limit=7)
        return await orchestrator.execute(parent, {}, workflow_id=workflow_id, step_limit=7)

    with pytest.raises(NodeExecutionError, match="step limit of 7|7 steps") as caught:
        if how == "invoke":  # LangGraph's recursion_limit of 8 is 7 steps
            parent.invoke({}, {"recursion_limit": 8, "configurable": {"thread_id": workflow_id}})
        else:
            run(go())
    assert "10000" not in str(caught.value)
    assert len(seen) == 7 and set(seen) == {8}  # the child's nodes see the recursion_limit of 7 steps
    from distributed_agents.core.errors import StepLimitExceededError

    assert isinstance(caught.value.__cause__, StepLimitExceededError)  # catchable as LangGraph's GraphRecursionError


@pytest.mark.parametrize("depth", [1, 2])
def test_a_node_exception_inside_a_subgraph_is_the_cause_of_the_parents_error(depth: int) -> None:
    """As LangGraph raises a subgraph's exception from the parent's invoke (the trial's example:
    __cause__ was None for a failure inside a subgraph, though set for a failure in the parent)."""
    class Deep(Exception):
        pass

    def boom(state: State) -> dict[str, Any]:
        raise Deep("deep down")

    graph = chain("innermost", ("x", boom))
    for level in range(depth):
        graph = chain(f"level{level}", ("sub", graph))
    with pytest.raises(NodeExecutionError) as caught:
        graph.invoke({})
    assert isinstance(caught.value.__cause__, Deep) and str(caught.value.__cause__) == "deep down"


@settings(max_examples=15, deadline=None)
@given(depth=st.integers(0, 3), asks=st.integers(0, 3), by_id=st.booleans(), mapped=st.booleans())
def test_any_nesting_any_number_of_interrupts_resumes_to_the_flat_result(
    depth: int, asks: int, by_id: bool, mapped: bool
) -> None:
    """Nested ``depth`` deep, the innermost node asks ``asks`` times; answering each pause
    (by order or by its id) ends with what the same node gives run flat, every pause id distinct."""

    def leaf(state: State) -> dict[str, Any]:
        answers = [interrupt(f"q{i}") for i in range(asks)]
        return {"out": state["x"] + sum(answers)}

    graph = chain("level0", ("leaf", leaf))
    for level in range(1, depth + 1):
        outer = Graph(f"level{level}")
        if mapped:
            outer.add_node("inner", graph, input=lambda s: {"x": s["x"]}, output=lambda s: {"out": s["out"]})
        else:
            outer.add_node("inner", graph)
        graph = outer.add_edge(START, "inner").add_edge("inner", END).compile()

    async def go() -> tuple[list[str], State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        seen: list[str] = []
        result = await orchestrator.execute(graph, {"x": 100}, workflow_id=workflow_id)
        answer = 0
        while "__interrupt__" in result:
            (pause,) = result["__interrupt__"]
            seen.append(pause["id"])
            answer += 1
            result = await orchestrator.resume(workflow_id, Command(resume={pause["id"]: answer} if by_id else answer))
        return seen, result

    seen, result = run(go())
    assert len(seen) == asks and len(set(seen)) == asks
    assert all(pause.count("/") == depth for pause in seen)
    assert result["out"] == 100 + sum(range(1, asks + 1))


def test_the_parent_frontier_names_the_child_of_each_subgraph_task() -> None:
    graph = asking_parent()

    async def go() -> Any:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        await orchestrator.execute(graph, {}, workflow_id=workflow_id)
        return await orchestrator.backend.state_store.get(workflow_id)

    record = run(go())
    assert record.frontier["subgraphs"] == {"mid": child_workflow_id(record.workflow_id, 0, "mid")}


def test_a_fork_of_a_parent_paused_in_a_subgraph_runs_its_own_child() -> None:
    graph = asking_parent()

    async def go() -> tuple[Any, State, State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        await orchestrator.execute(graph, {}, workflow_id=workflow_id)
        (first,) = await orchestrator.get_state_history(workflow_id, limit=1)
        fork = await orchestrator.fork(first.checkpoint_id, workflow_id=workflow_id + "-fork")
        snapshot = await orchestrator.get_state(fork, subgraphs=True)
        paused = await orchestrator.resume(fork)
        original = await orchestrator.get_workflow_status(workflow_id)
        return snapshot, paused, original

    snapshot, paused, original = run(go())
    assert snapshot.subgraphs == {}  # the original's child is not the fork's
    assert paused["__interrupt__"][0]["id"] == "0:mid/0:deep/0:ask:0"
    assert original.status == WorkflowStatus.INTERRUPTED


def test_sends_to_a_subgraph_that_interrupts_pause_once_each_and_are_answered_together_by_id() -> None:
    asker = chain("asker", ("ask", lambda s: {"answers": [f"{s['item']}={interrupt(s['item'])}"]}))
    parent = Graph("fan_in_asks", reducers={"answers": "append"})
    parent.add_node("each", asker, output=lambda s: {"answers": s["answers"]})
    parent.add_conditional_edge(START, lambda s: [Send("each", {"item": i, "answers": []}) for i in s["items"]],
                                ["each"])
    parent.add_edge("each", END).compile()

    async def go() -> tuple[State, State]:
        orchestrator = Orchestrator()
        workflow_id = new_id()
        paused = await orchestrator.execute(parent, {"items": ["a", "b", "c"], "answers": []}, workflow_id=workflow_id)
        answers = {p["id"]: p["value"].upper() for p in paused["__interrupt__"]}
        return paused, await orchestrator.resume(workflow_id, Command(resume=answers))

    paused, done = run(go())
    assert sorted(p["id"] for p in paused["__interrupt__"]) == [
        "0:each#0/0:ask:0", "0:each#1/0:ask:0", "0:each#2/0:ask:0"]
    assert done["answers"] == ["a=A", "b=B", "c=C"]


def test_an_answer_for_a_pause_the_child_no_longer_has_is_reported_not_dropped_silently(
        caplog: pytest.LogCaptureFixture) -> None:
    """From the third trial: the child's state changed directly (update_state on the child's own id)
    drops its pending interrupt; the parent still shows the old pause, and an answer to it was
    silently dropped while the parent paused again. Now it is logged, naming both pauses."""
    import logging

    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("approve?")}

    child = chain("asks_once", ("write", lambda s: {"draft": "ABC"}), ("review", ask))
    parent = chain("reviewing", ("sub", child))
    workflow_id = new_id()

    async def go() -> tuple[Any, Any]:
        orchestrator = Orchestrator()
        first = await orchestrator.execute(parent, {}, workflow_id=workflow_id)
        child_id = child_workflow_id(workflow_id, 0, "sub")
        await orchestrator.update_state(child_id, {"draft": "EDITED"}, as_node="write", graph=child)
        again = await orchestrator.resume(workflow_id, Command(resume="y"))
        return first, again

    with caplog.at_level(logging.WARNING, logger="distributed_agents.orchestrator"):
        first, again = run(go())
    old = first["__interrupt__"][0]["id"]
    new = again["__interrupt__"][0]["id"]
    assert old != new
    warned = [r.getMessage() for r in caplog.records if "were not delivered" in r.getMessage()]
    assert len(warned) == 1 and repr(old.split("/", 1)[1]) in warned[0] and workflow_id in warned[0]
