"""Workers serving node tasks from the memory backend's queue, in the same process."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from typing import Any

import pytest
from support.aio import run, with_worker
from support.nodes import BlockingNode

from distributed_agents import Graph, NodeContext, Orchestrator, RetryPolicy, State, Worker, open_backend
from distributed_agents.core.errors import ConfigurationError, NodeExecutionError, WorkflowCancelledError
from distributed_agents.core.ports import Task

pytestmark = pytest.mark.timeout(30)


def remote_chain(name: str, *types: str, **options: Any) -> Graph:
    graph = Graph(name)
    for node in types:
        graph.add_node(node, **options)
    graph.set_entry_point(types[0])
    for a, b in zip(types, types[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(types[-1]).compile()


def test_worker_serves_only_its_types_and_reports_to_the_registry() -> None:
    worker = Worker(node_types={"upper"}, capacity=2, poll_wait=0.05)
    worker.register_node("upper", lambda s: {"text": s["text"].upper()})

    async def body() -> Any:
        workers = await worker.backend.worker_registry.list_workers("upper")
        assert [w.worker_id for w in workers] == [worker.worker_id] and workers[0].capacity == 2
        return await Orchestrator().execute(remote_chain("upper", "upper"), {"text": "hi"})

    result = run(with_worker(worker, body))
    assert result["text"] == "HI"
    assert run(worker.backend.worker_registry.list_workers()) == []  # deregistered on stop


def test_capacity_bounds_concurrent_tasks() -> None:
    running = {"now": 0, "peak": 0}

    async def node(state: State) -> dict[str, Any]:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.02)
        running["now"] -= 1
        return {}

    graph = Graph("wide")
    graph.add_node("start", lambda s: None)
    names = [f"w{i}" for i in range(8)]
    for name in names:
        graph.add_node(name, node_type="work")
        graph.add_edge("start", name)
        graph.set_finish_point(name)
    graph.set_entry_point("start").compile()
    worker = Worker(capacity=3, poll_wait=0.05)
    worker.register_node("work", node)
    run(with_worker(worker, lambda: Orchestrator().execute(graph, {})))
    assert running["peak"] == 3
    assert worker.stats.succeeded == 8


def test_plain_function_nodes_run_as_many_at_once_as_the_capacity_says() -> None:
    # One more than the threads of the event loop's default executor (min(32, CPUs + 4)):
    # nodes waiting for each other (a barrier of them all) finish only if all run at once.
    capacity = min(32, (os.cpu_count() or 1) + 4) + 1
    barrier = threading.Barrier(capacity)

    def node(state: State) -> dict[str, Any]:
        barrier.wait(timeout=10)  # raises BrokenBarrierError if they do not all run together
        return {}

    graph = Graph("threads")
    graph.add_node("start", lambda s: None)
    for index in range(capacity):
        graph.add_node(f"t{index}", node_type="thread_work")
        graph.add_edge("start", f"t{index}")
        graph.set_finish_point(f"t{index}")
    graph.set_entry_point("start").compile()
    worker = Worker(capacity=capacity, poll_wait=0.05)
    worker.register_node("thread_work", node)
    run(with_worker(worker, lambda: Orchestrator().execute(graph, {})), timeout=30)
    assert worker.stats.succeeded == capacity


def test_worker_retries_with_the_nodes_policy_then_dead_letters() -> None:
    attempts: list[int] = []

    def flaky(state: State, context: NodeContext) -> dict[str, Any]:
        attempts.append(context.attempt)
        raise TimeoutError(f"attempt {context.attempt} failed")

    worker = Worker(poll_wait=0.05)
    worker.register_node("flaky", flaky)
    graph = remote_chain("flaky", "flaky", retry=RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception))

    async def body() -> Any:
        with pytest.raises(NodeExecutionError) as caught:
            await Orchestrator().execute(graph, {}, workflow_id="wf-flaky")
        assert caught.value.node == "flaky" and caught.value.attempts == 3
        assert caught.value.error_type == "TimeoutError" and "attempt 3 failed" in caught.value.error_message
        return await worker.backend.task_queue.dead_letters("flaky")

    (letter,) = run(with_worker(worker, body))
    assert attempts == [1, 2, 3]
    assert len(letter.errors) == 3 and "attempt 1 failed" in letter.errors[0]
    assert worker.stats.retried == 2 and worker.stats.failed == 1


def test_malformed_task_is_dead_lettered_and_the_worker_goes_on() -> None:
    worker = Worker(poll_wait=0.05)
    worker.register_node("echo", lambda s: {"echo": True})
    queue = worker.backend.task_queue

    async def body() -> Any:
        await queue.enqueue(Task("bad-1", "wf-x", "echo", "echo", {"no_state": 1}))
        await queue.enqueue_raw("echo", b"\xff not json")
        result = await Orchestrator().execute(remote_chain("echo", "echo"), {})
        for _ in range(100):
            letters = await queue.dead_letters("echo")
            if len(letters) == 2:
                return result, letters
            await asyncio.sleep(0.01)
        raise AssertionError("malformed tasks were not dead-lettered")

    result, letters = run(with_worker(worker, body))
    assert result["echo"] is True
    reasons = sorted(letter.reason for letter in letters)
    assert "malformed task" in reasons[0] and "no 'state'" in reasons[0]
    assert "undecodable" in reasons[1]
    assert worker.stats.malformed == 1


def test_stop_releases_unfinished_tasks_back_to_the_queue() -> None:
    started = asyncio.Event()

    async def stuck(state: State) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    worker = Worker(poll_wait=0.05)
    worker.register_node("stuck", stuck)
    backend = open_backend("memory://")

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(Task("t-stuck", "wf-s", "stuck", "stuck", {"state": {}}))
        await started.wait()
        await worker.stop(grace=0.05)
        await serving
        return await backend.task_queue.stats("stuck")

    stats = run(scenario())
    assert (stats.queued, stats.in_flight) == (1, 0)
    assert worker.stats.released == 1


def test_stop_is_not_held_up_by_a_release_the_backend_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend outage during stop(): the release of the task stop() gives back never lands
    (the backend would be retried for SETTLE_PATIENCE, 60 s). stop() returns once SETTLE_ON_STOP
    has passed all the same, and nothing is lost: the task's lease runs out and it is delivered
    again (attempt 2)."""
    import distributed_agents.core.worker as worker_module

    monkeypatch.setattr(worker_module, "SETTLE_ON_STOP", 0.5)
    started = asyncio.Event()

    async def stuck(state: State) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(60)
        return {}

    worker = Worker(poll_wait=0.05, lease_seconds=1.0)
    worker.register_node("stuck", stuck)
    queue = worker.backend.task_queue
    releasing = asyncio.Event()

    async def unanswered(claim: Any) -> None:
        releasing.set()
        await asyncio.Event().wait()  # the backend never answers

    queue.release = unanswered  # type: ignore[method-assign]

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start())
        assert await queue.enqueue(Task("t-outage", "wf-outage", "stuck", "stuck", {"state": {}}))
        await started.wait()
        await worker.stop(grace=0.05)
        await serving
        again = await queue.claim(["stuck"], worker_id="next", max_tasks=1, wait=5)
        return releasing.is_set(), [(claim.task.id, claim.attempt) for claim in again]

    assert run(scenario(), timeout=20) == (True, [("t-outage", 2)])


