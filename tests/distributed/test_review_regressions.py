"""Regression tests on real servers for the step loop's hot-path changes: a new workflow's
input encoded once (size check, first tasks, stored record), retried creates and commits,
the log context, and the Redis pub/sub reader.

Each test runs a workflow whose first node is served by a worker (so its tasks go out with
the create, from the kept encoding of the input) and checks what the node saw, what the
store holds and what the caller got, on Redis and NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import operator
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypedDict

import pytest
import redis
from support.aio import run

from distributed_agents import Graph, NodeContext, Orchestrator, Send, State, Worker
from distributed_agents.core import log_context
from distributed_agents.core.errors import BackendUnavailableError, PayloadTooLargeError
from distributed_agents.core.log_context import LogContextFilter
from distributed_agents.core.ports.state_store import WorkflowStatus
from distributed_agents.core.task_state import INLINE_STATE_LIMIT

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    """A real Redis or NATS server on a fresh prefix."""
    base = request.getfixturevalue(f"{request.param}_url")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}prefix=review{uuid.uuid4().hex[:8]}"


async def _serving(url: str, nodes: dict[str, Callable[..., Any]],
                   body: Callable[[Orchestrator], Awaitable[Any]], **options: Any) -> Any:
    """Run ``body(orchestrator)`` while a worker serves ``nodes`` (node type -> function) on ``url``."""
    worker = Worker(backend=url, poll_wait=0.1)
    for node_type, func in nodes.items():
        worker.register_node(node_type, func)
    options.setdefault("wait_for_workers", True)
    orchestrator = Orchestrator(backend=url, local_nodes=False, worker_timeout=60, **options)
    serving = asyncio.ensure_future(worker.start())
    try:
        while not worker._serving:
            await asyncio.sleep(0.01)
        return await body(orchestrator)
    finally:
        await worker.stop(grace=1)
        await serving
        await orchestrator.close()


@dataclasses.dataclass
class Defaulted:
    given: str = ""
    filled: int = 7
    seen: list[int] = dataclasses.field(default_factory=list)


def test_a_schema_default_reaches_the_first_worker_task_and_the_stored_record(url: str) -> None:
    """The schema changes the input (a default fills ``filled``): the kept encoding of the
    raw input must not be what the first task or the stored record carries."""
    graph = (Graph("review_schema", state_schema=Defaulted)
             .add_node("look", node_type="review_look").set_entry_point("look").set_finish_point("look").compile())

    def look(state: State, context: NodeContext) -> dict[str, Any]:
        return {"seen": [state["filled"]]}

    async def body(orchestrator: Orchestrator) -> tuple[Any, Any, Any]:
        result = await orchestrator.execute(graph, {"given": "x"}, workflow_id="wf-schema")
        stored = await orchestrator.backend.state_store.get("wf-schema")
        history = await orchestrator.get_state_history("wf-schema")
        return result, stored, history

    result, stored, history = run(_serving(url, {"review_look": look}, body), timeout=60)
    assert result["seen"] == [7] and result["filled"] == 7 and result["given"] == "x"
    assert stored is not None and stored.status == WorkflowStatus.COMPLETED
    assert dict(stored.state) == {"given": "x", "filled": 7, "seen": [7]}
    first = [snapshot for snapshot in history if snapshot.step == 0]
    assert first and first[0].values == {"given": "x", "filled": 7, "seen": []}


def test_an_input_state_object_keeps_its_id_and_values(url: str) -> None:
    graph = Graph("review_state_obj").add_node("echo", node_type="review_echo").set_entry_point("echo") \
        .set_finish_point("echo").compile()

    def echo(state: State, context: NodeContext) -> dict[str, Any]:
        return {"echo": [state["n"], state["nested"]["k"], context.workflow_id]}

    initial = State({"n": 1, "nested": {"k": [1, 2]}}, workflow_id="wf-state-object")

    async def body(orchestrator: Orchestrator) -> tuple[Any, Any]:
        result = await orchestrator.execute(graph, initial)
        return result, await orchestrator.backend.state_store.get("wf-state-object")

    result, stored = run(_serving(url, {"review_echo": echo}, body), timeout=60)
    assert result["echo"] == [1, [1, 2], "wf-state-object"]
    assert stored is not None and stored.state["nested"] == {"k": [1, 2]}
    assert dict(initial) == {"n": 1, "nested": {"k": [1, 2]}}  # the caller's object is not changed


def test_an_input_over_the_inline_limit_is_referenced_and_the_worker_reads_all_of_it(url: str) -> None:
    graph = Graph("review_large").add_node("size", node_type="review_size").set_entry_point("size") \
        .set_finish_point("size").compile()
    blob = "y" * (INLINE_STATE_LIMIT * 3)

    def size(state: State, context: NodeContext) -> dict[str, Any]:
        return {"size": len(state["blob"])}

    async def body(orchestrator: Orchestrator) -> Any:
        return await orchestrator.execute(graph, {"blob": blob}, workflow_id="wf-large")

    result = run(_serving(url, {"review_size": size}, body), timeout=60)
    assert result["size"] == len(blob)


def test_an_input_that_is_not_json_is_refused_naming_the_key_and_nothing_is_created(url: str) -> None:
    graph = Graph("review_not_json").add_node("n", node_type="review_n").set_entry_point("n") \
        .set_finish_point("n").compile()

    async def main() -> tuple[BaseException, Any]:
        orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True)
        try:
            with pytest.raises(Exception) as caught:
                await orchestrator.submit(graph, {"when": object()}, workflow_id="wf-not-json")
            await orchestrator.connect()
            return caught.value, await orchestrator.backend.state_store.get("wf-not-json")
        finally:
            await orchestrator.close()

    error, stored = run(main(), timeout=60)
    assert "when" in str(error), str(error)
    assert stored is None


def test_an_input_over_max_payload_bytes_is_refused_before_anything_is_queued(url: str) -> None:
    graph = Graph("review_too_large").add_node("n", node_type="review_tl").set_entry_point("n") \
        .set_finish_point("n").compile()

    async def main() -> tuple[PayloadTooLargeError, Any, int]:
        orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True,
                                    backend_options={"max_payload_bytes": 5_000})
        try:
            with pytest.raises(PayloadTooLargeError) as caught:
                await orchestrator.submit(graph, {"big": "z" * 6_000}, workflow_id="wf-too-large")
            stored = await orchestrator.backend.state_store.get("wf-too-large")
            queued = int((await orchestrator.backend.task_queue.stats("review_tl")).queued)
            return caught.value, stored, queued
        finally:
            await orchestrator.close()

    error, stored, queued = run(main(), timeout=60)
    assert "'big'" in str(error) and "5,000" in str(error), str(error)
    assert stored is None and queued == 0


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(LogContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_log_records_of_in_process_nodes_carry_the_workflow_and_each_step(url: str) -> None:
    """The engine binds the step only when it changes: every step's records still carry their step,
    also a resumed run's first step (bound by the run, not the loop)."""
    app_log = logging.getLogger("review.app")

    def make(name: str) -> Callable[[State], dict[str, Any]]:
        def node(state: State) -> dict[str, Any]:
            app_log.info("in %s", name)
            return {"path": [*state.get("path", []), name]}
        return node

    graph = (Graph("review_logs").add_node("a", make("a")).add_node("b", make("b")).add_node("c", make("c"))
             .set_entry_point("a").add_edge("a", "b").add_edge("b", "c").set_finish_point("c").compile())
    capture = _Capture()
    app_log.addHandler(capture)
    app_log.setLevel(logging.INFO)

    async def main() -> Any:
        orchestrator = Orchestrator(backend=url)
        try:
            paused = await orchestrator.execute(graph, {}, workflow_id="wf-logs", interrupt_before=["c"])
            assert paused is not None
            return await orchestrator.resume("wf-logs")
        finally:
            await orchestrator.close()

    try:
        result = run(main(), timeout=60)
    finally:
        app_log.removeHandler(capture)
    assert result["path"] == ["a", "b", "c"]
    seen = [(r.getMessage(), getattr(r, "workflow_id", None), getattr(r, "step", None)) for r in capture.records]
    assert seen == [("in a", "wf-logs", 0), ("in b", "wf-logs", 1), ("in c", "wf-logs", 2)], seen
    assert dict(log_context.current()) == {}


