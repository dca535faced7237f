"""``Orchestrator``: runs compiled graphs, checkpointing every step through a backend.

Nodes whose function the orchestrator has (given to ``Graph.add_node`` or registered
in its ``NodeRegistry``) run in this process; every other node becomes a task on the
backend's queue for a ``Worker`` serving its node type. With the default ``memory://``
backend everything stays in one process and needs nothing but Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from distributed_agents.core.backend_resolver import DEFAULT_BACKEND_URL, check_backend_argument, open_backend
from distributed_agents.core import run_cancels
from distributed_agents.core.arguments import (
    check_flag_argument,
    check_instrumentation_argument,
    check_name_argument,
    check_options_argument,
)
from distributed_agents.core.backoff import Outage, retry_after, until_available
from distributed_agents.core.cache import NodeCache, graph_implementations
from distributed_agents.core.dead_letters import find_dead_letter
from distributed_agents.core.engine import (
    DURABILITY_KEY,
    RUN_START_KEY,
    DriveOptions,
    StepEngine,
    SubgraphCall,
    first_step_calls,
    WorkflowTakenOverError,
    check_durability,
    node_run,
    node_task_id,
    task_id_for,
)
from distributed_agents.core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ExecutionError,
    FencingTokenRejectedError,
    GraphNotCompiledError,
    LeaseLostError,
    StateNotSerializableError,
    VersionConflictError,
    WorkflowCancelledError,
    WorkflowExistsError,
    WorkflowFailedError,
    WorkflowLeaseHeldError,
    WorkflowNotFoundError,
)
from distributed_agents.core.events import EventPublisher
from distributed_agents.core.executors import CONFIGURABLE_KEY, NodeCall, TaskQueueExecutor, node_task
from distributed_agents.core.frontier import STATE_EDITED_KEY, frontier_nodes, read_entries
from distributed_agents.core.graph import MAX_PRIORITY, START, Graph, NodeSpec, with_context_schema
from distributed_agents.core.interrupts import NO_ANSWER, PendingInterrupt, answer_interrupts, read_interrupts
from distributed_agents.core.instrumentation import Instrumentation
from distributed_agents.core.instrumentation import installed as installed_instrumentation
from distributed_agents.core.limits import check_commit_size
from distributed_agents.core.merge import merge_updates
from distributed_agents.core.node_runner import CONTEXT_KEY, context_values
from distributed_agents.core.ports.backend import MAX_DURATION, Backend, check_duration
from distributed_agents.core import history
from distributed_agents.core.history import StateSnapshot
from distributed_agents.core.ports.state_store import Checkpoint, StateStore, WorkflowLease, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task, TaskQueue
from distributed_agents.core.registry import NodeFunction, NodeRegistry
from distributed_agents.core.schema import OUTPUT_KEYS, result_values
from distributed_agents.core.messages import coerce_message_updates
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.record_json import encode_rest, remember as remember_json
from distributed_agents.core.state import State, check_values, new_workflow_id, reserved_keys
from distributed_agents.core.incarnation import INCARNATION_KEY, incarnation_of, new_incarnation
from distributed_agents.core.subgraphs import PARENT_KEY, SubgraphRunner, children_of, scoped_events, with_positions
from distributed_agents.core.status import WorkflowStatusInfo, page_workflows, status_filter
from distributed_agents.core.stream_writer import swap_stream_sink
from distributed_agents.core.streaming import (
    DEFAULT_BUFFER_SIZE,
    ChunkStream,
    OnGap,
    StreamGap,
    StreamReader,
    check_on_gap,
    parse_stream_mode,
)
from distributed_agents.core.sync_api import SyncOrchestrator, iterate_sync, run_sync
from distributed_agents.core.types import INTERRUPT_KEY, Command, is_interrupt_output
from distributed_agents.core.waiting import WAITING_LOG_INTERVAL, NotingStore, WaitingReporter

__all__ = ["DEFAULT_STEP_LIMIT", "Orchestrator", "graph_mismatch", "step_task_ids", "validate_workflow_id",
           "withdraw_step_tasks"]

log = logging.getLogger("distributed_agents.orchestrator")
T = TypeVar("T")

DEFAULT_STEP_LIMIT = 10_000
DEFAULT_LEASE_TTL = 30.0  # seconds an orchestrator's workflow lease lasts without renewal (renewed every third)
CONTROL_CANCEL_CHANNEL = "control.cancel"
_FORBIDDEN_ID_CHARS = frozenset(" \t\n\r.*>/\\")


def validate_workflow_id(workflow_id: str) -> str:
    """Return ``workflow_id`` if it is usable in every backend's key space, else raise."""
    if not isinstance(workflow_id, str) or not workflow_id or len(workflow_id) > 200 or (
        _FORBIDDEN_ID_CHARS & set(workflow_id)
    ):
        raise ConfigurationError(
            f"workflow_id {workflow_id!r} must be 1-200 characters without spaces, '.', '*', '>', '/' or '\\'"
        )
    return workflow_id


def _edit_only(record: WorkflowRecord, update: Any, resume: Any) -> bool:
    """Whether a resume of the interrupted ``record`` edits it without answering: an ``update=``
    without the answer its ``interrupt()`` waits for. As LangGraph, the paused step then runs again
    on the edited state and the node asks again (at a static breakpoint alone, an edit continues)."""
    pauses = read_interrupts(record.frontier)
    # (A pause inside a subgraph is answered in its child: an edit of the parent does not re-ask it.)
    return update is not None and resume is NO_ANSWER and any(p.kind == "interrupt" for p in pauses) and \
        not any(p.subgraph for p in pauses)


def _no_pause_to_edit(workflow_id: str, status: str) -> ConfigurationError:
    """Why ``resume(workflow_id, Command(update=...))`` cannot edit a workflow of ``status``, and what to do."""
    return ConfigurationError(
        f"resume({workflow_id!r}, Command(update=...)): the workflow is {status}, not paused; "
        f"update_state({workflow_id!r}, values) changes its state, then resume({workflow_id!r}) continues it")


def _no_pause_to_answer(workflow_id: str, status: str) -> Exception:
    """Why ``resume(workflow_id, answer)`` has nothing to answer, and what to do instead, by status.

    Running or completed: most often another resume answered the pause first (two
    operators, a retried command), a race lost like the one ``resume`` finds under the
    lease, so the same ``ExecutionError`` (exit 1); pending, failed or cancelled: the
    answer is the caller's mistake (``ConfigurationError``, exit 2).
    """
    if status == WorkflowStatus.RUNNING:
        return ExecutionError(
            f"resume({workflow_id!r}) was given an answer, but the workflow is running, not paused: nothing waits for "
            f"an answer (another resume may have answered it already); wait({workflow_id!r}) for its result, or, if "
            f"no orchestrator drives it any more (one stopped mid-run), resume({workflow_id!r}) without an answer "
            "continues it")
    if status == WorkflowStatus.COMPLETED:
        return ExecutionError(
            f"resume({workflow_id!r}) was given an answer, but the workflow is completed, not paused: nothing waits "
            f"for an answer (another resume may have answered it already); get_result({workflow_id!r}) reads it")
    return ConfigurationError(f"resume({workflow_id!r}) was given an answer, but the workflow is {status}, not "
                              "interrupted; call resume() without one")


def graph_mismatch(record: WorkflowRecord, fingerprint: Mapping[str, Any], also: Sequence[str] = ()) -> str | None:
    """How ``record``'s stored graph fingerprint differs from ``fingerprint``; None if it matches.

    A record without a fingerprint (written before fingerprints were stored) matches any graph;
    so does one stored with a digest in ``also`` (``Graph.earlier_digests``: the same graph,
    hashed as earlier versions did).
    """
    stored = record.graph
    if not stored or stored.get("sha256") == fingerprint.get("sha256") or stored.get("sha256") in also:
        return None

    def describe(fp: Mapping[str, Any]) -> str:
        return f"graph {fp.get('name')!r} ({fp.get('nodes')} nodes, sha256 {str(fp.get('sha256'))[:12]})"

    return (f"workflow {record.workflow_id!r} was started with {describe(stored)}, "
            f"which differs from the given {describe(fingerprint)}")




def _refuse_continuing(record: WorkflowRecord, where: str) -> None:
    """``WorkflowExistsError`` unless ``record`` is COMPLETED or PENDING (not run since an
    ``update_state``, a seed of a new thread among them, or a ``fork``), saying what to do instead."""
    if record.status in (WorkflowStatus.COMPLETED, WorkflowStatus.PENDING):
        return
    workflow_id = record.workflow_id
    how = {WorkflowStatus.INTERRUPTED: f"answer it with resume({workflow_id!r}, Command(resume=answer)) (or "
                                       f"invoke(Command(resume=answer), config)), or resume({workflow_id!r}) past a "
                                       "breakpoint",
           WorkflowStatus.RUNNING: f"wait({workflow_id!r}) for its result",
           WorkflowStatus.FAILED: f"resume({workflow_id!r}) (or invoke(None, config)) re-runs its failed step",
           WorkflowStatus.CANCELLED: "it cannot continue"}.get(record.status, f"resume({workflow_id!r})")
    raise WorkflowExistsError(
        f"workflow {workflow_id!r} already exists in {where!r} and is {record.status} at step {record.step}; only a "
        f"completed (or pending) workflow takes a new input as a new run: {how}, or pass a new workflow_id")


def _configurable_metadata(configurable: Mapping[str, Any] | None) -> dict[str, Any]:
    """Record metadata holding the caller's ``configurable`` values, or {} (``thread_id``/``checkpoint_ns`` dropped).

    ``ConfigurationError`` for a non-mapping or a value JSON cannot carry (workers read it).
    """
    if configurable is None:
        return {}
    if not isinstance(configurable, Mapping):
        raise ConfigurationError(f"execute(configurable=...) must be a dict, got {type(configurable).__name__}")
    values = {key: value for key, value in configurable.items() if key not in ("thread_id", "checkpoint_ns")}
    try:
        check_values(values, "configurable")
    except StateNotSerializableError as exc:
        raise ConfigurationError(f"execute(configurable=...): {exc}; nodes on workers read it, so it must be JSON") \
            from None
    return {CONFIGURABLE_KEY: values} if values else {}


def _check_step_limit(step_limit: int | None) -> None:
    """Raise ``ConfigurationError`` unless a per-call ``step_limit`` is None (the default) or an int >= 1."""
    if step_limit is not None and (isinstance(step_limit, bool) or not isinstance(step_limit, int) or step_limit < 1):
        raise ConfigurationError(
            f"step_limit must be an int >= 1 (the most steps the workflow may take), got {step_limit!r}; "
            "omit it for the orchestrator's default"
        )


def _check_migration(workflow_id: str, record: WorkflowRecord, graph: Graph) -> None:
    """Raise ``ConfigurationError`` if ``graph`` lacks a node ``record``'s next step runs (or waits for).

    Checked before a migration writes anything, so a refused migration leaves the
    workflow on its original graph with its original error.
    """
    wanted = [*frontier_nodes(record.frontier), *(record.frontier.get("deferred") or ())]
    wanted += [str(item.get("node")) for item in record.frontier.get("interrupts") or () if isinstance(item, dict)]
    missing = [name for name in dict.fromkeys(wanted) if name not in graph.nodes]
    if missing:
        raise ConfigurationError(
            f"resume({workflow_id!r}, allow_graph_change=True): graph {graph.name!r} has no node "
            f"{', '.join(map(repr, missing))}, which the workflow's next step (step {record.step}) runs; "
            "nothing was changed: add the node(s) to the new graph, or resume with the graph the workflow was "
            "started with"
        )


def _check_graph(graph: object, call: str) -> Graph:
    """``graph``, if it is a compiled ``Graph``; else ``ConfigurationError`` (not a graph) or ``GraphNotCompiledError``.

    ``call`` names the entry point (``"Orchestrator.execute()"``) in the message.
    """
    if not isinstance(graph, Graph):
        raise ConfigurationError(
            f"{call} takes a compiled Graph as its graph, got {type(graph).__name__} {repr(graph)[:80]}; build one "
            "with StateGraph(...) or Graph(...) and pass what its compile() returns")
    if not graph.compiled:
        raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() before {call}")
    return graph


def _breakpoint_metadata(
    graph: Graph, before: Sequence[str] | None, after: Sequence[str] | None
) -> dict[str, list[str]]:
    """Per-workflow breakpoints as stored in the record's metadata; ``ConfigurationError`` for unknown nodes."""
    stored: dict[str, list[str]] = {}
    for when, names in (("before", before), ("after", after)):
        if names is None:
            continue
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n != "*" and n not in graph.nodes]
        if unknown or not all(isinstance(n, str) for n in names):
            raise ConfigurationError(
                f"interrupt_{when}={list(names)!r}: {', '.join(map(repr, unknown)) or 'an item'} is not a node of "
                f"graph {graph.name!r}; pass node names (or '*' for every node)")
        stored[f"interrupt_{when}"] = list(dict.fromkeys(names))
    return stored


# In a FAILED record's error: the ids of the failed step's tasks taken back from the queue
# (Orchestrator._withdraw_left); a resume runs their nodes under new task ids.
WITHDRAWN_TASKS_KEY = "withdrawn_tasks"


def _withdrawn_tasks(record: WorkflowRecord) -> frozenset[str]:
    """The task ids ``record``'s failure withdrew (``WITHDRAWN_TASKS_KEY``); none for another status."""
    if record.status != WorkflowStatus.FAILED or not isinstance(record.error, Mapping):
        return frozenset()
    ids = record.error.get(WITHDRAWN_TASKS_KEY)
    return frozenset(i for i in ids if isinstance(i, str)) if isinstance(ids, list) else frozenset()


def step_task_ids(record: WorkflowRecord) -> list[str]:
    """The ids of the node tasks of ``record``'s current step, in every run of the workflow so far.

    Task ids are deterministic (``core.engine.task_id_for``): a step's tasks of run R are
    named alike in every process. A workflow whose step failed and was resumed (a new run,
    new ids) and failed again may have tasks of each run of that step left queued;
    ``withdraw_step_tasks`` takes these back. ``ValueError`` or ``TypeError`` for a record
    whose frontier or run number is malformed.
    """
    runs = int(record.metadata.get("run", 0))
    incarnation = incarnation_of(record)
    ids = []
    for entry in read_entries(record.frontier, {}):
        for run in range(runs + 1):
            ids.append(task_id_for(record.workflow_id, run, record.step, entry.key, incarnation))
    return ids


async def withdraw_step_tasks(queue: TaskQueue, record: WorkflowRecord) -> tuple[int, int]:
    """Take back the tasks of ``record``'s current step (``step_task_ids``) that no worker has claimed.

    For a workflow nobody will drive again (deleted): a task left queued would be run by
    a worker started later, for no one. Returns (how many were withdrawn, how many
    withdrawals failed: those tasks may still be queued). Finished and claimed tasks are
    left as they are (``TaskQueue.cancel`` takes back queued ones only).
    """
    ids = step_task_ids(record)
    if not ids:
        return 0, 0
    outcomes = await asyncio.gather(*(queue.cancel(task_id) for task_id in ids), return_exceptions=True)
    withdrawn = sum(1 for outcome in outcomes if outcome is True)
    failed = sum(1 for outcome in outcomes if isinstance(outcome, BaseException))
    return withdrawn, failed