def test_cancel_reaches_tasks_running_on_a_worker() -> None:
    worker = Worker(poll_wait=0.05)

    async def scenario() -> None:
        long = BlockingNode()
        worker.register_node("long", long)

        async def body() -> None:
            orchestrator = Orchestrator()
            running = asyncio.ensure_future(orchestrator.execute(remote_chain("long", "long"), {}, workflow_id="wf-c"))
            await long.started.wait()
            await orchestrator.cancel_workflow("wf-c")
            with pytest.raises(WorkflowCancelledError):
                await running
            await asyncio.wait_for(long.cancelled.wait(), 5)

        await with_worker(worker, body)

    run(scenario())


def test_a_task_stopped_by_its_workflows_cancel_is_logged_by_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    """The worker's log says which task stopped and why (as Celery logs a revoked task), at INFO:
    a cancel is deliberate, not a failure; and it leaves no dead letter."""
    worker = Worker(poll_wait=0.05)

    async def scenario() -> list[Any]:
        long = BlockingNode()
        worker.register_node("long", long)

        async def body() -> None:
            orchestrator = Orchestrator()
            running = asyncio.ensure_future(orchestrator.execute(remote_chain("long", "long"), {}, workflow_id="wf-log"))
            await long.started.wait()
            await orchestrator.cancel_workflow("wf-log")
            with pytest.raises(WorkflowCancelledError):
                await running
            await asyncio.wait_for(long.cancelled.wait(), 5)
            for _ in range(100):  # the settling (and its log line) follows the node's cancellation
                if any("was cancelled" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)

        await with_worker(worker, body)
        return await worker.backend.task_queue.dead_letters()

    with caplog.at_level(logging.INFO, logger="distributed_agents"):
        letters = run(scenario())
    lines = [r for r in caplog.records if "was cancelled" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert "wf-log" in lines[0].getMessage() and "attempt 1" in lines[0].getMessage()
    assert letters == []


def test_an_ack_under_way_is_not_interrupted_by_its_workflows_cancel_or_by_stop() -> None:
    """A task settling its result finishes the settling call: a cancel of its workflow and a
    stop() arriving meanwhile leave it alone, and the stats count it as succeeded."""
    worker = Worker(poll_wait=0.05)
    worker.register_node("quick", lambda state: {"ok": 1})
    backend = open_backend("memory://")
    queue = worker.backend.task_queue
    acking, gate = asyncio.Event(), asyncio.Event()
    passing = queue.ack

    async def gated(claim: Any, output: Any) -> None:
        acking.set()
        await gate.wait()
        await passing(claim, output)

    queue.ack = gated  # type: ignore[method-assign]

    async def scenario() -> Any:
        listener = await backend.message_bus.subscribe("control.cancel")
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(Task("t-settling", "wf-settling", "quick", "quick", {"state": {}}))
        await acking.wait()
        await backend.message_bus.publish("control.cancel", {"workflow_id": "wf-settling"})
        assert await listener.get(timeout=5) is not None
        stopping = asyncio.ensure_future(worker.stop(grace=0))
        for _ in range(20):  # the worker's own listener and stop() have had their turns
            await asyncio.sleep(0)
        gate.set()
        await stopping
        await serving
        await listener.close()
        return await backend.task_queue.get_result("t-settling")

    result = run(scenario())
    assert result is not None and result.status == "succeeded"
    assert (worker.stats.succeeded, worker.stats.released) == (1, 0)


def test_tasks_settling_their_result_leave_their_slots_to_the_next_claim() -> None:
    """``capacity`` bounds the nodes running at once, not the acks on their way: with capacity 2
    and every ack held back, the worker runs 4 tasks (2 settling, then 2 more), never more than
    2 nodes at once, and claims no fifth (at most ``capacity`` settling tasks leave their
    slots) until the acks go through; then all 6 finish."""
    running = {"now": 0, "peak": 0}
    ran: list[int] = []

    async def node(state: State) -> dict[str, Any]:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= 1
        ran.append(state["i"])
        return {"done": state["i"]}

    worker = Worker(capacity=2, poll_wait=0.05)
    worker.register_node("work", node)
    queue = worker.backend.task_queue
    held: list[str] = []
    gate = asyncio.Event()
    passing = queue.ack

    async def gated(claim: Any, output: Any) -> None:
        held.append(claim.task.id)
        await gate.wait()
        await passing(claim, output)

    queue.ack = gated  # type: ignore[method-assign]

    async def body() -> tuple[Any, ...]:
        ids = [f"slot-{i}" for i in range(6)]
        for i, task_id in enumerate(ids):
            assert await queue.enqueue(Task(task_id, "wf-slots", "work", "work", {"state": {"i": i}}))
        for _ in range(500):  # (a worker that keeps the slots of settling tasks stops at 2)
            if len(held) >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # six claim waits: a fifth task would have been claimed by now
        during = (sorted(ran), len(held), (await queue.stats("work")).queued, worker.slot_usage()["in_flight"])
        gate.set()
        results: dict[str, Any] = {}
        for _ in range(50):  # (wait_results answers with what has finished so far)
            if len(results) == len(ids):
                break
            results.update(await queue.wait_results([i for i in ids if i not in results], timeout=10))
        return during, sorted(result.status for result in results.values())

    during, statuses = run(with_worker(worker, body))
    assert during == ([0, 1, 2, 3], 4, 2, 4)
    assert statuses == ["succeeded"] * 6
    assert running["peak"] == 2
    assert worker.stats.succeeded == 6


def test_nodes_longer_than_their_lease_keep_it_and_quick_ones_leave_no_timer() -> None:
    """Leases are extended through the worker's one lease watch: a node running for several
    leases keeps its task (one run, attempt 1); quick nodes leave nothing on the watch."""
    runs: list[int] = []

    async def slow(state: State, context: NodeContext) -> dict[str, Any]:
        runs.append(context.attempt)
        await asyncio.sleep(1.5)  # over two leases of 0.6 s
        return {"slow": 1}

    slow_type, quick_type = f"slow-{uuid.uuid4().hex[:6]}", f"quick-{uuid.uuid4().hex[:6]}"
    worker = Worker([slow_type, quick_type], poll_wait=0.05, lease_seconds=0.6, capacity=4)
    worker.register_node(slow_type, slow)
    worker.register_node(quick_type, lambda state: {"quick": 1})
    backend = open_backend("memory://")

    async def scenario() -> Any:
        serving = asyncio.ensure_future(worker.start())
        await backend.task_queue.enqueue(Task(f"{slow_type}-t", "wf-lw", "slow", slow_type, {"state": {}}))
        for index in range(20):
            await backend.task_queue.enqueue(Task(f"{quick_type}-{index}", "wf-lw", "quick", quick_type, {"state": {}}))
        ids = [f"{slow_type}-t", *(f"{quick_type}-{index}" for index in range(20))]
        found: dict[str, Any] = {}
        while len(found) < len(ids):
            found.update(await backend.task_queue.wait_results([i for i in ids if i not in found], timeout=5))
        waiting = len(worker._lease_watch._waiting)
        await worker.stop(grace=1)
        await serving
        return found[f"{slow_type}-t"], waiting

    slow_result, waiting = run(scenario())
    assert runs == [1]  # never re-delivered: its lease was extended
    assert slow_result.status == "succeeded" and slow_result.attempts == 1
    assert worker.stats.succeeded == 21 and worker.stats.lost_leases == 0
    assert waiting == 0


def test_a_listed_type_without_a_function_is_refused_at_start() -> None:
    worker = Worker(node_types={"a", "b"})
    worker.register_node("a", lambda s: None)
    with pytest.raises(ConfigurationError, match=r"\['b'\]"):
        run(worker.start())


def test_a_node_past_its_timeout_is_cancelled_on_the_worker_and_retried() -> None:
    attempts: list[int] = []
    cancelled: list[int] = []

    async def sleepy(state: State, context: NodeContext) -> dict[str, Any]:
        attempts.append(context.attempt)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(context.attempt)
            raise
        return {}

    worker = Worker(poll_wait=0.05)
    worker.register_node("sleepy", sleepy)
    graph = remote_chain("sleepy", "sleepy", timeout=0.05,
                         retry=RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False, retry_on=Exception))

    async def body() -> Any:
        with pytest.raises(NodeExecutionError) as caught:
            await Orchestrator().execute(graph, {})
        return caught.value

    error = run(with_worker(worker, body))
    assert attempts == [1, 2] and cancelled == [1, 2]
    assert error.attempts == 2 and error.error_type == "NodeTimeoutError"