class _LoseReplies:
    """Makes the next call of a state store method apply and then lose its reply, as an outage
    between the server's answer and the client would (``BackendUnavailableError``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.armed: dict[str, int] = {}
        self.lost: list[str] = []

    def arm(self, method: str, times: int = 1, after: int = 0) -> None:
        """Lose the replies of ``method``'s calls ``after + 1`` .. ``after + times``."""
        real = getattr(self.store, method)
        calls = [0]

        async def lossy(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)
            calls[0] += 1
            if after < calls[0] <= after + times:
                self.lost.append(method)
                raise BackendUnavailableError(f"reply of {method} lost (test)")
            return result

        setattr(self.store, method, lossy)


def _chain(node_type: str) -> Graph:
    return (Graph(f"review_chain_{node_type}").add_node("a", node_type=node_type).add_node("b", node_type=node_type)
            .set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile())


def _counting(runs: list[str]) -> Callable[[State, NodeContext], dict[str, Any]]:
    def count(state: State, context: NodeContext) -> dict[str, Any]:
        runs.append(context.node)
        return {"n": state.get("n", 0) + 1}
    return count


@pytest.mark.parametrize("method", ["create_leased_enqueuing", "create_leased"])
def test_a_create_whose_reply_is_lost_is_found_and_driven_once(url: str, method: str) -> None:
    """The retry meets WorkflowExistsError and finds the record the first try made (``tries`` counts both)."""
    runs: list[str] = []
    graph = _chain("review_lost_create")

    async def body(orchestrator: Orchestrator) -> tuple[Any, list[str]]:
        await orchestrator.connect()
        lose = _LoseReplies(orchestrator.backend.state_store)
        lose.arm(method)
        if method == "create_leased":  # the in-process path: no tasks go with the create
            orchestrator.wait_for_workers = False
        result = await orchestrator.execute(graph, {}, workflow_id="wf-lost-create")
        return result, lose.lost

    result, lost = run(_serving(url, {"review_lost_create": _counting(runs)}, body), timeout=60)
    assert lost == [method]
    assert result["n"] == 2 and runs == ["a", "b"]


