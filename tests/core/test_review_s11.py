"""Review of 131541f (fewer GC-tracked objects per workflow run in the orchestrator).

The run no longer keeps per-run bound methods (``withdraw_on_cancel`` is now one callable
per orchestrator, given the calls' workflow id), context-variable tokens (the log context
and stream sink are swapped back by value), a copy of the create's enqueued calls (the
engine takes the caller's dict) or the options object.

What must hold: cancelling one workflow withdraws only its own queued tasks, never those of
another workflow the same orchestrator drives at the same time; a run leaves the caller's
log context and stream sink as they were, also when runs overlap in one task's children or
nest; the step-limit error still names the nodes that cycled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core import log_context
from distributed_agents.core.errors import StepLimitExceededError, WorkflowCancelledError
from distributed_agents.core.stream_writer import current_stream_sink

pytestmark = pytest.mark.timeout(30)


def _remote(name: str) -> Graph:
    return Graph(name).add_node("r", node_type="r").set_entry_point("r").set_finish_point("r").compile()


def test_cancelling_one_workflow_withdraws_its_tasks_only_not_those_of_another_run_alongside() -> None:
    """Two workflows of one orchestrator wait for a worker (their first tasks queued with the
    create); one is cancelled: its task is withdrawn, the other's stays queued and runs once a
    worker comes; the cancelled one's node never runs."""
    ran: list[str] = []

    def node(state: State) -> dict[str, Any]:
        ran.append(state["who"])
        return {"done": True}

    async def scenario() -> tuple[Any, Any, dict[str, Any]]:
        orchestrator = Orchestrator(local_nodes=False, wait_for_workers=True)
        graph = _remote("withdraw")
        a = asyncio.ensure_future(orchestrator.execute(graph, {"who": "a"}, workflow_id="wf-a"))
        b = asyncio.ensure_future(orchestrator.execute(graph, {"who": "b"}, workflow_id="wf-b"))
        queue = orchestrator.backend.task_queue
        for _ in range(500):
            if (await queue.stats("r")).queued >= 2:
                break
            await asyncio.sleep(0.01)
        assert (await queue.stats("r")).queued == 2
        assert await orchestrator.cancel_workflow("wf-a") is True
        with pytest.raises(WorkflowCancelledError):
            await asyncio.wait_for(a, 10)
        left = await queue.stats("r")
        worker = Worker(capacity=2, poll_wait=0.05)
        worker.register_node("r", node)
        serving = asyncio.ensure_future(worker.start())
        try:
            final = await asyncio.wait_for(b, 10)
        finally:
            await worker.stop(grace=1)
            await serving
        return left, final, dict(log_context.current())

    left, final, context = run(scenario())
    assert left.queued == 1, f"cancelling wf-a left {left.queued} task(s) queued (wf-b's must stay)"
    assert dict(final) == {"who": "b", "done": True}
    assert ran == ["b"]
    assert context == {}


def test_overlapping_and_nested_runs_leave_the_callers_log_context_and_stream_sink_as_they_were() -> None:
    """The caller binds its own log fields; runs of two orchestrators overlap (children of
    one task) and one node runs a whole workflow of another orchestrator inside itself: each
    node logs its own workflow id, and afterwards every task sees what it had before."""
    seen: list[tuple[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), dict(log_context.current())))

    inner_graph = Graph("inner").add_node("i", lambda s: {"i": 1}).set_entry_point("i").set_finish_point("i").compile()
    inner = Orchestrator()

    async def outer_node(state: State) -> dict[str, Any]:
        logging.getLogger("review.s11").info("before %s", state["who"])
        result = await inner.execute(inner_graph, {}, workflow_id=f"wf-inner-{state['who']}")
        logging.getLogger("review.s11").info("after %s", state["who"])
        await asyncio.sleep(0.01)
        return {"inner": result["i"]}

    outer_graph = Graph("outer").add_node("o", outer_node).set_entry_point("o").set_finish_point("o").compile()
    handler = Keep()
    logger = logging.getLogger("review.s11")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def scenario() -> tuple[Any, Any, Any, Any]:
        log_context.set_fields(node="caller")
        sink_before = current_stream_sink()
        first, second = Orchestrator(), Orchestrator()
        results = await asyncio.gather(first.execute(outer_graph, {"who": "x"}, workflow_id="wf-x"),
                                       second.execute(outer_graph, {"who": "y"}, workflow_id="wf-y"))
        again = await first.execute(outer_graph, {"who": "z"}, workflow_id="wf-z")
        return [dict(r) for r in results] + [dict(again)], dict(log_context.current()), \
            current_stream_sink() is sink_before, sink_before

    try:
        results, context, same_sink, _ = run(scenario())
    finally:
        logger.removeHandler(handler)
    assert [r["inner"] for r in results] == [1, 1, 1]
    assert context == {"node": "caller"}
    assert same_sink
    for message, fields in seen:
        who = message.split()[-1]
        assert fields.get("workflow_id") == f"wf-{who}", (message, fields, seen)
        assert fields.get("node") == "o", (message, fields)


def test_a_step_limit_error_still_names_the_nodes_that_cycled() -> None:
    """a <-> b loop stopped by the step limit: the error says the graph is cycling and names
    both nodes (the recent steps are now kept as tuples)."""
    graph = (Graph("loop").add_node("a", lambda s: {"n": s.get("n", 0) + 1}).add_node("b", lambda s: None)
             .set_entry_point("a").add_edge("a", "b").add_edge("b", "a").set_finish_point("b").compile())

    async def scenario() -> str:
        with pytest.raises(StepLimitExceededError) as caught:
            await Orchestrator().execute(graph, {}, workflow_id="wf-loop", step_limit=6)
        return str(caught.value)

    message = run(scenario())
    assert "cycling" in message and "'a'" in message and "'b'" in message, message