@pytest.mark.parametrize("where", ["in-process", "worker"])
def test_a_rejected_output_is_not_retried_in_process_or_on_a_worker(where: str) -> None:
    """Not JSON (a lone surrogate) or not a dict: the same input gives the same output, so one attempt."""
    calls: list[str] = []

    def bad(state: State) -> Any:
        calls.append("bad")
        return {"text": "\udc80"} if state.get("kind") == "json" else ["not", "a", "dict"]

    retry = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception)
    graph = Graph(f"rejected_{where.replace('-', '_')}")
    graph.add_node("bad", bad if where == "in-process" else None, node_type="bad", retry=retry)
    graph.set_entry_point("bad").set_finish_point("bad").compile()
    worker = Worker(poll_wait=0.05)
    worker.register_node("bad", bad)

    async def body() -> list[tuple[int, str]]:
        outcomes = []
        for kind in ("json", "dict"):
            with pytest.raises(NodeExecutionError) as caught:
                await Orchestrator().execute(graph, {"kind": kind})
            outcomes.append((caught.value.attempts, caught.value.error_type))
        return outcomes

    outcomes = run(with_worker(worker, body))
    assert outcomes == [(1, "StateNotSerializableError"), (1, "InvalidNodeOutputError")]
    assert calls == ["bad", "bad"]