@pytest.mark.parametrize("durability", ["sync", "async"])
@pytest.mark.parametrize("method,after", [("save", 0), ("save_releasing", 0)])
def test_a_commit_whose_reply_is_lost_is_found_landed_and_the_run_goes_on(
        url: str, method: str, after: int, durability: str) -> None:
    """The retried save meets a version conflict; ``_save_attempts > 1`` and the stored record tell it landed."""
    runs: list[str] = []
    graph = _chain("review_lost_commit")

    async def body(orchestrator: Orchestrator) -> tuple[Any, list[str], Any]:
        await orchestrator.connect()
        lose = _LoseReplies(orchestrator.backend.state_store)
        lose.arm(method, after=after)
        result = await orchestrator.execute(graph, {}, workflow_id="wf-lost-commit", durability=durability)
        stored = await orchestrator.backend.state_store.get("wf-lost-commit")
        return result, lose.lost, stored

    result, lost, stored = run(_serving(url, {"review_lost_commit": _counting(runs)}, body), timeout=60)
    assert lost == [method]
    assert result["n"] == 2 and runs == ["a", "b"]
    assert stored is not None and stored.status == WorkflowStatus.COMPLETED and stored.state["n"] == 2



class Fanned(TypedDict, total=False):
    width: int
    i: int
    out: Annotated[list[int], operator.add]


def _fan_graph(node_type: str) -> Graph:
    def fan(state: State) -> list[Send]:
        return [Send("work", {"i": i}) for i in range(state["width"])]

    return (Graph(f"review_fan_{node_type}", state_schema=Fanned).add_node("work", node_type=node_type)
            .set_conditional_entry_point(fan, ["work"]).set_finish_point("work").compile())


def _doubling(state: State, context: NodeContext) -> dict[str, Any]:
    return {"out": [state["i"] * 2]}


async def _many(orchestrator: Orchestrator, graph: Graph, count: int, width: int) -> list[list[int]]:
    results = await asyncio.gather(*(orchestrator.execute(graph, {"width": width}) for _ in range(count)))
    return [sorted(result["out"]) for result in results]


