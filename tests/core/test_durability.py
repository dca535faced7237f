"""Durability modes (``execute(..., durability=)``): what is written when, on the memory backend.

Writes are counted by a real ``MemoryStateStore`` subclass that records each ``save``
(the engine and the orchestrator are the real ones); the step loop is not mocked.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.core.errors import ConfigurationError, NodeExecutionError, WorkflowCancelledError
from distributed_agents.core.interrupts import interrupt
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.types import Command

pytestmark = pytest.mark.timeout(60)
MODES = ["sync", "async", "exit"]


class CountingStore(MemoryStateStore):
    """A memory state store that logs every save: (status, record step, checkpoint step or None).

    ``gate`` (checkpoint step -> event) holds the save of that checkpoint until the event is set.
    """

    def __init__(self, inner: MemoryStateStore) -> None:
        super().__init__(inner._data, state_ttl=inner.state_ttl)
        self.saves: list[tuple[str, int, int | None]] = []
        self.gate: dict[int, asyncio.Event] = {}

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        if checkpoint is not None and checkpoint.step in self.gate:
            await self.gate[checkpoint.step].wait()
        saved = await super().save(record, expected_version=expected_version, checkpoint=checkpoint,
                                   fencing_token=fencing_token)
        self.saves.append((record.status, record.step, None if checkpoint is None else checkpoint.step))
        return saved


def counting_orchestrator(**kwargs: Any) -> tuple[Orchestrator, CountingStore]:
    orchestrator = Orchestrator(backend=f"memory://durability-{uuid.uuid4().hex[:8]}", **kwargs)
    inner = orchestrator.backend.state_store
    assert isinstance(inner, MemoryStateStore)
    store = CountingStore(inner)
    orchestrator.backend.state_store = store
    return orchestrator, store


def chain(length: int, name: str = "chain", **hooks: Any) -> Graph:
    """n0 -> n1 -> ... each appending its name to ``path``; ``hooks[name](state)`` runs first."""
    graph = Graph(name, reducers={"path": "append"})
    names = [f"n{i}" for i in range(length)]
    for node in names:
        def make(node: str) -> Any:
            async def step(state: State) -> dict[str, Any]:
                hook = hooks.get(node)
                if hook is not None:
                    result = hook(state)
                    if asyncio.iscoroutine(result):
                        await result
                return {"path": node, "last": node}
            return step
        graph.add_node(node, make(node))
    graph.set_entry_point(names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(names[-1]).compile()


@pytest.mark.parametrize("mode", MODES)
def test_store_writes_per_mode(mode: str) -> None:
    async def scenario() -> tuple[list[tuple[str, int, int | None]], dict[str, Any], list[int], Any]:
        orchestrator, store = counting_orchestrator()
        try:
            result = await orchestrator.execute(chain(5), {}, workflow_id="wf", durability=mode)
            history = await orchestrator.get_state_history("wf")
            record = await store.get("wf")
            assert record is not None
            return store.saves, dict(result), [s.step for s in history], (history, record)
        finally:
            await orchestrator.close()

    saves, result, steps, (history, record) = run(scenario())
    assert result["path"] == ["n0", "n1", "n2", "n3", "n4"]
    if mode == "exit":
        # The start, then one write at the end carrying the last step's checkpoint.
        assert saves == [("running", 0, 0), ("completed", 5, 5)]
        assert steps == [5, 0]
        assert history[0].parent_checkpoint_id == "wf:0"  # the last one written before it
        assert record.metadata["durability"] == "exit"
    else:
        assert saves == [("running", 0, 0), *[("running", s, s) for s in range(1, 5)], ("completed", 5, 5)]
        assert steps == [5, 4, 3, 2, 1, 0]
        assert [s.parent_checkpoint_id for s in history] == ["wf:4", "wf:3", "wf:2", "wf:1", "wf:0", None]
        assert record.metadata.get("durability") == (None if mode == "sync" else mode)


def test_async_history_is_identical_to_sync() -> None:
    def graph() -> Graph:
        graph = Graph("loop", reducers={"log": "append"})
        graph.add_node("inc", lambda s: {"n": s.get("n", 0) + 1, "log": f"inc{s.get('n', 0) + 1}"})
        graph.add_node("left", lambda s: {"log": "left"}).add_node("right", lambda s: {"log": "right"})
        graph.add_node("done", lambda s: {"finished": True})
        graph.set_entry_point("inc")
        graph.add_conditional_edge("inc", lambda s: "again" if s["n"] < 3 else "stop",
                                   {"again": "inc", "stop": "left"})
        graph.add_edge("inc", "right")
        graph.add_edge(["left", "right"], "done")
        return graph.set_finish_point("done").compile()

    def shape(snapshots: Any) -> list[Any]:
        return [(s.step, s.values, s.next, s.parent_checkpoint_id, s.metadata["writes"], s.status) for s in snapshots]

    async def scenario(mode: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
        orchestrator, store = counting_orchestrator()
        try:
            result = await orchestrator.execute(graph(), {"n": 0}, workflow_id="wf", durability=mode)
            return dict(result), shape(await orchestrator.get_state_history("wf")), store.saves
        finally:
            await orchestrator.close()

    sync_result, sync_history, sync_saves = run(scenario("sync"))
    async_result, async_history, async_saves = run(scenario("async"))
    assert async_result == sync_result
    assert async_history == sync_history
    assert async_saves == sync_saves  # the same writes, in the same order


def test_async_commit_is_written_while_the_next_step_runs() -> None:
    """The commit of step 1 cannot finish until n1 (which runs in the next step) has started."""
    async def scenario() -> dict[str, Any]:
        orchestrator, store = counting_orchestrator()
        n1_started = asyncio.Event()
        store.gate[1] = n1_started
        try:
            result = await orchestrator.execute(chain(3, n1=lambda s: n1_started.set()), {}, workflow_id="wf",
                                                durability="async")
            assert [cp for *_, cp in store.saves] == [0, 1, 2, 3]
            return dict(result)
        finally:
            await orchestrator.close()

    assert run(scenario(), timeout=20)["path"] == ["n0", "n1", "n2"]


def test_async_commit_refused_stops_the_run() -> None:
    """Cancelled while step 1's commit is in flight: the commit is refused, the running step stops."""
    ran: list[str] = []

    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        release = asyncio.Event()
        store.gate[1] = release

        async def n1(state: State) -> None:
            ran.append("n1")
            # Cancel from "another process" (no in-process cancel of the drive), then let the commit go.
            record = await store.get("wf")
            assert record is not None
            await MemoryStateStore.save(store, record.evolve(status="cancelled"), expected_version=record.version)
            release.set()
            await asyncio.sleep(30)  # stopped by the refused commit, not finished

        try:
            with pytest.raises(WorkflowCancelledError):
                await orchestrator.execute(chain(3, n1=n1), {}, workflow_id="wf", durability="async")
        finally:
            await orchestrator.close()

    run(scenario(), timeout=20)
    assert ran == ["n1"]


