"""No workflow is left RUNNING by an error: every way out of the step loop is recorded.

Each kind of fault (a reducer that raises or returns a set, a condition that writes, a
commit the store refuses, a state the backend cannot hold, a resumed graph missing a
pending node, anything unexpected) ends the workflow FAILED with an error record
naming the kind, the step, the phase and the node or key at fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.adapters.memory.backend import _space
from distributed_agents.adapters.memory.message_bus import MemoryMessageBus
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue
from distributed_agents.adapters.memory.worker_registry import MemoryWorkerRegistry
from distributed_agents.core.errors import (
    ConfigurationError,
    DistributedAgentsError,
    ExecutionError,
    NodeExecutionError,
    WorkflowFailedError,
)
from distributed_agents.core.ports.backend import Backend, BackendOptions
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

pytestmark = pytest.mark.timeout(60)


class RefusingStore(MemoryStateStore):
    """A store whose engine refuses (with a non-backend error) commits ``refuse`` matches.

    Stands in for a server limit the adapter reports as an ordinary exception; only
    the commit is refused, the engine under test is real.
    """

    def __init__(self, refuse: Callable[[WorkflowRecord], bool]) -> None:
        super().__init__(_space("refusing", "da").state)
        self.refuse = refuse

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        if self.refuse(record):
            raise RuntimeError(f"value too large for this server (step {record.step})")
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint,
                                  fencing_token=fencing_token)


def refusing_backend(refuse: Callable[[WorkflowRecord], bool]) -> Backend:
    space = _space("refusing", "da")
    return Backend(url="memory://refusing", options=BackendOptions(), task_queue=MemoryTaskQueue(space.queue),
                   state_store=RefusingStore(refuse), worker_registry=MemoryWorkerRegistry(space.registry),
                   message_bus=MemoryMessageBus(space.bus))


async def failed_status(orchestrator: Orchestrator, graph: Graph, state: dict[str, Any] | None = None,
                        workflow_id: str = "wf") -> tuple[BaseException, Any]:
    """Execute, expect an error; return it and the recorded status (which must be terminal)."""
    with pytest.raises(DistributedAgentsError) as caught:
        await orchestrator.execute(graph, state or {}, workflow_id=workflow_id)
    status = await orchestrator.get_workflow_status(workflow_id)
    assert status.status == "failed", status
    assert status.error is not None and status.error["kind"] and isinstance(status.error["step"], int)
    with pytest.raises(WorkflowFailedError):
        await orchestrator.get_result(workflow_id)
    return caught.value, status


def two_steps(name: str, *, reducers: dict[str, Any] | None = None, condition: Any = None) -> Graph:
    graph = Graph(name, reducers=reducers)
    graph.add_node("a", lambda s: {"items": [1]})
    graph.add_node("b", lambda s: {"items": [2]})
    graph.set_entry_point("a")
    if condition is None:
        graph.add_edge("a", "b")
    else:
        graph.add_conditional_edge("a", condition, {"go": "b", "stop": "__end__"})
    return graph.set_finish_point("b").compile()


def test_reducer_that_raises_fails_the_workflow_naming_key_and_step() -> None:
    def broken(old: Any, new: Any) -> Any:
        raise ZeroDivisionError("bad fold")

    error, status = run(failed_status(Orchestrator(), two_steps("raising_reducer", reducers={"items": broken})))
    assert isinstance(error, ExecutionError) and "items" in str(error)
    assert status.error["step"] == 0 and "items" in status.error["summary"]


def test_reducer_returning_a_set_fails_the_workflow() -> None:
    def to_set(old: Any, new: Any) -> Any:
        return set(old or []) | set(new)

    error, status = run(failed_status(Orchestrator(), two_steps("set_reducer", reducers={"items": to_set})))
    assert status.error["step"] == 0 and "items" in status.error["summary"]


def test_condition_writing_a_set_into_the_state_fails_the_workflow() -> None:
    def route(state: Any) -> str:
        state["seen"] = {1, 2}
        return "go"

    error, status = run(failed_status(Orchestrator(), two_steps("writing_router", condition=route)))
    assert status.error["step"] == 0


def test_condition_returning_garbage_fails_the_workflow() -> None:
    error, status = run(failed_status(Orchestrator(), two_steps("garbage_router", condition=lambda s: {"x": 1})))
    assert status.error["step"] == 0


def test_commit_refused_by_the_store_fails_the_workflow_naming_step_and_phase() -> None:
    backend = refusing_backend(lambda record: record.step == 2)
    error, status = run(failed_status(Orchestrator(backend=backend), two_steps("refused_commit")))
    assert isinstance(error, ExecutionError) and "RuntimeError" in str(error) and "step 1" in str(error)
    assert status.error["step"] == 1 and status.error["phase"] == "commit"
    assert status.error["kind"] == "RuntimeError" and "value too large" in status.error["summary"]


def test_node_result_too_large_for_the_store_fails_the_workflow_and_keeps_nothing_it_cannot_hold() -> None:
    # The pending write is what the store refuses: the failure is recorded without it.
    backend = refusing_backend(lambda record: len(str(record.to_dict())) > 50_000)
    graph = Graph("big").add_node("big", lambda s: {"blob": "x" * 100_000}).set_entry_point("big") \
        .set_finish_point("big").compile()
    error, status = run(failed_status(Orchestrator(backend=backend), graph))
    assert status.error["step"] == 0 and status.error["phase"] == "commit"
    assert "pending_writes_dropped" in status.error


def test_state_growing_past_the_backends_size_limit_fails_the_workflow_with_the_commit_error() -> None:
    # Each node's result is under the limit; the state after the second step is not.
    graph = Graph("growing").add_node("one", lambda s: {"one": "x" * 6000}).add_node("two", lambda s: {"two": "y" * 6000})
    graph.set_entry_point("one").add_edge("one", "two").set_finish_point("two").compile()
    orchestrator = Orchestrator(backend_options={"max_payload_bytes": 10_000})
    error, status = run(failed_status(orchestrator, graph))
    assert type(error).__name__ == "PayloadTooLargeError"
    assert status.error["step"] == 1 and status.error["phase"] == "commit"
    assert status.error["kind"] == "PayloadTooLargeError" and "10000" in status.error["summary"].replace(",", "")


def test_migration_to_a_graph_missing_the_pending_node_is_refused_before_writing_anything() -> None:
    started = two_steps("evolving")
    shrunk = Graph("evolving").add_node("a", lambda s: None).set_entry_point("a").set_finish_point("a").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        # Stop the workflow after step 1 committed: the frontier holds 'b'.
        gate = asyncio.Event()

        async def b(state: State) -> dict[str, Any]:
            await gate.wait()
            return {}

        graph = Graph("evolving").add_node("a", lambda s: {"items": [1]}).add_node("b", b)
        graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()
        assert graph.fingerprint() == started.fingerprint()
        running = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="wf-shrunk"))
        while (await orchestrator.backend.state_store.get("wf-shrunk")) is None or \
                (await orchestrator.get_workflow_status("wf-shrunk")).step < 1:
            await asyncio.sleep(0.005)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        before = await orchestrator.backend.state_store.get("wf-shrunk")
        with pytest.raises(ConfigurationError) as caught:
            await Orchestrator().resume("wf-shrunk", shrunk, allow_graph_change=True)
        after = await orchestrator.backend.state_store.get("wf-shrunk")
        gate.set()
        return caught.value, before, after, await Orchestrator().resume("wf-shrunk", graph)

    error, before, after, result = run(scenario())
    # The migration is refused before anything is written: the workflow keeps its graph and step.
    assert "'b'" in str(error) and "nothing was changed" in str(error)
    assert after == before and after.graph == started.fingerprint()
    assert dict(result) == {"items": [1]}  # and resuming with the original graph works


def test_node_failure_still_fails_with_the_nodes_own_error() -> None:
    def boom(state: State) -> None:
        raise ValueError("boom")

    graph = Graph("boom").add_node("x", boom).set_entry_point("x").set_finish_point("x").compile()
    error, status = run(failed_status(Orchestrator(), graph))
    assert isinstance(error, NodeExecutionError) and status.error["node"] == "x"
    assert status.error["error_type"] == "ValueError" and status.error["phase"] == "run"


FAULTS = ("node", "reducer_raises", "reducer_set", "condition_raises", "condition_writes", "commit")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(FAULTS), at=st.integers(min_value=0, max_value=3))
def test_any_fault_at_any_step_ends_in_failed_with_its_step(fault: str, at: int) -> None:
    """A loop of four steps with one fault injected at step ``at``: always FAILED at that step."""
    def step_of(state: Any) -> int:
        return len(state.get("trail", []))

    def node(state: State) -> dict[str, Any]:
        if fault == "node" and step_of(state) == at:
            raise RuntimeError("node fault")
        return {"trail": [step_of(state)]}

    def reducer(old: Any, new: Any) -> Any:
        merged = (old or []) + new
        if len(merged) == at + 1:
            if fault == "reducer_raises":
                raise RuntimeError("reducer fault")
            if fault == "reducer_set":
                return set(merged)
        return merged

    def route(state: Any) -> str:
        if step_of(state) == at + 1:
            if fault == "condition_raises":
                raise RuntimeError("condition fault")
            if fault == "condition_writes":
                state["sneaky"] = 1
        return "again" if step_of(state) < 4 else "done"

    graph = Graph("faulty", reducers={"trail": reducer}).add_node("n", node).set_entry_point("n")
    graph.add_conditional_edge("n", route, {"again": "n", "done": "__end__"}).compile()
    backend = refusing_backend(lambda record: fault == "commit" and record.step == at + 1)
    from distributed_agents.adapters.memory import reset_memory_spaces
    reset_memory_spaces()

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=backend if fault == "commit" else None)
        with pytest.raises(DistributedAgentsError):
            await orchestrator.execute(graph, {}, workflow_id="wf-fault")
        return await orchestrator.get_workflow_status("wf-fault")

    status = run(scenario())
    assert status.status == "failed"
    assert status.error["step"] == at


class LibraryTimeout(BaseException):
    """A library's own BaseException subclass (like gevent's Timeout)."""


BASE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    StopIteration, LibraryTimeout, GeneratorExit, asyncio.CancelledError, KeyboardInterrupt, SystemExit,
)


def raising_graph(where: str, kind: type[BaseException], *, is_async: bool = False) -> Graph:
    def boom(*args: Any) -> Any:
        raise kind("raised by user code")

    async def async_boom(*args: Any) -> Any:
        await asyncio.sleep(0)
        raise kind("raised by user code")

    culprit = async_boom if is_async else boom
    graph = Graph(f"raises_{where}_{kind.__name__}_{is_async}",
                  reducers={"k": culprit if where == "reducer" else "replace"})
    graph.add_node("a", culprit if where == "node" else (lambda s: {"k": 1}))
    graph.add_node("b", lambda s: {})
    graph.set_entry_point("a")
    if where == "condition":
        graph.add_conditional_edge("a", culprit, ["b"])
    else:
        graph.add_edge("a", "b")
    return graph.set_finish_point("b").compile()


@pytest.mark.parametrize("is_async", [False, True], ids=["thread", "async"])
@pytest.mark.parametrize("kind", BASE_EXCEPTIONS, ids=lambda k: k.__name__)
def test_node_raising_any_base_exception_fails_the_node_by_its_own_type(kind: type[BaseException],
                                                                         is_async: bool) -> None:
    """StopIteration from a thread used to hang for ever; other BaseExceptions left the workflow RUNNING."""
    graph = raising_graph("node", kind, is_async=is_async)

    async def scenario() -> tuple[BaseException, Any]:
        return await asyncio.wait_for(failed_status(Orchestrator(), graph, workflow_id=graph.name), 30)

    error, status = run(scenario())
    if is_async and kind is StopIteration:  # PEP 479: a coroutine's StopIteration arrives as RuntimeError
        assert status.error["error_type"] == "RuntimeError"
        return
    assert isinstance(error, NodeExecutionError) and error.node == "a"
    assert status.error["error_type"] == kind.__name__ and status.error["node"] == "a"
    assert "raised by user code" in status.error["message"]


@pytest.mark.parametrize("where", ["condition", "reducer"])
@pytest.mark.parametrize("kind", BASE_EXCEPTIONS, ids=lambda k: k.__name__)
def test_condition_or_reducer_raising_any_base_exception_fails_the_workflow(where: str,
                                                                             kind: type[BaseException]) -> None:
    graph = raising_graph(where, kind)
    error, status = run(failed_status(Orchestrator(), graph, workflow_id=graph.name))
    assert isinstance(error, ExecutionError) and kind.__name__ in str(error)
    assert kind.__name__ in status.error["summary"] and status.error["step"] == 0


def test_cancelling_execute_is_still_a_cancellation_not_a_node_failure() -> None:
    """A genuine cancellation of the run still propagates as CancelledError."""
    started = asyncio.Event()

    async def slow(state: State) -> None:
        started.set()
        await asyncio.sleep(60)

    graph = Graph("cancel_me").add_node("x", slow).set_entry_point("x").set_finish_point("x").compile()

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        running = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="cancel_me"))
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        return await orchestrator.get_workflow_status("cancel_me")

    status = run(scenario())
    assert status.status != "failed"


@pytest.mark.parametrize("where", ["message", "traceback"])
def test_a_node_error_of_megabytes_is_cut_and_still_reported_as_the_nodes_error(where: str) -> None:
    """A 6 MB exception message used to become a PayloadTooLargeError blaming the state."""
    def call_api(state: State) -> None:
        if where == "message":
            raise RuntimeError("HTTP 500: " + "<html>" * 1_000_000 + " END")

        try:  # a short message whose traceback (with its cause) is megabytes long
            raise ValueError("<html>" * 1_000_000)
        except ValueError as cause:
            raise RuntimeError("short") from cause

    graph = Graph(f"huge_{where}").add_node("call_api", call_api).set_entry_point("call_api") \
        .set_finish_point("call_api").compile()
    error, status = run(failed_status(Orchestrator(), graph, {"q": 1}))
    assert isinstance(error, NodeExecutionError) and error.node == "call_api"
    assert status.error["kind"] == "NodeExecutionError" and status.error["error_type"] == "RuntimeError"
    assert len(status.error["message"]) <= 5000 and len(status.error["traceback"]) <= 17000
    if where == "message":
        assert status.error["message"].startswith("HTTP 500: <html>") and status.error["message"].endswith(" END")
        assert "characters cut" in status.error["message"]


def test_a_commit_too_large_names_the_step_that_ran_and_blames_no_single_node() -> None:
    graph = Graph("bigcommit", reducers={"big": "add"}).add_node("s", lambda st: {})
    for name in "xyz":
        graph.add_node(name, lambda st: {"big": "y" * 1500})
    graph.set_entry_point("s")
    for name in "xyz":
        graph.add_edge("s", name).add_edge(name, "__end__")
    graph.compile()
    error, status = run(failed_status(Orchestrator(backend="memory://?max_payload_bytes=4000"), graph,
                                      workflow_id="bc"))
    assert status.error["step"] == 1 and "cannot commit step 1" in str(error)
    assert "node" not in status.error and status.error["largest_writer"] in ("x", "y", "z")
    assert status.error["phase"] == "commit" and status.error["nodes"] == ["x", "y", "z"]


@pytest.mark.parametrize("fault", ["raises", "writes", "bad_route"])
def test_a_condition_failure_records_the_node_it_routes_from_and_the_condition(fault: str) -> None:
    def route(state: Any) -> str:
        if fault == "raises":
            raise RuntimeError("condition fault")
        if fault == "writes":
            state["sneaky"] = 1
        return "nowhere"

    error, status = run(failed_status(Orchestrator(), two_steps(f"cond_{fault}", condition=route)))
    assert status.error["node"] == "a" and status.error["condition"].endswith("route")
    assert status.error["phase"] == "merge"


def test_a_failing_reducer_of_send_results_records_the_send_nodes() -> None:
    from distributed_agents import Send

    def broken(old: Any, new: Any) -> Any:
        raise ZeroDivisionError("bad fold")

    graph = Graph("send_reducer", reducers={"out": broken}).add_node("fan", lambda s: {})
    graph.add_node("work", lambda s: {"out": [s["i"]]})
    graph.set_entry_point("fan").add_conditional_edge("fan", lambda s: [Send("work", {"i": i}) for i in range(2)],
                                                      ["work"])
    graph.set_finish_point("work").compile()
    error, status = run(failed_status(Orchestrator(), graph))
    assert status.error["nodes"] == ["work"] and status.error["step"] == 1


@pytest.mark.parametrize("retry_on,attempts", [((LibraryTimeout,), 3), ((Exception,), 1)])
def test_retry_on_matches_the_base_exception_the_node_raised(retry_on: tuple[type[BaseException], ...],
                                                              attempts: int) -> None:
    from distributed_agents import RetryPolicy
    calls: list[int] = []

    def flaky(state: State) -> None:
        calls.append(1)
        raise LibraryTimeout("library gave up")

    graph = Graph(f"retry_base_{attempts}").add_node(
        "a", flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.001, jitter=False, retry_on=retry_on))
    graph.set_entry_point("a").set_finish_point("a").compile()
    error, status = run(failed_status(Orchestrator(), graph))
    assert len(calls) == attempts and status.error["attempts"] == attempts
    assert status.error["error_type"] == "LibraryTimeout"


# -- how a failed step is logged: the user's own errors in one line, the unexpected with a traceback ---


def test_a_state_validation_error_is_logged_in_one_line_and_an_unexpected_error_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging
    from typing import TypedDict

    from distributed_agents.core.errors import StateNotSerializableError, StateValidationError

    class Counted(TypedDict):
        count: int

    def broken_reducer(current: Any, update: Any) -> Any:
        raise RuntimeError("reducer bug")

    wrong_type = Graph("log_wrong_type", state_schema=Counted).add_node("n", lambda s: {"count": "3"})
    undeclared = Graph("log_undeclared", state_schema=Counted).add_node("n", lambda s: {"other": 1})
    not_json = Graph("log_not_json").add_node("n", lambda s: {"x": object()})
    unexpected = Graph("log_unexpected", reducers={"x": broken_reducer}).add_node("n", lambda s: {"x": 1})
    graphs = [g.set_entry_point("n").set_finish_point("n").compile()
              for g in (wrong_type, undeclared, not_json, unexpected)]

    async def scenario() -> list[BaseException]:
        errors = []
        async with Orchestrator() as orchestrator:
            for graph in graphs:
                with pytest.raises(DistributedAgentsError) as caught:
                    await orchestrator.execute(graph, {}, workflow_id=f"wf-{graph.name}")
                errors.append(caught.value)
        return errors

    with caplog.at_level(logging.ERROR, logger="distributed_agents"):
        errors = run(scenario())
    assert isinstance(errors[0], StateValidationError) and isinstance(errors[1], StateValidationError)
    by_workflow = {name: [r for r in caplog.records if f"'wf-{name}'" in r.getMessage()]
                   for name in ("log_wrong_type", "log_undeclared", "log_not_json", "log_unexpected")}
    for name in ("log_wrong_type", "log_undeclared"):
        (record,) = by_workflow[name]
        assert record.exc_info is None and "state key" in record.getMessage()  # the error's own message
    if isinstance(errors[2], StateNotSerializableError):  # a node's non-JSON write, if it fails the step here
        assert all(r.exc_info is None for r in by_workflow["log_not_json"])
    (record,) = by_workflow["log_unexpected"]
    assert record.exc_info is not None and "reducer bug" in str(record.exc_info[1])
