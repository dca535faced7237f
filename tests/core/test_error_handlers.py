"""``add_node(..., on_error=handler)``: a node's final failure goes to a handler node, on memory.

The failed node's step commits (the other nodes keep their writes), the failed node's
edges do not fire, and the handler runs in the next step on
``{"error": {...}, "state": <the failed node's input>}`` - a task stored in the
frontier, so it survives an orchestrator restart. A failing handler fails the workflow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, Graph, Orchestrator, RetryPolicy, Send, State
from distributed_agents.core.errors import GraphValidationError, NodeExecutionError

pytestmark = pytest.mark.timeout(60)


def handle(state: State) -> dict[str, Any]:
    error = state["error"]
    return {"handled": [f"{error['node']}: {error['error_type']}: {error['message']} "
                        f"after {error['attempts']} attempt(s)"],
            "seen_input": state["state"]}


def extend(old: list[Any] | None, new: list[Any]) -> list[Any]:
    return [*(old or []), *new]


def pipeline(fetch: Any, *, retry: RetryPolicy | None = None) -> Graph:
    """fetch -> after -> END, fetch's failures -> handler -> END."""
    return (Graph("on_error_pipeline", reducers={"handled": extend})
            .add_node("fetch", fetch, retry=retry, on_error="handler")
            .add_node("after", lambda s: {"after": True})
            .add_node("handler", handle)
            .set_entry_point("fetch").add_edge("fetch", "after").set_finish_point("after")
            .set_finish_point("handler").compile())


def test_the_handler_sees_the_error_and_the_failed_nodes_edges_do_not_fire() -> None:
    def fetch(state: State) -> dict[str, Any]:
        raise ConnectionError("upstream is down")

    result = run(Orchestrator().execute(pipeline(fetch), {"url": "x"}, workflow_id="wf-oe-basic"))
    assert result["handled"] == ["fetch: ConnectionError: upstream is down after 1 attempt(s)"]
    assert result["seen_input"] == {"url": "x"}  # the input the failed node got
    assert "after" not in result


def test_the_retry_policy_is_exhausted_before_the_handler_runs() -> None:
    attempts: Counter[str] = Counter()

    def fetch(state: State) -> dict[str, Any]:
        attempts["fetch"] += 1
        raise TimeoutError(f"try {attempts['fetch']}")

    graph = pipeline(fetch, retry=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False, retry_on=Exception))
    result = run(Orchestrator().execute(graph, {}, workflow_id="wf-oe-retry"))
    assert attempts["fetch"] == 3
    assert result["handled"] == ["fetch: TimeoutError: try 3 after 3 attempt(s)"]


def test_a_timeout_is_routed_too() -> None:
    async def slow(state: State) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    graph = (Graph("on_error_timeout", reducers={"handled": extend})
             .add_node("slow", slow, timeout=0.05, on_error="handler").add_node("handler", handle)
             .set_entry_point("slow").set_finish_point("slow").set_finish_point("handler").compile())
    result = run(Orchestrator().execute(graph, {}, workflow_id="wf-oe-timeout"))
    assert result["handled"][0].startswith("slow: NodeTimeoutError")


def test_a_failing_handler_fails_the_workflow_naming_both() -> None:
    def fetch(state: State) -> dict[str, Any]:
        raise ConnectionError("upstream is down")

    def bad_handler(state: State) -> dict[str, Any]:
        raise ValueError("cannot handle")

    graph = (Graph("on_error_fails").add_node("fetch", fetch, on_error="handler").add_node("handler", bad_handler)
             .set_entry_point("fetch").set_finish_point("fetch").set_finish_point("handler").compile())

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(NodeExecutionError) as failed:
            await orchestrator.execute(graph, {}, workflow_id="wf-oe-both")
        return failed.value, await orchestrator.get_workflow_status("wf-oe-both")

    error, status = run(scenario())
    assert error.node == "handler"
    assert "error handler 'handler' of node 'fetch'" in str(error)
    assert "ConnectionError: upstream is down" in str(error) and "ValueError: cannot handle" in str(error)
    assert status.error is not None and status.error["handles"] == "fetch" and status.error["node"] == "handler"