def test_a_plain_function_past_its_timeout_is_told_and_holds_its_slot_until_it_returns() -> None:
    """Capacity 1: the retry starts only after the timed-out attempt's thread has returned."""
    events: list[str] = []

    def slow(state: State, context: NodeContext) -> dict[str, Any]:
        if context.attempt == 1:
            events.append(f"1 cancelled={context.wait_cancelled(30)}")
            time.sleep(0.2)  # goes on a little after seeing the flag, as real cleanup would
            events.append("1 returned")
            return {"late": True}
        events.append("2 started")
        return {"done": True}

    worker = Worker(capacity=1, poll_wait=0.05)
    worker.register_node("slow", slow)
    graph = remote_chain("slow_plain", "slow", timeout=0.1,
                         retry=RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False, retry_on=Exception))
    result = run(with_worker(worker, lambda: Orchestrator().execute(graph, {})))
    assert result["done"] is True and "late" not in result
    assert events == ["1 cancelled=True", "1 returned", "2 started"]


def test_a_heartbeat_interval_over_half_the_registry_ttl_is_refused() -> None:
    """Two heartbeats must fit in the TTL, or the registry forgets a live worker between them."""
    with pytest.raises(ConfigurationError, match=r"heartbeat interval 100s .* heartbeat_ttl 30s"):
        Worker(["a"], heartbeat_interval=100)
    with pytest.raises(ConfigurationError, match=r"heartbeat_ttl 4s"):
        Worker(["a"], backend="memory://?heartbeat_ttl=4", heartbeat_interval=3)
    with pytest.raises(ConfigurationError, match=r"heartbeat_ttl 4s"):
        Worker(["a"], backend_options={"heartbeat_ttl": 4}, heartbeat_interval=2.5)
    backend = open_backend("memory://", heartbeat_ttl=1)
    with pytest.raises(ConfigurationError, match=r"heartbeat_ttl 1s"):
        Worker(["a"], backend=backend, heartbeat_interval=0.6)
    Worker(["a"], backend=backend, heartbeat_interval=0.5)  # two beats fit
    Worker(["a"], heartbeat_interval=15)