def test_exit_mode_interrupt_writes_progress_and_resumes() -> None:
    def graph() -> Graph:
        graph = Graph("approve", reducers={"path": "append"})
        graph.add_node("draft", lambda s: {"path": "draft"})
        graph.add_node("edit", lambda s: {"path": "edit"})
        graph.add_node("ask", lambda s: {"path": "ask", "answer": interrupt("ok?")})
        graph.add_node("send", lambda s: {"path": "send"})
        graph.set_entry_point("draft").add_edge("draft", "edit").add_edge("edit", "ask").add_edge("ask", "send")
        return graph.set_finish_point("send").compile()

    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        try:
            paused = await orchestrator.execute(graph(), {}, workflow_id="wf", durability="exit")
            assert paused["__interrupt__"][0]["value"] == "ok?"
            # One write for the pause, carrying step 2's checkpoint.
            assert store.saves == [("running", 0, 0), ("interrupted", 2, 2)]
            state = await orchestrator.get_state("wf")
            assert state.values["path"] == ["draft", "edit"] and state.next == ("ask",)
            # A resume from another orchestrator keeps the mode: no writes until the end.
            other = Orchestrator(backend=orchestrator.backend)
            final = await other.resume("wf", graph(), Command(resume="yes"))
            assert final["path"] == ["draft", "edit", "ask", "send"] and final["answer"] == "yes"
            assert [cp for *_, cp in store.saves[2:]] == [None, 4]  # the resume's own record write, the end
            assert [s.step for s in await orchestrator.get_state_history("wf")] == [4, 2, 0]
            await other.close()
        finally:
            await orchestrator.close()

    run(scenario())


