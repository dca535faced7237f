"""Tasks carry a reference to a large committed state, not the state (``core.task_state``), on the memory backend.

Each test runs an orchestrator and a worker in this process on a memory space of its
own; the queue counts the bytes of the tasks enqueued (the payloads a networked
backend would receive).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run
from support.aio import with_worker as serving

from distributed_agents import END, START, Graph, Orchestrator, Send, State, Worker, open_backend
from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue
from distributed_agents.core.codec import encode
from distributed_agents.core.executors import NodeCall, task_payload
from distributed_agents.core.ports import Task
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.ports.task_queue import task_to_dict
from distributed_agents.core.task_state import INLINE_STATE_LIMIT, state_ref

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000
WIDTH = 1000


class MeteredQueue(MemoryTaskQueue):
    """The memory queue, counting the encoded bytes and payload shapes of the tasks enqueued."""

    enqueued_bytes = 0
    payloads: list[dict[str, Any]]

    async def enqueue(self, task: Task) -> bool:
        self.enqueued_bytes += len(encode(task_to_dict(task)))
        self.payloads.append(dict(task.payload))
        return await super().enqueue(task)


def metered_backend() -> tuple[Backend, MeteredQueue]:
    backend = open_backend(f"memory://ts{uuid.uuid4().hex[:8]}?max_payload_bytes={8 * MB}")
    queue = MeteredQueue(backend.task_queue._data,  # type: ignore[attr-defined]  # the space's shared queue
                         visibility_timeout=backend.task_queue.visibility_timeout,
                         max_attempts=backend.task_queue.max_attempts)
    queue.payloads = []
    backend.task_queue = queue
    return backend, queue


def static_fan_out(width: int) -> Graph:
    """``start`` writes a large ``doc``; ``width`` nodes (served by workers) each read it."""
    graph = Graph(f"fan{width}")
    graph.add_node("start", lambda s: {"doc": "d" * MB, "version": s.get("version", 0), "nested": {"items": [0]}})
    names = [f"n{i}" for i in range(width)]
    for name in names:
        graph.add_node(name, node_type="reader")
        graph.add_edge("start", name)
    graph.add_node("done", lambda s: None)
    graph.add_edge(names, "done")
    return graph.set_entry_point("start").set_finish_point("done").compile()


def send_map(width: int) -> Graph:
    """``start`` writes a large ``doc``; one Send per item runs ``square`` on the item alone."""
    graph = Graph(f"map{width}")
    graph.add_node("start", lambda s: {"doc": "d" * MB, "items": list(range(width))})
    graph.add_node("square", node_type="square")
    graph.add_edge(START, "start")
    graph.add_conditional_edge("start", lambda s: [Send("square", {"item": i}) for i in s["items"]], ["square"])
    graph.add_edge("square", END)
    return graph.compile()


def reader_worker(backend: Backend, seen: list[Any], nested: list[Any] | None = None, **options: Any) -> Worker:
    nested = [] if nested is None else nested
    worker = Worker(["reader", "square"], capacity=64, backend=backend, poll_wait=0.05, **options)

    @worker.register("reader")
    def reader(state: State) -> dict[str, Any]:
        seen.append((len(state.get("doc", "")), state.get("doc", "")[:1], state.get("version")))
        # A node's own copy: no other task sees changes made in place, at any depth.
        state["doc"] = "changed in place"
        if "nested" in state:
            nested.append(list(state["nested"]["items"]))
            state["nested"]["items"].append("changed in place")
        return {}

    @worker.register("square")
    def square(state: State) -> dict[str, Any]:
        seen.append(sorted(state))
        return {}

    return worker


@pytest.mark.parametrize("shape", ["static", "send"])
def test_a_thousand_way_fan_out_over_a_1_mb_state_enqueues_kilobytes(shape: str) -> None:
    backend, queue = metered_backend()
    seen: list[Any] = []
    nested: list[Any] = []
    worker = reader_worker(backend, seen, nested)
    graph = static_fan_out(WIDTH) if shape == "static" else send_map(WIDTH)

    async def body() -> Any:
        async with Orchestrator(backend=backend, local_nodes=True) as orchestrator:
            return await orchestrator.execute(graph, {})

    result = run(serving(worker, body), 55)
    assert len(result["doc"]) == MB
    assert len(queue.payloads) == WIDTH
    if shape == "static":
        assert seen == [(MB, "d", 0)] * WIDTH  # every node read the whole state
        assert nested == [[0]] * WIDTH
        assert all("state" not in p and p["state_ref"]["step"] == 1 for p in queue.payloads)
        assert worker.state_cache.fetches == 1  # one read for the thousand tasks
    else:
        assert seen == [["item"]] * WIDTH  # a Send's node gets its argument only
        assert worker.state_cache.fetches == 0
    # Before: every task carried the state (1 GB). Now about 300 bytes a task.
    assert queue.enqueued_bytes <= 2 * MB, queue.enqueued_bytes


def test_a_small_state_travels_inside_the_task() -> None:
    backend, queue = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    graph = Graph("small").add_node("n", node_type="reader").set_entry_point("n").set_finish_point("n").compile()

    async def body() -> Any:
        async with Orchestrator(backend=backend) as orchestrator:
            return await orchestrator.execute(graph, {"doc": "s" * (INLINE_STATE_LIMIT - 100)})

    run(serving(worker, body), 30)
    assert [("state" in p, "state_ref" in p) for p in queue.payloads] == [(True, False)]
    assert worker.state_cache.fetches == 0


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_every_durability_mode_runs_nodes_on_the_dispatched_state(durability: str) -> None:
    """"async": the reference waits for the commit in flight; "exit": later steps are not written, so they carry it."""
    backend, queue = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    graph = Graph("chain" + durability)
    graph.add_node("start", lambda s: {"doc": "a" * 10_000, "version": 1})
    graph.add_node("r1", node_type="reader")
    graph.add_node("bump", lambda s: {"doc": "b" * 10_000, "version": 2})
    graph.add_node("r2", node_type="reader")
    graph.add_edge(START, "start").add_edge("start", "r1").add_edge("r1", "bump").add_edge("bump", "r2")
    graph.add_edge("r2", END)
    graph.compile()

    async def body() -> Any:
        async with Orchestrator(backend=backend) as orchestrator:
            return await orchestrator.execute(graph, {}, durability=durability)

    run(serving(worker, body), 30)
    assert seen == [(10_000, "a", 1), (10_000, "b", 2)]
    shapes = ["state_ref" if "state_ref" in p else "state" for p in queue.payloads]
    assert shapes == (["state", "state"] if durability == "exit" else ["state_ref", "state_ref"])


def test_a_workflow_started_again_under_its_id_never_gets_the_cached_state_of_the_first() -> None:
    """Same workflow id and step, another state: the worker's cache (warm with the first) is not used."""
    backend, _ = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)

    async def commit_and_run(letter: str, task_id: str) -> str:
        state = {"doc": letter * 10_000}
        await backend.state_store.save(WorkflowRecord("same", "g", "running", state, step=1), expected_version=0,
                                       checkpoint=Checkpoint("same", 1, state))
        call = NodeCall("same", "g", 1, "r", "reader", task_id, encode(state),
                        state_ref=state_ref(1, state, len(encode(state))))
        await backend.task_queue.enqueue(Task(task_id, "same", "r", "reader", task_payload(call)))
        return (await backend.task_queue.wait_results([task_id], timeout=10))[task_id].status

    async def body() -> list[str]:
        first = await commit_and_run("x", "t1")
        await backend.state_store.delete("same")
        return [first, await commit_and_run("y", "t2")]

    assert run(serving(worker, body), 30) == ["succeeded", "succeeded"]
    assert [letter for _, letter, _ in seen] == ["x", "y"]
    assert worker.state_cache.fetches == 2