def test_a_heartbeat_cancelled_as_it_is_woken_still_stops() -> None:
    """Chaos-suite finding: a worker process hung after SIGTERM. Its heartbeat loop waited with
    ``asyncio.wait_for``, which (Python < 3.12) can swallow a cancellation arriving as the awaited
    event fires (here: slot usage changing as stop() cancels the helpers), so the loop ran on."""
    from distributed_agents.core.ports.worker_registry import WorkerInfo

    worker = Worker(node_types={"x"}, heartbeat_interval=10.0)
    worker.register_node("x", lambda s: {})

    async def body() -> list[bool]:
        await worker.backend.connect()
        worker._beat_now = asyncio.Event()
        stopped = []
        for _ in range(5):
            beat = asyncio.ensure_future(worker._heartbeat(WorkerInfo(worker.worker_id, frozenset({"x"}))))
            await asyncio.sleep(0.01)
            worker._beat_now.set()  # woken and cancelled in the same turn of the loop
            beat.cancel()
            done, _ = await asyncio.wait([beat], timeout=10)
            stopped.append(bool(done))
            if not done:
                beat.cancel()
        return stopped

    assert run(body()) == [True] * 5


def test_message_tuples_from_a_node_on_a_worker_become_message_dicts() -> None:
    """The task carries the graph's add_messages keys, so a worker's node may return ("ai", text) too."""
    from distributed_agents import MessagesState

    def bot(state: State) -> Any:
        return {"messages": [("ai", "hi " + state["messages"][-1]["content"])]}

    graph = Graph("worker_tuples", state_schema=MessagesState)
    graph.add_node("bot", node_type="bot_tuples")
    graph.set_entry_point("bot").set_finish_point("bot").compile()
    worker = Worker(poll_wait=0.05)
    worker.register_node("bot_tuples", bot)

    async def body() -> Any:
        return await Orchestrator().execute(graph, {"messages": [("user", "bob")]})

    out = run(with_worker(worker, body))
    assert [(m["role"], m["content"]) for m in out["messages"]] == [("user", "bob"), ("assistant", "hi bob")]


