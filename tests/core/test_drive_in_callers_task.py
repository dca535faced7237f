"""A workflow run is driven in the task that awaits ``execute``, not in a task of its own.

One task per run cost a task, its context copy, a weak reference and two loop passes
per workflow, with hundreds in flight. Stopping a run (``cancel_workflow``, ``close``, a
lost lease) therefore cancels the caller's task once and takes that cancellation back
when the run has stopped: the caller sees what ``execute`` documents
(``WorkflowCancelledError``, ...), and its own cancellations and timeouts work as before.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.core.errors import WorkflowCancelledError
from distributed_agents.core.ports.state_store import WorkflowStatus
from support.aio import run


def _blocking_graph(started: asyncio.Event, release: asyncio.Event) -> Graph:
    async def wait(state: State) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"done": True}

    return Graph("blocking").add_node("wait", wait).set_entry_point("wait").set_finish_point("wait").compile()


def _orchestrator() -> Orchestrator:
    return Orchestrator(backend=f"memory://drive-{uuid.uuid4().hex[:8]}")


def test_a_run_is_driven_in_the_task_that_awaits_execute() -> None:
    async def scenario() -> tuple[bool, list[str], Any]:
        started, release = asyncio.Event(), asyncio.Event()
        made: list[str] = []
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            made.append(getattr(coro, "__qualname__", type(coro).__name__))
            return asyncio.Task(coro, loop=loop, **kwargs)

        orchestrator = _orchestrator()
        await orchestrator.connect()
        loop.set_task_factory(factory)
        try:
            caller = asyncio.ensure_future(orchestrator.execute(_blocking_graph(started, release), {},
                                                                workflow_id="wf-inline"))
            await started.wait()
            same = orchestrator._running["wf-inline"].task is caller
            release.set()
            final = await caller
        finally:
            loop.set_task_factory(None)
            await orchestrator.close()
        return same, made, final.get("done")

    same, made, done = run(scenario())
    assert same and done is True
    assert not [name for name in made if name.startswith("StepEngine.")], made


def test_cancel_workflow_ends_the_callers_execute_with_workflow_cancelled_and_nothing_pending() -> None:
    async def scenario() -> tuple[str, int, str]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        outcome: list[str] = []

        async def caller() -> int:
            try:
                await orchestrator.execute(_blocking_graph(started, release), {}, workflow_id="wf-cancel")
            except WorkflowCancelledError:
                outcome.append("cancelled")
            await asyncio.sleep(0)  # no cancellation of the run's is left pending on this task
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling() if sys.version_info >= (3, 11) else 0

        try:
            await orchestrator.connect()
            task = asyncio.ensure_future(caller())
            await started.wait()
            assert await orchestrator.cancel_workflow("wf-cancel")
            left = await task
            status = (await orchestrator.get_workflow_status("wf-cancel")).status
        finally:
            await orchestrator.close()
        return outcome[0], left, status

    assert run(scenario()) == ("cancelled", 0, WorkflowStatus.CANCELLED)


def test_the_callers_own_timeout_still_cancels_execute() -> None:
    async def scenario() -> tuple[bool, str]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        try:
            await orchestrator.connect()
            timed_out = False
            try:
                await asyncio.wait_for(orchestrator.execute(_blocking_graph(started, release), {},
                                                            workflow_id="wf-timeout"), 0.2)
            except asyncio.TimeoutError:
                timed_out = True
            status = (await orchestrator.get_workflow_status("wf-timeout")).status
            return timed_out, status
        finally:
            await orchestrator.close()

    # Stopped by its caller, the workflow stays resumable (running, its lease released).
    assert run(scenario()) == (True, WorkflowStatus.RUNNING)


def test_close_stops_a_run_driven_in_the_callers_task() -> None:
    async def scenario() -> str:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        task = asyncio.ensure_future(orchestrator.execute(_blocking_graph(started, release), {},
                                                          workflow_id="wf-close"))
        await started.wait()
        await orchestrator.close()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert run(scenario()) == "cancelled"


@pytest.mark.parametrize("runs", [1, 3])
def test_several_runs_of_one_caller_task_each_finish(runs: int) -> None:
    # One task driving runs one after another (a loop of execute calls): each run's handle
    # is its own; none leaves a cancellation behind for the next.
    graph = Graph("one").add_node("n", lambda s: {"n": s.get("n", 0) + 1}).set_entry_point("n") \
        .set_finish_point("n").compile()

    async def scenario() -> list[int]:
        orchestrator = _orchestrator()
        try:
            return [(await orchestrator.execute(graph, {"n": i}))["n"] for i in range(runs)]
        finally:
            await orchestrator.close()

    assert run(scenario()) == [i + 1 for i in range(runs)]