def test_a_task_delivered_after_later_commits_runs_on_the_step_it_names() -> None:
    """A task of step 1 (a redelivery, a retry) read after steps 2 and 3 committed still gets step 1's state."""
    backend, _ = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    states = [{"doc": letter * 10_000, "version": n} for n, letter in enumerate("abcd")]

    async def body() -> Any:
        store = backend.state_store
        version = 0
        for step, state in enumerate(states):
            saved = await store.save(WorkflowRecord("late", "g", "running", state, step=step), expected_version=version,
                                     checkpoint=Checkpoint("late", step, state))
            version = saved.version
        call = NodeCall("late", "g", 1, "r", "reader", "late:0:1:r", encode(states[1]),
                        state_ref=state_ref(1, states[1], len(encode(states[1]))))
        await backend.task_queue.enqueue(Task(call.task_id, "late", "r", "reader", task_payload(call)))
        return await backend.task_queue.wait_results([call.task_id], timeout=10)

    results = run(serving(worker, body), 30)
    assert results["late:0:1:r"].status == "succeeded"
    assert seen == [(10_000, "b", 1)]


def test_a_task_whose_state_is_gone_is_dead_lettered_saying_so_and_the_worker_goes_on() -> None:
    backend, _ = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    graph = static_fan_out(3)

    async def scenario() -> tuple[list[Any], Any]:
        orchestrator = Orchestrator(backend=backend, wait_for_workers=True)
        running = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="gone"))
        queue = backend.task_queue
        while (await queue.stats("reader")).queued < 3:  # the fan-out is queued; no worker yet
            await asyncio.sleep(0.01)
        await backend.state_store.delete("gone")  # deleted (or expired) before a worker ran its tasks

        async def after() -> Any:
            while len(await queue.dead_letters("reader")) < 3:
                await asyncio.sleep(0.01)
            letters = await queue.dead_letters("reader")
            # The worker still serves: a small workflow runs.
            small = Graph("after").add_node("n", node_type="reader").set_entry_point("n").set_finish_point("n").compile()
            async with Orchestrator(backend=backend) as other:
                await other.execute(small, {"doc": "ok"})
            return letters

        letters = await serving(worker, after)
        outcome = (await asyncio.gather(running, return_exceptions=True))[0]
        await orchestrator.close()
        return letters, outcome

    letters, outcome = run(scenario(), 30)
    assert len(letters) == 3
    for letter in letters:
        assert letter.attempts == 1  # no retry: a state that is gone stays gone
        assert "TaskStateError" in letter.reason and "workflow 'gone' at step 1" in letter.reason, letter.reason
        assert "no longer stored" in letter.reason
    assert isinstance(outcome, Exception)
    assert seen == [(2, "o", None)]  # only the small workflow's node ran