@pytest.mark.parametrize("options", ["protocol=3", "protocol=2&health_check_interval=1"])
def test_workflows_complete_over_redis_url_options_of_the_pub_sub_reader(redis_url: str, options: str) -> None:
    """Results reach waiting drives through the notifier's own reader on RESP3 and with a
    health check interval (its PING path): fan-outs of 1 and 5 tasks, 20 workflows at once."""
    url = f"{redis_url}?{options}&prefix=review{uuid.uuid4().hex[:8]}"
    graph = _fan_graph("review_resp")

    async def body(orchestrator: Orchestrator) -> tuple[list[list[int]], list[list[int]]]:
        return await _many(orchestrator, graph, 20, 1), await _many(orchestrator, graph, 20, 5)

    single, fanned = run(_serving(url, {"review_resp": _doubling}, body), timeout=80)
    assert single == [[0]] * 20 and fanned == [[0, 2, 4, 6, 8]] * 20


def test_killing_the_pub_sub_connections_mid_burst_loses_no_result(redis_url: str) -> None:
    """CLIENT KILL of every pub/sub connection of this test's clients, again and again while
    60 workflows run: each reader gives its connection up and subscribes again, waiters
    are woken to look, and every workflow completes with its result."""
    name = f"rev{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?client_name={name}&prefix=review{uuid.uuid4().hex[:8]}"
    graph = _fan_graph("review_kill")
    kills: list[int] = []

    async def killer(admin: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for client in await admin.client_list():
                if client.get("name") == name and int(client.get("sub", 0)) > 0:
                    with contextlib.suppress(Exception):
                        await admin.client_kill_filter(_id=client["id"])
                        kills.append(1)
            await asyncio.sleep(0.05)

    async def body(orchestrator: Orchestrator) -> list[list[int]]:
        admin = redis.asyncio.Redis.from_url(redis_url)
        stop = asyncio.Event()
        killing = asyncio.ensure_future(killer(admin, stop))
        try:
            return await _many(orchestrator, graph, 60, 3)
        finally:
            stop.set()
            await killing
            await admin.aclose()

    results = run(_serving(url, {"review_kill": _doubling}, body), timeout=80)
    assert results == [[0, 2, 4]] * 60
    assert kills, "no pub/sub connection was killed: the attack did not happen"


# Loop passes between submit and cancel (more under DA_TEST_PROFILE=thorough).
_PASSES = [0, 3] + ([1, 2, 5, 8, 13] if os.environ.get("DA_TEST_PROFILE") == "thorough" else [])


def _single_worker_node(node_type: str) -> Graph:
    return (Graph(f"review_single_{node_type}").add_node("one", node_type=node_type)
            .set_entry_point("one").set_finish_point("one").compile())


async def _cancel_after_passes(url: str, graph: Graph, node_type: str, passes: int, runs: list[str],
                               twice: bool = False) -> tuple[bool, Any]:
    """Submit with no worker serving (the first tasks go out with the create), let the loop make
    ``passes`` passes, cancel (``twice``: two cancels at once), then serve a while."""
    orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=60)
    try:
        workflow_id = await orchestrator.submit(graph, {"width": 3},
                                                workflow_id=f"wf-cancel-{passes}-{uuid.uuid4().hex[:6]}")
        for _ in range(passes):
            await asyncio.sleep(0)
        if twice:
            answers = await asyncio.gather(orchestrator.cancel_workflow(workflow_id),
                                           orchestrator.cancel_workflow(workflow_id))
            cancelled = sorted(answers) == [False, True]
        else:
            cancelled = await orchestrator.cancel_workflow(workflow_id)
        worker = Worker(backend=url, poll_wait=0.05)

        def count(state: State, context: NodeContext) -> dict[str, Any]:
            runs.append(context.node)
            return {}

        worker.register_node(node_type, count)
        serving = asyncio.ensure_future(worker.start())
        while not worker._serving:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # a leftover task would be claimed and run by now
        await worker.stop(grace=1)
        await serving
        record = await orchestrator.backend.state_store.get(workflow_id)
        return cancelled, None if record is None else record.status
    finally:
        await orchestrator.close()