UNDRIVEN_LOOK_AFTER = 5.0
"""Seconds ``wait`` waits on a running workflow before it looks whether any orchestrator drives it
(and again each time this passes, until it finds none: then it logs so, once)."""


def _undriven_note(record: WorkflowRecord) -> str:
    """The ``waiting_for`` of a running workflow no orchestrator drives (its lease free). A
    subgraph's child workflow is driven by its parent's run, never taken over on its own: the
    note names the parent to resume."""
    parent = record.metadata.get(PARENT_KEY)
    if isinstance(parent, str) and parent:
        return (f"its parent workflow {parent!r}, whose run drives it (it is a subgraph's workflow): none is driving "
                "it (its lease is free; the parent's step stopped: it failed, was cancelled or paused, or its "
                f"orchestrator stopped); resume({parent!r}, parent graph) continues it, or an orchestrator with "
                "recovery on does once the parent is running")
    return ("an orchestrator: none is driving it (its lease is free); one with recovery on takes it over "
            f"('distributed-agents orchestrator' serving graph {record.graph_name!r}), or "
            f"resume({record.workflow_id!r}, graph) continues it")


def _result_state(record: WorkflowRecord, graph: Graph | None = None) -> State:
    """What ``execute``/``resume``/``wait`` return: the output values, plus ``__interrupt__`` when
    paused (the values with the writes the paused step kept, given its ``graph``: LangGraph's)."""
    values = result_values(history.paused_values(graph, record), record.metadata)
    if record.status == WorkflowStatus.INTERRUPTED:
        values = {**values, INTERRUPT_KEY: [
            PendingInterrupt(id=i.id, node=i.node, value=i.value, kind=i.kind,
                             **({"namespace": list(i.namespace)} if i.namespace else {}))  # paused inside a subgraph
            for i in read_interrupts(record.frontier)]}
    return State._trusted(values, record.workflow_id)


class _Stoppable(Protocol):
    """What the renewer needs of a run's drive: whether it is over, and a way to stop it."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


def _cancelling(task: asyncio.Task[Any]) -> int:
    """``task.cancelling()``: its pending cancellation requests (Python 3.11+; 0 before, which cannot count them)."""
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0


class _Drive:
    """One workflow run driven inside the task that awaits it (``Orchestrator._drive``).

    A run has no task of its own (one per workflow costs a task, its context, its weak
    reference and a loop pass to start and to finish, while hundreds of workflows are in
    flight): stopping it (``cancel_workflow``, ``close``, a lease found lost) cancels
    that task, once; the CancelledError ends the run where it is waiting, and
    ``_drive`` takes back the cancellation it asked for (``Task.uncancel``), so the
    caller sees what ``execute`` documents, not a cancellation of its own.
    """

    __slots__ = ("task", "finished", "stopping", "requested", "settled", "_waiters")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.finished = False  # the run returned or raised
        self.stopping = False  # cancel() was called (it acts at most once)
        self.requested = False  # the task was cancelled for it (settle_cancel takes that back)
        self.settled = False  # its lease released and its events flushed: the run has let go of the backend
        self._waiters: list[asyncio.Future[None]] | None = None

    def done(self) -> bool:
        """Whether the run is over."""
        return self.finished

    def cancel(self) -> bool:
        """Stop the run where it is waiting; False if it is over or already being stopped."""
        if self.finished or self.stopping:
            return False
        self.stopping = True
        if asyncio.current_task() is self.task:
            # From inside the run itself (a node of it calling cancel_workflow): the task is
            # running, so a cancellation now would land at its next wait, which may come
            # after the run ended (a store that never yields), on whatever the caller does
            # next. It is made on the loop's next pass instead, only if the run is still on.
            self.task.get_loop().call_soon(self._cancel_if_running)
            return True
        self._cancel_task()
        return True

    def _cancel_if_running(self) -> None:
        if not self.finished:
            self._cancel_task()

    def _cancel_task(self) -> None:
        # Another task (or a callback) calls this while the run's task waits inside the run:
        # the CancelledError lands there, at that wait.
        self.requested = True
        self.task.cancel()

    async def wait(self) -> None:
        """Return once the run is over and has let go of the backend (its lease released, its
        events flushed: ``close`` may close the backend then); at once from inside the run's
        own task (it stops at its next wait)."""
        if self.settled or asyncio.current_task() is self.task:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter

    def finish(self) -> None:
        """The run is over: nothing cancels its task any more."""
        self.finished = True

    def settle(self) -> None:
        """The run has released its lease and flushed its events: wake whoever waits."""
        self.finished = self.settled = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = None

    def settle_cancel(self) -> bool:
        """Take back the cancellation ``cancel`` asked for; whether the task is still being cancelled by others."""
        if not self.requested:
            return False
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+ counts cancellation requests
        return bool(uncancel() > 0) if uncancel is not None else False


class _LeaseRun:
    """One running workflow whose lease the orchestrator's ``_Renewer`` keeps alive."""

    __slots__ = ("lease", "drive", "released", "loop", "due", "lost", "renewing", "missing")

    def __init__(self, lease: WorkflowLease, drive: _Stoppable, released: Callable[[], bool],
                 loop: asyncio.AbstractEventLoop, due: float) -> None:
        self.lease = lease
        self.drive = drive
        self.released = released  # True once the run's last commit gave the lease up
        self.loop = loop
        self.due = due  # loop time of the next renewal
        self.lost = False  # set when a renewal found the lease lost (the drive is then cancelled)
        self.renewing = False
        self.missing = 0  # renewals in a row that found no record (deleted: see _renew)


class _Renewer:
    """Renews the leases of all of one orchestrator's running workflows from one task.

    Each run is renewed every ``interval()`` seconds (a third of ``lease_ttl``) after it
    was added, looked at on a tick of a quarter of that: a renewal is at most a quarter
    interval late, well inside the lease. Most runs end before their first renewal is
    due and cost a set entry, not a timer or a task each. A run whose renewal is under
    way is not renewed again until it returns; runs of another (closed) event loop are
    dropped, never renewed.
    """

    def __init__(self, interval: Callable[[], float], renew: Callable[[_LeaseRun], Awaitable[None]]) -> None:
        self._interval = interval
        self._renew = renew
        self._runs: set[_LeaseRun] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewals: set[asyncio.Task[None]] = set()  # strong references to renewals under way

    def add(self, lease: WorkflowLease, drive: _Stoppable, released: Callable[[], bool]) -> _LeaseRun:
        """Keep ``lease`` alive while ``drive`` runs, until ``discard``; the run's handle."""
        loop = asyncio.get_running_loop()
        run = _LeaseRun(lease, drive, released, loop, loop.time() + self._interval())
        self._runs.add(run)
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._tick())
        return run

    def discard(self, run: _LeaseRun) -> None:
        self._runs.discard(run)

    def cancel(self) -> None:
        """Stop renewing (the orchestrator closes); renewals under way are cancelled."""
        self._runs.clear()
        for task in (self._task, *self._renewals):
            if task is not None:
                task.cancel()
        self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._runs:
            await asyncio.sleep(self._interval() / 4)
            now = loop.time()
            for run in list(self._runs):
                if run.loop is not loop:
                    self._runs.discard(run)
                elif run.due <= now and not run.renewing:
                    run.due = now + self._interval()
                    run.renewing = True
                    renewal = loop.create_task(self._renew_one(run))
                    self._renewals.add(renewal)
                    renewal.add_done_callback(self._renewals.discard)
        if self._task is asyncio.current_task():
            self._task = None

    async def _renew_one(self, run: _LeaseRun) -> None:
        try:
            await self._renew(run)
        finally:
            run.renewing = False


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    # The outcome of a taken-over workflow is in its record; retrieve it to silence asyncio.
    if not task.cancelled():
        task.exception()