def test_in_a_parallel_step_the_other_branches_keep_their_writes() -> None:
    def broken(state: State) -> dict[str, Any]:
        raise RuntimeError("b broke")

    graph = (Graph("on_error_fan", reducers={"handled": extend, "log": extend})
             .add_node("start", lambda s: None)
             .add_node("a", lambda s: {"a": 1, "log": ["a"]})
             .add_node("b", broken, on_error="handler")
             .add_node("c", lambda s: {"c": 1, "log": ["c"]})
             .add_node("handler", lambda s: {"handled": [s["error"]["node"]], "log": ["handler"]})
             .add_node("join", lambda s: {"log": ["join"]})
             .set_entry_point("start"))
    for node in "abc":
        graph.add_edge("start", node)
    graph.add_edge("a", "join").add_edge("b", "join").add_edge("c", "join").add_edge("handler", END)
    graph.set_finish_point("join").compile()
    events: list[dict[str, Any]] = []

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        subscription = await orchestrator.backend.message_bus.subscribe("events.wf-oe-fan.>")
        result = await orchestrator.execute(graph, {}, workflow_id="wf-oe-fan")
        while (message := await subscription.get(timeout=10)) is not None:
            events.append(dict(message.data))
            if events[-1]["type"] == "workflow.completed":
                break
        await subscription.close()
        return result

    result = run(scenario())
    assert result["a"] == 1 and result["c"] == 1 and result["handled"] == ["b"]
    # join's edge from b never fires: join ran after a and c, handler ran in the next step too.
    assert sorted(result["log"]) == sorted(["a", "c", "handler", "join"]) and result["log"][:2] == ["a", "c"]
    failed = [e for e in events if e.get("type") == "node.failed"]
    assert [(e["node"], e["on_error"]) for e in failed] == [("b", "handler")]


def test_a_failed_send_task_is_routed_with_its_own_argument() -> None:
    def work(state: State) -> dict[str, Any]:
        if state["n"] == 2:
            raise ValueError("two is bad")
        return {"done": [state["n"]]}

    graph = (Graph("on_error_send", reducers={"done": extend, "handled": extend})
             .add_node("fan", lambda s: None).add_node("work", work, on_error="handler")
             .add_node("handler", lambda s: {"handled": [s["state"]]})
             .set_entry_point("fan")
             .add_conditional_edge("fan", lambda s: [Send("work", {"n": n}) for n in (1, 2, 3)])
             .set_finish_point("work").set_finish_point("handler").compile())
    result = run(Orchestrator().execute(graph, {}, workflow_id="wf-oe-send"))
    assert result["done"] == [1, 3] and result["handled"] == [{"n": 2}]


def test_the_pending_handler_task_is_in_the_frontier_and_survives_an_orchestrator_restart() -> None:
    runs: Counter[str] = Counter()

    def fetch(state: State) -> dict[str, Any]:
        runs["fetch"] += 1
        raise ConnectionError("down")

    def handler(state: State) -> dict[str, Any]:
        runs["handler"] += 1
        return {"handled": [state["error"]["message"]]}

    def graph() -> Graph:
        return (Graph("on_error_restart", reducers={"handled": extend})
                .add_node("fetch", fetch, on_error="handler").add_node("handler", handler)
                .set_entry_point("fetch").set_finish_point("fetch").set_finish_point("handler")
                .compile(interrupt_before=["handler"]))

    async def scenario() -> Any:
        first = Orchestrator()
        await first.execute(graph(), {}, workflow_id="wf-oe-restart")  # stops before the handler's step
        record = await first.backend.state_store.get("wf-oe-restart")
        (checkpoint,) = await first.backend.state_store.list_checkpoints("wf-oe-restart", limit=1)
        assert checkpoint.frontier["sends"] == record.frontier["sends"]  # what a takeover reads
        backend = first.backend
        await first.close()
        assert record is not None
        (send,) = record.frontier["sends"]
        assert send["node"] == "handler" and send["handles"] == "fetch"
        assert send["arg"]["error"]["error_type"] == "ConnectionError"
        second = Orchestrator(backend=backend)
        second.register_graph(graph())
        return await second.resume("wf-oe-restart")

    result = run(scenario())
    assert result["handled"] == ["down"]
    assert runs == {"fetch": 1, "handler": 1}


def test_compile_checks_the_handler_and_counts_it_as_reachable() -> None:
    def base() -> Graph:
        return Graph("on_error_checks").add_node("a", lambda s: None, on_error="h").set_entry_point("a") \
            .set_finish_point("a")

    with pytest.raises(GraphValidationError, match="on_error='h', which is not a node"):
        base().compile()
    graph = base().add_node("h", handle).set_finish_point("h").compile()  # h is reachable only as a's handler
    assert graph.spec()["nodes"][0]["on_error"] == "h"
    plain = Graph("on_error_checks").add_node("a", lambda s: None).add_node("h", handle).set_entry_point("a") \
        .set_finish_point("a").add_edge("a", "h").set_finish_point("h").compile()
    assert plain.fingerprint() != graph.fingerprint()
    with pytest.raises(GraphValidationError, match="on_error must name another node"):
        Graph("g").add_node("a", lambda s: None, on_error="a")
    assert "n0 -.->|\"on_error\"| n1" in graph.draw_mermaid() and "on_error: its failures" in graph.draw_ascii()