@pytest.mark.parametrize("passes", _PASSES)
@pytest.mark.parametrize("shape", ["one node", "send fan-out"])
def test_a_cancel_at_any_pass_after_submit_leaves_nothing_to_run(url: str, passes: int, shape: str) -> None:
    """The drive may be scheduled, registered but not started, or waiting for results when the
    cancel looks for it: in each case the first step's tasks (queued with the create) are taken back."""
    runs: list[str] = []
    node_type = f"review_cancel_{uuid.uuid4().hex[:6]}"
    graph = _single_worker_node(node_type) if shape == "one node" else _fan_graph(node_type)
    cancelled, status = run(_cancel_after_passes(url, graph, node_type, passes, runs), timeout=60)
    assert cancelled and status == WorkflowStatus.CANCELLED
    assert runs == [], f"the cancelled workflow's node ran {len(runs)} time(s)"


def test_two_cancels_at_once_answer_true_once_and_nothing_runs(url: str) -> None:
    runs: list[str] = []
    node_type = f"review_cancel2_{uuid.uuid4().hex[:6]}"
    cancelled, status = run(_cancel_after_passes(url, _fan_graph(node_type), node_type, 1, runs, twice=True),
                            timeout=60)
    assert cancelled and status == WorkflowStatus.CANCELLED
    assert runs == []


@pytest.mark.parametrize("passes", [0, 1, 2, 3])
def test_a_cancel_at_any_pass_after_submit_on_the_memory_backend_leaves_nothing_to_run(passes: int) -> None:
    runs: list[str] = []
    node_type = f"review_cancelm_{uuid.uuid4().hex[:6]}"
    cancelled, status = run(_cancel_after_passes("memory://", _fan_graph(node_type), node_type, passes, runs),
                            timeout=60)
    assert cancelled and status == WorkflowStatus.CANCELLED
    assert runs == []


@pytest.mark.parametrize("passes", _PASSES)
def test_a_cancel_while_a_later_steps_wide_fan_out_is_enqueued_leaves_nothing_to_run(url: str, passes: int) -> None:
    """Step 0 runs in-process and fans out 200 worker tasks for step 1 (its enqueue is the
    executor's, not the create's); the cancel comes ``passes`` loop passes after step 0's node
    returned, while the step commits or its batch is being queued."""
    node_type = f"review_wide_{uuid.uuid4().hex[:6]}"
    runs: list[str] = []

    async def main() -> tuple[bool, Any]:
        started = asyncio.Event()

        async def first(state: State) -> dict[str, Any]:
            started.set()
            return {"width": 200}

        def fan(state: State) -> list[Send]:
            return [Send("work", {"i": i}) for i in range(state["width"])]

        graph = (Graph(f"review_wide_{node_type}", state_schema=Fanned).add_node("first", first)
                 .add_node("work", node_type=node_type).set_entry_point("first")
                 .add_conditional_edges("first", fan, ["work"]).set_finish_point("work").compile())
        orchestrator = Orchestrator(backend=url, wait_for_workers=True, worker_timeout=60)
        try:
            workflow_id = await orchestrator.submit(graph, {}, workflow_id=f"wf-wide-{uuid.uuid4().hex[:6]}")
            await started.wait()
            for _ in range(passes):
                await asyncio.sleep(0)
            cancelled = await orchestrator.cancel_workflow(workflow_id)
            worker = Worker(backend=url, poll_wait=0.05)

            def count(state: State, context: NodeContext) -> dict[str, Any]:
                runs.append(context.node)
                return {}

            worker.register_node(node_type, count)
            serving = asyncio.ensure_future(worker.start())
            while not worker._serving:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            await worker.stop(grace=1)
            await serving
            record = await orchestrator.backend.state_store.get(workflow_id)
            return cancelled, None if record is None else record.status
        finally:
            await orchestrator.close()

    cancelled, status = run(main(), timeout=60)
    assert cancelled and status == WorkflowStatus.CANCELLED
    assert runs == [], f"the cancelled workflow's fan-out ran {len(runs)} task(s)"