class Orchestrator:
    """Runs workflows: ``execute``, ``resume``, status, cancellation and listing.

    ``registry`` supplies node functions by node type; ``backend`` is a URL
    (default ``memory://``) or an opened ``Backend``. ``step_limit`` bounds the steps
    of one workflow (per-call override). ``lease_ttl`` is how long this
    orchestrator's ownership of a workflow survives without renewal. With
    ``wait_for_workers`` False (the default here), a node that has no local function
    and no live worker fails at once; when True the workflow waits for a worker,
    up to ``worker_timeout`` seconds if that is set (0: not at all), then fails
    (``NodeNotFoundError``, naming the workflow, the graph and the node types) with the
    step's queued tasks withdrawn, as a cancel withdraws them. ``backend_options`` are passed
    to the backend (``prefix``, ``visibility_timeout``, ...). With ``local_nodes``
    False every node goes to workers, even one whose function this process has.

    With ``recover``, a background loop (every ``recovery_interval`` seconds) takes
    over running workflows whose owner's lease expired (that orchestrator died or
    stalled) and whose graph this orchestrator knows (``register_graph``, or any
    graph it executed), resuming each from its last committed step. A workflow whose
    stored graph fingerprint differs from the known graph of that name is left alone
    (logged once) for an orchestrator that has the graph it was started with.

    ``instrumentation`` (default: the process-wide one of
    ``core.instrumentation.install``, read at each workflow run) is told of every
    workflow run, step and in-process node attempt, and runs its ``watch`` while connected.
    """

    def __init__(
        self,
        registry: NodeRegistry | None = None,
        *,
        backend: str | Backend | None = None,
        step_limit: int = DEFAULT_STEP_LIMIT,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        wait_for_workers: bool = False,
        worker_timeout: float | None = None,
        orchestrator_id: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        local_nodes: bool = True,
        recover: bool = False,
        recovery_interval: float | None = None,
        instrumentation: Instrumentation | None = None,
    ) -> None:
        if isinstance(step_limit, bool) or not isinstance(step_limit, int) or step_limit < 1:
            raise ConfigurationError(
                f"Orchestrator(step_limit=...) must be an int >= 1 (the most steps a workflow may take), "
                f"got {step_limit!r}")
        check_duration("Orchestrator(lease_ttl=...)", lease_ttl, error=ConfigurationError)
        name = type(self).__name__  # Orchestrator, or the subclass the caller made (DistributedOrchestrator)
        if worker_timeout is not None and (isinstance(worker_timeout, bool)
                                           or not isinstance(worker_timeout, (int, float))
                                           or not 0 <= worker_timeout <= MAX_DURATION):  # (NaN fails the comparison)
            raise ConfigurationError(
                f"{name}(worker_timeout=...) must be a number of seconds from 0 (fail at once when no live worker "
                f"serves a node's type) to {MAX_DURATION:,.0f} (10 years), or None (wait for a worker as long as it "
                f"takes), got {type(worker_timeout).__name__} {worker_timeout!r}")
        if recovery_interval is not None:  # (None: half the lease_ttl)
            check_duration(f"{name}(recovery_interval=...)", recovery_interval, error=ConfigurationError)
        check_name_argument(f"{name}(orchestrator_id=...)", orchestrator_id, "orchestrator-1")
        check_options_argument(f"{name}(backend_options=...)", backend_options)
        for flag, value in (("wait_for_workers", wait_for_workers), ("local_nodes", local_nodes), ("recover", recover)):
            check_flag_argument(f"{name}({flag}=...)", value)
        check_instrumentation_argument(f"{name}(instrumentation=...)", instrumentation)
        if isinstance(registry, (str, bytes)):
            # Orchestrator("redis://...") would otherwise run on memory:// without a word.
            raise ConfigurationError(
                f"Orchestrator({registry!r}): the first argument is the node registry, not the backend; pass the "
                f"backend by keyword: Orchestrator(backend={registry!r})")
        if registry is not None and not isinstance(registry, NodeRegistry):
            raise ConfigurationError(
                f"Orchestrator(registry=...) takes a NodeRegistry, got {type(registry).__name__}; pass the backend "
                "URL as backend='redis://host:6379/0'")
        self.registry = registry if registry is not None else NodeRegistry()
        check_backend_argument(backend, "Orchestrator(backend=...)")
        self._backend_arg = backend
        self._owns_backend = not isinstance(backend, Backend)
        self._backend: Backend | None = backend if isinstance(backend, Backend) else None
        self.step_limit = step_limit
        self.lease_ttl = lease_ttl
        self.wait_for_workers = wait_for_workers
        self.worker_timeout = worker_timeout
        self.local_nodes = local_nodes
        self.recover = recover
        self.recovery_interval = recovery_interval if recovery_interval is not None else max(lease_ttl / 2, 0.05)
        self._recovery: asyncio.Task[None] | None = None
        self._backend_options = dict(backend_options or {})
        self.orchestrator_id = orchestrator_id or f"orchestrator-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._graphs: dict[str, Graph] = {}  # by name: the latest given
        self._graph_versions: dict[tuple[str, str], Graph] = {}  # by (name, fingerprint sha256)
        # Versions two different graphs share (one name and structure, other node functions):
        # a stored workflow cannot say which it ran, so looking one up by its record is an error.
        self._graph_conflicts: dict[tuple[str, str], tuple[Graph, Graph]] = {}
        self._running: dict[str, _Drive] = {}  # the runs this orchestrator is driving, by workflow id
        # One task renews the leases of every workflow this orchestrator drives.
        self._renewer = _Renewer(lambda: self.lease_ttl / 3, self._renew)
        self._background: dict[str, asyncio.Future[State]] = {}  # workflows submit() drives, by id
        # Workflows this orchestrator is storing right now: its own recovery loop must not take
        # one over while a create retried through an outage already landed (it would fence the starter out).
        self._starting: set[str] = set()
        self._waiting: dict[str, str] = {}
        self.waiting_log_interval = WAITING_LOG_INTERVAL  # seconds between "still waiting" warnings
        self._events: EventPublisher | None = None
        self._connected = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop connect() last ran in
        self._cancelled: set[str] = set()  # workflows cancel_workflow stopped in this process
        # What every run's engine and executor are given, made once: a bound method made per run
        # is a GC-tracked object kept while the run lasts, hundreds of runs at once.
        self._is_cancelled = self._cancelled.__contains__
        self._local_lookup = self._local_function
        self._mismatch_logged: set[tuple[str, str]] = set()  # (workflow, sha256) recovery skipped
        # One outage report per process, shared by every workflow it drives.
        self._outage = Outage(log, f"orchestrator {self.orchestrator_id}")
        self._node_cache: NodeCache | None = None  # over the backend's state store, made on first use
        # Traces and metrics (core.instrumentation): this one, else the process-wide one at each run.
        self.instrumentation = instrumentation
        self._watch: asyncio.Future[None] | None = None  # the observer's watch while connected
        self._subgraph_runner: SubgraphCall | None = None  # made on first use (_subgraph_call)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend, opened on first use."""
        if self._backend is None:
            url = self._backend_arg if isinstance(self._backend_arg, str) else DEFAULT_BACKEND_URL
            self._backend = open_backend(url, **self._backend_options)
        return self._backend

    async def connect(self) -> None:
        """Connect to the backend. Called by every operation; idempotent.

        Used from another event loop than the one it connected in (a second ``asyncio.run``
        without ``close()`` between), it connects again: the backend replaces clients of a
        loop that is not the running one, and the loop's background tasks start anew here.
        """
        loop = asyncio.get_running_loop()
        if not self._connected or self._loop is not loop:
            await self.backend.connect()
            self._connected = True
            if self._loop is not loop:  # tasks of a finished loop never run again
                self._loop, self._recovery, self._watch = loop, None, None
            if self.recover and self._recovery is None:
                self._recovery = asyncio.ensure_future(self._recovery_loop())
            observer = self._observer()
            if observer is not None and self._watch is None:
                self._watch = asyncio.ensure_future(observer.watch(self.backend, frozenset()))

    async def close(self) -> None:
        """Stop driving workflows (they stay resumable), flush events, close an owned backend."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
            self._watch = None
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
            self._recovery = None
        drives = list(self._running.values())
        tasks: list[asyncio.Future[Any]] = list(self._background.values())
        for drive in drives:
            drive.cancel()
        for task in tasks:
            task.cancel()
        for drive in drives:
            with contextlib.suppress(BaseException):
                await drive.wait()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._renewer.cancel()
        if self._events is not None:
            await self._events.close()
            self._events = None
        if self._connected and self._owns_backend and self._backend is not None:
            await self._backend.close()
        self._connected = False

    async def __aenter__(self) -> Orchestrator:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _publisher(self) -> EventPublisher:
        if self._events is None:
            self._events = EventPublisher(self.backend.message_bus)
        return self._events

    def _local_function(self, spec: NodeSpec) -> NodeFunction | None:
        if not self.local_nodes:
            return None
        return spec.func if spec.func is not None else self.registry.get(spec.node_type)

    def _engine(self, workflow_id: str, lease: WorkflowLease, metadata: Mapping[str, Any] | None = None,
                graph: Graph | None = None, enqueued: Collection[str] = ()) -> tuple[StepEngine, TaskQueueExecutor]:
        """The step engine of one run of ``workflow_id``, and the executor its worker tasks go through."""
        backend = self.backend
        # Waiting for a worker is logged, and noted in the stored record (visible from
        # any process) through a store view that keeps the engine's commits in step.
        # (No closures here: one is GC-tracked objects per workflow, kept while it runs.)
        store = NotingStore(backend.state_store, workflow_id, lease)
        waiting = WaitingReporter(workflow_id, store, self._waiting, self.waiting_log_interval,
                                  hint_graph=graph, backend_url=backend.redacted_url, prefix=backend.options.prefix)
        executor = TaskQueueExecutor(
            backend.task_queue, backend.worker_registry, worker_timeout=self.worker_timeout,
            on_waiting=waiting, require_workers=not self.wait_for_workers,
            withdraw_on_cancel=self._is_cancelled, enqueued=enqueued,
        )
        return StepEngine(store=store, queue_executor=executor, events=scoped_events(self._publisher(), metadata),
                          local_function=self._local_lookup, outage=self._outage,
                          payload_limit=backend.max_payload_bytes, cache=self._cache(),
                          subgraphs=self._subgraph_call(), instrumentation=self._observer()), executor

    def _subgraph_call(self) -> SubgraphCall:
        # One runner per orchestrator (it holds nothing else), not one per workflow run.
        call = self._subgraph_runner
        if call is None:
            call = self._subgraph_runner = SubgraphRunner(self).run
        return call

    def _observer(self) -> Instrumentation | None:
        return self.instrumentation if self.instrumentation is not None else installed_instrumentation()

    def _cache(self) -> NodeCache:
        # Made again when the backend was reopened (each blocking ``sync`` call opens its own).
        store = self.backend.state_store
        if self._node_cache is None or self._node_cache.store is not store:
            self._node_cache = NodeCache(store, previous=self._node_cache)
        return self._node_cache

    async def clear_cache(self, graph: Graph, nodes: Sequence[str] | None = None) -> None:
        """Remove the cached outputs (``add_node(cache_policy=)``) of ``nodes`` of ``graph`` (None: every node).

        The cache lives in the backend, so this clears it for every orchestrator and
        worker sharing the backend and prefix (LangGraph's ``graph.clear_cache``).
        Entries are namespaced by the graph's name, structure and node implementations
        (``core.cache``): another graph, even of the same name, keeps its own. ``ConfigurationError`` for a name that is not a node
        of ``graph``; retried while the backend is unavailable.
        """
        if not isinstance(graph, Graph):
            raise ConfigurationError(f"clear_cache(graph=...) takes a Graph, got {type(graph).__name__}")
        if nodes is None:
            names = list(graph.nodes)
        else:
            if isinstance(nodes, str):
                nodes = [nodes]
            elif not isinstance(nodes, Collection):
                raise ConfigurationError(
                    f"clear_cache(nodes=...) takes a list of node names of graph {graph.name!r} (or None: every "
                    f"node), got {type(nodes).__name__} {nodes!r}")
            unknown = [n for n in nodes if n not in graph.nodes]
            if unknown:
                raise ConfigurationError(
                    f"clear_cache: graph {graph.name!r} has no node(s) {', '.join(map(repr, unknown))}; its nodes are "
                    f"{', '.join(map(repr, graph.nodes))}")
            names = list(dict.fromkeys(nodes))
        await self.connect()
        cache = self._cache()
        await self._retrying(lambda: cache.clear(graph, names), f"clear the node cache of graph {graph.name!r}")

    def register_graph(self, graph: Graph) -> None:
        """Make ``graph`` known, so this orchestrator can resume or take over its workflows.

        Several versions of one graph name may be registered: each workflow is driven
        by the version whose fingerprint it was started with (or migrated to).
        """
        self._remember(_check_graph(graph, "Orchestrator.register_graph()"))

    def known_graph(self, name: str) -> Graph | None:
        """The latest graph named ``name`` this orchestrator was given (registered or run), else None."""
        return self._graphs.get(name)

    def _remember(self, graph: Graph) -> None:
        key = (graph.name, str(graph.fingerprint()["sha256"]))
        known = self._graph_versions.get(key)
        if known is not None and known is not graph and graph_implementations(known) != graph_implementations(graph):
            self._graph_conflicts[key] = (known, graph)
        self._graphs[graph.name] = graph
        self._graph_versions[key] = graph

    def _paused_graph(self, record: WorkflowRecord) -> Graph | None:
        """The known graph of a record whose step kept writes (``history.paused_values`` merges
        them with its reducers), else None; None too when two graphs of its name are known (shown as stored)."""
        if not record.frontier.get("pending_writes"):
            return None
        try:
            return self._known_graph(record)
        except ConfigurationError:
            return None

    def _known_graph(self, record: WorkflowRecord) -> Graph | None:
        """The known graph of ``record``'s fingerprint, else the latest of its name (may differ).

        ``ConfigurationError`` when two different graphs of that name and structure were
        given to this orchestrator (e.g. two ``StateGraph(State)`` with other node
        functions): the record cannot tell which one the workflow runs.
        """
        sha = (record.graph or {}).get("sha256")
        conflict = self._graph_conflicts.get((record.graph_name, str(sha)))
        if conflict is not None:
            one, two = (graph_implementations(g) for g in conflict)
            differ = "; ".join(f"node {n!r}: {one.get(n)} vs {two.get(n)}" for n in one if one.get(n) != two.get(n))
            raise ConfigurationError(
                f"workflow {record.workflow_id!r}: this orchestrator was given two different graphs named "
                f"{record.graph_name!r} with the same structure ({differ}), and a stored workflow records only the "
                "name and structure, so which one it runs is unknown; pass the graph explicitly "
                f"(resume({record.workflow_id!r}, graph)), or give each graph its own name "
                "(StateGraph(State, name=...) / Graph(name))")
        return self._graph_versions.get((record.graph_name, str(sha))) or self._graphs.get(record.graph_name)

    # -- running ------------------------------------------------------------------------

    async def execute(
        self,
        graph: Graph,
        initial_state: Mapping[str, Any] | State | Command[Any] | None = None,
        *,
        workflow_id: str | None = None,
        step_limit: int | None = None,
        priority: int = 0,
        from_checkpoint: str | None = None,
        interrupt_before: Sequence[str] | None = None,
        interrupt_after: Sequence[str] | None = None,
        durability: str = "sync",
        continue_completed: bool = False,
        configurable: Mapping[str, Any] | None = None,
        context: Any = None,
    ) -> State:
        """Run ``graph`` from ``initial_state`` to the end; return the final state.

        If the workflow pauses (a node called ``interrupt()``, or a breakpoint), this
        returns the state so far, with the pending interrupts as JSON under
        ``"__interrupt__"`` (``[{"id", "node", "value", "kind"}]``, as LangGraph's
        ``invoke``); ``get_workflow_status(id).status`` is then ``interrupted`` and
        ``resume(id, Command(resume=answer))`` continues it. ``interrupt_before`` /
        ``interrupt_after`` (node names, or ``"*"``) set this workflow's static
        breakpoints, instead of those the graph was compiled with (each list given
        replaces the graph's list of its kind, one not given keeps the graph's, as in
        LangGraph); they are stored with the workflow, so resume and takeover keep them.
        As in LangGraph, passing ``Command(resume=answer)`` as the input with the paused
        workflow's ``workflow_id`` resumes it (``resume(workflow_id, graph, command)``).

        ``priority`` (an int in -1,000,000..1,000,000) is added to each node's own
        priority for every task of this workflow: workers claim higher priorities
        first. It is stored with the workflow, so ``resume`` and a takeover keep it.

        Raises the workflow's error if it fails (``NodeExecutionError`` naming the
        node, attempts and original exception; ``StepLimitExceededError``; ...) and
        ``WorkflowCancelledError`` if it is cancelled (``cancel_workflow``); a
        cancellation of the awaiting task itself (``task.cancel()``, a timeout, a
        ``TaskGroup``) raises ``asyncio.CancelledError`` as usual, even when a
        ``cancel_workflow`` meets it, and leaves the workflow resumable unless that
        ``cancel_workflow`` recorded it cancelled. The failure is also recorded
        in ``get_workflow_status``. ``step_limit`` (an int >= 1, else
        ``ConfigurationError``) overrides the orchestrator's limit for this workflow.
        Conditional edges from ``START`` route ``initial_state`` before the workflow is
        stored; if one fails, its ``ExecutionError`` is raised and nothing is stored.

        ``from_checkpoint`` (a checkpoint id, as ``get_state_history`` gives it) runs a
        fork instead: a new workflow (``workflow_id``, default a fresh id) starts from
        that past checkpoint, leaving the original's history as it was (see ``fork``);
        ``initial_state`` must then be None, and ``priority`` 0 keeps the original's.

        ``durability`` (LangGraph's modes; ``ConfigurationError`` for another value)
        says when steps are written. It is stored with the workflow, so ``resume`` and a
        takeover by any process keep it. Nodes run at least once in every mode, and a
        step's tasks have deterministic ids, so a restarted step reuses results of tasks
        that finished on workers (in-process nodes run again).

        * ``"sync"`` (default): each step's record and checkpoint are written before the
          next step starts. A crash loses at most the step that was running; other
          processes see every step (``get_state``, ``get_workflow_status``, history).
        * ``"async"``: each step's commit is written while the next step runs; it lands
          before the next commit, a pause, a failure or the end is written, and a refused
          commit (taken over, cancelled, lease lost) stops the run as in ``"sync"``. A
          crash loses at most the running step and the commit in flight (two steps);
          other processes see each step up to one step late; the history is the same.
        * ``"exit"``: no step is written; the record and the last step's checkpoint are
          written once, when the workflow completes, fails, pauses (an interrupt: resume
          works as in the other modes), is cancelled or this orchestrator stops it. A
          crash (SIGKILL, power) loses everything since the last write: a takeover or
          resume starts again from there (step 0 for a new workflow). Meanwhile other
          processes see the workflow running at its last written step, and its history
          holds only the written checkpoints (the first, and the last with
          ``parent_checkpoint_id`` naming the one written before it). The lease is still
          renewed, so no other orchestrator takes over a live run.

        A ``workflow_id`` that is already stored is ``WorkflowExistsError`` (an id is
        also a guard against running the same request twice), unless
        ``continue_completed=True`` and that workflow is COMPLETED (or PENDING: not run
        since an ``update_state``, e.g. of a new thread, or a ``fork``; its next nodes are
        dropped): then, as a LangGraph thread does on a second ``invoke``, ``initial_state`` is applied to its final
        state through the reducers (only the keys given; an input schema filters and
        checks them) and the graph runs again from ``START`` as a new run of the same
        workflow (``metadata["run"]`` + 1; its steps continue the numbering, so the
        history keeps every run's checkpoints; the step limit counts from the step the
        run starts at). A workflow that is running, interrupted, failed or cancelled is
        ``WorkflowExistsError`` saying to ``resume`` or ``wait`` for it instead.
        ``graph.invoke(input, {"configurable": {"thread_id": id}})`` passes
        ``continue_completed=True``.

        ``configurable`` (a dict of JSON values, as LangGraph's ``config["configurable"]``)
        is stored with the run and read by its nodes as ``config["configurable"][key]``
        (see ``NodeContext.as_config``), in this process and on workers. ``context`` (a
        dataclass, Pydantic model or dict: LangGraph's ``invoke(..., context=...)``) travels
        with it as JSON and is read by nodes as ``runtime.context`` (``NodeContext.context``).
        """
        _check_graph(graph, "Orchestrator.execute()")
        if context is not None:
            context = context_values("execute()", with_context_schema(graph, context))
            configurable = {**(configurable or {}), CONTEXT_KEY: context}
        if continue_completed and workflow_id is not None and from_checkpoint is None and \
                not isinstance(initial_state, (Command, State)):
            continued = await self._continue_completed(graph, initial_state, workflow_id, priority, configurable,
                                                       _breakpoint_metadata(graph, interrupt_before, interrupt_after),
                                                       step_limit=step_limit)
            if continued is not None:
                return await self._drive(graph, *continued, step_limit)
        if isinstance(initial_state, Command):
            if workflow_id is None:
                raise ConfigurationError("execute(graph, Command(resume=...)) resumes a paused workflow: pass its "
                                         "workflow_id=")
            return await self.resume(workflow_id, graph, initial_state, step_limit=step_limit,
                                     interrupt_before=interrupt_before, interrupt_after=interrupt_after,
                                     durability=None if durability == "sync" else durability,
                                     context=(configurable or {}).get(CONTEXT_KEY))
        # The first step's calls, when their tasks were queued with the create, and when they were sent.
        enqueued: dict[str, tuple[NodeCall, float]] = {}
        record, lease = await self._start(graph, initial_state, workflow_id=workflow_id, step_limit=step_limit,
                                          priority=priority, from_checkpoint=from_checkpoint,
                                          breakpoints=_breakpoint_metadata(graph, interrupt_before, interrupt_after),
                                          durability=durability, metadata=_configurable_metadata(configurable),
                                          enqueued=enqueued)
        return await self._drive(graph, record, lease, step_limit, enqueued)

    async def submit(
        self,
        graph: Graph,
        initial_state: Mapping[str, Any] | State | None = None,
        *,
        workflow_id: str | None = None,
        step_limit: int | None = None,
        priority: int = 0,
        from_checkpoint: str | None = None,
        interrupt_before: Sequence[str] | None = None,
        interrupt_after: Sequence[str] | None = None,
        durability: str = "sync",
    ) -> str:
        """Start a workflow as ``execute`` does and return its id once it is stored.

        The workflow runs in the background of this orchestrator (until ``close``;
        another orchestrator with ``recover`` then takes it over). ``wait``,
        ``get_result``, ``get_workflow_status``, ``get_state`` and ``cancel_workflow``
        take the id, in this process or any other on the same backend. Errors before
        the workflow is stored (a bad argument, a failing entry condition) are raised
        here; later ones are recorded in its status.
        """
        _check_graph(graph, "Orchestrator.submit()")
        record, lease = await self._start(graph, initial_state, workflow_id=workflow_id, step_limit=step_limit,
                                          priority=priority, from_checkpoint=from_checkpoint,
                                          breakpoints=_breakpoint_metadata(graph, interrupt_before, interrupt_after),
                                          durability=durability)
        workflow_id = record.workflow_id
        task = asyncio.ensure_future(self._drive(graph, record, lease, step_limit))
        self._background[workflow_id] = task
        task.add_done_callback(lambda done: self._background.pop(workflow_id, None))
        task.add_done_callback(_ignore_outcome)
        return workflow_id

    def invoke(self, graph: Graph, initial_state: Mapping[str, Any] | State | None = None, **options: Any) -> State:
        """``execute`` for code that is not async (scripts, notebooks without a running loop).

        Runs its own event loop and closes this orchestrator's connections before
        returning, so every call stands alone. ``ExecutionError`` if called where an
        event loop is running (use ``await execute(...)`` there). ``sync`` offers every
        other method the same way.
        """
        _check_graph(graph, "Orchestrator.invoke()")
        return run_sync(self, "invoke()", lambda: self.execute(graph, initial_state, **options))

    execute_sync = invoke

    # -- streaming ----------------------------------------------------------------------

    def astream(
        self,
        graph: Graph | str,
        initial_state: Mapping[str, Any] | State | Command[Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "updates",
        subgraphs: bool = False,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        poll_interval: float = 1.0,
        on_gap: OnGap = "warn",
        **options: Any,
    ) -> ChunkStream:
        """Run ``graph`` as ``execute`` does (same ``options``) and yield its stream as it happens.

        ``stream_mode`` is ``"values"``, ``"updates"``, ``"custom"``, ``"messages"`` or
        ``"debug"`` (chunks as LangGraph shapes them, see ``core.streaming``), or a list of
        them (then ``(mode, chunk)`` pairs); ``subgraphs=True`` prefixes each with its
        namespace tuple. Nodes stream with ``get_stream_writer()`` / ``context.stream_writer``,
        in this process or on workers. The stream ends when the workflow completes or pauses,
        and raises what ``execute`` raises when it fails or is cancelled.

        ``astream(workflow_id)`` (a str instead of a graph; no input, no options) attaches
        to a workflow from any process on the backend: it replays the values/updates of
        its checkpoints so far, then follows it live, and ends when it is completed,
        failed (``WorkflowFailedError``), cancelled (``WorkflowCancelledError``) or
        interrupted; a finished workflow is replayed, then the stream ends. An unknown id
        raises ``WorkflowNotFoundError`` at the first chunk.

        A consumer slower than the workflow never stalls it: at most ``buffer_size`` live
        chunks (custom, messages, debug) are held, then the oldest are dropped. A drop is
        logged as a warning naming the side that overflowed (this stream's buffer, or the
        node's process), recorded in the returned stream's ``gaps``/``dropped``, and
        handled as ``on_gap`` says: ``"warn"`` (default: nothing in the stream, so the
        chunk shapes never change), ``"raise"`` (``StreamGapError``), ``"yield"`` (a
        ``StreamGap`` in the stream, as ``("gap", gap)`` with several modes) or a callable
        taking the ``StreamGap``. Steps that were missed on the bus are read
        from the checkpoints (at the latest after ``poll_interval`` seconds of silence).
        Leaving the loop early (``break``, ``aclose()``, an exception in the consumer, the
        iterator collected) never strands the workflow: this orchestrator keeps driving it to
        its end in the background, exactly as after ``submit`` (``wait``/``get_result`` take
        its id, ``cancel_workflow`` stops it, ``close`` stops driving it and leaves it
        resumable). Attaching by id only stops following. ``ConfigurationError`` at
        once for an unknown ``stream_mode`` (naming the valid ones) or a bad argument.
        """
        parse_stream_mode(stream_mode)
        check_on_gap(on_gap)
        if isinstance(graph, str):
            if initial_state is not None or options:
                raise ConfigurationError(
                    f"astream({graph!r}) attaches to a running workflow by its id: pass no input and no execute "
                    f"options (got {'an input' if initial_state is not None else ', '.join(sorted(options))}); "
                    "pass a graph to start a new workflow")
            validate_workflow_id(graph)
        elif not isinstance(graph, Graph):
            raise ConfigurationError(
                f"astream() takes a compiled Graph (to run it) or a workflow id str (to attach), got "
                f"{type(graph).__name__}")
        elif not graph.compiled:
            raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() before astream()")
        gaps: list[StreamGap] = []
        return ChunkStream(self._astream(graph, initial_state, stream_mode, subgraphs, buffer_size, poll_interval,
                                         on_gap, gaps, options), gaps)

    async def _astream(
        self, graph: Graph | str, initial_state: Mapping[str, Any] | State | Command[Any] | None,
        stream_mode: str | Sequence[str], subgraphs: bool, buffer_size: int, poll_interval: float,
        on_gap: OnGap, gaps: list[StreamGap], options: dict[str, Any],
    ) -> AsyncIterator[Any]:
        await self.connect()
        backend = self.backend
        if isinstance(graph, str):
            reader = StreamReader(backend.state_store, backend.message_bus, graph, stream_mode,
                                  subgraphs=subgraphs, buffer_size=buffer_size, poll_interval=poll_interval,
                                  on_gap=on_gap)
            reader.gaps = gaps
            await reader.open()  # before the replay: what happens meanwhile is delivered live
            try:
                async for chunk in reader.chunks():
                    yield chunk
            finally:
                await reader.close()
            return
        options = dict(options)
        workflow_id = options.pop("workflow_id", None) or (
            initial_state.workflow_id if isinstance(initial_state, State) else new_workflow_id())
        validate_workflow_id(workflow_id)
        after = -1
        current = await backend.state_store.get(workflow_id)
        continuing = bool(options.get("continue_completed")) and current is not None and \
            current.status in (WorkflowStatus.COMPLETED, WorkflowStatus.PENDING) and options.get("from_checkpoint") is None
        if isinstance(initial_state, Command) or continuing:  # streams the steps it runs, not the history
            after = current.step if current is not None else -1
        elif current is not None and options.get("from_checkpoint") is None:
            # Refused before subscribing: that workflow's own chunks must not show up here.
            raise WorkflowExistsError(
                f"astream(): workflow {workflow_id!r} already exists ({current.status} at step {current.step}) in "
                f"{backend.redacted_url!r}; pass a new workflow_id to start another, or astream({workflow_id!r}) to follow it")
        reader = StreamReader(backend.state_store, backend.message_bus, workflow_id, stream_mode,
                              subgraphs=subgraphs, buffer_size=buffer_size, poll_interval=poll_interval,
                              on_gap=on_gap)
        reader.gaps = gaps
        await reader.open()  # subscribed before the workflow starts: no chunk is missed
        driver = asyncio.ensure_future(self.execute(graph, initial_state, workflow_id=workflow_id, **options))
        driver.add_done_callback(_ignore_outcome)  # its outcome is the stream's, if anyone still reads it
        try:
            if isinstance(initial_state, Command) and current is not None:
                # A resumed run starts with the state it resumes from, as LangGraph's does (edited by
                # its update=: what resume merges, unless it refuses the update, which the stream raises).
                edited = current
                if initial_state.update is not None and current.status == WorkflowStatus.INTERRUPTED:
                    with contextlib.suppress(Exception):
                        edited = current.evolve(state=history.edited_state(graph, current, initial_state.update, None))
                for chunk in reader.leading_values(edited):
                    yield chunk
            async for chunk in reader.chunks(after_step=after, driver=driver):
                yield chunk
        finally:
            if not driver.done() and workflow_id not in self._background:
                # The stream is a view of a durable workflow: leaving the loop (break, aclose, an
                # exception in the consumer, garbage collection) leaves the workflow running to its
                # end as a background task of this orchestrator, as after submit(); close() stops it.
                self._background[workflow_id] = driver
                driver.add_done_callback(lambda done: self._background.pop(workflow_id, None)
                                         if self._background.get(workflow_id) is done else None)
            await reader.close()

    def stream(
        self,
        graph: Graph | str,
        initial_state: Mapping[str, Any] | State | Command[Any] | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """``astream`` as a plain iterator, for code that is not async (same arguments, same chunks).

        Runs its own event loop while it is iterated and closes this orchestrator's
        connections when the iteration ends (or the iterator is closed or collected).
        Leaving early therefore stops driving a workflow it started: it is left ``running``
        with its lease released at once, and ``resume(workflow_id, graph)`` (or recovery)
        continues it from its last committed step. ``ExecutionError`` inside a running
        event loop (iterate ``astream`` there).
        """
        stream = self.astream(graph, initial_state, **options)  # argument errors here, at once
        return iterate_sync(self, "stream()", stream)

    @property
    def sync(self) -> SyncOrchestrator:
        """This orchestrator's methods as plain blocking calls (``orchestrator.sync.get_state(id)``)."""
        return SyncOrchestrator(self)

    async def _start(
        self,
        graph: Graph,
        initial_state: Mapping[str, Any] | State | None,
        *,
        workflow_id: str | None,
        step_limit: int | None,
        priority: int,
        from_checkpoint: str | None,
        breakpoints: Mapping[str, Any] | None = None,
        durability: str = "sync",
        metadata: Mapping[str, Any] | None = None,
        enqueued: dict[str, tuple[NodeCall, float]] | None = None,
        announce: bool = True,
        seed_as: str | None = None,
    ) -> tuple[WorkflowRecord, WorkflowLease]:
        """Store a new workflow (RUNNING, leased to this orchestrator) as ``execute`` describes.

        ``announce``: emit its ``workflow.started`` event (not for one ``update_state`` creates unrun).
        ``seed_as``: the input is an ``update_state`` of a new thread as that node (or ``START``):
        its checkpoint's source is ``"update"``; for a node, the input is checked as that node's
        writes and the next nodes are those routed after it (``_seed``).

        ``metadata`` is added to the record's (a subgraph's child names its parent there).
        With ``enqueued`` (a dict), the first step's worker tasks are queued with the create
        where that step does nothing else first (``engine.first_step_calls``), and their calls
        put in it by task id, with the time (``time.time()``) the create was sent: the run's
        first step then waits for them without building or queueing them again, and dates
        their ``node.started`` events from when they were dispatched.
        """
        if not graph.compiled:
            raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() before execute()")
        _check_step_limit(step_limit)
        check_durability(durability)
        # Stored only when not the default, so records of "sync" runs look as they always did.
        durable = {DURABILITY_KEY: durability} if durability != "sync" else {}
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
            raise ConfigurationError(
                f"execute(priority={priority!r}): priority must be an int between {-MAX_PRIORITY} and {MAX_PRIORITY}"
            )
        if from_checkpoint is not None:
            if initial_state is not None and (not isinstance(initial_state, Mapping) or initial_state):
                raise ConfigurationError(
                    f"execute(from_checkpoint={from_checkpoint!r}) starts from that checkpoint's state: pass no "
                    "initial_state; to change the state first, fork() it, update_state() the fork, then resume()"
                )
            return await self._fork(from_checkpoint, graph, workflow_id, WorkflowStatus.RUNNING, priority, durable)
        # The input is copied through JSON (sharing nothing with the caller's objects); that
        # encoding is the state's for the size check, the first tasks and the stored record.
        if workflow_id is not None:  # "" would otherwise mean "a fresh id" without a word
            validate_workflow_id(workflow_id)
        if isinstance(initial_state, State):
            state_json = encode(dict(initial_state))
            workflow_id = workflow_id or initial_state.workflow_id
        else:
            try:
                # A mapping, or what dict() reads as one (a Pydantic model of the state schema);
                # never a string or a sequence, which dict() would take apart or refuse obscurely.
                if isinstance(initial_state, (str, bytes, bytearray, list, tuple, set, frozenset, int, float)):
                    raise TypeError
                values = dict(initial_state or {})
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"the input state of graph {graph.name!r} must be a dict of state keys (or None), got "
                    f"{type(initial_state).__name__} {repr(initial_state)[:80]}; e.g. execute(graph, {{'question': ...}})"
                ) from None
            if graph.message_keys:  # LangGraph's ("user", "hi") / "hi" messages, as dicts
                values = coerce_message_updates(values, graph.message_keys)
            check_values(values)
            state_json = encode(dict(State(values, workflow_id="input")))  # a placeholder id: no fresh one made
        values = decode(state_json)
        if reserved_keys(values):
            raise ConfigurationError(
                f"the input state of graph {graph.name!r} has key(s) {', '.join(map(repr, reserved_keys(values)))}: "
                "keys starting with '__' are reserved for the framework (e.g. '__interrupt__'); rename them")
        node_seed = seed_as is not None and seed_as != START
        written = values
        if node_seed:  # a node's output over the schema's defaults: checked as its writes, not as an input
            empty = graph.prepare_input({}, present=list(graph.schema.keys)) if graph.schema is not None else {}
            values = merge_updates(empty, [(str(seed_as), written)], graph.reducers)
            graph.check_writes([(str(seed_as), written)], values)
        else:  # a state schema checks the input, filters it to the input schema and fills defaults
            values = graph.prepare_input(values)
        # (A schema, or a node seed's reducers, may change the state from what was encoded.)
        encoded: bytes | None = state_json if graph.schema is None and not node_seed else None
        workflow_id = validate_workflow_id(workflow_id or new_workflow_id())
        # Conditional entry points route the input state; if one fails, no workflow is created.
        frontier = None if node_seed else graph.fixed_start()  # the same for every input (no conditional entry), else:
        if node_seed:
            frontier = await graph.next_frontier([str(seed_as)], State._trusted(values, workflow_id), {},
                                                 configurable=(metadata or {}).get(CONFIGURABLE_KEY))
        elif frontier is None:
            frontier = await graph.start_frontier(State._trusted(values, workflow_id),
                                                  configurable=(metadata or {}).get(CONFIGURABLE_KEY),
                                                  remaining_steps=self.step_limit if step_limit is None else step_limit)
        if seed_as is not None:
            # As LangGraph's run from an update: the step it routes to does not pause before it runs.
            frontier = {**frontier, "breakpoint_passed": True}
        frontier = with_positions(graph, workflow_id, 0, frontier)  # where its subgraph tasks' children live
        if not self._connected or self._loop is not asyncio.get_running_loop():  # (no coroutine once connected)
            await self.connect()
        # An initial state the backend cannot store fails here, before anything is written.
        check_commit_size(workflow_id, 0, values, b"{}", None, self.backend.max_payload_bytes, state_json=encoded)
        self._remember(graph)
        record = WorkflowRecord(
            workflow_id=workflow_id, graph_name=graph.name, status=WorkflowStatus.RUNNING, state=values,
            frontier=frontier, graph=graph.fingerprint(),
            metadata={"run": 0, "orchestrator": self.orchestrator_id, **({"priority": priority} if priority else {}),
                      **(breakpoints or {}), **durable, **(metadata or {}), INCARNATION_KEY: new_incarnation(),
                      # Every process returns the output schema's keys, without needing the graph.
                      **({OUTPUT_KEYS: graph.schema.output_keys} if graph.schema is not None else {})},
        )
        tasks, calls = None, None
        # Only where the first step would queue them at once: nodes on workers it waits for,
        # no instrumentation (whose trace context the tasks carry).
        if enqueued is not None and self.wait_for_workers and self._observer() is None:
            calls = first_step_calls(graph, record, step_limit or self.step_limit, self._local_function, encoded)
            if calls:
                attempts = self.backend.task_queue.max_attempts
                tasks = []  # (a loop: a comprehension reading a local makes it a cell, see _create)
                for call in calls:
                    tasks.append(node_task(call, attempts))
        if encoded is not None:
            remember_json(record, encoded, encode_rest(record, keep=True))  # what the store writes (core.record_json)
        queued: set[str] = set()
        sent = time.time()  # the tasks' dispatch: their node.started events carry it
        first = Checkpoint(workflow_id, 0, values, frontier) if seed_as is None else Checkpoint(
            workflow_id, 0, values, frontier, writes={str(seed_as): written} if node_seed else {},
            metadata={"source": "update", "as_node": str(seed_as)})
        record, lease = await self._create(record, first, tasks, queued)
        if queued and enqueued is not None:
            for call in calls or ():
                if call.task_id in queued:
                    enqueued[call.task_id] = (call, sent)
        if announce:  # dated from the create's dispatch, as the tasks queued with it (one atomic step)
            scoped_events(self._publisher(), metadata).emit(workflow_id, "workflow.started", step=0, graph=graph.name,
                                                            time=sent)
        return record, lease

    async def _continue_completed(
        self, graph: Graph, initial_state: Mapping[str, Any] | None, workflow_id: str, priority: int,
        configurable: Mapping[str, Any] | None = None, breakpoints: Mapping[str, list[str]] | None = None,
        *, step_limit: int | None = None,
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """A new run of the stored workflow ``workflow_id`` from ``START`` with ``initial_state`` applied
        through the reducers, leased to this orchestrator; None if no such workflow is stored.
        (``step_limit``: the run's, for the managed values conditions from ``START`` read.)

        ``breakpoints`` (``_breakpoint_metadata``) are this run's own, as each LangGraph invoke
        has its own ``interrupt_before``: an earlier run's are not kept.

        ``WorkflowExistsError`` unless the stored workflow is COMPLETED (see ``execute``);
        ``ConfigurationError`` if it was run by another graph or version of this one.
        """
        if not graph.compiled:
            raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() before execute()")
        await self.connect()
        store = self.backend.state_store
        record = await store.get(workflow_id)
        if record is None:
            return None
        _refuse_continuing(record, self.backend.redacted_url)
        changed = graph_mismatch(record, graph.fingerprint(), graph.earlier_digests())
        if changed:
            raise ConfigurationError(f"execute(workflow_id={workflow_id!r}) continues that completed workflow: "
                                     f"{changed}; pass the graph it ran, or a new workflow_id")
        values = dict(initial_state or {})
        if graph.message_keys:
            values = coerce_message_updates(values, graph.message_keys)
        check_values(values)
        if reserved_keys(values):
            raise ConfigurationError(
                f"the input state of graph {graph.name!r} has key(s) {', '.join(map(repr, reserved_keys(values)))}: "
                "keys starting with '__' are reserved for the framework (e.g. '__interrupt__'); rename them")
        # Checked and filtered as a first input is; defaults are not written over the saved state.
        prepared = graph.prepare_input(values, present=record.state)  # (required keys the state has are given)
        update = {key: value for key, value in prepared.items() if key in values}
        given = _configurable_metadata(configurable)  # this call's, as each LangGraph invoke has its own
        self._remember(graph)
        lease = await self._acquire(workflow_id)
        try:
            current = await store.get(workflow_id)  # re-read under the lease
            record = current if current is not None else record
            _refuse_continuing(record, self.backend.redacted_url)
            merged = merge_updates(record.state, [("__input__", update)], graph.reducers)
            step = record.step + 1
            frontier = await graph.start_frontier(State._trusted(merged, workflow_id),
                                                  configurable=given.get(CONFIGURABLE_KEY),
                                                  remaining_steps=self.step_limit if step_limit is None else step_limit)
            frontier = with_positions(graph, workflow_id, step, frontier)
            check_commit_size(workflow_id, step, merged, {}, None, self.backend.max_payload_bytes)
            metadata = dict(record.metadata)
            metadata.update({"run": int(metadata.get("run", 0)) + 1, "orchestrator": self.orchestrator_id,
                             RUN_START_KEY: step})
            metadata.pop(CONFIGURABLE_KEY, None)
            metadata.update(given)
            metadata.pop("interrupt_before", None)
            metadata.pop("interrupt_after", None)
            metadata.update(breakpoints or {})
            if priority:
                metadata["priority"] = priority
            record = await store.save(
                record.evolve(status=WorkflowStatus.RUNNING, error=None, step=step, state=merged, frontier=frontier,
                              metadata=metadata),
                expected_version=record.version, fencing_token=lease.fencing_token,
                checkpoint=Checkpoint(workflow_id, step, merged, frontier,  # as a first input: no writes to stream
                                      metadata={"source": "input", "run": metadata["run"]}),
            )
        except BaseException:
            await self._release(lease)
            raise
        scoped_events(self._publisher(), None).emit(workflow_id, "workflow.started", step=step, graph=graph.name)
        return record, lease

    async def _create(
        self, record: WorkflowRecord, checkpoint: Checkpoint, tasks: Sequence[Task] | None = None,
        enqueued: set[str] | None = None,
    ) -> tuple[WorkflowRecord, WorkflowLease]:
        """Store a new workflow ``record`` with its first ``checkpoint`` under a lease for this orchestrator.

        ``tasks`` (its first step's) are queued with it where the store can
        (``create_leased_enqueuing``); their ids are then added to ``enqueued``.
        Retried through backend outages; ``WorkflowExistsError`` if the id is taken.
        """
        workflow_id = record.workflow_id
        self._starting.add(workflow_id)
        # (One coroutine, not a wrapper around another: every resumption passes through each layer.)
        try:
            # No closures here (see StepEngine._drive_steps' helpers): retried calls take their arguments.
            store = self.backend.state_store
            what = f"start workflow {workflow_id!r}"
            tries = [0]  # attempts made: a retry after a lost reply may find what the first one created
            try:
                # The lease grant and the create in one step (one round trip where the store merges them);
                # the first attempt here (no retrying coroutine per workflow while the backend answers).
                try:
                    made = await self._create_leased_once(record, checkpoint, tasks, enqueued, tries)
                    self._outage.succeeded()
                except BackendUnavailableError as exc:
                    made = await retry_after(exc, self._create_leased_once, record, checkpoint, tasks, enqueued, tries,
                                             what=what, outage=self._outage)
            except WorkflowExistsError:
                # A retry after a lost reply finds the record the first attempt created (and its lease).
                current = await self._created_by_lost_reply(workflow_id, tries[0], what)
                if current is None:
                    raise
                return current, await until_available(self._acquire, workflow_id, what=what, outage=self._outage)
            if made is not None:
                return made
            # Another orchestrator held the lease: wait for it as _acquire says (and names the holder).
            lease = await until_available(self._acquire, workflow_id, what=what, outage=self._outage)
            tries[0] = 0
            try:
                try:
                    record = await until_available(self._create_once, record, checkpoint, lease, tries,
                                                   what=what, outage=self._outage)
                except WorkflowExistsError:
                    # A retry after a lost reply finds the record the first attempt created.
                    current = await self._created_by_lost_reply(workflow_id, tries[0], what)
                    if current is None:
                        raise
                    record = current
                except (FencingTokenRejectedError, LeaseLostError):
                    # A retry after a lost reply, when another orchestrator took the workflow the first
                    # attempt created over meanwhile (the outage outlasted our lease): it is driving it;
                    # driving from here fails its first commit as a takeover, and the caller gets the result.
                    current = await until_available(store.get, workflow_id, what=what, outage=self._outage)
                    if tries[0] < 2 or current is None or (
                            current.version == 1 and current.metadata.get("orchestrator") != self.orchestrator_id):
                        raise
                    record = current
            except BaseException:
                await self._release(lease)
                raise
            return record, lease
        finally:
            self._starting.discard(workflow_id)

    async def _created_by_lost_reply(self, workflow_id: str, tries: int, what: str) -> WorkflowRecord | None:
        """After ``WorkflowExistsError`` from ``_create``'s attempt number ``tries``: the record an earlier
        attempt of this orchestrator created (its reply lost in an outage), or None (the id was taken
        otherwise: the caller re-raises). Version 1 and this orchestrator's id in its metadata: nothing
        committed on it since."""
        if tries < 2:
            return None  # the first attempt: nothing of ours can be there
        current = await until_available(self.backend.state_store.get, workflow_id, what=what, outage=self._outage)
        if current is None or current.version != 1 or current.metadata.get("orchestrator") != self.orchestrator_id:
            return None
        return current

    async def _create_leased_once(
        self, record: WorkflowRecord, checkpoint: Checkpoint, tasks: Sequence[Task] | None,
        enqueued: set[str] | None, tries: list[int],
    ) -> tuple[WorkflowRecord, WorkflowLease] | None:
        """One attempt of ``_create``'s create with the lease (and ``tasks``); None if another holds it."""
        tries[0] += 1
        store = self.backend.state_store
        if not tasks:
            return await store.create_leased(record, owner=self.orchestrator_id, ttl=self.lease_ttl,
                                             checkpoint=checkpoint)
        made = await store.create_leased_enqueuing(record, owner=self.orchestrator_id, ttl=self.lease_ttl,
                                                   checkpoint=checkpoint, queue=self.backend.task_queue, tasks=tasks)
        if made is None:
            return None
        if made[2] and enqueued is not None:
            # Only from the call that created the workflow: after a lost reply the record
            # is found by _create, and the first step queues the tasks (again: a no-op then).
            enqueued.update(task.id for task in tasks)
        return made[0], made[1]

    async def _create_once(
        self, record: WorkflowRecord, checkpoint: Checkpoint, lease: WorkflowLease, tries: list[int]
    ) -> WorkflowRecord:
        """One attempt of ``_create``'s create under a lease acquired first."""
        tries[0] += 1
        return await self.backend.state_store.save(
            record, expected_version=0, checkpoint=checkpoint, fencing_token=lease.fencing_token)

    async def _fork(
        self, checkpoint: str, graph: Graph | None, workflow_id: str | None, status: str, priority: int,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[WorkflowRecord, WorkflowLease]:
        """Store a new workflow forked from ``checkpoint`` (see ``history.plan_fork``), leased to this orchestrator."""
        new_id = validate_workflow_id(State().workflow_id if workflow_id is None else workflow_id)
        await self.connect()
        source, past = await history.read_checkpoint(self.backend.state_store, checkpoint, where=self.backend.redacted_url)
        graph = self._history_graph(source, graph, f"fork of checkpoint {checkpoint!r}")
        metadata = {"run": 0, "orchestrator": self.orchestrator_id, **({"priority": priority} if priority else {}),
                    **(extra or {}), INCARNATION_KEY: new_incarnation()}
        record, first = history.plan_fork(graph, source, past, new_id, status=status, metadata=metadata)
        check_commit_size(new_id, record.step, record.state, {**record.to_dict(), "state": None}, None,
                          self.backend.max_payload_bytes)
        record, lease = await self._create(record, first)
        if record.status == WorkflowStatus.RUNNING:
            self._publisher().emit(new_id, "workflow.started", step=record.step, graph=graph.name, forked_from=checkpoint)
        return record, lease

    def _history_graph(self, record: WorkflowRecord, graph: Graph | None, call: str) -> Graph:
        """``graph`` (default: the known graph of ``record``), checked to be the one ``record`` was started with."""
        graph = self._known_graph(record) if graph is None else _check_graph(graph, call)
        if graph is None:
            raise ConfigurationError(f"{call} needs the graph {record.graph_name!r}: pass it as graph=")
        if not graph.compiled:
            raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() first")
        changed = graph_mismatch(record, graph.fingerprint(), graph.earlier_digests())
        if changed:
            raise ConfigurationError(f"{call}: {changed}; pass the graph it was started with")
        self._remember(graph)
        return graph

    async def fork(self, checkpoint_id: str, *, workflow_id: str | None = None, graph: Graph | None = None) -> str:
        """Copy a past checkpoint into a new workflow, without running it; the new workflow's id.

        The fork (``workflow_id``, default a fresh id) starts with the checkpoint's
        state, step and next nodes, status ``pending`` (``completed`` if the
        checkpoint had nothing left to run); ``update_state`` may change it, then
        ``resume`` runs it. The original's history is left as it was; the fork's
        first snapshot names the checkpoint as its parent, and its status record
        ``metadata["forked_from"]``. ``graph`` defaults to the known graph of the
        original and must be the version it was started with (``ConfigurationError``).
        ``WorkflowNotFoundError`` if the checkpoint is not stored, ``WorkflowExistsError``
        if ``workflow_id`` is taken.
        """
        record, lease = await self._fork(checkpoint_id, graph, workflow_id, WorkflowStatus.PENDING, 0)
        await self._release(lease)
        return record.workflow_id

    async def get_state(self, workflow_id: str, *, subgraphs: bool = False) -> StateSnapshot:
        """The workflow's latest ``StateSnapshot`` (values, next nodes, step, checkpoint ids, status).

        With ``subgraphs=True`` (LangGraph's name) its ``subgraphs`` holds the latest
        snapshot of each subgraph its current step is running (by task: the node name,
        or ``node#i``), nested as deep as they go. ``WorkflowNotFoundError`` if it is unknown.
        """
        await self.connect()
        snapshot = await history.read_state(self.backend.state_store, workflow_id, where=self.backend.redacted_url,
                                            subgraphs=subgraphs)
        if snapshot.status in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED):
            # A paused or failed step's kept writes show in its values, as LangGraph's (given the graph).
            record = await self.backend.state_store.get(workflow_id)
            if record is not None and record.step == snapshot.step:
                values = history.paused_values(self._paused_graph(record), record)
                if values is not record.state:
                    snapshot = dataclasses.replace(snapshot, values=dict(values))  # (all keys, as the record's)
        return snapshot

    async def get_state_history(
        self, workflow_id: str, *, limit: int | None = None, before: str | int | None = None
    ) -> list[StateSnapshot]:
        """The workflow's snapshots, one per checkpoint, newest first.

        ``limit`` bounds how many; ``before`` (a checkpoint id of this workflow, or a
        step number) returns only older ones: pass the last snapshot's
        ``checkpoint_id`` to read the next page. A fork's history starts at the
        checkpoint it was forked from (its ``parent_checkpoint_id`` names it).
        """
        await self.connect()
        return await history.read_history(self.backend.state_store, workflow_id, limit=limit, before=before,
                                          where=self.backend.redacted_url)

    async def update_state(
        self, workflow_id: str, values: Mapping[str, Any], *, as_node: str | None = None, graph: Graph | None = None
    ) -> StateSnapshot:
        """Write ``values`` as if node ``as_node`` had returned them; the new latest snapshot.

        The update merges through the graph's reducers in a new checkpoint, and the
        next nodes become those the graph routes after ``as_node`` on the new state
        (``as_node=START``: the entry points); ``resume`` then continues from there.
        ``as_node`` defaults to the one node that wrote in the last step. After a pause at
        an ``interrupt_before`` breakpoint the paused step stays next (routed again after the
        last writer) and ``resume`` runs it without pausing there again, as LangGraph's
        ``invoke(None)`` does; a node paused in ``interrupt()`` runs again and asks again. A workflow
        that is not running becomes ``pending`` (``completed`` if nothing is left to
        run); a failed one loses its error. Refused with ``ExecutionError`` while an
        orchestrator drives the workflow (its lease is held): cancel it first, or
        wait for it. ``graph`` defaults to the known graph of the workflow. See
        ``history.plan_update`` for the errors a bad update raises (nothing is written).

        An id not stored yet, with ``graph``, starts a workflow there without running it
        (LangGraph's update of a new thread; ``_seed``): ``pending``, ``values`` its input
        (``as_node`` None or ``START``) or ``as_node``'s output; ``resume`` runs it. Without
        ``graph``, ``WorkflowNotFoundError``.
        """
        await self.connect()
        call = f"update_state({workflow_id!r})"
        store = self.backend.state_store
        record = await store.get(workflow_id)
        raced = False
        if record is None and graph is not None:
            try:
                return await self._seed(workflow_id, values, as_node, graph)
            except (WorkflowExistsError, WorkflowLeaseHeldError):
                # Another caller seeded it meanwhile: updated as any stored one, once that seed is saved.
                record, raced = await store.get(workflow_id), True
        if record is None:
            raise WorkflowNotFoundError(
                f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}; pass graph= to start a new one "
                "from these values")
        graph = self._history_graph(record, graph, call)
        # An owner of its own: a lease this orchestrator holds to drive the workflow is
        # never granted (and then released) here, however the calls interleave.
        ours = workflow_id in self._running or workflow_id in self._background
        lease = None if ours else await store.acquire_lease(
            workflow_id, f"{self.orchestrator_id}/update_state", self.lease_ttl)
        give_up = time.monotonic() + 5.0
        while lease is None and raced and time.monotonic() < give_up:
            await asyncio.sleep(0.02)  # a seed holds the lease for the two writes that store it
            lease = await store.acquire_lease(workflow_id, f"{self.orchestrator_id}/update_state", self.lease_ttl)
        if lease is None:
            who = "this" if ours else "another"
            raise ExecutionError(
                f"{call}: workflow {workflow_id!r} is being run by {who} orchestrator (its lease is held), and its "
                "state cannot change under a running step; cancel_workflow() it first, or wait until it finishes "
                "(or its lease expires, if that process died)"
            )
        try:
            record = await store.get(workflow_id)  # re-read under the lease
            if record is None:  # deleted meanwhile (or a racing seed that failed)
                raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
            last = await store.list_checkpoints(workflow_id, limit=1)
            updated, checkpoint = await history.plan_update(graph, record, values, as_node, last[0] if last else None,
                                                            self.backend.max_payload_bytes)
            saved = await store.save(updated, expected_version=record.version, checkpoint=checkpoint,
                                     fencing_token=lease.fencing_token)
        finally:
            await self._release(lease)
        return history.snapshot_of(checkpoint, saved)

    async def _seed(
        self, workflow_id: str, values: Mapping[str, Any], as_node: str | None, graph: Graph
    ) -> StateSnapshot:
        """``update_state`` of a workflow id not stored yet (LangGraph's update of a new thread):
        the workflow is created ``pending``, not run, in one checkpoint (source ``"update"``)
        holding ``values``: as its input (``as_node`` None or ``START``: the entry points
        next) or as ``as_node``'s output (checked as its writes; the nodes routed after it
        next). The step it runs first does not pause before it (as LangGraph's).
        ``resume`` (``invoke(None, config)``) runs it, and a new input (``invoke(input,
        config)``) starts it over from ``START``. ``WorkflowExistsError`` if the id was
        taken meanwhile; a bad ``values`` raises what ``execute``'s input or a node's
        writes would, and nothing is stored."""
        if not isinstance(values, Mapping):
            raise ConfigurationError(
                f"update_state({workflow_id!r}): values must be a dict of state updates, got {type(values).__name__}")
        if as_node is not None and as_node != START and as_node not in graph.nodes:
            raise ConfigurationError(
                f"update_state({workflow_id!r}): as_node={as_node!r} is not a node of graph {graph.name!r}; use one "
                f"of {', '.join(map(repr, graph.nodes))} or START")
        record, lease = await self._start(graph, values, workflow_id=workflow_id, step_limit=None, priority=0,
                                          from_checkpoint=None, announce=False, seed_as=as_node or START)
        store = self.backend.state_store
        try:
            saved = await store.save(record.evolve(status=WorkflowStatus.PENDING), expected_version=record.version,
                                     fencing_token=lease.fencing_token)
        except BaseException:
            # Not left stored as running (recovery would run it): the seed did not happen.
            with contextlib.suppress(Exception):
                await store.delete(workflow_id)
            raise
        finally:
            await self._release(lease)
        checkpoints = await self.backend.state_store.list_checkpoints(workflow_id, limit=1)
        return history.snapshot_of(checkpoints[0], saved)

    async def resume(
        self,
        workflow_id: str,
        graph: Graph | Command[Any] | Any = None,
        command: Command[Any] | Any = None,
        *,
        resume: Any = NO_ANSWER,
        step_limit: int | None = None,
        allow_graph_change: bool = False,
        interrupt_before: Sequence[str] | None = None,
        interrupt_after: Sequence[str] | None = None,
        durability: str | None = None,
        wait_for_lease: float | None = None,
        context: Any = None,
    ) -> State:
        """Continue a workflow from its last committed step; return the final state.

        An ``interrupted`` workflow needs the answer to its ``interrupt()``:
        ``resume(workflow_id, answer)`` - the second argument is the graph only when it
        is a ``Graph``, a ``Command`` when it is one, and otherwise the answer -, or
        ``resume(workflow_id, Command(resume=answer))`` (with a graph:
        ``resume(workflow_id, graph, Command(resume=answer))`` or ``resume(workflow_id, graph, answer)``; or
        ``resume=answer``); with several pending, ``Command(resume={interrupt_id:
        answer})``. The interrupted node runs again from its start and its
        ``interrupt()`` returns the answer (see ``interrupts``); nodes of the step that
        finished are not run again. A workflow paused at a breakpoint continues with
        ``resume(workflow_id)``. ``interrupt_before``/``interrupt_after`` replace the
        workflow's breakpoints from here on. Answering a workflow that is not waiting
        for an answer is a ``ConfigurationError``.

        ``Command(resume=answer, update=values)`` (or ``Command(update=values)`` alone) also
        edits the paused workflow's state first, as LangGraph's: the values merge through the
        reducers as a write of ``START`` (``history.edited_state``) and the paused step runs
        again on the edited state, under its own number; without an answer at an
        ``interrupt()``, the node asks again. Only for a paused (``interrupted``) workflow;
        otherwise a ``ConfigurationError`` says to call ``update_state`` first. ``goto=`` and
        ``graph=`` are refused (``ConfigurationError``).

        Committed steps are not run again. Of the step that did not commit, only nodes
        that did not finish run again: the writes of nodes that succeeded before the
        step failed are kept in the record, and results of tasks that finished on
        workers (also a dead letter requeued afterwards) are reused. A completed
        workflow returns its final state at once. A failed or cancelled workflow is
        retried from the step that did not commit; once a failed one completes, the dead
        letters of that step (of every run) are purged: nothing needs them any more. ``graph`` defaults to the graph of
        the same name this orchestrator last ran.

        ``graph`` must be the graph the workflow was started with (same fingerprint:
        name and a hash of its nodes, edges, routes and reducers); another version is
        refused with a ``ConfigurationError`` naming both, and the workflow is left as
        it was. ``allow_graph_change=True`` migrates the workflow to ``graph`` instead
        (its record then carries the new fingerprint); the nodes of the step to run
        must exist in it, or the migration is refused with a ``ConfigurationError``
        naming them before anything is written (the workflow keeps its graph and error).
        A completed workflow given a different graph is refused the same way.

        ``durability`` (see ``execute``) replaces the workflow's mode from here on;
        None keeps the one it was started with. ``context`` (see ``execute``) replaces the
        run's context from here on (LangGraph's ``invoke(Command(...), config, context=...)``);
        None keeps the run's.

        ``wait_for_lease``: seconds to wait while another orchestrator holds the
        workflow's lease, as one that was killed mid-run leaves it (it runs out
        ``lease_ttl`` after its last renewal). None (default) waits up to this
        orchestrator's ``lease_ttl`` (the longest such a lease lasts when orchestrators
        share the setting), 0 not at all; still held then, ``ExecutionError`` says by
        whom, for how long yet, and what to do.
        """
        _check_step_limit(step_limit)
        if wait_for_lease is not None and (isinstance(wait_for_lease, bool) or not isinstance(wait_for_lease, (int, float))
                                           or not math.isfinite(wait_for_lease) or wait_for_lease < 0):
            raise ConfigurationError(
                f"resume(wait_for_lease={wait_for_lease!r}): pass seconds >= 0 (0: do not wait), or None to wait up to "
                f"lease_ttl ({self.lease_ttl}s)")
        if durability is not None:
            check_durability(durability, "resume")
        if context is not None:  # checked before anything is read or written
            context = context_values(f"resume({workflow_id!r})",
                                     with_context_schema(graph, context) if isinstance(graph, Graph) else context)
        if isinstance(graph, Command):
            command, graph = graph, None
        elif graph is not None and not isinstance(graph, Graph):
            # resume(workflow_id, answer): only a Graph (or a Command) there is not the answer.
            if resume is not NO_ANSWER or command is not None:
                raise ConfigurationError(
                    f"resume({workflow_id!r}, {graph!r}, ...): the second argument is taken as the answer, and an "
                    "answer is also given as resume= or a Command; give it once")
            resume, graph = graph, None
        if command is not None and not isinstance(command, Command):
            # resume(workflow_id, graph, answer): the third argument is the answer too.
            if resume is not NO_ANSWER:
                raise ConfigurationError(
                    f"resume({workflow_id!r}, graph, {command!r}): the third argument is taken as the answer, and an "
                    "answer is also given as resume=; give it once")
            resume, command = command, None
        update: Any = None
        if command is not None:
            if command.goto != () or command.graph is not None:
                raise ConfigurationError(
                    f"resume({workflow_id!r}, Command(...)) takes resume= and update=, not goto= or graph=; to run "
                    "other nodes next, call update_state(values, as_node=...) to route from that node, then resume()")
            update = command.update
            if command.resume is not None:
                resume = command.resume
        await self.connect()
        record = await self.backend.state_store.get(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
        if update is not None and record.status != WorkflowStatus.INTERRUPTED:
            raise _no_pause_to_edit(workflow_id, record.status)
        if resume is not NO_ANSWER and record.status != WorkflowStatus.INTERRUPTED:
            raise _no_pause_to_answer(workflow_id, record.status)
        if workflow_id in self._running or workflow_id in self._background:
            # Its lease is this orchestrator's own, so acquiring it would succeed: refuse
            # here, or the step in flight would run a second time beside itself.
            raise ExecutionError(
                f"resume({workflow_id!r}): this orchestrator is running workflow {workflow_id!r} already; "
                f"wait for it with wait({workflow_id!r}) (or cancel_workflow() it first)")
        asked: tuple[str, ...] = ()  # the pauses an answer is for: another resume may answer them first
        if record.status == WorkflowStatus.INTERRUPTED and not _edit_only(record, update, resume):
            answer_interrupts(workflow_id, record.frontier, resume)  # a wrong answer fails before anything changes
            asked = tuple(p.id for p in read_interrupts(record.frontier))
        if record.status == WorkflowStatus.COMPLETED:
            # A graph passed explicitly is checked even here: a result is no answer to a wrong graph.
            if graph is not None and graph.compiled and not allow_graph_change:
                mismatch = graph_mismatch(record, graph.fingerprint(), graph.earlier_digests())
                if mismatch:
                    raise ConfigurationError(f"resume({workflow_id!r}): {mismatch}; pass the graph it was "
                                             "started with (the workflow is completed)")
            return State._trusted(result_values(record.state, record.metadata), workflow_id)
        graph = graph or self._known_graph(record)
        if graph is None:
            raise ConfigurationError(
                f"resume({workflow_id!r}) needs the graph {record.graph_name!r}: pass it as resume(workflow_id, graph)"
            )
        if not graph.compiled:
            raise GraphNotCompiledError(f"graph {graph.name!r} is not compiled; call graph.compile() first")
        fingerprint = graph.fingerprint()
        changed = graph_mismatch(record, fingerprint, graph.earlier_digests())
        if changed and not allow_graph_change:
            raise ConfigurationError(
                f"resume({workflow_id!r}): {changed}; pass the graph it was started with, or "
                "resume(..., allow_graph_change=True) to migrate the workflow to this version"
            )
        if changed:
            _check_migration(workflow_id, record, graph)  # before anything is written
        self._remember(graph)
        lease = await self._acquire(workflow_id, self.lease_ttl if wait_for_lease is None else float(wait_for_lease),
                                    f"resume({workflow_id!r})")
        obsolete: list[str] = []
        try:
            # Re-read under the lease: the record may have moved since the first read.
            current = await self.backend.state_store.get(workflow_id)
            record = current if current is not None else record
            if resume is not NO_ANSWER and (record.status != WorkflowStatus.INTERRUPTED
                                            or tuple(p.id for p in read_interrupts(record.frontier)) != asked):
                # Another resume answered those pauses meanwhile (its run may have paused again, at
                # another interrupt): this answer was for them, never for what is pending now.
                await self._release(lease)
                now = ", ".join(repr(p.id) for p in read_interrupts(record.frontier)) or "none"
                raise ExecutionError(
                    f"resume({workflow_id!r}): the interrupt(s) this answer was for ({', '.join(map(repr, asked))}) "
                    f"were answered by another resume meanwhile; the workflow is now {record.status} (pending "
                    f"interrupts: {now}). Read get_state({workflow_id!r}) and answer what is pending, if anything")
            if record.status == WorkflowStatus.COMPLETED:
                await self._release(lease)
                return State._trusted(result_values(record.state, record.metadata), workflow_id)
            changes: dict[str, Any] = {}
            metadata = dict(record.metadata)
            if changed:
                log.warning("workflow %r migrated to a new graph version: %s", workflow_id, changed)
                metadata["previous_graph"] = dict(record.graph or {})
                # The new version's output schema decides what the workflow returns.
                metadata.pop(OUTPUT_KEYS, None)
                if graph.schema is not None:
                    metadata[OUTPUT_KEYS] = graph.schema.output_keys
                changes["graph"] = fingerprint
            if interrupt_before is not None or interrupt_after is not None:
                metadata.update(_breakpoint_metadata(graph, interrupt_before, interrupt_after))
            if durability is not None:
                metadata.pop(DURABILITY_KEY, None)
                if durability != "sync":
                    metadata[DURABILITY_KEY] = durability
            if context is not None:
                metadata[CONFIGURABLE_KEY] = {**(metadata.get(CONFIGURABLE_KEY) or {}), CONTEXT_KEY: context}
            if record.status == WorkflowStatus.INTERRUPTED and _edit_only(record, update, resume):
                # An edit without the answer an interrupt() waits for: as LangGraph, the paused step runs
                # again on the edited state, and the node asks again (with the same interrupt ids).
                paused = read_interrupts(record.frontier)
                frontier = {key: value for key, value in record.frontier.items() if key != "interrupts"}
                if any(pause.kind != "interrupt" for pause in paused):
                    frontier["breakpoint_passed"] = True
                record = record.evolve(frontier=frontier)
            elif record.status == WorkflowStatus.INTERRUPTED:
                record = record.evolve(frontier=answer_interrupts(workflow_id, record.frontier, resume))
            elif resume is not NO_ANSWER:
                raise _no_pause_to_answer(workflow_id, record.status)
            if record.status != WorkflowStatus.RUNNING:
                # A new run: fresh task ids, so failed or cancelled tasks are not reused,
                # but the step's tasks that did succeed (also after a requeue) are.
                old_run = int(record.metadata.get("run", 0))
                if record.status == WorkflowStatus.FAILED:
                    # The dead letters this step left in every run so far: obsolete once it completes.
                    obsolete = [task_id_for(workflow_id, run, record.step, entry.key, incarnation_of(record))
                                for run in range(old_run + 1) for entry in read_entries(record.frontier, {})]
                frontier = await self._reuse_finished_tasks(record)
                metadata.update({"run": old_run + 1, "orchestrator": self.orchestrator_id})
                changes.update(status=WorkflowStatus.RUNNING, error=None, frontier=frontier)
            if update is not None:
                if record.status != WorkflowStatus.INTERRUPTED:  # (answered by another resume meanwhile)
                    raise _no_pause_to_edit(workflow_id, record.status)
                # The paused step runs again on the edited state, under its own number (its interrupt
                # and subgraph ids stay); its tasks carry that state (``state_edited``).
                changes["state"] = history.edited_state(graph, record, update, self.backend.max_payload_bytes)
                changes["frontier"] = {**changes.get("frontier", record.frontier), STATE_EDITED_KEY: True}
            if changes or metadata != dict(record.metadata):
                try:
                    record = await self.backend.state_store.save(
                        record.evolve(metadata=metadata, **changes),
                        expected_version=record.version, fencing_token=lease.fencing_token,
                    )
                except (FencingTokenRejectedError, LeaseLostError, VersionConflictError) as exc:
                    # Our lease ran out before the write (a slow process, lease_ttl short)
                    # and another orchestrator took the workflow over: nothing was written.
                    raise WorkflowLeaseHeldError(
                        f"resume({workflow_id!r}): another orchestrator took the workflow over while it was being "
                        f"resumed (this one's lease, lease_ttl={self.lease_ttl:g}s, ran out first: {exc}); nothing "
                        "was changed: call resume() again (it waits for that orchestrator's lease), or wait() for it"
                    ) from exc
        except BaseException:
            await self._release(lease)
            raise
        # A resume is a call of its own: its steps count from here (LangGraph's resumed invoke).
        final = await self._drive(graph, record, lease, step_limit, budget_from=record.step)
        if obsolete:
            await self._purge_obsolete_dead_letters(workflow_id, obsolete)
        return final

    async def _purge_obsolete_dead_letters(self, workflow_id: str, task_ids: Sequence[str]) -> None:
        """Once a resumed workflow completed, delete the dead letters of the step that had failed.

        They need no attention any more (the step's nodes ran again, or their results were
        reused), so ``dead-letters list`` shows only letters that do. Housekeeping: a
        backend error is logged, never raised (the workflow's result is what matters).
        """
        try:
            current = await self.backend.state_store.get(workflow_id)
            if current is None or current.status != WorkflowStatus.COMPLETED:
                return
            for task_id in task_ids:
                if await self.backend.task_queue.purge_dead_letter(task_id):
                    log.info("workflow %r completed through resume: purged its obsolete dead letter %s",
                             workflow_id, task_id)
        except Exception as exc:
            log.warning("workflow %r completed, but its obsolete dead letters could not be purged (%s); "
                        "'distributed-agents dead-letters purge' deletes them", workflow_id, exc)

    async def _reuse_finished_tasks(self, record: WorkflowRecord) -> dict[str, Any]:
        """``record``'s frontier for the new run of its failed or cancelled step.

        A node whose task (of the run that stopped) succeeded keeps its result as a
        pending write; one whose task failed runs under the new run's id. Of a FAILED
        workflow, a node whose task has no result and is no dead letter keeps its task
        id (``task_runs``): the task may be queued or running still - a dead letter
        requeued after the failure, a task a worker claimed just as waiting for a worker
        timed out, or one a failed run could not withdraw - and the step waits for it
        instead of running the node twice. Tasks the failed run withdrew (named in its
        error's ``withdrawn_tasks``, see ``_withdraw_left``) are not waited for: their
        nodes run under the new run's ids.
        """
        frontier = dict(record.frontier)
        pending = dict(frontier.get("pending_writes") or {})
        pinned: dict[str, int] = {}
        queue = self.backend.task_queue
        withdrawn = _withdrawn_tasks(record)
        for entry in read_entries(frontier, {}):
            node = entry.key
            if node in pending:
                continue
            task_id = node_task_id(record, node)
            result = await queue.get_result(task_id)
            if result is not None:
                # A task that paused in interrupt() runs again, with the answers, under the new run.
                if result.status == "succeeded" and not is_interrupt_output(result.output):
                    pending[node] = dict(result.output or {})
                continue
            if record.status == WorkflowStatus.FAILED and task_id not in withdrawn and \
                    await find_dead_letter(self.backend, task_id) is None:
                pinned[node] = node_run(record, node)
        frontier.pop("task_runs", None)
        if pending:
            frontier["pending_writes"] = pending
        if pinned:
            frontier["task_runs"] = pinned
        return frontier

    def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]:
        """``call()``, retried with backoff while the backend is unavailable (await the result)."""
        return until_available(call, what=what, outage=self._outage)

    async def _acquire(self, workflow_id: str, wait: float = 0.0, call: str = "") -> WorkflowLease:
        """The workflow's lease, waiting up to ``wait`` seconds while another orchestrator holds it.

        ``ExecutionError`` if it is still held then, saying who holds it, for how long
        yet, and what to do.
        """
        store = self.backend.state_store
        started = time.monotonic()
        told = False
        while True:
            lease = await store.acquire_lease(workflow_id, self.orchestrator_id, self.lease_ttl)
            if lease is not None:
                return lease
            holder = await store.lease_holder(workflow_id)
            left = None if holder is None else max(holder.deadline - time.time(), 0.0)
            waited = time.monotonic() - started
            if waited >= wait:
                break
            if not told:
                told = True
                log.info("%sworkflow %r: its lease is held%s; waiting up to %.0fs for it (the lease of an "
                         "orchestrator that died runs out lease_ttl after its last renewal)", f"{call}: " if call else "",
                         workflow_id, "" if holder is None else f" by {holder.owner!r} for another {left:.1f}s", wait)
            # Try again as the lease runs out (a live holder renews it: then until ``wait`` is over).
            await asyncio.sleep(min(max(left or 0.0, 0.05), 1.0, max(wait - waited, 0.0) or 0.05))
        held = "" if holder is None else f" by {holder.owner!r}, for another {left:.1f}s"
        after = f" and still was after waiting {wait:.0f}s" if wait > 0 else ""
        raise WorkflowLeaseHeldError(
            f"{call + ': ' if call else ''}workflow {workflow_id!r} is being driven by another orchestrator: its lease "
            f"is held{held}{after}. If that orchestrator is alive, it renews the lease: wait({workflow_id!r}) "
            f"returns the result (or cancel_workflow({workflow_id!r}) stops it). If its process died, the lease runs "
            f"out lease_ttl after its last renewal (default {DEFAULT_LEASE_TTL:.0f}s; Orchestrator(lease_ttl=...)), "
            f"after which resume() continues the workflow (resume(..., wait_for_lease=seconds) waits for that), as "
            "does any orchestrator that knows the graph, on its own")

    async def _release(self, lease: WorkflowLease) -> None:
        with contextlib.suppress(Exception):
            await self.backend.state_store.release_lease(lease)

    async def _drive(self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease, step_limit: int | None,
                     enqueued: dict[str, tuple[NodeCall, float]] | None = None, *,
                     budget_from: int | None = None) -> State:
        workflow_id = record.workflow_id
        publisher = self._publisher()
        publisher.start()
        engine, executor = self._engine(workflow_id, lease, record.metadata, graph, tuple(enqueued or ()))
        if enqueued:
            # The caller's dict itself (it keeps it while the run lasts): no second dict of them.
            engine.first_calls = enqueued
        task = asyncio.current_task()
        assert task is not None  # asyncio runs every coroutine in a task
        # Driven here, in the caller's task (see _Drive): stopping the run cancels this task.
        drive = self._running[workflow_id] = _Drive(task)
        callers_cancels = _cancelling(task)  # pending already (execute awaited in a cleanup): not a new cancel
        handed_over = lease_lost = False
        renewal = self._renewer.add(lease, drive, engine.released_lease)
        try:
            # In-process nodes stream through this orchestrator's publisher.
            sink = swap_stream_sink(publisher)
            # Cancellations the caller's task had pending already are not this run's (core.run_cancels).
            pending = run_cancels.begin(task)
            try:
                # A call counts its steps from where it started: a continued run (a thread's next
                # invoke) from its start, a resume (``budget_from``) from where it resumed. (No local of
                # the options: this frame is kept while the run lasts.)
                budget = int(record.metadata.get(RUN_START_KEY, 0)) if budget_from is None else budget_from
                final = await engine.drive(graph, record, lease, DriveOptions(
                    step_limit=(step_limit or self.step_limit) + budget, lease_ttl=self.lease_ttl,
                    budget_start=budget))
            finally:
                drive.finish()
                run_cancels.end(task, pending)
                swap_stream_sink(sink)
                # A stop this run asked for ends here: the caller's own cancellation (if any) goes on.
                if drive.settle_cancel():
                    raise asyncio.CancelledError
        except WorkflowTakenOverError:
            # Another orchestrator owns the workflow now; the caller still gets its result
            # (waited for below, once this run has let go of the backend).
            log.warning("workflow %r was taken over by another orchestrator; waiting for its result", workflow_id)
            handed_over = True
        except asyncio.CancelledError:
            if _cancelling(task) > callers_cancels:
                # The caller's own cancellation (task.cancel(), a timeout, a TaskGroup's) met
                # this stop: it goes on whatever the workflow's status, as asyncio's contract
                # asks; turned into WorkflowCancelledError it would leave the task running on
                # with a cancellation pending that nothing delivers.
                raise
            current = await self._safe_get(workflow_id)
            if current is not None and current.status == WorkflowStatus.CANCELLED:
                raise WorkflowCancelledError(f"workflow {workflow_id!r} was cancelled") from None
            if not renewal.lost:
                raise
            lease_lost = True
        except Exception:
            # The run failed (a node type no live worker served in time, an error after its
            # step's tasks were queued): what that step left queued is withdrawn, as a cancel
            # does, once the failure is stored (a worker started later would run it for nobody).
            if executor.left_queued or executor.enqueued:
                await self._withdraw_left(executor, record)
            raise
        finally:
            try:
                self._renewer.discard(renewal)
                self._running.pop(workflow_id, None)
                self._waiting.pop(workflow_id, None)
                self._cancelled.discard(workflow_id)
                if not engine.lease_released:  # the last commit released it (save_releasing)
                    await self._release(lease)
                if self._events is not None:
                    await self._events.flush()
            finally:
                # Only now may close() (which waits for this) close the backend that the
                # release and the flush go through.
                drive.settle()
        if handed_over:
            return await self.wait(workflow_id)
        if lease_lost:
            return await self._after_lease_loss(graph, workflow_id, step_limit)
        return _result_state(final, graph)

    async def _withdraw_left(self, executor: TaskQueueExecutor, record: WorkflowRecord) -> None:
        """Withdraw the tasks the failed run of ``record``'s workflow left queued: those of its last
        step without a result (``executor.left_queued``) and any queued with its create that no step
        took up (``executor.enqueued``).

        Only once the run's end is stored. A workflow still unfinished in the same run was
        taken over by another orchestrator (this run's lease was lost before its failure could
        be committed), and one in a later run was resumed (which may wait for these very tasks,
        see ``_reuse_finished_tasks``): either way the tasks stay queued, as at any lost lease.
        A workflow gone, cancelled or completed has them withdrawn. A FAILED one first gets
        their ids in its error (``withdrawn_tasks``, a write that fails if the record changed
        meanwhile), so that a ``resume`` runs those nodes under new task ids rather than wait
        for a task taken back; then they are withdrawn. Best effort: a record that cannot be
        read or marked leaves them queued (logged); a task a worker claimed meanwhile ends with
        that worker.
        """
        left = tuple(dict.fromkeys((*executor.left_queued, *executor.enqueued)))
        executor.left_queued, executor.enqueued = (), ()
        workflow_id = record.workflow_id
        store = self.backend.state_store
        run = record.metadata.get("run", 0)
        for _ in range(3):
            try:
                current = await store.get(workflow_id)
                if current is not None and current.status == WorkflowStatus.FAILED and \
                        current.metadata.get("run", 0) == run:
                    error = {**(current.error or {}), WITHDRAWN_TASKS_KEY: list(left)}
                    await store.save(current.evolve(error=error), expected_version=current.version)
            except VersionConflictError:
                continue  # changed meanwhile (a note of the wait cleared, a resume): look again
            except Exception as exc:
                log.warning("workflow %r failed, but its record could not be read or marked (%s: %s): the %d "
                            "task(s) its step queued are left in the queue (a worker of their type would run "
                            "them): %s", workflow_id, type(exc).__name__, exc, len(left), ", ".join(left))
                return
            break
        else:
            log.warning("workflow %r failed, but its record kept changing: the %d task(s) its step queued are left "
                        "in the queue (a worker of their type would run them): %s", workflow_id, len(left),
                        ", ".join(left))
            return
        if current is not None and (current.status not in WorkflowStatus.TERMINAL or
                                    current.metadata.get("run", 0) != run):
            log.info("workflow %r is %s (run %s, driven on elsewhere): the %d task(s) this run's failed step "
                     "queued stay queued for it", workflow_id, current.status, current.metadata.get("run", 0),
                     len(left))
            return
        withdrawn = await executor.withdraw(left)
        if withdrawn:
            log.info("workflow %r: withdrew %d queued task(s) of its failed step from the queue", workflow_id,
                     withdrawn)

    async def _after_lease_loss(self, graph: Graph, workflow_id: str, step_limit: int | None) -> State:
        # The lease lapsed (this process stalled). If nobody took it, carry on from the
        # last commit under a new lease; otherwise the new owner finishes: wait for it.
        store = self.backend.state_store
        what = f"take back workflow {workflow_id!r}"
        lease = await self._retrying(lambda: store.acquire_lease(workflow_id, self.orchestrator_id, self.lease_ttl),
                                     what)
        if lease is not None:
            current = await self._retrying(lambda: store.get(workflow_id), what)
            if current is not None and current.status == WorkflowStatus.RUNNING:
                log.warning("workflow %r: lease lapsed but was free; continuing from step %d", workflow_id, current.step)
                return await self._drive(graph, current, lease, step_limit)
            await self._release(lease)
            if current is None:
                # Not taken over: gone. Said as such, not as a takeover (the lease was free).
                raise WorkflowNotFoundError(
                    f"workflow {workflow_id!r} is gone from {self.backend.redacted_url!r} while this orchestrator "
                    "drove it: deleted ('distributed-agents delete --force'), or the server lost its data (a restart "
                    "without persistence); its run stopped here")
        log.warning("workflow %r: lease taken by another orchestrator; waiting for its result", workflow_id)
        return await self.wait(workflow_id)

    async def _renew(self, run: _LeaseRun) -> None:
        """Renew ``run``'s lease once (``_Renewer`` calls this every third of ``lease_ttl``).

        Nothing to do once the drive is done or ``run.released()`` says the run's last
        commit gave the lease up (the run is then ending). A lease found lost cancels the
        drive (``run.lost`` tells ``_drive`` why); an outage is tried again next round, the
        lease has slack.
        """
        if run.drive.done() or run.released():
            return
        try:
            run.lease = await self.backend.state_store.renew_lease(run.lease, self.lease_ttl)
            self._outage.succeeded()
            # Cancelled from another process (cancel_workflow there records it and takes the
            # step's queued tasks back): a drive waiting for those tasks' results would wait
            # for ever, its next commit never coming. Read with each renewal, so it stops
            # within a third of lease_ttl, withdrawing what it queued.
            workflow_id = run.lease.workflow_id
            record = await self.backend.state_store.get(workflow_id)
            if (record is not None and record.status == WorkflowStatus.CANCELLED and not run.drive.done()
                    and not run.released() and self._running.get(workflow_id) is run.drive):
                log.info("workflow %r was cancelled by another process; stopping its run here", workflow_id)
                self._cancelled.add(workflow_id)
                run.drive.cancel()
            run.missing = run.missing + 1 if record is None else 0
            if run.missing >= 2 and not run.drive.done() and not run.released():
                # Deleted under the run ('delete --force' cancels, then deletes: a renewal that
                # read neither the cancel nor a lease gone would renew on for ever), seen twice
                # in a row (not one read of a replica behind): the run stops, as at a lost lease,
                # and finds the workflow gone (_after_lease_loss: WorkflowNotFoundError).
                log.warning("workflow %r is gone (deleted); stopping its run here", workflow_id)
                run.lost = True
                run.drive.cancel()
        except LeaseLostError as exc:
            if run.released() or run.drive.done():  # released by the last commit while the renewal was on its way
                return
            log.warning("lost the lease of workflow %r (%s); stopping", run.lease.workflow_id, exc)
            run.lost = True
            run.drive.cancel()
        except BackendUnavailableError as exc:
            self._outage.failed(f"renew the lease of workflow {run.lease.workflow_id!r}", exc)
        except Exception as exc:
            log.warning("could not renew the lease of workflow %r: %s", run.lease.workflow_id, exc)

    async def _safe_get(self, workflow_id: str) -> WorkflowRecord | None:
        try:
            return await self.backend.state_store.get(workflow_id)
        except Exception:
            return None

    async def wait(self, workflow_id: str, *, timeout: float | None = None, poll_interval: float = 0.2) -> State:
        """Wait until the workflow (driven by any orchestrator) ends or pauses; return its state.

        A paused (``interrupted``) workflow returns its state so far with
        ``"__interrupt__"``, as ``execute`` does. Raises like ``get_result`` for a failed or cancelled workflow, and
        ``TimeoutError`` after ``timeout`` seconds.
        """
        await self.connect()
        what = f"wait for workflow {workflow_id!r}"
        subscription = await self._retrying(
            lambda: self.backend.message_bus.subscribe(f"events.{workflow_id}.workflow.*"), what)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        look_for_driver = loop.time() + UNDRIVEN_LOOK_AFTER  # (then every UNDRIVEN_LOOK_AFTER s until said)
        try:
            while True:
                try:
                    # One read decides and returns: with two, a paused workflow answered
                    # between them (resumed, running again) would raise "still running".
                    record = await self.backend.state_store.get(workflow_id)
                    if record is None:
                        raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
                    if record.status in WorkflowStatus.TERMINAL or record.status == WorkflowStatus.INTERRUPTED:
                        return self._result_of(record)
                    if loop.time() >= look_for_driver:
                        look_for_driver = loop.time() + UNDRIVEN_LOOK_AFTER
                        if await self._driven_by_nobody(workflow_id, record.status):
                            look_for_driver = math.inf  # said once
                            log.warning("%s: it is running, but waiting for %s; this wait goes on until it ends%s",
                                        what, _undriven_note(record),
                                        "" if timeout is None else f" or {timeout:g}s have passed")
                    self._outage.succeeded()
                except BackendUnavailableError as exc:  # keep waiting through an outage
                    self._outage.failed(what, exc)
                pause = poll_interval
                if deadline is not None:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        raise TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout}s")
                    pause = min(pause, remaining)
                try:
                    await subscription.get(timeout=pause)  # an end event wakes us early
                except BackendUnavailableError:
                    await asyncio.sleep(pause)  # polling carries on while the bus reconnects
        finally:
            await subscription.close()

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.recovery_interval)
            try:
                await self.recover_workflows()
                self._outage.succeeded()
            except BackendUnavailableError as exc:  # the backend is down; try again next round
                self._outage.failed("look for workflows to take over", exc)
            except Exception as exc:
                log.warning("workflow recovery round failed: %s", exc)

    async def recover_workflows(self) -> list[str]:
        """Take over running workflows whose lease is free and whose graph is known; their ids.

        Each is resumed in the background from its last committed step; ``wait`` (or
        ``execute`` in the process that started it) returns its result.
        """
        await self.connect()
        store = self.backend.state_store
        taken = []
        for record in await store.list_workflows(WorkflowStatus.RUNNING):
            try:
                graph = self._known_graph(record)
            except ConfigurationError as exc:  # two graphs of its name: leave it to one that knows which
                if (record.workflow_id, "ambiguous") not in self._mismatch_logged:
                    self._mismatch_logged.add((record.workflow_id, "ambiguous"))
                    log.warning("not taking over workflow %r: %s", record.workflow_id, exc)
                continue
            if (graph is None or record.workflow_id in self._running or record.workflow_id in self._starting
                    or record.metadata.get(PARENT_KEY)):
                # A subgraph's child is continued by whoever drives its parent.
                continue
            changed = graph_mismatch(record, graph.fingerprint(), graph.earlier_digests())
            if changed:
                # Another orchestrator may have the right version: leave it for that one.
                seen = (record.workflow_id, str((record.graph or {}).get("sha256")))
                if seen not in self._mismatch_logged:
                    self._mismatch_logged.add(seen)
                    log.warning("not taking over workflow %r: %s; an orchestrator with the graph it was started "
                                "with can take it over (or resume(..., allow_graph_change=True) migrates it)",
                                record.workflow_id, changed)
                continue
            lease = await store.acquire_lease(record.workflow_id, self.orchestrator_id, self.lease_ttl)
            if lease is None:
                continue
            current = await store.get(record.workflow_id)
            if current is None or current.status != WorkflowStatus.RUNNING:
                await self._release(lease)
                continue
            log.info("taking over workflow %r at step %d", current.workflow_id, current.step)
            taken.append(current.workflow_id)
            task = asyncio.ensure_future(self._drive(graph, current, lease, None))
            # Tracked like submit()'s drives: close() waits for it, so its lease is released on the way out.
            self._background[current.workflow_id] = task
            task.add_done_callback(functools.partial(self._forget_background, current.workflow_id))
            task.add_done_callback(_ignore_outcome)
        return taken

    def _forget_background(self, workflow_id: str, task: asyncio.Future[Any]) -> None:
        if self._background.get(workflow_id) is task:
            del self._background[workflow_id]

    # -- observing and controlling --------------------------------------------------------

    async def get_workflow_status(self, workflow_id: str) -> WorkflowStatusInfo:
        """The workflow's status; ``WorkflowNotFoundError`` if it is unknown."""
        await self.connect()
        record = await self.backend.state_store.get(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
        info = WorkflowStatusInfo.from_record(record, waiting_for=self._waiting.get(workflow_id))
        if await self._driven_by_nobody(workflow_id, info.status):
            # Running, as stored, but driven by nobody (submitted with no orchestrator up, or its
            # orchestrator died and none recovers it): said, so it does not look live. A note its
            # dead driver left ("waiting for a worker ...") would name the wrong cause.
            info = replace(info, waiting_for=_undriven_note(record))
        return info

    async def _driven_by_nobody(self, workflow_id: str, status: str) -> bool:
        """Whether a workflow stored as ``status`` is running with its lease free (and not driven here)."""
        store = self.backend.state_store
        # (A store that does not override lease_holder says None for "unknown", not "free".)
        if (status != WorkflowStatus.RUNNING or workflow_id in self._waiting or workflow_id in self._running
                or type(store).lease_holder is StateStore.lease_holder):
            return False
        holder = await store.lease_holder(workflow_id)
        return holder is None or holder.deadline <= time.time()

    async def get_result(self, workflow_id: str) -> State:
        """The final state of a completed workflow (of an interrupted one: its state so far,
        with ``"__interrupt__"`` as ``execute`` returns it).

        ``WorkflowFailedError`` if it failed, ``WorkflowCancelledError`` if cancelled,
        ``ExecutionError`` if it is still running.
        """
        await self.connect()
        record = await self.backend.state_store.get(workflow_id)
        if record is None:
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
        return self._result_of(record)

    def _result_of(self, record: WorkflowRecord) -> State:
        """``get_result`` of one read of the record (raises as ``get_result`` documents)."""
        workflow_id = record.workflow_id
        status = WorkflowStatusInfo.from_record(record, waiting_for=self._waiting.get(workflow_id))
        if status.status in (WorkflowStatus.COMPLETED, WorkflowStatus.INTERRUPTED):
            return _result_state(record, self._paused_graph(record))
        if status.status == WorkflowStatus.FAILED:
            summary = (status.error or {}).get("summary", "no details recorded")
            raise WorkflowFailedError(f"workflow {workflow_id!r} failed: {summary}", workflow_id=workflow_id,
                                      status=status)
        if status.status == WorkflowStatus.CANCELLED:
            raise WorkflowCancelledError(f"workflow {workflow_id!r} was cancelled")
        raise ExecutionError(f"workflow {workflow_id!r} is still {status.status} (step {status.step})")

    async def list_workflows(
        self, status: str | None = None, *, graph: str | Graph | None = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> list[WorkflowStatusInfo]:
        """Workflows in the backend, oldest first (ties by id).

        ``status`` filters by one status (e.g. ``"running"``) or ``"active"`` (pending,
        running or interrupted: not yet completed, failed or cancelled); ``graph`` by graph name
        (or a ``Graph``). ``limit`` (an int >= 1) bounds the page; pass the last
        item's ``cursor`` to get the next page (see ``status.page_workflows``).
        """
        wanted = status_filter(status, graph, limit)
        await self.connect()
        records = await self.backend.state_store.list_workflows(wanted)
        infos = [WorkflowStatusInfo.from_record(r, waiting_for=self._waiting.get(r.workflow_id)) for r in records]
        return page_workflows(infos, status=status, graph=graph, limit=limit, cursor=cursor)

    async def cancel_workflow(self, workflow_id: str) -> bool:
        """Cancel a running workflow; False if it already finished.

        Records CANCELLED (so the orchestrator driving it, in any process, stops at
        its next commit), stops running in-process nodes at once, takes queued tasks
        back and tells workers to cancel the workflow's running tasks. Returns once the
        tasks of its current step that no worker had claimed are taken back (a drive in
        this process first finishes an enqueue it was in): a worker started afterwards
        never runs them.
        """
        await self.connect()
        store = self.backend.state_store
        for _ in range(20):
            record = await store.get(workflow_id)
            if record is None:
                raise WorkflowNotFoundError(f"no workflow {workflow_id!r} in {self.backend.redacted_url!r}")
            if record.status in WorkflowStatus.TERMINAL:
                return False
            try:
                await store.save(record.evolve(status=WorkflowStatus.CANCELLED), expected_version=record.version)
                break
            except VersionConflictError:
                continue  # a step committed meanwhile; cancel the newer version
        else:
            raise ExecutionError(f"could not cancel workflow {workflow_id!r}: it kept changing; try again")
        await self.backend.message_bus.publish(CONTROL_CANCEL_CHANNEL, {"workflow_id": workflow_id})
        scoped_events(self._publisher(), record.metadata).emit(workflow_id, "workflow.cancelled", step=record.step)
        for child in (await children_of(store, record)).values():  # the subgraphs it is running
            if child.status not in WorkflowStatus.TERMINAL:
                await self.cancel_workflow(child.workflow_id)
        drive = self._running.get(workflow_id)
        starting = self._background.get(workflow_id)
        if drive is None and starting is not None and not starting.done():
            # A drive submit() scheduled starts at the loop's next pass (a store that answers
            # without yielding gave it none yet): let it register, so it is stopped before its
            # first step queues anything.
            await asyncio.sleep(0)
            drive = self._running.get(workflow_id)
        if drive is not None:
            self._cancelled.add(workflow_id)
            drive.cancel()
            await drive.wait()  # it withdraws its step's tasks as it stops (TaskQueueExecutor)
        else:
            # Driven in another process (which stops only at its next commit), or paused: the
            # step's tasks as recorded. Best effort: a claimed task ends with its worker.
            done = record.frontier.get("pending_writes") or {}
            await asyncio.gather(*(self.backend.task_queue.cancel(node_task_id(record, entry.key))
                                   for entry in read_entries(record.frontier, {}) if entry.key not in done),
                                 return_exceptions=True)
        return True
