"""OpenTelemetry traces across processes: the orchestrator here, a real worker process on Redis.

The orchestrator records its spans with the SDK's in-memory exporter; the worker is
``distributed-agents worker --otel`` with ``OTEL_TRACES_EXPORTER=console``, so its spans
come out of its stdout as JSON. The worker's node spans must be children of the
orchestrator's step spans, in the workflow's trace, with the ids as attributes; a
failed attempt has status ERROR and the exception; a span the node function makes
itself is a child of its node's span.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.observability import console_spans

from distributed_agents import Orchestrator, RetryPolicy
from distributed_agents.core import instrumentation
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.core.instrumentation import NodeAttempt
from distributed_agents.telemetry import Tracing, enable

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

APP = '''
import logging
from typing import Any
from opentelemetry import trace
from distributed_agents import Graph, NodeContext, RetryPolicy, State


def plan(state: State) -> dict[str, Any]:
    return {"outline": f"outline of {state['topic']}"}


def write(state: State, context: NodeContext) -> dict[str, Any]:
    if context.attempt == 1:
        raise RuntimeError("the first draft was lost")
    logging.getLogger("tracedapp").info("writing")
    with trace.get_tracer("tracedapp").start_as_current_span("llm call"):
        return {"text": "a draft from " + state["outline"]}


graph = (Graph("traced").add_node("plan", plan)
         .add_node("write", write, retry=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False, retry_on=Exception))
         .add_edge("plan", "write").set_entry_point("plan").set_finish_point("write").compile())
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_LOG_FORMAT", "DA_APP",
             "NODE_TYPES", "DA_OTEL", "DA_METRICS_PORT")


def _hex(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def _load_app(folder: pathlib.Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tracedapp_{uuid.uuid4().hex[:6]}", folder / "tracedapp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_workers_node_spans_are_children_of_the_orchestrators_step_spans(redis_url: str,
                                                                          tmp_path: pathlib.Path) -> None:
    (tmp_path / "tracedapp.py").write_text(APP)
    prefix = f"otel{uuid.uuid4().hex[:8]}"
    worker_id = f"traced-worker-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES and not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(tmp_path), OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="traced-worker")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    graph = _load_app(tmp_path).graph

    async def drive() -> Any:
        orchestrator = Orchestrator(backend=f"{redis_url}?prefix={prefix}", local_nodes=False, wait_for_workers=True,
                                    instrumentation=Tracing(provider))
        async with orchestrator:
            return await orchestrator.execute(graph, {"topic": "tides"}, workflow_id=f"wf_traced_{prefix}")

    with open(tmp_path / "worker.out", "w") as out, open(tmp_path / "worker.err", "w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "tracedapp:graph", "--backend-url",
             redis_url, "--prefix", prefix, "--worker-id", worker_id, "--heartbeat-interval", "0.5", "--otel",
             "--log-format", "json"],
            cwd=tmp_path, env=env, stdout=out, stderr=err, text=True)
        try:
            try:  # bounded, so a stuck run fails with the worker's log rather than the test's timeout
                result = asyncio.run(asyncio.wait_for(drive(), 90))
            except asyncio.TimeoutError:
                log = (tmp_path / "worker.err").read_text()
                raise AssertionError(f"the workflow did not finish; worker log:\n{log}") from None
        finally:
            worker.send_signal(signal.SIGTERM)  # spans are flushed as the worker exits
            worker.wait(timeout=60)
    assert result["text"] == "a draft from outline of tides", (tmp_path / "worker.err").read_text()
    assert worker.returncode == 0, (tmp_path / "worker.err").read_text()

    ours: list[ReadableSpan] = list(exporter.get_finished_spans())
    (run,) = [s for s in ours if s.name == "workflow traced"]
    steps = sorted((s for s in ours if s.name == "step traced"), key=lambda s: s.attributes["distributed_agents.step"])
    assert [s.attributes["distributed_agents.step.nodes"] for s in steps] == [("plan",), ("write",)]
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in steps)
    assert run.attributes["distributed_agents.workflow.status"] == "completed"
    assert run.attributes["distributed_agents.workflow.id"] == f"wf_traced_{prefix}"
    assert not [s for s in ours if s.name.startswith("node ")]  # every node ran on the worker
    trace_id = _hex(run.context.trace_id, 32)

    theirs = console_spans((tmp_path / "worker.out").read_text())
    nodes = sorted((s for s in theirs if s["name"].startswith("node ")),
                   key=lambda s: (s["attributes"]["distributed_agents.step"],
                                  s["attributes"]["distributed_agents.task.attempt"]))
    assert [(s["name"], s["attributes"]["distributed_agents.task.attempt"]) for s in nodes] == [
        ("node plan", 1), ("node write", 1), ("node write", 2)]
    for span, step in zip(nodes, [steps[0], steps[1], steps[1]]):
        assert span["context"]["trace_id"] == trace_id  # one trace across both processes
        assert span["parent_id"] == _hex(step.context.span_id, 16)  # the step that enqueued the task
        assert span["kind"] == "SpanKind.CONSUMER"
        attributes = span["attributes"]
        assert attributes["distributed_agents.workflow.id"] == f"wf_traced_{prefix}"
        assert attributes["distributed_agents.worker.id"] == worker_id
        assert attributes["distributed_agents.graph.name"] == "traced"
        assert attributes["distributed_agents.node.name"] == span["name"].removeprefix("node ")
        assert attributes["distributed_agents.task.id"] == attributes["messaging.message.id"]
        assert attributes["messaging.system"] == "distributed_agents"
        assert attributes["messaging.destination.name"] == attributes["distributed_agents.node.type"]
        assert attributes["distributed_agents.task.id"].startswith(f"wf_traced_{prefix}:")
        assert span["resource"]["attributes"]["service.name"] == "traced-worker"
    failed, retried = nodes[1], nodes[2]
    assert failed["attributes"]["distributed_agents.task.outcome"] == "retried"
    assert failed["status"]["status_code"] == "ERROR" and failed["attributes"]["error.type"] == "RuntimeError"
    (event,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert "the first draft was lost" in event["attributes"]["exception.message"]
    assert retried["attributes"]["distributed_agents.task.outcome"] == "succeeded"
    assert retried["status"]["status_code"] == "UNSET"
    (llm,) = [s for s in theirs if s["name"] == "llm call"]  # the node's own span, inside the node's
    assert llm["parent_id"] == retried["context"]["span_id"] and llm["context"]["trace_id"] == trace_id
    # JSON log records emitted in a node name its span, so logs and traces join up.
    (logged,) = [r for r in map(json.loads, (tmp_path / "worker.err").read_text().splitlines())
                 if r["logger"] == "tracedapp"]
    assert (logged["trace_id"], logged["span_id"]) == (trace_id[2:], retried["context"]["span_id"][2:])


def test_enable_installs_tracing_next_to_other_observers_and_a_failed_run_is_an_error_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    other = instrumentation.Instrumentation()
    previous = instrumentation.install(other)
    try:
        tracing = enable(provider)
        combined = instrumentation.installed()
        assert combined is not None and combined is not tracing and combined is not other

        from distributed_agents import Graph

        def broken(state: Any) -> dict[str, Any]:
            raise ValueError("bad input")

        graph = Graph("failing").add_node("a", broken).set_entry_point("a").set_finish_point("a").compile()
        outer = provider.get_tracer("caller")
        with outer.start_as_current_span("caller span") as caller:
            with pytest.raises(NodeExecutionError):
                Orchestrator().invoke(graph, {})
    finally:
        instrumentation.install(previous)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run, node = spans["workflow failing"], spans["node a"]
    assert run.parent is not None and run.parent.span_id == caller.get_span_context().span_id
    assert run.status.status_code == trace.StatusCode.ERROR
    assert run.attributes["distributed_agents.workflow.status"] == "failed"
    assert node.kind == trace.SpanKind.INTERNAL and node.status.status_code == trace.StatusCode.ERROR
    assert node.attributes["error.type"] == "ValueError"
    assert node.attributes["distributed_agents.task.outcome"] == "failed"
    assert node.parent is not None and node.parent.span_id == spans["step failing"].context.span_id


def test_a_subgraphs_run_is_a_child_of_its_parents_step() -> None:
    from distributed_agents import Graph

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    child = Graph("inner").add_node("c", lambda s: {"x": 1}).set_entry_point("c").set_finish_point("c").compile()
    parent = (Graph("outer").add_node("sub", child).add_node("p", lambda s: {"y": 2}).add_edge("sub", "p")
              .set_entry_point("sub").set_finish_point("p").compile())
    assert Orchestrator(instrumentation=Tracing(provider)).invoke(parent, {})["y"] == 2
    spans = list(exporter.get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}

    def parent_of(span: ReadableSpan) -> str | None:
        return by_id[span.parent.span_id].name if span.parent is not None else None

    links = sorted((s.name, parent_of(s)) for s in spans)
    assert links == [("node c", "step inner"), ("node p", "step outer"), ("step inner", "workflow inner"),
                     ("step outer", "workflow outer"), ("step outer", "workflow outer"),
                     ("workflow inner", "step outer"), ("workflow outer", None)]
    assert len({s.context.trace_id for s in spans}) == 1


def test_a_malformed_trace_context_in_a_task_starts_a_new_trace_and_the_attempt_is_still_traced() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    for carried in ({"traceparent": "00-not-a-trace-01"}, {"traceparent": ""}, {}):
        handle = tracing.node_started(NodeAttempt("wf_x", 2, "n", "t", "wf_x:0:2:n", 1, "w-1", trace=carried))
        tracing.node_ended(handle, "succeeded", None)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["node n"] * 3
    assert all(s.parent is None for s in spans)
    assert trace.get_current_span() is trace.INVALID_SPAN  # each attempt's span was made current, then not