def test_a_create_meeting_a_lease_held_by_another_orchestrator_names_it_and_queues_nothing(url: str) -> None:
    """The create with the lease finds another owner's live lease on the new id: nothing is
    written or queued, and the error names the holder."""
    node_type = f"review_held_{uuid.uuid4().hex[:6]}"
    graph = _single_worker_node(node_type)

    async def main() -> tuple[BaseException, Any, int]:
        orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=60)
        try:
            await orchestrator.connect()
            store = orchestrator.backend.state_store
            held = await store.acquire_lease("wf-held", "someone-else", 60)
            assert held is not None
            with pytest.raises(Exception) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-held")
            queued = int((await orchestrator.backend.task_queue.stats(node_type)).queued)
            return caught.value, await store.get("wf-held"), queued
        finally:
            await orchestrator.close()

    error, stored, queued = run(main(), timeout=60)
    assert type(error).__name__ == "WorkflowLeaseHeldError" and "someone-else" in str(error), repr(error)
    assert stored is None and queued == 0


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_worker_steps_with_breakpoints_handlers_cache_and_step_limit_in_each_durability(
        url: str, durability: str) -> None:
    """One worker serves every node. In one durability mode: an interrupt_after pause and its
    resume; a failure routed to its on_error handler; a cached fan-out (hits and followers);
    a loop stopped by the step limit, its error naming the cycle."""
    from distributed_agents import CachePolicy
    from distributed_agents.core.errors import StepLimitExceededError

    tag = uuid.uuid4().hex[:6]
    calls: list[str] = []

    def step(state: State, context: NodeContext) -> dict[str, Any]:
        calls.append(context.node)
        if context.node == "boom":
            raise ValueError("boom failed")
        return {"out": [state.get("i", 0)]}

    types = {name: f"review_{name}_{tag}" for name in ("a", "b", "boom", "handle", "cached", "tick")}
    paused = (Graph(f"review_pause_{tag}", state_schema=Fanned).add_node("a", node_type=types["a"])
              .add_node("b", node_type=types["b"]).set_entry_point("a").add_edge("a", "b")
              .set_finish_point("b").compile())
    handled = (Graph(f"review_handled_{tag}", state_schema=Fanned)
               .add_node("boom", node_type=types["boom"], on_error="handle")
               .add_node("handle", node_type=types["handle"]).set_entry_point("boom")
               .set_finish_point("boom").set_finish_point("handle").compile())

    def fan(state: State) -> list[Send]:
        return [Send("cached", {"i": i % 2}) for i in range(4)]

    cached = (Graph(f"review_cached_{tag}", state_schema=Fanned)
              .add_node("cached", node_type=types["cached"],
                        cache_policy=CachePolicy(key_func=lambda value: str(value.get("i")), ttl=600))
              .set_conditional_entry_point(fan, ["cached"]).set_finish_point("cached").compile())
    looping = (Graph(f"review_loop_{tag}", state_schema=Fanned).add_node("tick", node_type=types["tick"])
               .set_entry_point("tick").add_conditional_edges("tick", lambda s: "tick", ["tick", "__end__"])
               .compile())

    async def body(orchestrator: Orchestrator) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        first = await orchestrator.execute(paused, {}, workflow_id=f"wf-p-{tag}", interrupt_after=["a"],
                                           durability=durability)
        seen["paused"] = (list(first.get("out", [])), (await orchestrator.get_state(f"wf-p-{tag}")).next)
        seen["resumed"] = (await orchestrator.resume(f"wf-p-{tag}"))["out"]
        seen["handled"] = (await orchestrator.execute(handled, {}, workflow_id=f"wf-h-{tag}",
                                                      durability=durability))["out"]
        seen["cached"] = sorted((await orchestrator.execute(cached, {}, workflow_id=f"wf-c-{tag}",
                                                            durability=durability))["out"])
        seen["cached_again"] = sorted((await orchestrator.execute(cached, {}, workflow_id=f"wf-c2-{tag}",
                                                                  durability=durability))["out"])
        with pytest.raises(StepLimitExceededError) as caught:
            await orchestrator.execute(looping, {}, workflow_id=f"wf-l-{tag}", step_limit=3, durability=durability)
        seen["limit"] = str(caught.value)
        seen["limit_status"] = (await orchestrator.backend.state_store.get(f"wf-l-{tag}")).status
        return seen

    seen = run(_serving(url, {t: step for t in types.values()}, body), timeout=80)
    assert seen["paused"] == ([0], ("b",))
    assert seen["resumed"] == [0, 0]
    assert seen["handled"] == [0]
    assert seen["cached"] == [0, 0, 1, 1] and seen["cached_again"] == [0, 0, 1, 1]
    assert calls.count("cached") == 2, calls  # one per distinct key: followers and hits ran nothing
    assert calls.count("boom") == 1 and calls.count("handle") == 1 and calls.count("a") == 1
    assert "step limit of 3" in seen["limit"] and "'tick' ran" in seen["limit"], seen["limit"]
    assert seen["limit_status"] == WorkflowStatus.FAILED


