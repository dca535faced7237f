"""A failed workflow and a node's final failure are logged at WARNING, where alerting looks.

The example (operations trial): the worker logged a node's final failure at INFO with no
traceback, and the orchestrator logged nothing when the workflow failed: alerting on
WARNING-and-up log lines missed every failure. Now the worker's line is a WARNING with the
traceback, and the driving process logs "workflow ... failed at step N: ..." as a WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.errors import NodeExecutionError

pytestmark = pytest.mark.timeout(60)


def explode(state: Any) -> dict[str, Any]:
    raise ValueError("boom on purpose")


def graph() -> Graph:
    return Graph("fails").add_node("bad", explode).set_entry_point("bad").set_finish_point("bad").compile()


def test_a_local_workflow_failure_is_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="distributed_agents"):
        with pytest.raises(NodeExecutionError):
            run(Orchestrator().execute(graph(), {}, workflow_id="wf-fails"), 30)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "wf-fails" in r.getMessage()]
    assert any("failed at step 0" in r.getMessage() and "boom on purpose" in r.getMessage() for r in lines), \
        [r.getMessage() for r in caplog.records]


async def fail_on_a_worker(node: Any, workflow_id: str) -> None:
    """Run a one-node workflow whose node ``node`` raises on an in-process worker (memory://)."""
    url = f"memory://?prefix=fl{uuid.uuid4().hex[:8]}"
    worker = Worker(backend=url, capacity=1, poll_wait=0.1)
    worker.register_node("far", node)
    orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=30)
    serving = asyncio.ensure_future(worker.start())
    try:
        with pytest.raises(NodeExecutionError):
            await orchestrator.execute(Graph("fails_far").add_node("far", node_type="far").set_entry_point(
                "far").set_finish_point("far").compile(), {}, workflow_id=workflow_id)
    finally:
        await worker.stop(grace=1)
        await serving
        await orchestrator.close()


def test_a_workers_final_node_failure_is_a_warning_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="distributed_agents"):
        run(fail_on_a_worker(explode, "wf-far"), 50)
    [line] = [r for r in caplog.records if "failed on attempt" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "ValueError: boom on purpose" in line.getMessage() and "Traceback" in line.getMessage()
    assert any(r.levelno >= logging.WARNING and "'wf-far' failed at step 0" in r.getMessage() for r in caplog.records)


def test_a_failure_message_no_utf8_stream_can_carry_is_logged_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """A lone surrogate in the node's error (as test_settling raises) is escaped in the log line:
    raw, it would fail a UTF-8 log handler (and pytest-xdist's report of the captured log)."""
    def rude(state: Any) -> dict[str, Any]:
        raise ValueError("bad byte \udcff here")

    with caplog.at_level(logging.INFO, logger="distributed_agents"):
        run(fail_on_a_worker(rude, "wf-rude"), 50)
    for record in caplog.records:
        if record.levelno >= logging.WARNING:
            record.getMessage().encode("utf-8")  # no UnicodeEncodeError
    assert any("bad byte \\udcff here" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_routing_error_is_logged_once_as_its_message_without_the_engines_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """The caller gets the error (with its traceback); the log line says the same in one line: a
    script without logging configured printed the engine's traceback on stderr besides."""
    from distributed_agents import END, START, Orchestrator
    from distributed_agents.core.errors import RoutingError

    graph = Graph("route_log")
    graph.add_node("a", lambda state: {"x": 1}).add_node("b", lambda state: {"y": 1})
    graph.add_edge(START, "a").add_conditional_edges("a", lambda state: "nope", ["b"])
    graph.add_edge("b", END).compile()

    async def scenario() -> None:
        with pytest.raises(RoutingError, match="returned 'nope', which is not one of"):
            await Orchestrator().execute(graph, {})

    with caplog.at_level(logging.ERROR, logger="distributed_agents"):
        run(scenario())
    [record] = [r for r in caplog.records if "failed in step" in r.getMessage()]
    assert "returned 'nope'" in record.getMessage()
    assert record.exc_info is None
