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

import types

import pytest

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