def test_the_no_live_worker_warning_carries_the_workflow_and_step_and_names_the_command(url: str) -> None:
    """The waiting reporter builds its hint from the graph and the redacted URL (no closure
    any more): the warning names the node type and the backend, and LogContextFilter adds
    the workflow id and step of the drive that logged it."""
    node_type = f"review_none_{uuid.uuid4().hex[:6]}"
    graph = _single_worker_node(node_type)
    capture = _Capture()
    capture.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(capture)

    async def main() -> list[logging.LogRecord]:
        orchestrator = Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=60)
        try:
            workflow_id = await orchestrator.submit(graph, {}, workflow_id=f"wf-none-{node_type}")
            while not [r for r in capture.records if "no live worker" in r.getMessage()]:
                await asyncio.sleep(0.05)
            await orchestrator.cancel_workflow(workflow_id)
            return [r for r in capture.records if "no live worker" in r.getMessage()]
        finally:
            await orchestrator.close()

    try:
        records = run(main(), timeout=60)
    finally:
        root.removeHandler(capture)
    record = records[0]
    message = record.getMessage()
    assert node_type in message and "--backend-url" in message and url.split("?")[0].split("//")[1] in message, message
    assert getattr(record, "workflow_id", None) == f"wf-none-{node_type}" and getattr(record, "step", None) == 0


@pytest.mark.parametrize("options", ["", "?protocol=3"])
def test_closing_the_notifier_mid_burst_stops_its_reader_and_leaves_no_connection(redis_url: str, options: str) -> None:
    """close() while the reader is taking a burst of messages off its socket: it returns, no
    message is given to the listener after it, and the server lists no pub/sub connection of it."""
    from distributed_agents.adapters.redis.connection import RedisConnection
    from distributed_agents.adapters.redis.notifier import Notifier

    channel = f"n{uuid.uuid4().hex[:8]}:done"
    name = f"rev{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in options else "?"

    async def scenario() -> tuple[int, int, int, list[Any]]:
        notifier = Notifier(RedisConnection(f"{redis_url}{options}{separator}client_name={name}"))
        got: list[str] = []
        notifier.listen(channel, got.append, lambda: None)
        publisher = redis.asyncio.Redis.from_url(redis_url)
        try:
            await notifier.ensure([channel])
            assert notifier.subscribed(channel)
            pipe = publisher.pipeline(transaction=False)
            for n in range(3000):
                pipe.publish(channel, f"t{n}\n{n}")
            await pipe.execute()
            while len(got) < 10:
                await asyncio.sleep(0)
            await notifier.close()
            at_close = len(got)
            await publisher.publish(channel, "after\nclose")
            await asyncio.sleep(0.2)
            left = [c for c in await publisher.client_list() if c.get("name") == name and int(c.get("sub", 0)) > 0]
            await notifier.close()  # idempotent
            return at_close, len(got), len([g for g in got if g.startswith("after")]), left
        finally:
            await publisher.aclose()

    at_close, total, after, left = run(scenario(), 60)
    assert total == at_close and after == 0
    assert left == []


def test_a_redis_restart_between_bursts_is_survived_by_the_pub_sub_readers() -> None:
    """The orchestrator's and the worker's notifiers lose their connections when the server
    restarts; their readers subscribe again, and the next burst of workflows completes."""
    from support.redis_server import RedisServer

    with RedisServer() as server:
        url = f"{server.url}?prefix=review{uuid.uuid4().hex[:8]}"
        graph = _fan_graph("review_restart")

        async def body(orchestrator: Orchestrator) -> tuple[list[list[int]], list[list[int]]]:
            before = await _many(orchestrator, graph, 10, 3)
            await asyncio.to_thread(server.restart)
            after = await _many(orchestrator, graph, 10, 3)
            return before, after

        before, after = run(_serving(url, {"review_restart": _doubling}, body), timeout=90)
    assert before == after == [[0, 2, 4]] * 10