def _lg_answer(state: State) -> dict[str, Any]:
    return {"a": "answer to " + state["q"]}


def _lg_deep(state: State) -> dict[str, Any]:
    return {"inner": state["a"].upper()}


_LG_SUB = Graph("lg_sub").add_node("deep", _lg_deep).set_entry_point("deep").set_finish_point("deep").compile()
# A LangGraph-style graph at module level: its node functions live in it (a subgraph's too).
LG_APP = (Graph("lg_style").add_node("answer", _lg_answer).add_node("nested", _LG_SUB)
          .set_entry_point("answer").add_edge("answer", "nested").set_finish_point("nested").compile())


@pytest.mark.parametrize("form", ["registry=graph", "Worker(graph)", "from_graph"])
def test_a_worker_serves_a_graph_s_inline_functions_subgraphs_included(form: str) -> None:
    from distributed_agents import NodeRegistry

    backend = f"memory://lg-{form}"
    if form == "registry=graph":
        worker = Worker(registry=LG_APP, backend=backend, poll_wait=0.05)
    elif form == "Worker(graph)":
        worker = Worker(LG_APP, backend=backend, poll_wait=0.05)
    else:
        worker = Worker(registry=NodeRegistry.from_graph(LG_APP), backend=backend, poll_wait=0.05)
    assert sorted(worker.registry.node_types()) == ["answer", "deep"]

    async def body() -> Any:
        async with Orchestrator(backend=backend, local_nodes=False) as orchestrator:
            return await orchestrator.execute(LG_APP, {"q": "x"})

    result = run(with_worker(worker, body))
    assert result["a"] == "answer to x" and result["inner"] == "ANSWER TO X"
    with pytest.raises(ConfigurationError, match="pass a NodeRegistry, or a Graph"):
        Worker(registry={"answer": _lg_answer})  # type: ignore[arg-type]


def test_waiting_for_a_worker_says_how_to_start_one_for_this_graph(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from distributed_agents.core.errors import NodeNotFoundError
    from distributed_agents.core.waiting import start_worker_hint

    async def scenario() -> None:
        async with Orchestrator(backend="memory://lg-hint", local_nodes=False, wait_for_workers=True,
                                worker_timeout=0.2) as orchestrator:
            with pytest.raises(NodeNotFoundError):
                await orchestrator.execute(LG_APP, {"q": "x"})

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        run(scenario())
    warned = " ".join(r.getMessage() for r in caplog.records if "no live worker serves" in r.getMessage())
    assert f"distributed-agents worker --app {__name__}:LG_APP --backend-url memory://lg-hint" in warned
    # A graph only a script defines, a registry-served node type, and a URL's password.
    script = Graph("script").add_node("n", lambda s: {}).set_entry_point("n").set_finish_point("n").compile()
    assert "put the graph in a module workers can import" in start_worker_hint(script, ["n"], "redis://h:1/0")
    remote = remote_chain("remote_hint", "llm")
    hint = start_worker_hint(remote, ["llm"], "redis://user:secret@h:1/0")
    assert "--app module:registry --node-types llm --backend-url redis://user:***@h:1/0" in hint
    assert "secret" not in hint
    # Another prefix than the default: a worker started without it would wait on another deployment.
    prefixed = start_worker_hint(remote, ["llm"], "redis://h:1/0", prefix="tenant7")
    assert "--backend-url redis://h:1/0 --prefix tenant7" in prefixed


def test_a_node_on_a_worker_reads_the_callers_configurable_and_thread_id() -> None:
    """``execute(configurable=)`` travels with the task: ``config["configurable"]`` on a worker as in process."""

    def who(state: State, config: NodeContext) -> dict[str, Any]:
        return {"who": [config["configurable"]["user_id"], config["configurable"]["thread_id"],
                        config["metadata"]["langgraph_node"]]}

    graph = Graph("worker_configurable")
    graph.add_node("who", node_type="who_cfg")
    graph.set_entry_point("who").set_finish_point("who").compile()
    worker = Worker(poll_wait=0.05)
    worker.register_node("who_cfg", who)

    async def body() -> Any:
        return await Orchestrator().execute(graph, {}, workflow_id="wf-cfg-worker", configurable={"user_id": "u7"})

    assert run(with_worker(worker, body))["who"] == ["u7", "wf-cfg-worker", "who"]