def test_a_subgraph_childs_tasks_name_the_childs_own_state() -> None:
    backend, queue = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    child = Graph("child")
    child.add_node("prepare", lambda s: {"doc": "c" * 10_000, "version": 7})
    child.add_node("r", node_type="reader")
    child.add_edge(START, "prepare").add_edge("prepare", "r").add_edge("r", END)
    parent = Graph("parent")
    parent.add_node("start", lambda s: {"doc": "p" * 10_000, "version": 1})
    parent.add_node("sub", child.compile())
    parent.add_node("r", node_type="reader")
    parent.add_edge(START, "start").add_edge("start", "sub").add_edge("sub", "r").add_edge("r", END)
    parent.compile()

    async def body() -> Any:
        async with Orchestrator(backend=backend) as orchestrator:
            return await orchestrator.execute(parent, {})

    result = run(serving(worker, body), 30)
    assert seen == [(10_000, "c", 7), (10_000, "c", 7)]  # the child's node, then the parent's on the merged state
    assert result["doc"][0] == "c"
    refs = [p["state_ref"] for p in queue.payloads]
    assert len(refs) == 2 and refs[0]["digest"] == refs[1]["digest"]  # same content, two workflows


def _doc_graph(name: str) -> Graph:
    graph = Graph(name)
    graph.add_node("start", lambda s: {"doc": "a" * 10_000, "version": 1})
    graph.add_node("r", node_type="reader")
    graph.add_edge(START, "start").add_edge("start", "r").add_edge("r", END)
    return graph.compile()


def test_update_state_and_fork_dispatch_their_own_state_to_a_warm_worker() -> None:
    """After the worker read a state of a workflow, update_state (a new step) and a fork of an earlier
    checkpoint (a new workflow at the same step) each run their node on their own state."""
    backend, queue = metered_backend()
    seen: list[Any] = []
    worker = reader_worker(backend, seen)
    graph = _doc_graph("updates")

    async def body() -> None:
        async with Orchestrator(backend=backend) as orchestrator:
            await orchestrator.execute(graph, {}, workflow_id="orig")  # r reads "a": the cache is warm
            await orchestrator.update_state("orig", {"doc": "b" * 10_000, "version": 2}, as_node="start")
            await orchestrator.resume("orig")  # r runs again, on the update's step
            history = await orchestrator.get_state_history("orig")
            before_r = next(s for s in history if list(s.next) == ["r"])
            fork = await orchestrator.fork(before_r.checkpoint_id, workflow_id="forked")
            await orchestrator.update_state(fork, {"doc": "c" * 10_000, "version": 3}, as_node="start")
            await orchestrator.resume(fork)

    run(serving(worker, body), 30)
    assert seen == [(10_000, "a", 1), (10_000, "b", 2), (10_000, "c", 3)]
    steps = [(p["state_ref"]["step"]) for p in queue.payloads]
    assert steps == [1, 3, 4]  # the update of the completed run: step 3; the fork of that step, updated: step 4
    assert worker.state_cache.fetches == 3
