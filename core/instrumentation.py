"""Hooks for traces and metrics: what the step engine, the executors and workers report.

The core only calls these hooks; the OpenTelemetry and Prometheus implementations live
in the facade (``distributed_agents.telemetry``, ``distributed_agents.metrics``) with
their optional dependencies. With no observer installed every call site is one
``is None`` test: nothing is allocated or called per step or per task.

An observer subclasses ``Instrumentation`` and overrides what it needs (every method
is a no-op here). Each ``*_started`` hook returns a handle (anything; None is fine)
that the matching ``*_ended`` hook receives. A started/ended pair is always called
from the same asyncio task, so an implementation may bind a context variable in one
and reset it in the other (the OpenTelemetry one makes its span the current span, so
spans a node function makes itself become children of the node's span).

What is reported:

* a workflow run: ``workflow_started`` when a process starts driving a workflow
  (``execute``, ``resume``, a takeover), ``workflow_ended`` when it stops driving it,
  with the status the workflow was left in (``WorkflowStatus`` values, or
  ``"stopped"`` when this process stopped driving it and it stays resumable);
* a step: ``step_started`` before the step's tasks run, ``step_ended`` after its
  commit (or with the error that ended the run). ``carrier(step)`` is the trace
  context the step's tasks carry, a ``{str: str}`` dict (W3C ``traceparent`` and
  friends) put into the task payload under ``"trace"``, or None for none;
* a node attempt: ``node_started`` / ``node_ended`` around one attempt of a node,
  in-process (``worker_id`` empty) or on a worker (one claim), with its ``outcome``
  (``OUTCOMES``) and the exception for a failed one;
* ``watch(backend, node_types)``: a coroutine a ``Worker`` (with the types it serves)
  and an ``Orchestrator`` (with none) run while they serve, cancelled when they stop;
  e.g. to poll queue depths.

Hooks must not raise: the core does not guard the calls (that would cost every run
something), so an exception out of a hook fails what called it. The facade's observers
catch and log their own errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CANCELLED", "DEAD_LETTERED", "FAILED", "Instrumentation", "NodeAttempt", "OUTCOMES", "RETRIED",
           "SUCCEEDED", "TRACE_KEY", "combine", "install", "installed", "trace_carrier"]

TRACE_KEY = "trace"  # in a task payload: the trace context of the step that enqueued it

SUCCEEDED = "succeeded"  # the attempt returned its updates
RETRIED = "retried"  # the attempt failed; another attempt follows (after the policy's delay)
FAILED = "failed"  # the attempt failed and no other follows (in-process: the node's final failure)
DEAD_LETTERED = "dead_lettered"  # on a worker: the attempt failed finally (or the task was malformed)
CANCELLED = "cancelled"  # stopped from outside: workflow cancelled, worker stopping, lease lost
OUTCOMES = (SUCCEEDED, RETRIED, FAILED, DEAD_LETTERED, CANCELLED)


@dataclass(frozen=True)
class NodeAttempt:
    """One attempt of one node task, as ``node_started`` sees it.

    ``step`` is the workflow step, ``attempt`` counts from 1, ``worker_id`` is empty
    for a node run in the orchestrator's process, ``trace`` is the carrier of the step
    that enqueued it (see ``Instrumentation.carrier``), ``graph`` the graph's name (empty
    when a task's payload does not say).
    """

    workflow_id: str
    step: int
    node: str
    node_type: str
    task_id: str
    attempt: int
    worker_id: str = ""
    graph: str = ""
    trace: Mapping[str, str] | None = None


class Instrumentation:
    """Base observer: every hook does nothing. Override the ones you need."""

    def workflow_started(self, workflow_id: str, graph: str, step: int) -> Any:
        """A process starts driving ``workflow_id`` of ``graph`` at ``step``; returns a handle."""
        return None

    def workflow_ended(self, handle: Any, status: str, error: BaseException | None) -> None:
        """The run of ``workflow_started`` ended, leaving the workflow in ``status``."""

    def step_started(self, workflow: Any, workflow_id: str, step: int, nodes: Sequence[str]) -> Any:
        """Step ``step`` (of the run ``workflow`` is the handle of) runs ``nodes``; returns a handle."""
        return None

    def step_ended(self, handle: Any, error: BaseException | None) -> None:
        """The step committed (``error`` None), or the run ended in it with ``error``."""

    def carrier(self, step: Any) -> dict[str, str] | None:
        """The trace context the tasks of step ``step`` (a handle) carry to workers, or None."""
        return None

    def node_started(self, attempt: NodeAttempt) -> Any:
        """An attempt of a node starts; returns a handle."""
        return None

    def node_ended(self, handle: Any, outcome: str, error: BaseException | None) -> None:
        """The attempt ended with ``outcome`` (one of ``OUTCOMES``); ``error`` for a failed one."""

    async def watch(self, backend: Any, node_types: frozenset[str]) -> None:
        """Run while a worker (serving ``node_types``) or an orchestrator (none) serves; cancelled at stop."""


class _Combined(Instrumentation):
    """Several observers as one: each hook calls each in turn; handles are tuples."""

    def __init__(self, observers: Sequence[Instrumentation]) -> None:
        self.observers = tuple(observers)

    def workflow_started(self, workflow_id: str, graph: str, step: int) -> Any:
        return tuple(o.workflow_started(workflow_id, graph, step) for o in self.observers)

    def workflow_ended(self, handle: Any, status: str, error: BaseException | None) -> None:
        for observer, own in reversed(list(zip(self.observers, handle))):
            observer.workflow_ended(own, status, error)

    def step_started(self, workflow: Any, workflow_id: str, step: int, nodes: Sequence[str]) -> Any:
        return tuple(o.step_started(w, workflow_id, step, nodes) for o, w in zip(self.observers, workflow))

    def step_ended(self, handle: Any, error: BaseException | None) -> None:
        for observer, own in reversed(list(zip(self.observers, handle))):
            observer.step_ended(own, error)

    def carrier(self, step: Any) -> dict[str, str] | None:
        merged: dict[str, str] = {}
        for observer, own in zip(self.observers, step):
            merged.update(observer.carrier(own) or {})
        return merged or None

    def node_started(self, attempt: NodeAttempt) -> Any:
        return tuple(o.node_started(attempt) for o in self.observers)

    def node_ended(self, handle: Any, outcome: str, error: BaseException | None) -> None:
        for observer, own in reversed(list(zip(self.observers, handle))):
            observer.node_ended(own, outcome, error)

    async def watch(self, backend: Any, node_types: frozenset[str]) -> None:
        import asyncio  # only a combined observer's watch needs it

        await asyncio.gather(*(o.watch(backend, node_types) for o in self.observers))


def combine(*observers: Instrumentation | None) -> Instrumentation | None:
    """One observer calling each of ``observers`` (Nones dropped); None if none is left."""
    kept = [o for o in observers if o is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else _Combined(kept)


_installed: Instrumentation | None = None


def install(observer: Instrumentation | None) -> Instrumentation | None:
    """Make ``observer`` the process-wide default (None removes it); returns the previous one.

    Workers and orchestrators created without ``instrumentation=`` use it: a worker
    reads it when it starts serving, an orchestrator for each workflow run it starts.
    """
    global _installed
    previous, _installed = _installed, observer
    return previous


def installed() -> Instrumentation | None:
    """The process-wide observer (see ``install``), or None."""
    return _installed


def trace_carrier(payload: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The trace context a task payload carries (``TRACE_KEY``), or None if it has none or it is malformed."""
    carried = payload.get(TRACE_KEY)
    if not isinstance(carried, Mapping):
        return None
    return {str(k): v for k, v in carried.items() if isinstance(v, str)}
