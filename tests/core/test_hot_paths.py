"""The step loop's hot coroutines keep no closure cells alive while a workflow runs.

In Python 3.11 a comprehension or nested function that reads a local of its enclosing
function turns that local into a cell: a GC-tracked object made on every call, kept for
as long as the call is suspended. The coroutines below are suspended for a whole step
or run, hundreds at once in one orchestrator, so each cell is visited by several
garbage collections before it is freed (about a fifth of an orchestrator's CPU went to
collections at 200 workflows in flight). Their rare paths live in helper functions
instead; this check names the function and the locals that became cells.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import sys
import types
from typing import Any

import pytest

from distributed_agents import Graph, State
from distributed_agents.core.engine import StepEngine
from distributed_agents.core.executors import TaskQueueExecutor
from distributed_agents.core.orchestrator import Orchestrator

HOT = [
    StepEngine._observed_drive, StepEngine._run, StepEngine._drive_steps, StepEngine._run_step, StepEngine._commit,
    StepEngine._write, StepEngine._save_once,
    Orchestrator.execute, Orchestrator._start, Orchestrator._create,
    Orchestrator._create_leased_once, Orchestrator._engine, Orchestrator._drive,
    TaskQueueExecutor.run,
]


@pytest.mark.parametrize("function", HOT, ids=lambda f: f.__qualname__)
def test_hot_coroutines_make_no_closure_cells(function: types.FunctionType) -> None:
    cells = function.__code__.co_cellvars
    assert cells == (), (
        f"{function.__qualname__} turns {cells} into cells (a comprehension, lambda or nested function reads "
        "them): move that code into a module function taking them as arguments")


def test_the_check_sees_a_comprehension_that_reads_a_local() -> None:
    async def reads(items: list[int], limit: int) -> list[int]:
        return [item for item in items if item < limit]

    async def passes(items: list[int], limit: int) -> list[int]:
        kept = []
        for item in items:
            if item < limit:
                kept.append(item)
        return kept

    assert reads.__code__.co_cellvars == ("limit",)
    assert passes.__code__.co_cellvars == ()


def test_pass_through_saves_and_drives_add_no_coroutine_layer() -> None:
    # Every resumption of a suspended step (the create's, the result's and the commit's round
    # trips) passes through each coroutine of the await chain, and each is a GC-tracked object
    # alive while the workflow waits: a function that only hands on to another returns the
    # inner coroutine instead of awaiting it in a coroutine of its own.
    import inspect

    from distributed_agents.core.events import EventPublisher
    from distributed_agents.core.subgraphs import NamespacedEvents
    from distributed_agents.core.waiting import NotingStore

    # (A backend's own port methods stay ``async def``: the conformance suite asks for it.)
    for function in (StepEngine.drive, StepEngine._save_once, NotingStore.save, NotingStore.save_releasing,
                     EventPublisher.flush, NamespacedEvents.flush):
        assert not inspect.iscoroutinefunction(function), function.__qualname__
    assert not hasattr(TaskQueueExecutor, "_run"), "TaskQueueExecutor.run waits for its results itself"
    assert not hasattr(Orchestrator, "_create_leased"), "Orchestrator._create creates the workflow itself"


def _count_coroutines_started(started: collections.Counter[str]) -> None:
    """Count the coroutines (as ``file.py:name``) this thread starts into ``started``, until ``sys.setprofile(None)``."""
    def hook(frame: types.FrameType, event: str, arg: object) -> None:
        # A coroutine's first entry (a resumption re-enters past its first instructions).
        if event == "call" and frame.f_code.co_flags & inspect.CO_COROUTINE and frame.f_lasti <= 8:
            started[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"] += 1

    sys.setprofile(hook)


def test_a_connected_orchestrators_plain_steps_make_no_coroutine_to_connect_route_commit_or_flush() -> None:
    # A steady workflow passes no layer that only hands on: connecting again, routing a
    # plain edge, a "sync" commit's wrapper, and waiting for its events are no coroutines.
    graph = Graph("hot_plain").add_node("a", lambda state: {"n": 1}).add_node("b", lambda state: {"n": 2})
    graph = graph.set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile()

    async def scenario() -> collections.Counter[str]:
        orchestrator = Orchestrator()
        started: collections.Counter[str] = collections.Counter()
        try:
            assert await orchestrator.execute(graph, {}) == {"n": 2}  # connected, publisher started
            _count_coroutines_started(started)
            try:
                assert await orchestrator.execute(graph, {}) == {"n": 2}
            finally:
                sys.setprofile(None)
            return started
        finally:
            await orchestrator.close()

    started = asyncio.run(scenario())
    assert started["orchestrator.py:execute"] == 1, started  # the hook saw the run
    for name in ("orchestrator.py:connect", "graph.py:next_frontier", "engine.py:_commit", "engine.py:_commit_in_mode",
                 "events.py:wait_published"):
        assert started[name] == 0, f"{name} started {started[name]} time(s) in a plain run: {dict(started)}"
    assert started["engine.py:_write"] == 2  # the two steps' commits, written as they are


def test_plain_frontier_answers_as_next_frontier_does_or_not_at_all() -> None:
    graph = Graph("plain_or_not").add_node("a", lambda s: None).add_node("b", lambda s: None)
    graph.add_node("c", lambda s: None).add_node("d", lambda s: None)
    graph.set_entry_point("a").add_edge("a", "b").add_edge("a", "c")
    graph.add_conditional_edges("b", lambda s: "d", ["d"])
    graph = graph.add_edge("c", "d").set_finish_point("d").compile()

    async def general(ran: list[str]) -> dict[str, Any]:
        return await graph.next_frontier(ran, State({}), {})

    assert graph.plain_frontier(["a"]) == asyncio.run(general(["a"])) == {"next": ["b", "c"], "joins": {}}
    assert graph.plain_frontier(["b"]) is None  # a condition runs: next_frontier's to answer
    assert graph.plain_frontier(["a", "c"]) is None  # two nodes ran
    assert graph.plain_frontier(["c"], deferred=["x"]) is None
    assert graph.plain_frontier(["c"], gotos=[("c", ["d"])]) is None