def test_exit_mode_failure_writes_progress_and_resume_reruns_only_the_failed_step() -> None:
    calls: list[str] = []
    fail = {"n2": True}

    def n2(state: State) -> None:
        calls.append("n2")
        if fail["n2"]:
            raise RuntimeError("flaky")

    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        try:
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(chain(4, n0=lambda s: calls.append("n0"), n2=n2), {}, workflow_id="wf",
                                           durability="exit")
            assert [(status, step, cp) for status, step, cp in store.saves] == [("running", 0, 0), ("failed", 2, 2)]
            fail["n2"] = False
            final = await orchestrator.resume("wf")
            assert final["path"] == ["n0", "n1", "n2", "n3"]
        finally:
            await orchestrator.close()

    run(scenario())
    assert calls == ["n0", "n2", "n2"]  # n0 is not run again: the failure wrote the progress


def test_exit_mode_cancellation_writes_progress_as_cancelled() -> None:
    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        started = asyncio.Event()

        async def n2(state: State) -> None:
            started.set()
            await asyncio.sleep(30)

        try:
            task = asyncio.ensure_future(orchestrator.execute(chain(4, n2=n2), {}, workflow_id="wf",
                                                              durability="exit"))
            await started.wait()
            assert await orchestrator.cancel_workflow("wf")
            with pytest.raises(WorkflowCancelledError):
                await task
            state = await orchestrator.get_state("wf")
            assert state.status == "cancelled" and state.step == 2 and state.values["path"] == ["n0", "n1"]
            assert [s.step for s in await orchestrator.get_state_history("wf")] == [2, 0]
        finally:
            await orchestrator.close()

    run(scenario())


def test_durability_is_validated() -> None:
    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        try:
            with pytest.raises(ConfigurationError, match=r"durability must be one of 'sync', 'async', 'exit'"):
                await orchestrator.execute(chain(2), {}, durability="fast")
            with pytest.raises(ConfigurationError, match="durability"):
                await orchestrator.submit(chain(2), {}, durability="EXIT")
            assert store.saves == []  # nothing was written
            await orchestrator.execute(chain(2), {}, workflow_id="wf")
            with pytest.raises(ConfigurationError, match=r"resume\(durability='never'\)"):
                await orchestrator.resume("wf", durability="never")
        finally:
            await orchestrator.close()

    run(scenario())


def test_submit_takes_durability() -> None:
    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        try:
            workflow_id = await orchestrator.submit(chain(4), {}, durability="exit")
            result = await orchestrator.wait(workflow_id, timeout=20)
            assert result["path"] == ["n0", "n1", "n2", "n3"]
            assert [cp for *_, cp in store.saves] == [0, 4]
        finally:
            await orchestrator.close()

    run(scenario())


def test_exit_mode_close_writes_progress_and_resume_goes_on_from_it() -> None:
    """Closing the orchestrator (the process stops) is an exit too: the steps done so far are written."""
    calls: list[str] = []

    async def scenario() -> None:
        orchestrator, store = counting_orchestrator()
        started = asyncio.Event()
        blocked = {"n2": True}

        async def n2(state: State) -> None:
            calls.append("n2")
            if blocked["n2"]:
                started.set()
                await asyncio.sleep(30)

        graph = chain(4, n0=lambda s: calls.append("n0"), n2=n2)
        task = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="wf", durability="exit"))
        await started.wait()
        await orchestrator.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.saves == [("running", 0, 0), ("running", 2, 2)]
        blocked["n2"] = False
        again = Orchestrator(backend=orchestrator.backend)
        try:
            final = await again.resume("wf", graph)
            assert final["path"] == ["n0", "n1", "n2", "n3"]
            assert [s.step for s in await again.get_state_history("wf")] == [4, 2, 0]
        finally:
            await again.close()

    run(scenario())
    assert calls == ["n0", "n2", "n2"]
