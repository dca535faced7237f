"""Runs driven in the caller's task: stops (cancel_workflow, close, a lost lease) against the caller's own cancellation.

A run is driven in the task that awaits ``execute``; a stop cancels that task once and takes
the cancellation back. These tests check the caller never sees a stale cancellation, its own
cancellation is never swallowed, and the documented outcomes hold when both meet.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.core.errors import NodeExecutionError, WorkflowCancelledError
from distributed_agents.core.ports.state_store import WorkflowStatus
from support.aio import run

pytestmark = pytest.mark.timeout(30)


def _orchestrator(**options: Any) -> Orchestrator:
    return Orchestrator(backend=f"memory://rv8-{uuid.uuid4().hex[:8]}", **options)


def _blocking(started: asyncio.Event, release: asyncio.Event, name: str = "blocking") -> Graph:
    async def wait(state: State) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"done": True}

    return Graph(name).add_node("wait", wait).set_entry_point("wait").set_finish_point("wait").compile()


async def _outcome(awaitable: Any) -> tuple[str, Any]:
    try:
        return "ok", dict(await awaitable)
    except asyncio.CancelledError:
        return "CancelledError", None
    except Exception as exc:
        return type(exc).__name__, str(exc)


async def _stale_cancellation() -> bool:
    """Whether the running task has a cancellation left pending (its next real wait raises it)."""
    try:
        await asyncio.sleep(0.001)
    except asyncio.CancelledError:
        return True
    return False


@pytest.mark.parametrize("steps", [1, 2])
def test_a_node_cancelling_its_own_workflow_leaves_no_stale_cancellation(steps: int) -> None:
    async def scenario() -> tuple[tuple[str, Any], bool, tuple[str, Any], str]:
        orchestrator = _orchestrator()
        workflow_id = f"wf-self-{steps}"

        async def cancel_self(state: State) -> dict[str, Any]:
            await orchestrator.cancel_workflow(workflow_id)
            return {"x": 1}

        graph = Graph(f"self_cancel_{steps}").add_node("n", cancel_self)
        if steps == 2:
            graph = graph.add_node("a", lambda s: {"a": 1}).set_entry_point("a").add_edge("a", "n")
        else:
            graph = graph.set_entry_point("n")
        graph = graph.set_finish_point("n").compile()
        plain = Graph("plain").add_node("n", lambda s: {"y": 2}).set_entry_point("n").set_finish_point("n").compile()
        try:
            first = await _outcome(orchestrator.execute(graph, {}, workflow_id=workflow_id))
            stale = await _stale_cancellation()
            second = await _outcome(orchestrator.execute(plain, {}))
            status = (await orchestrator.get_workflow_status(workflow_id)).status
        finally:
            await orchestrator.close()
        return first, stale, second, status

    first, stale, second, status = run(scenario())
    assert first[0] == "WorkflowCancelledError" and status == WorkflowStatus.CANCELLED
    assert not stale
    assert second == ("ok", {"y": 2})


@pytest.mark.parametrize("order", ["own_first", "stop_first"])
def test_own_cancel_meeting_cancel_workflow_ends_execute_and_leaves_nothing_pending(order: str) -> None:
    # The caller's own task.cancel() and cancel_workflow from a third task, in either order.
    # (Both before and after driving in the caller's task: the stored CANCELLED wins and
    # execute raises WorkflowCancelledError; it never returns a result nor hangs.)
    async def scenario() -> tuple[tuple[str, Any], bool, str]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        caller = asyncio.ensure_future(orchestrator.execute(_blocking(started, release), {}, workflow_id="wf-both"))
        try:
            await started.wait()
            if order == "own_first":
                caller.cancel()
                cancelled = await orchestrator.cancel_workflow("wf-both")
            else:
                stopping = asyncio.ensure_future(orchestrator.cancel_workflow("wf-both"))
                while not caller.cancelling():
                    await asyncio.sleep(0)
                caller.cancel()
                cancelled = await stopping
            outcome = await _outcome(caller)
            status = (await orchestrator.get_workflow_status("wf-both")).status
        finally:
            await orchestrator.close()
        return outcome, cancelled, status

    outcome, cancelled, status = run(scenario())
    assert outcome[0] in ("WorkflowCancelledError", "CancelledError")
    assert cancelled and status == WorkflowStatus.CANCELLED


def test_a_timeout_firing_with_cancel_workflow_leaves_the_caller_task_clean() -> None:
    async def scenario() -> tuple[str, int, bool, str]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            try:
                async with asyncio.timeout(None) as deadline:
                    seen["deadline"] = deadline
                    await orchestrator.execute(_blocking(started, release), {}, workflow_id="wf-timeout-cancel")
            except (TimeoutError, WorkflowCancelledError) as exc:
                seen["error"] = type(exc).__name__
            task = asyncio.current_task()
            assert task is not None
            seen["cancelling"] = task.cancelling()
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            seen["deadline"].reschedule(asyncio.get_running_loop().time() - 1)  # due at the next loop pass
            assert await orchestrator.cancel_workflow("wf-timeout-cancel")
            await task
            status = (await orchestrator.get_workflow_status("wf-timeout-cancel")).status
        finally:
            await orchestrator.close()
        return seen["error"], seen["cancelling"], seen["stale"], status

    error, cancelling, stale, status = run(scenario())
    assert error in ("TimeoutError", "WorkflowCancelledError")
    assert (cancelling, stale, status) == (0, False, WorkflowStatus.CANCELLED)


@pytest.mark.parametrize("where", ["child_task", "parent_body"])
def test_execute_in_a_task_group_whose_sibling_fails_stops_and_stays_resumable(where: str) -> None:
    async def scenario() -> tuple[list[str], str, Any, dict[str, Any]]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        graph = _blocking(started, release, "tg")

        async def fail() -> None:
            await started.wait()
            raise ValueError("sibling failed")

        errors: list[str] = []
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    if where == "child_task":
                        group.create_task(orchestrator.execute(graph, {}, workflow_id="wf-tg"))
                        group.create_task(fail())
                    else:
                        group.create_task(fail())
                        await orchestrator.execute(graph, {}, workflow_id="wf-tg")
            except BaseExceptionGroup as group_error:
                errors = [type(e).__name__ for e in group_error.exceptions]
            status = (await orchestrator.get_workflow_status("wf-tg")).status
            holder = await orchestrator.backend.state_store.lease_holder("wf-tg")
            release.set()
            resumed = dict(await orchestrator.resume("wf-tg", graph))
        finally:
            await orchestrator.close()
        return errors, status, holder, resumed

    errors, status, holder, resumed = run(scenario())
    assert errors == ["ValueError"]
    assert status == WorkflowStatus.RUNNING and holder is None
    assert resumed == {"done": True}


def test_cancel_workflow_of_a_run_that_just_finished_changes_nothing() -> None:
    async def scenario() -> tuple[dict[str, Any], bool, str, bool]:
        orchestrator = _orchestrator()
        graph = Graph("quick").add_node("n", lambda s: {"n": 1}).set_entry_point("n").set_finish_point("n").compile()
        try:
            final = dict(await orchestrator.execute(graph, {}, workflow_id="wf-done"))
            cancelled = await orchestrator.cancel_workflow("wf-done")
            status = (await orchestrator.get_workflow_status("wf-done")).status
            stale = await _stale_cancellation()
        finally:
            await orchestrator.close()
        return final, cancelled, status, stale

    assert run(scenario()) == ({"n": 1}, False, WorkflowStatus.COMPLETED, False)


def test_cancel_workflow_racing_the_last_commit_agrees_with_execute() -> None:
    # The node returns and cancel_workflow starts in the same pass: either the run completed
    # first (cancel returns False, execute its state) or the cancel won (True, WorkflowCancelledError).
    async def scenario() -> list[tuple[str, bool, str]]:
        orchestrator = _orchestrator()
        results = []
        try:
            for i in range(6):
                returning = asyncio.Event()

                async def node(state: State) -> dict[str, Any]:
                    returning.set()
                    return {"n": 1}

                graph = Graph(f"race{i}").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()
                caller = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id=f"wf-race-{i}"))
                await returning.wait()
                for _ in range(i):
                    await asyncio.sleep(0)
                cancelled = await orchestrator.cancel_workflow(f"wf-race-{i}")
                outcome = await _outcome(caller)
                status = (await orchestrator.get_workflow_status(f"wf-race-{i}")).status
                results.append((outcome[0], cancelled, status))
        finally:
            await orchestrator.close()
        return results

    for outcome, cancelled, status in run(scenario()):
        assert (outcome, cancelled, status) in (("ok", False, WorkflowStatus.COMPLETED),
                                                ("WorkflowCancelledError", True, WorkflowStatus.CANCELLED))


def test_close_while_several_runs_are_awaited_stops_each_and_releases_every_lease() -> None:
    async def scenario() -> tuple[list[str], list[str], list[Any], list[dict[str, Any]]]:
        orchestrator = _orchestrator()
        await orchestrator.connect()
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(3)]
        graphs = [_blocking(s, r, f"close{i}") for i, (s, r) in enumerate(events)]
        callers = [asyncio.ensure_future(orchestrator.execute(g, {}, workflow_id=f"wf-close-{i}"))
                   for i, g in enumerate(graphs)]
        for started, _ in events:
            await started.wait()
        await orchestrator.close()
        outcomes = [(await _outcome(c))[0] for c in callers]
        store = orchestrator.backend.state_store
        statuses = [(await store.get(f"wf-close-{i}")).status for i in range(3)]  # type: ignore[union-attr]
        holders = [await store.lease_holder(f"wf-close-{i}") for i in range(3)]
        resumer = Orchestrator(backend=orchestrator.backend)
        for _, release in events:
            release.set()
        resumed = [dict(await resumer.resume(f"wf-close-{i}", g)) for i, g in enumerate(graphs)]
        return outcomes, statuses, holders, resumed

    outcomes, statuses, holders, resumed = run(scenario())
    assert outcomes == ["CancelledError"] * 3
    assert statuses == [WorkflowStatus.RUNNING] * 3 and holders == [None] * 3
    assert resumed == [{"done": True}] * 3


def test_a_lost_lease_meeting_the_callers_own_cancellation_propagates_it() -> None:
    # The lease runs out while a node blocks the loop; a thief takes it; the renewer stops the
    # run; the caller's own cancellation arrives in the same pass. execute must raise
    # CancelledError, not go on waiting for the thief's result.
    async def scenario() -> tuple[str, Any]:
        orchestrator = _orchestrator(lease_ttl=0.2)
        await orchestrator.connect()
        store = orchestrator.backend.state_store
        seen: dict[str, Any] = {}

        async def node(state: State) -> dict[str, Any]:
            time.sleep(0.35)  # the loop stalls past the lease's ttl (no renewal meanwhile)
            seen["thief"] = await store.acquire_lease("wf-lost", "thief", 30)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen["caller"].cancel()
                raise
            return {}

        graph = Graph("lost").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()
        caller = seen["caller"] = asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id="wf-lost"))
        try:
            done, _ = await asyncio.wait({caller}, timeout=10)
            outcome = (await _outcome(caller))[0] if done else "still waiting"
        finally:
            caller.cancel()
            await orchestrator.close()
        return outcome, seen.get("thief")

    outcome, thief = run(scenario())
    assert thief is not None
    assert outcome == "CancelledError"


def test_a_lost_lease_hands_the_result_of_the_new_owner_to_execute_and_the_task_stays_clean() -> None:
    async def scenario() -> tuple[tuple[str, Any], bool, tuple[str, Any], int]:
        orchestrator = _orchestrator(lease_ttl=0.2)
        await orchestrator.connect()
        store = orchestrator.backend.state_store
        calls: list[int] = []
        stolen = asyncio.Event()
        seen: dict[str, Any] = {}

        async def node(state: State) -> dict[str, Any]:
            calls.append(1)
            if len(calls) == 1:
                time.sleep(0.35)
                seen["thief"] = await store.acquire_lease("wf-thief", "thief", 30)
                stolen.set()
                await asyncio.Event().wait()
            return {"n": len(calls)}

        graph = Graph("thief").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()

        async def caller() -> None:
            seen["first"] = await _outcome(orchestrator.execute(graph, {}, workflow_id="wf-thief"))
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await stolen.wait()
            # until the renewer has stopped the run (its drive over, or gone once it has let go of the backend)
            while (drive := orchestrator._running.get("wf-thief")) is not None and not drive.done():
                await asyncio.sleep(0.01)
            await store.release_lease(seen["thief"])
            other = await _outcome(Orchestrator(backend=orchestrator.backend).resume("wf-thief", graph))
            await asyncio.wait_for(task, 10)
        finally:
            task.cancel()
            await orchestrator.close()
        return seen["first"], seen["stale"], other, len(calls)

    first, stale, other, calls = run(scenario())
    assert first == ("ok", {"n": 2}) and other == ("ok", {"n": 2})
    assert not stale and calls == 2


def test_cancel_workflow_of_a_parent_stops_its_in_process_subgraph_in_the_same_task() -> None:
    async def scenario() -> tuple[tuple[str, Any], bool, list[str]]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        child = _blocking(started, release, "child")
        parent = Graph("parent").add_node("sub", child).set_entry_point("sub").set_finish_point("sub").compile()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            seen["outcome"] = await _outcome(orchestrator.execute(parent, {}, workflow_id="wf-parent"))
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            assert await orchestrator.cancel_workflow("wf-parent")
            await task
            statuses = sorted(w.status for w in await orchestrator.list_workflows())
        finally:
            await orchestrator.close()
        return seen["outcome"], seen["stale"], statuses

    outcome, stale, statuses = run(scenario())
    assert outcome[0] == "WorkflowCancelledError" and not stale
    assert statuses == [WorkflowStatus.CANCELLED, WorkflowStatus.CANCELLED]


def test_cancelling_only_the_child_fails_the_parent_node_and_not_the_caller_task() -> None:
    async def scenario() -> tuple[str, bool, list[tuple[bool, str]]]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        child = _blocking(started, release, "child2")
        parent = Graph("parent2").add_node("sub", child).set_entry_point("sub").set_finish_point("sub").compile()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            try:
                await orchestrator.execute(parent, {}, workflow_id="wf-parent2")
                seen["outcome"] = "ok"
            except NodeExecutionError:
                seen["outcome"] = "NodeExecutionError"
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            child_id = [w.workflow_id for w in await orchestrator.list_workflows() if w.workflow_id != "wf-parent2"][0]
            assert await orchestrator.cancel_workflow(child_id)
            await task
            statuses = sorted((w.workflow_id == "wf-parent2", w.status) for w in await orchestrator.list_workflows())
        finally:
            await orchestrator.close()
        return seen["outcome"], seen["stale"], statuses

    outcome, stale, statuses = run(scenario())
    assert outcome == "NodeExecutionError" and not stale
    assert statuses == [(False, WorkflowStatus.CANCELLED), (True, WorkflowStatus.FAILED)]


def test_a_node_raising_its_own_cancelled_error_fails_even_when_the_caller_task_is_being_cancelled() -> None:
    async def scenario() -> tuple[str, str]:
        orchestrator = _orchestrator()
        await orchestrator.connect()

        async def node(state: State) -> dict[str, Any]:
            inner = asyncio.get_running_loop().create_future()
            inner.cancel()
            await inner  # a CancelledError of the node's own making (a future someone else cancelled)
            return {}

        graph = Graph("own_cancelled").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()
        seen: dict[str, str] = {}

        async def caller() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:  # cleanup work while this task is being cancelled
                seen["cleanup"] = (await _outcome(orchestrator.execute(graph, {}, workflow_id="wf-cleanup")))[0]
                raise

        task = asyncio.ensure_future(caller())
        try:
            await asyncio.sleep(0)
            task.cancel()
            await _outcome(task)
            status = (await orchestrator.get_workflow_status("wf-cleanup")).status
        finally:
            await orchestrator.close()
        return seen["cleanup"], status

    assert run(scenario()) == ("NodeExecutionError", WorkflowStatus.FAILED)


def test_execute_awaited_in_a_cleanup_handler_of_a_cancelled_task_runs_to_its_end() -> None:
    async def scenario() -> tuple[str, Any, bool]:
        orchestrator = _orchestrator()
        await orchestrator.connect()
        graph = Graph("cleanup").add_node("a", lambda s: {"n": 1}).add_node("b", lambda s: {"n": s["n"] + 1})
        graph = graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen["cleanup"] = await _outcome(orchestrator.execute(graph, {}))
                raise

        task = asyncio.ensure_future(caller())
        try:
            await asyncio.sleep(0)
            task.cancel()
            ended = (await _outcome(task))[0]
        finally:
            await orchestrator.close()
        return ended, seen["cleanup"], task.cancelled()

    assert run(scenario()) == ("CancelledError", ("ok", {"n": 2}), True)


def test_invoke_of_a_graph_whose_node_cancels_its_own_workflow_raises_workflow_cancelled() -> None:
    orchestrator = _orchestrator()

    async def node(state: State) -> dict[str, Any]:
        await orchestrator.cancel_workflow("wf-sync-self")
        return {"x": 1}

    graph = Graph("sync_self").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()
    with pytest.raises(WorkflowCancelledError):
        orchestrator.invoke(graph, {}, workflow_id="wf-sync-self")


@pytest.mark.parametrize("target", ["wf-outer", "wf-inner"])
def test_cancelling_either_of_two_nested_runs_in_one_task_stops_the_right_one(target: str) -> None:
    # A node of the outer run awaits execute() of an inner workflow: both runs are driven in
    # the caller's one task. Cancelling the outer stops both (the inner stays resumable);
    # cancelling the inner fails the outer's node.
    async def scenario() -> tuple[str, bool, dict[str, str]]:
        orchestrator = _orchestrator()
        await orchestrator.connect()
        started, release = asyncio.Event(), asyncio.Event()
        inner = _blocking(started, release, "inner")

        async def outer_node(state: State) -> dict[str, Any]:
            return {"got": (await orchestrator.execute(inner, {}, workflow_id="wf-inner"))["done"]}

        outer = Graph("outer").add_node("o", outer_node).set_entry_point("o").set_finish_point("o").compile()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            seen["outcome"] = (await _outcome(orchestrator.execute(outer, {}, workflow_id="wf-outer")))[0]
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            assert await orchestrator.cancel_workflow(target)
            await task
            statuses = {w.workflow_id: w.status for w in await orchestrator.list_workflows()}
        finally:
            await orchestrator.close()
        return seen["outcome"], seen["stale"], statuses

    outcome, stale, statuses = run(scenario())
    assert not stale
    if target == "wf-outer":
        assert outcome == "WorkflowCancelledError"
        assert statuses == {"wf-outer": WorkflowStatus.CANCELLED, "wf-inner": WorkflowStatus.RUNNING}
    else:
        assert outcome == "NodeExecutionError"
        assert statuses == {"wf-outer": WorkflowStatus.FAILED, "wf-inner": WorkflowStatus.CANCELLED}


def test_two_cancel_workflow_calls_at_once_stop_the_run_once() -> None:
    async def scenario() -> tuple[str, bool, list[bool]]:
        orchestrator = _orchestrator()
        await orchestrator.connect()
        started, release = asyncio.Event(), asyncio.Event()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            seen["outcome"] = (await _outcome(orchestrator.execute(_blocking(started, release), {},
                                                                   workflow_id="wf-twice")))[0]
            seen["stale"] = await _stale_cancellation()

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            answers = list(await asyncio.gather(orchestrator.cancel_workflow("wf-twice"),
                                                orchestrator.cancel_workflow("wf-twice")))
            await task
        finally:
            await orchestrator.close()
        return seen["outcome"], seen["stale"], sorted(answers)

    assert run(scenario()) == ("WorkflowCancelledError", False, [False, True])


def test_a_node_that_cancels_its_own_workflow_and_keeps_waiting_is_stopped_in_that_wait() -> None:
    async def scenario() -> tuple[str, bool, list[str]]:
        orchestrator = _orchestrator()
        reached: list[str] = []

        async def cancel_then_wait(state: State) -> dict[str, Any]:
            await orchestrator.cancel_workflow("wf-self-wait")
            reached.append("cancelled")
            await asyncio.sleep(3600)  # the stop lands here (the test's run() bound fails a hang)
            reached.append("slept")
            return {}

        graph = Graph("self_wait").add_node("n", cancel_then_wait).set_entry_point("n").set_finish_point("n").compile()
        try:
            outcome = (await _outcome(orchestrator.execute(graph, {}, workflow_id="wf-self-wait")))[0]
            stale = await _stale_cancellation()
        finally:
            await orchestrator.close()
        return outcome, stale, reached

    assert run(scenario()) == ("WorkflowCancelledError", False, ["cancelled"])


def test_a_node_of_a_fan_out_cancelling_its_own_workflow_stops_the_run_and_its_siblings() -> None:
    # In a step of several in-process nodes each runs in a task of its own (gather): the stop
    # comes from a task other than the run's, and must reach the caller's task and the siblings.
    async def scenario() -> tuple[str, bool, str, list[str]]:
        orchestrator = _orchestrator()
        sibling_stopped: list[str] = []
        sibling_started = asyncio.Event()

        async def canceller(state: State) -> dict[str, Any]:
            await sibling_started.wait()
            await orchestrator.cancel_workflow("wf-fan-self")
            return {"a": 1}

        async def sibling(state: State) -> dict[str, Any]:
            sibling_started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                sibling_stopped.append("cancelled")
                raise
            return {"b": 1}

        graph = Graph("fan_self").add_node("start", lambda s: {}).add_node("a", canceller).add_node("b", sibling)
        graph = graph.set_entry_point("start").add_edge("start", "a").add_edge("start", "b")
        graph = graph.set_finish_point("a").set_finish_point("b").compile()
        try:
            outcome = (await _outcome(orchestrator.execute(graph, {}, workflow_id="wf-fan-self")))[0]
            stale = await _stale_cancellation()
            status = (await orchestrator.get_workflow_status("wf-fan-self")).status
        finally:
            await orchestrator.close()
        return outcome, stale, status, sibling_stopped

    assert run(scenario()) == ("WorkflowCancelledError", False, WorkflowStatus.CANCELLED, ["cancelled"])


@pytest.mark.parametrize("first", ["caller", "cancel_workflow"])
def test_the_callers_own_cancellation_is_not_swallowed_when_cancel_workflow_meets_it(first: str) -> None:
    async def scenario() -> tuple[int | None, bool]:
        started, release = asyncio.Event(), asyncio.Event()
        orchestrator = _orchestrator()
        await orchestrator.connect()
        seen: dict[str, Any] = {}

        async def caller() -> None:
            try:
                await orchestrator.execute(_blocking(started, release), {}, workflow_id="wf-swallow")
            except WorkflowCancelledError:
                pass  # the workflow's documented error; the task's own cancellation must go on
            task = asyncio.current_task()
            assert task is not None
            seen["cancelling"] = task.cancelling()
            await asyncio.sleep(0.001)  # a task being cancelled stops at its next wait

        task = asyncio.ensure_future(caller())
        try:
            await started.wait()
            if first == "caller":
                task.cancel()
                assert await orchestrator.cancel_workflow("wf-swallow")
            else:
                stopping = asyncio.ensure_future(orchestrator.cancel_workflow("wf-swallow"))
                while not task.cancelling():  # the stop has reached the caller's task
                    await asyncio.sleep(0)
                task.cancel()
                assert await stopping
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await orchestrator.close()
        return seen.get("cancelling"), task.cancelled()

    cancelling, cancelled = run(scenario())
    # execute raises the caller's CancelledError (cancelling stays unset) or returns WorkflowCancelledError
    # with the cancellation still pending for the next wait; either way the task ends cancelled.
    assert cancelled, f"the caller's task ran on after its own cancel (cancelling() == {cancelling})"
