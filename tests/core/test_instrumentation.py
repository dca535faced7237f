"""core.instrumentation: the hooks the engine, executors and workers call, seen by a recording observer.

The observer here is standard-library only, like the core: it records every call, hands
out numbered handles, and puts a made-up trace context into each step's tasks, so the
tests check what reaches a worker through the task payload without OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, NodeRegistry, Orchestrator, RetryPolicy, State, Worker
from distributed_agents.core import instrumentation
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.core.instrumentation import Instrumentation, NodeAttempt

pytestmark = pytest.mark.timeout(60)

current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="")


class Recorder(Instrumentation):
    """Records each hook call; binds ``current`` to the running node's handle like a tracer would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.attempts: dict[str, NodeAttempt] = {}
        self.seen_in_node: dict[str, str] = {}
        self.watched: list[frozenset[str]] = []
        self._n = 0
        self._tokens: dict[str, contextvars.Token[str]] = {}

    def _handle(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def workflow_started(self, workflow_id: str, graph: str, step: int) -> Any:
        handle = self._handle("wf")
        self.calls.append(("workflow_started", handle, workflow_id, graph, step))
        return handle

    def workflow_ended(self, handle: Any, status: str, error: BaseException | None) -> None:
        self.calls.append(("workflow_ended", handle, status, type(error).__name__ if error else None))

    def step_started(self, workflow: Any, workflow_id: str, step: int, nodes: Sequence[str]) -> Any:
        handle = self._handle("step")
        self.calls.append(("step_started", handle, workflow, step, tuple(nodes)))
        return handle

    def step_ended(self, handle: Any, error: BaseException | None) -> None:
        self.calls.append(("step_ended", handle, type(error).__name__ if error else None))

    def carrier(self, step: Any) -> dict[str, str] | None:
        return {"parent": str(step)}

    def node_started(self, attempt: NodeAttempt) -> Any:
        handle = self._handle("node")
        self.attempts[handle] = attempt
        self._tokens[handle] = current.set(handle)
        self.calls.append(("node_started", handle, attempt.node, attempt.attempt, dict(attempt.trace or {})))
        return handle

    def node_ended(self, handle: Any, outcome: str, error: BaseException | None) -> None:
        current.reset(self._tokens.pop(handle))  # raises if not called in the task that started it
        self.calls.append(("node_ended", handle, outcome, type(error).__name__ if error else None))

    async def watch(self, backend: Any, node_types: frozenset[str]) -> None:
        self.watched.append(node_types)
        await asyncio.Event().wait()  # until cancelled

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


def chain(name: str, **nodes: Any) -> Graph:
    graph = Graph(name)
    names = list(nodes)
    for node, spec in nodes.items():
        if callable(spec):
            graph.add_node(node, spec)
        else:
            graph.add_node(node, **spec)
    graph.set_entry_point(names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(names[-1]).compile()


def test_local_run_reports_the_workflow_each_step_and_each_node_attempt_in_order() -> None:
    recorder = Recorder()
    seen: dict[str, str] = {}

    def a(state: State) -> dict[str, Any]:
        seen["a"] = current.get()  # a plain function's thread sees its node's context
        return {"x": 1}

    async def b(state: State) -> dict[str, Any]:
        seen["b"] = current.get()
        return {"y": 2}

    result = run(Orchestrator(instrumentation=recorder).execute(chain("pair", a=a, b=b), {}, workflow_id="wf_pair"))
    assert result["y"] == 2
    kinds = [call[0] for call in recorder.calls]
    assert kinds == ["workflow_started", "step_started", "node_started", "node_ended", "step_ended",
                     "step_started", "node_started", "node_ended", "step_ended", "workflow_ended"]
    (started,) = recorder.named("workflow_started")
    assert started[2:] == ("wf_pair", "pair", 0)
    steps = recorder.named("step_started")
    assert [(s[2], s[3], s[4]) for s in steps] == [(started[1], 0, ("a",)), (started[1], 1, ("b",))]
    nodes = recorder.named("node_started")
    # Each node attempt carries its own step's trace context (here: the step's handle).
    assert [(n[2], n[3], n[4]) for n in nodes] == [("a", 1, {"parent": steps[0][1]}), ("b", 1, {"parent": steps[1][1]})]
    assert seen == {"a": nodes[0][1], "b": nodes[1][1]}
    assert [e[2] for e in recorder.named("node_ended")] == ["succeeded", "succeeded"]
    assert recorder.named("workflow_ended")[0][2:] == ("completed", None)
    attempt = recorder.attempts[nodes[0][1]]
    assert (attempt.workflow_id, attempt.step, attempt.graph, attempt.worker_id) == ("wf_pair", 0, "pair", "")
    assert attempt.task_id.startswith("wf_pair:") and attempt.task_id.endswith(":a")


def test_retried_and_failed_attempts_and_the_failed_run_are_reported_with_their_errors() -> None:
    recorder = Recorder()

    def broken(state: State) -> dict[str, Any]:
        raise RuntimeError("no luck")

    graph = chain("broken", a=lambda s: {"x": 1},
                  b={"func": broken, "retry": RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False, retry_on=Exception)})
    with pytest.raises(NodeExecutionError):
        run(Orchestrator(instrumentation=recorder).execute(graph, {}))
    ended = [(e[2], e[3]) for e in recorder.named("node_ended")]
    assert ended == [("succeeded", None), ("retried", "RuntimeError"), ("failed", "RuntimeError")]
    assert recorder.named("step_ended")[-1][2] == "NodeExecutionError"
    assert recorder.named("workflow_ended")[0][2:] == ("failed", "NodeExecutionError")


def test_an_interrupted_run_ends_with_the_interrupted_status() -> None:
    from distributed_agents import interrupt

    recorder = Recorder()
    graph = chain("ask", a=lambda s: {"answer": interrupt("ok?")})
    run(Orchestrator(instrumentation=recorder).execute(graph, {}))
    assert recorder.named("workflow_ended")[0][2:] == ("interrupted", None)


def test_a_worker_reports_each_claim_with_the_trace_context_from_the_payload_and_watches_its_types() -> None:
    orchestrator_side, worker_side = Recorder(), Recorder()
    calls = {"n": 0}

    def flaky(state: State) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("try again")
        return {"y": current.get()}

    registry = NodeRegistry()
    registry.register_node("flaky", flaky)
    worker = Worker(["flaky"], registry=registry, poll_wait=0.05, instrumentation=worker_side)
    graph = chain("remote", a=lambda s: {"x": 1},
                  b={"node_type": "flaky", "retry": RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False, retry_on=Exception)})

    async def body() -> State:
        serving = asyncio.ensure_future(worker.start())
        try:
            return await Orchestrator(instrumentation=orchestrator_side, wait_for_workers=True).execute(graph, {})
        finally:
            await worker.stop(grace=1)
            await serving

    result = run(body())
    remote_step = orchestrator_side.named("step_started")[1][1]
    started = worker_side.named("node_started")
    assert [(s[2], s[3], s[4]) for s in started] == [("b", 1, {"parent": remote_step}),
                                                      ("b", 2, {"parent": remote_step})]
    ended = worker_side.named("node_ended")
    assert [(e[2], e[3]) for e in ended] == [("retried", "ConnectionError"), ("succeeded", None)]
    assert result["y"] == started[1][1]  # the node ran with its attempt's context bound
    attempt = worker_side.attempts[started[1][1]]
    assert attempt.worker_id == worker.worker_id and attempt.step == 1 and attempt.node_type == "flaky"
    assert worker_side.watched == [frozenset({"flaky"})]
    # Only the in-process node ran under the orchestrator's recorder.
    assert [s[2] for s in orchestrator_side.named("node_started")] == ["a"]


