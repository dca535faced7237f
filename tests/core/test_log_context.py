"""Log records name the workflow, step, node, task and attempt they were emitted for (core.log_context)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core import log_context
from distributed_agents.core.log_context import FIELDS, LogContextFilter

pytestmark = pytest.mark.timeout(30)

app_log = logging.getLogger("myapp")


class Capture(logging.Handler):
    """Keeps every record (after the filter added the context), from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()
        self.addFilter(LogContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def fields(self, logger: str) -> list[dict[str, Any]]:
        return [{"message": r.getMessage(), **{name: getattr(r, name) for name in FIELDS}}
                for r in self.records if r.name == logger]


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_bind_nests_and_restores_and_the_filter_keeps_extra_fields() -> None:
    assert dict(log_context.current()) == {}
    with log_context.bind(workflow_id="wf", step=1):
        with log_context.bind(node="n", step=2):
            assert dict(log_context.current()) == {"workflow_id": "wf", "step": 2, "node": "n"}
        assert dict(log_context.current()) == {"workflow_id": "wf", "step": 1}
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.node = "given"
        assert LogContextFilter().filter(record)
        assert (record.workflow_id, record.step, record.node, record.task_id) == ("wf", 1, "given", None)
        assert record.log_context == "[wf=wf step=1 node=given] "
    assert dict(log_context.current()) == {}
    with pytest.raises(ValueError, match="unknown log context field"):
        log_context.set_fields(graph="g")


def two_kinds() -> Graph:
    def thread_node(state: State) -> dict[str, Any]:
        app_log.info("in thread node")
        return {"a": 1}

    async def async_node(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        app_log.info("in async node")
        return {"b": 2}

    def route(state: State) -> str:
        app_log.info("routing")  # called by the step engine, outside any node
        return "async_node"

    graph = Graph("two_kinds")
    graph.add_node("thread_node", thread_node)
    graph.add_node("async_node", async_node)
    graph.set_entry_point("thread_node")
    graph.add_conditional_edges("thread_node", route, ["async_node"])
    return graph.set_finish_point("async_node").compile()


def test_records_from_thread_and_async_nodes_and_the_engine_carry_the_context(captured: Capture) -> None:
    run(Orchestrator().execute(two_kinds(), {}, workflow_id="wf-logs"))
    app_log.info("after the run")
    by_message = {entry["message"]: entry for entry in captured.fields("myapp")}
    thread, routed, in_async = by_message["in thread node"], by_message["routing"], by_message["in async node"]
    assert (thread["workflow_id"], thread["step"], thread["node"], thread["attempt"]) == ("wf-logs", 0, "thread_node", 1)
    assert (in_async["workflow_id"], in_async["step"], in_async["node"], in_async["attempt"]) == (
        "wf-logs", 1, "async_node", 1)
    assert thread["task_id"] and in_async["task_id"] and thread["task_id"] != in_async["task_id"]
    assert routed["workflow_id"] == "wf-logs" and routed["node"] is None and routed["task_id"] is None
    assert routed["step"] == 0  # routes after step 0 are decided in step 0
    after = by_message["after the run"]
    assert all(after[name] is None for name in FIELDS)  # nothing leaks to the caller


def test_a_worker_names_the_task_on_its_own_records_and_the_nodes(captured: Capture) -> None:
    def upper(state: State) -> dict[str, Any]:
        app_log.info("upper on a worker")
        return {"text": state["text"].upper()}

    worker = Worker(node_types={"upper"}, poll_wait=0.05)
    worker.register_node("upper", upper)
    graph = Graph("remote_upper")
    graph.add_node("upper")
    graph.set_entry_point("upper").set_finish_point("upper").compile()

    async def body() -> Any:
        serving = asyncio.ensure_future(worker.start())
        while not worker._serving:
            await asyncio.sleep(0.005)
        try:
            return await Orchestrator().execute(graph, {"text": "hi"}, workflow_id="wf-remote")
        finally:
            await worker.stop(grace=1)
            await serving

    assert run(body())["text"] == "HI"
    (node_entry,) = captured.fields("myapp")
    done = [e for e in captured.fields("distributed_agents.worker") if " done in " in e["message"]]
    assert len(done) == 1
    for entry in (node_entry, done[0]):
        assert (entry["workflow_id"], entry["step"], entry["node"], entry["attempt"]) == ("wf-remote", 0, "upper", 1)
        assert entry["task_id"] and entry["task_id"] in done[0]["message"]


def test_concurrent_nodes_never_see_each_others_context(captured: Capture) -> None:
    async def async_node(state: State, context: Any) -> dict[str, Any]:
        for i in range(5):
            await asyncio.sleep(0)
            app_log.info("%s %d", context.node, i)
        return {}

    def thread_node(state: State, context: Any) -> dict[str, Any]:
        for i in range(5):
            app_log.info("%s %d", context.node, i)
        return {}

    graph = Graph("wide_logs")
    graph.add_node("start", lambda s: None)
    names = [f"a{i}" for i in range(4)] + [f"t{i}" for i in range(4)]
    for name in names:
        graph.add_node(name, async_node if name.startswith("a") else thread_node)
        graph.add_edge("start", name)
        graph.set_finish_point(name)
    graph.set_entry_point("start").compile()

    async def two_workflows() -> None:
        await asyncio.gather(Orchestrator().execute(graph, {}, workflow_id="wf-x"),
                             Orchestrator().execute(graph, {}, workflow_id="wf-y"))

    run(two_workflows())
    entries = captured.fields("myapp")
    assert len(entries) == 2 * len(names) * 5
    for entry in entries:
        assert entry["node"] == entry["message"].split()[0] and entry["step"] == 1
        assert entry["task_id"] and entry["workflow_id"] in ("wf-x", "wf-y")
    tasks = {(e["workflow_id"], e["node"]): e["task_id"] for e in entries}
    assert len(tasks) == 2 * len(names) and len(set(tasks.values())) == 2 * len(names)
    for entry in entries:
        assert tasks[(entry["workflow_id"], entry["node"])] == entry["task_id"]