@settings(max_examples=25, deadline=None)
@given(failing=st.lists(st.booleans(), min_size=1, max_size=5), handled=st.lists(st.booleans(), min_size=5,
                                                                                  max_size=5))
def test_any_mix_of_failing_branches_keeps_every_success_and_handles_each_routed_failure(
    failing: list[bool], handled: list[bool]
) -> None:
    """Branch i fails when failing[i]; it has a handler when handled[i]. Unhandled failures fail the step."""
    names = [f"b{i}" for i in range(len(failing))]

    def branch(i: int) -> Any:
        def run_branch(state: State) -> dict[str, Any]:
            if failing[i]:
                raise RuntimeError(f"b{i} failed")
            return {"done": [f"b{i}"]}
        return run_branch

    graph = Graph("on_error_mix", reducers={"done": extend, "handled": extend}).add_node("start", lambda s: None)
    for i, name in enumerate(names):
        graph.add_node(name, branch(i), on_error="handler" if handled[i] else None)
        graph.add_edge("start", name).set_finish_point(name)
    # Reached by an edge (when no branch has it as a handler) it runs on the shared state, without "error".
    graph.add_node("handler", lambda s: {"handled": [s["error"]["node"]]} if "error" in s else None)
    graph.set_finish_point("handler")
    graph.set_entry_point("start")
    if not any(handled[:len(names)]):
        graph.add_edge("start", "handler")  # otherwise unreachable
    graph.compile()
    succeeded = [n for i, n in enumerate(names) if not failing[i]]
    unhandled = [n for i, n in enumerate(names) if failing[i] and not handled[i]]
    routed = [n for i, n in enumerate(names) if failing[i] and handled[i]]

    workflow_id = f"wf-oe-mix-{uuid.uuid4().hex}"

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        if unhandled:
            with pytest.raises(NodeExecutionError) as failed:
                await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            record = await orchestrator.backend.state_store.get(workflow_id)
            assert record is not None
            return failed.value, record
        return await orchestrator.execute(graph, {}, workflow_id=workflow_id), None

    outcome, record = run(scenario())
    if unhandled:
        assert outcome.node == unhandled[0]
        assert sorted(record.error["failed_nodes"]) == sorted(unhandled + routed)
        ran = succeeded + ([] if any(handled[:len(names)]) else ["handler"])  # the handler by its edge
        assert sorted(record.frontier.get("pending_writes", {})) == sorted(ran)  # kept for resume
    else:
        assert outcome.get("done", []) == succeeded
        assert outcome.get("handled", []) == routed


@pytest.mark.parametrize(("durability", "doc_size", "referenced"),
                         [("sync", 600_000, True), ("async", 600_000, True), ("exit", 300_000, False),
                          ("sync", 100, False)])
def test_a_large_failed_input_reaches_an_in_process_handler_through_its_checkpoint(
        durability: str, doc_size: int, referenced: bool) -> None:
    """Over INLINE_STATE_LIMIT the routed Send names the failed step's checkpoint (``state_ref``) instead of a
    copy, so a 600 KB state fits a 900 KB limit; a small state, or one whose step is not written
    (durability="exit"), stays inline. The handler's input is the same either way."""
    def fail(state: State) -> dict[str, Any]:
        raise ValueError(f"doc of {len(state['doc'])}")

    def measure(state: State) -> dict[str, Any]:  # not the input itself: it would double the state
        return {"handled": [state["error"]["message"]], "seen_input": {k: len(v) for k, v in state["state"].items()}}

    graph = (Graph("on_error_large", reducers={"handled": extend})
             .add_node("fetch", fail, on_error="handler").add_node("after", lambda s: {"after": True})
             .add_node("handler", measure)
             .set_entry_point("fetch").add_edge("fetch", "after").set_finish_point("after")
             .set_finish_point("handler").compile())
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[Any, Any]:
        async with Orchestrator(backend="memory://", backend_options={"max_payload_bytes": 900_000}) as orchestrator:
            result = await orchestrator.execute(graph, {"doc": "d" * doc_size}, workflow_id=workflow_id,
                                                durability=durability)
            routed = [cp for cp in await orchestrator.backend.state_store.list_checkpoints(workflow_id)
                      if cp.frontier.get("sends")]
            return result, routed

    result, routed = run(scenario())
    assert result["handled"] == [f"doc of {doc_size}"]
    assert result["seen_input"] == {"doc": doc_size} and "after" not in result
    if durability != "exit":
        (send,) = routed[0].frontier["sends"]
        assert ("state_ref" in send) is referenced and ("state" in send["arg"]) is not referenced