def test_the_installed_observer_is_the_default_and_a_malformed_trace_context_is_ignored() -> None:
    recorder = Recorder()
    previous = instrumentation.install(recorder)
    try:
        run(Orchestrator().execute(chain("default", a=lambda s: {"x": 1}), {}))
    finally:
        instrumentation.install(previous)
    assert [c[0] for c in recorder.calls][:2] == ["workflow_started", "step_started"]
    assert instrumentation.trace_carrier({"trace": ["not", "a", "mapping"]}) is None
    assert instrumentation.trace_carrier({"trace": {"traceparent": "00-ab", "n": 3}}) == {"traceparent": "00-ab"}
    assert instrumentation.combine(None, None) is None and instrumentation.combine(recorder) is recorder


def test_combined_observers_each_see_every_call_with_their_own_handles() -> None:
    first, second = Recorder(), Recorder()
    both = instrumentation.combine(first, second)
    run(Orchestrator(instrumentation=both).execute(chain("both", a=lambda s: {"x": 1}), {}))
    assert [c[0] for c in first.calls] == [c[0] for c in second.calls]
    assert first.named("node_started")[0][4] == {"parent": first.named("step_started")[0][1]}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8))
def test_any_json_under_the_trace_key_gives_a_string_carrier_or_none(carried: Any) -> None:
    carrier = instrumentation.trace_carrier({"trace": carried})
    if carrier is None:
        assert not isinstance(carried, dict)
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in carrier.items())
        assert carrier == {k: v for k, v in carried.items() if isinstance(v, str)}


def test_without_an_observer_no_hook_runs_and_task_payloads_keep_their_shape() -> None:
    from distributed_agents.core.executors import NodeCall, task_payload

    call = NodeCall("wf_1", "g", 0, "a", "a", "wf_1:0:0:a", b"{}")
    assert call.trace is None and "trace" not in task_payload(call)
    traced = NodeCall("wf_1", "g", 0, "a", "a", "wf_1:0:0:a", b"{}", trace={"traceparent": "00-1-2-01"})
    assert task_payload(traced)["trace"] == {"traceparent": "00-1-2-01"}
    assert instrumentation.installed() is None  # nothing leaks between tests
    engine_run = run(Orchestrator().execute(chain("plain", a=lambda s: {"x": 1}), {}))
    assert engine_run["x"] == 1