def test_message_shorthands_in_the_input_reach_the_worker_and_the_stored_record_as_messages(url: str) -> None:
    """The input's LangGraph shorthands are made messages before the one encoding that the
    first task and the stored record share: both hold the same messages."""
    node_type = f"review_msgs_{uuid.uuid4().hex[:6]}"
    graph = (Graph(f"review_msgs_{node_type}", reducers={"messages": "add_messages"})
             .add_node("reply", node_type=node_type).set_entry_point("reply").set_finish_point("reply").compile())
    seen: list[Any] = []

    def reply(state: State, context: NodeContext) -> dict[str, Any]:
        seen.append([dict(m) for m in state["messages"]])
        return {"messages": [{"role": "assistant", "content": "hello"}]}

    async def body(orchestrator: Orchestrator) -> tuple[Any, Any]:
        result = await orchestrator.execute(graph, {"messages": [("user", "hi")]}, workflow_id=f"wf-{node_type}")
        history = await orchestrator.get_state_history(f"wf-{node_type}")
        return result, [s for s in history if s.step == 0][0]

    result, first = run(_serving(url, {node_type: reply}, body), timeout=60)
    sent = seen[0]
    assert sent == [{"role": "user", "content": "hi"}]
    assert [dict(m) for m in first.values["messages"]] == sent
    assert [m["content"] for m in result["messages"]] == ["hi", "hello"]


def test_an_acl_user_with_channel_rights_is_served_and_one_without_them_is_told_what_to_grant() -> None:
    """A Redis ACL user (password in the URL, RESP3) with pub/sub rights: the notifier's reader
    authenticates as redis-py does and the workflows complete. A user without them (Redis 7's
    default for new users): a worker's start fails naming the missing permission and where the
    ACL rule is documented. No log line and no error shows the password."""
    from distributed_agents.core.errors import BackendError
    from support.redis_server import RedisServer

    secret = f"pw{uuid.uuid4().hex[:8]}"
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)

    async def refused(url: str) -> BaseException:
        worker = Worker(backend=url, poll_wait=0.1)
        worker.register_node("review_acl", _doubling)
        with pytest.raises(BackendError) as caught:
            await worker.start()
        return caught.value

    try:
        with RedisServer(password="admin" + secret) as server:
            with redis.Redis.from_url(server.url) as admin:
                admin.execute_command("ACL", "SETUSER", "app", "on", f">{secret}", "~*", "&*", "+@all")
                admin.execute_command("ACL", "SETUSER", "mute", "on", f">{secret}", "~*", "resetchannels", "+@all")
            prefix = f"prefix=review{uuid.uuid4().hex[:8]}"
            url = f"redis://app:{secret}@127.0.0.1:{server.port}/0?protocol=3&{prefix}"
            graph = _fan_graph("review_acl")

            async def body(orchestrator: Orchestrator) -> list[list[int]]:
                return await _many(orchestrator, graph, 3, 2)

            results = run(_serving(url, {"review_acl": _doubling}, body), timeout=60)
            error = run(refused(f"redis://mute:{secret}@127.0.0.1:{server.port}/0?protocol=3&{prefix}"), timeout=60)
    finally:
        root.removeHandler(capture)
    assert results == [[0, 2]] * 3
    assert "permission" in str(error) and "docs/security.md" in str(error) and secret not in str(error), error
    leaked = [r.getMessage() for r in capture.records if secret in r.getMessage()]
    assert leaked == []


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_breakpoint_before_the_entry_node_queues_nothing_with_the_create(url: str, durability: str) -> None:
    """interrupt_before the first (worker) node: the create must not queue its task (the step
    pauses first); the resume queues it once and the node runs once."""
    node_type = f"review_bp_{uuid.uuid4().hex[:6]}"
    runs: list[str] = []
    graph = _chain(node_type)

    async def body(orchestrator: Orchestrator) -> tuple[Any, int, Any]:
        workflow_id = f"wf-bp-{node_type}"
        await orchestrator.execute(graph, {}, workflow_id=workflow_id, interrupt_before=["a"], durability=durability)
        queued = int((await orchestrator.backend.task_queue.stats(node_type)).queued)
        status = (await orchestrator.backend.state_store.get(workflow_id)).status
        result = await orchestrator.resume(workflow_id)
        return result, queued, status

    result, queued, status = run(_serving(url, {node_type: _counting(runs)}, body), timeout=60)
    assert status == WorkflowStatus.INTERRUPTED and queued == 0
    assert result["n"] == 2 and runs == ["a", "b"]
