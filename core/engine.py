"""The step loop: one engine for local and distributed execution.

A workflow advances in bulk-synchronous super-steps. Each step runs every triggered
node concurrently on a snapshot of the state, merges their updates with the graph's
reducers in node declaration order, routes on the merged state, and commits the new
state with the next step's frontier as one compare-and-set write (record + checkpoint)
fenced by the workflow lease. Where a node runs is decided per node: in-process when
the orchestrator has its function, otherwise as a task on the backend's queue.

The frontier stored with every commit is ``{"next": [...nodes, in declaration order],
"sends": [{"node": ..., "arg": {...}}], "joins": {join_key: [sources seen since that
join last fired]}}`` (see ``frontier`` and ``joins``), enough for any process to
continue the workflow. Each step runs one task per frontier entry: a node on the shared
state, or a ``Send``'s node on its own argument. When a step fails, the record's
frontier also keeps ``"pending_writes": {task: output}`` of the step's tasks that did
succeed, so resuming re-runs only the tasks that failed.

A node that calls ``interrupt()`` pauses the workflow (see ``interrupts``): the step
commits nothing, the record becomes ``interrupted`` with the pause in its frontier
(``"interrupts"``) and the other tasks' outputs as pending writes, and the step loop
returns. So do static breakpoints (``interrupt_before`` before a step that runs one of
their nodes, ``interrupt_after`` with the commit of such a step).

A node's final failure (retries exhausted, or a timeout) fails the workflow unless the
node has an error handler (``add_node(on_error=)``): then the step commits without the
failed node's writes and routes, and the next step's frontier carries the handler's
task as a Send ``{"node": handler, "arg": {"error": ..., "state": ...}, "handles":
task, "handles_task": task id}``, so it survives restarts and runs the same on a worker
(a shared state over ``INLINE_STATE_LIMIT`` is named, not copied: ``"arg": {"error": ...},
"state_ref": ...``, read by the worker as a task's state reference is; see ``_route_failure``).
A failing handler's task is never routed again: it fails the workflow naming both nodes.
The dead letter a worker left for the handled task is purged once the route is
committed (and again whenever a process takes the workflow up with the handler still
pending, in case the first one died in between): the workflow handled the failure, so
nothing is left for an operator to re-drive. ``node.failed`` events and the handler's
input keep the error.

How often the step loop writes is the workflow's durability mode (``execute(...,
durability=)``, LangGraph's names, kept in the record's ``metadata["durability"]`` so a
resume or a takeover by any process keeps it; see ``DURABILITY_MODES``):

* ``"sync"`` (the default): each step's commit is written before the next step starts.
* ``"async"``: each step's commit is written while the next step runs; it lands before
  the next write of any kind (the next step's commit, a pause, a failure, the end), and
  a refused one (taken over, cancelled, lease lost) stops the run as in ``"sync"``.
* ``"exit"``: no step is written; the record and the last step's checkpoint are written
  once, when the workflow ends, pauses, fails, is cancelled or this process stops it.

Every way out of the step loop leaves the workflow in a terminal status with an error
record (``kind``, ``summary``, ``step``, ``phase`` and the node or key at fault), except
a backend outage (retried until the backend is back), a takeover by another
orchestrator, a cancellation, and this process stopping (the workflow stays resumable).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
import contextlib
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeVar

from distributed_agents.core.backoff import Outage, retry_after, until_available
from distributed_agents.core.cache import NodeCache, cacheable_output
from distributed_agents.core import log_context
from distributed_agents.core.instrumentation import Instrumentation
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    DistributedAgentsError,
    ExecutionError,
    FencingTokenRejectedError,
    LeaseLostError,
    NodeNotFoundError,
    NodeExecutionError,
    NodeTimeoutError,
    PayloadTooLargeError,
    StepLimitExceededError,
    VersionConflictError,
    WorkflowCancelledError,
    node_error_class,
)
from distributed_agents.core.events import EventPublisher
from distributed_agents.core.executors import (
    CONFIGURABLE_KEY,
    InProcessExecutor,
    NodeCall,
    NodeOutcome,
    TaskQueueExecutor,
    flat_state,
)
from distributed_agents.core.frontier import STATE_EDITED_KEY, TaskEntry, frontier_nodes, read_entries
from distributed_agents.core.graph import Graph, NodeSpec
from distributed_agents.core.incarnation import incarnation_of
from distributed_agents.core.interrupts import Interrupt, interrupt_id
from distributed_agents.core.limits import check_commit_size
from distributed_agents.core.log_context import alert_level
from distributed_agents.core.managed import managed_inputs
from distributed_agents.core.node_runner import bounded, safe_text
from distributed_agents.core.merge import merge_updates
from distributed_agents.core.ports.state_store import Checkpoint, StateStore, WorkflowLease, WorkflowRecord, WorkflowStatus
from distributed_agents.core.record_json import encode_rest, kept as kept_json, remember as remember_json
from distributed_agents.core.registry import NodeFunction, function_name
from distributed_agents.core.state import State
from distributed_agents.core.task_payload import NODE_METADATA_KEY
from distributed_agents.core.task_state import INLINE_STATE_LIMIT, StateCache, read_ref, state_ref
from distributed_agents.core import subgraphs as subgraph_tasks
from distributed_agents.core.types import NodeResult, Send, read_output

__all__ = ["DURABILITY_MODES", "RUN_START_KEY", "StepEngine", "WorkflowTakenOverError", "check_durability", "durability_of",
           "first_step_calls", "merge_updates", "node_run", "node_task_id", "task_id_for"]

log = logging.getLogger("distributed_agents.engine")


SubgraphCall = Callable[[Graph, WorkflowRecord, TaskEntry, str, int], Awaitable[NodeOutcome]]


class WorkflowTakenOverError(ExecutionError):
    """Another orchestrator committed to this workflow; this one stopped driving it."""


DURABILITY_MODES = ("sync", "async", "exit")
DURABILITY_KEY = "durability"  # in a record's metadata; absent means "sync"
T = TypeVar("T")


def check_durability(durability: object, call: str = "execute") -> str:
    """Return ``durability`` if it is one of ``DURABILITY_MODES``, else raise ``ConfigurationError``."""
    if not isinstance(durability, str) or durability not in DURABILITY_MODES:
        raise ConfigurationError(
            f"{call}(durability={durability!r}): durability must be one of {', '.join(map(repr, DURABILITY_MODES))} "
            "('sync': write each step before the next starts, 'async': write it while the next step runs, "
            "'exit': write only when the workflow ends)")
    return durability


def durability_of(record: WorkflowRecord) -> str:
    """The durability mode ``record``'s workflow runs with (``"sync"`` unless its metadata says otherwise)."""
    mode = record.metadata.get(DURABILITY_KEY)
    return mode if isinstance(mode, str) and mode in DURABILITY_MODES else "sync"


def task_id_for(workflow_id: str, run: int, step: int, node: str, incarnation: str = "") -> str:
    """The deterministic task id of ``node`` in ``step`` of a workflow run:
    ``<workflow>:<run>[.<incarnation>]:<step>:<node>``.

    Deterministic ids make enqueue idempotent across orchestrator restarts, so a
    resumed step reuses results of tasks that already finished. The incarnation
    (``core.incarnation``) keeps a workflow created again under a deleted one's id from
    reusing that one's results; ``""`` (a record from before incarnations) leaves it out.
    """
    return f"{workflow_id}:{run}.{incarnation}:{step}:{node}" if incarnation else f"{workflow_id}:{run}:{step}:{node}"


def node_run(record: WorkflowRecord, node: str) -> int:
    """The run whose task id ``node`` (a ``TaskEntry.key``) uses in ``record``'s current step.

    The workflow's run, unless the frontier pins an earlier one for that node
    (``"task_runs"``): ``resume`` keeps the id of a task that may still be queued or
    running - a dead letter requeued after the failure - so the step waits for it
    instead of running the node a second time under a new id.
    """
    pinned = (record.frontier.get("task_runs") or {}).get(node)
    return int(pinned if pinned is not None else record.metadata.get("run", 0))


RUN_START_KEY = "run_start_step"  # record metadata: the step a continued run (a thread's next invoke) started at


def node_task_id(record: WorkflowRecord, node: str) -> str:
    """The task id of ``node`` in ``record``'s current step (see ``node_run``)."""
    return task_id_for(record.workflow_id, node_run(record, node), record.step, node, incarnation_of(record))


@dataclass
class DriveOptions:
    """Per-run settings of the step loop (the loop keeps none of it while it runs, only ``step_limit``).

    ``step_limit`` is the step number the run may not pass (the call's limit plus
    ``budget_start``, the step this call's budget counts from: a call gets the limit's
    number of steps of its own, as each LangGraph invoke does).
    """

    step_limit: int
    lease_ttl: float
    budget_start: int = 0


class _Progress:
    """Where the step loop is, for recording a failure no specific path caught.

    ``StepEngine`` is its own (it drives one run at a time): no object of its own per run,
    kept for as long as the run lasts, hundreds of runs at once. Set by ``begin``.
    """

    record: WorkflowRecord  # the step's starting record (the last commit)
    phase: str  # "run", "merge" or "commit"
    pending: Mapping[str, Mapping[str, Any]]  # the step's finished outputs that are not pauses

    def begin(self, record: WorkflowRecord) -> None:
        """A new step starts from ``record`` (the last commit)."""
        self.record = record
        self.phase = "run"
        self.pending = _NO_OUTPUTS


class StepEngine(_Progress):
    """Drives workflows step by step against one backend's state store and queue."""

    _budget_start = 0  # the step the driven call's step budget counts from (DriveOptions.budget_start)

    def __init__(
        self,
        *,
        store: StateStore,
        queue_executor: TaskQueueExecutor,
        events: EventPublisher,
        local_function: Callable[[NodeSpec], NodeFunction | None],
        outage: Outage | None = None,
        payload_limit: int | None = None,
        cache: NodeCache | None = None,
        subgraphs: SubgraphCall | None = None,
        instrumentation: Instrumentation | None = None,
    ) -> None:
        # Traces and metrics (core.instrumentation); None: no hook is called. The handles of
        # the run and step being observed, and the step's trace context for its tasks.
        self._instrumentation = instrumentation
        self._observed_run: Any = None
        self._observed_step: Any = None
        self._stepping = False  # a step was reported started and not yet ended
        self._trace: dict[str, str] | None = None
        self._subgraphs = subgraphs  # runs a subgraph node's task as a child workflow (core.subgraphs)
        self._store = store
        self._cache = cache  # the node cache (add_node(cache_policy=)); None: no node is cached
        self._payload_limit = payload_limit  # bytes; see core.limits
        self._queue_executor = queue_executor
        self._events = events
        self._local_function = local_function
        self._outage = outage if outage is not None else Outage(log, "engine")
        # Durability (see the module docstring); an engine drives one workflow run at a time.
        self._mode = "sync"
        self._inflight: asyncio.Future[WorkflowRecord] | None = None  # "async": the commit being written
        self._unsaved: Checkpoint | None = None  # "exit": the last step's checkpoint, not written yet
        self._stored_step = 0  # the step of the last record written (or read at the start)
        self._encoded: tuple[Mapping[str, Any], bytes] | None = None  # see _state_json
        # Whether the last commit also released the workflow's lease (save_releasing): the
        # driver then need not release it again.
        self.lease_released = False
        self._save_attempts = 0  # of the commit being written (_write)
        # The first step's calls by task id, when the driver built them to queue their tasks
        # with the workflow's create (first_step_calls), with the time (time.time()) the create
        # was sent: used once, instead of building them again; node.started carries that time.
        self.first_calls: dict[str, tuple[NodeCall, float]] = {}

    def drive(
        self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease, options: DriveOptions
    ) -> Coroutine[Any, Any, WorkflowRecord]:
        """Run ``record``'s workflow to a terminal status and return the final record (see ``_run``); await it.

        With instrumentation, this is one workflow run: ``workflow_started`` first,
        ``workflow_ended`` with the status it left the workflow in last.
        """
        if self._instrumentation is None:
            # The run's own coroutine: no layer around it that every resumption passes through.
            return self._run(graph, record, lease, options)
        return self._observed_drive(graph, record, lease, options)

    async def _observed_drive(
        self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease, options: DriveOptions
    ) -> WorkflowRecord:
        observer = self._instrumentation
        assert observer is not None
        self._observed_run = observer.workflow_started(record.workflow_id, graph.name, record.step)
        status, error = "stopped", None
        try:
            final = await self._run(graph, record, lease, options)
            status = final.status
            return final
        except BaseException as exc:
            status, error = _status_after(exc), exc
            raise
        finally:
            self._end_observed_step(error)
            observer.workflow_ended(self._observed_run, status, error)
            self._observed_run = None

    def released_lease(self) -> bool:
        """Whether the run's last commit gave the workflow's lease up (``lease_released``)."""
        return self.lease_released

    def _observe_step(self, record: WorkflowRecord, nodes: Sequence[str]) -> None:
        """Report the step about to run (ending the one before) and take its trace context for its tasks."""
        assert self._instrumentation is not None
        self._end_observed_step(None)
        self._observed_step = self._instrumentation.step_started(self._observed_run, record.workflow_id,
                                                                 record.step, nodes)
        self._stepping = True
        self._trace = self._instrumentation.carrier(self._observed_step)

    def _end_observed_step(self, error: BaseException | None) -> None:
        if self._instrumentation is not None and self._stepping:
            step, self._observed_step, self._trace, self._stepping = self._observed_step, None, None, False
            self._instrumentation.step_ended(step, error)

    async def _run(
        self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease, options: DriveOptions
    ) -> WorkflowRecord:
        """Run ``record``'s workflow to a terminal status and return the final record.

        Raises the workflow's error (``NodeExecutionError``, ``StepLimitExceededError``,
        ``ReducerConflictError``, ``WorkflowCancelledError``, ...) after recording it,
        or ``WorkflowTakenOverError`` if another orchestrator committed in between.
        While the backend is unavailable (``BackendUnavailableError``, e.g. a server
        restart) the step and its commit are retried with backoff: the step's tasks
        have deterministic ids, so a retried step reuses results of finished tasks, and
        a commit whose reply was lost is recognised rather than made twice.

        Any other exception out of a step (a reducer, a condition, a commit the store
        refuses, a bug) is recorded as FAILED first, with ``kind``, ``step``, ``phase``
        and the culprit, then raised: a framework error as it is, anything else as an
        ``ExecutionError`` naming it. The successful nodes' writes of a failed step are
        kept in the record's frontier (``pending_writes``) for ``resume``.
        """
        self._mode = durability_of(record)
        self._inflight, self._unsaved, self._stored_step = None, None, record.step
        self._encoded = None
        # The loop takes the limit alone: the options object is not kept while the run lasts.
        step_limit = options.step_limit
        self._budget_start = options.budget_start  # (an int: what the call's own limit is, step_limit minus it)
        del options
        progress: _Progress = self  # (see _Progress)
        progress.begin(record)
        # The step is bound here and again by each step that has another number.
        logged = log_context.bind_fields(workflow_id=record.workflow_id, step=record.step)
        try:
            return await self._drive_steps(graph, progress, lease, step_limit)
        except _PASS_THROUGH:
            raise
        except asyncio.CancelledError:
            # Cancelled, stopping, or the lease was lost: what this run has not written yet is
            # written now where that is still this run's to write (see _flush_on_stop).
            await self._flush_on_stop(progress, lease)
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            # This run is cancelled or this process stops: the workflow stays resumable. User
            # code's own BaseExceptions were turned into failures where it was called
            # (node_runner, Graph routing, merge_updates).
            raise
        except BaseException as exc:  # an Exception, or a library's own BaseException out of user code
            if getattr(exc, _RECORDED, False):
                raise
            raise await self._fail_unexpected(graph, progress, lease, exc) from exc
        finally:
            log_context.restore(logged)
            if self._inflight is not None:
                # No write of this run may land after _run() returns (the lease is released then),
                # and an error of one nobody waited for is retrieved (it is the run's error already).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._inflight)
                self._inflight = None

    async def _drive_steps(
        self, graph: Graph, progress: _Progress, lease: WorkflowLease, step_limit: int
    ) -> WorkflowRecord:
        record = progress.record
        # The nodes of the last (up to 8) steps, for a step limit's error: tuples of names, which
        # the collector stops tracking (a deque, or lists, it visits for as long as the run lasts).
        recent: tuple[tuple[str, ...], ...] = ()
        run = int(record.metadata.get("run", 0))
        order = graph.node_order
        # Fixed for the run (a graph's reducers and a workflow's breakpoints do not change while it runs).
        reducers = graph.reducers
        breaks_before = _breakpoint_names(graph, record, "before")
        breaks_after = _breakpoint_names(graph, record, "after")
        if record.frontier.get("sends"):  # (only handlers' tasks have dead letters to purge)
            await self._purge_handled(record)  # a process that committed the route may have died before purging
        bound_step = record.step  # bound by _run
        while True:
            progress.begin(record)
            if bound_step != record.step:  # (one binding fewer per run: GC-tracked objects kept while it runs)
                bound_step = record.step
                log_context.set_fields(step=bound_step)  # undone by _run()'s restore
            if self._stepping:  # the step before committed
                self._end_observed_step(None)
            entries = read_entries(record.frontier, order)
            next_nodes = tuple(frontier_nodes(record.frontier))  # (untracked by the collector, as ``recent``)
            if not entries:
                progress.phase = "commit"
                if record.status != WorkflowStatus.COMPLETED:  # e.g. a graph resumed with nothing left
                    record = await self._commit(record.evolve(status=WorkflowStatus.COMPLETED), lease)
                self._events.emit(record.workflow_id, "workflow.completed", step=record.step)
                return record
            if record.step >= step_limit:
                # The call's own limit (step_limit counts from the step its budget starts at).
                error, cycling = _step_limit_error(graph, record, next_nodes, recent, step_limit - self._budget_start)
                await self._fail(record, lease, error, {"nodes": list(next_nodes), "cycling": cycling})
                raise error
            unknown = _names_outside(next_nodes, order) if _any_outside(next_nodes, order) else None
            if unknown:
                raise ExecutionError(
                    f"workflow {record.workflow_id!r} is at step {record.step} with node(s) "
                    f"{', '.join(map(repr, unknown))} to run, which graph {graph.name!r} does not have; "
                    "resume it with the graph it was started with"
                )
            before = _breakpoint_hits(breaks_before, next_nodes) if breaks_before else None
            if before and not record.frontier.get("breakpoint_passed"):
                pauses = _breakpoint_pauses(record.step, before, "before")
                return await self._pause(record, lease, pauses, dict(record.frontier.get("pending_writes") or {}))
            if self._instrumentation is not None:
                self._observe_step(record, next_nodes)
            # Tasks of this step that succeeded before it failed (or paused) keep their outputs.
            # (Nothing made here for the usual step without them: what is made before the step's
            # wait is kept, and visited by collections, for as long as its tasks run.)
            pending_writes = record.frontier.get("pending_writes")
            done: Mapping[str, Mapping[str, Any]] = dict(pending_writes) if pending_writes else _NO_OUTPUTS
            to_run = _entries_outside(entries, done) if done else entries
            try:
                outcomes: list[NodeOutcome]
                if not to_run:
                    outcomes = []
                elif self._inflight is None:
                    # Nothing in flight ("sync", "exit"): no commit to race. The first attempt is
                    # made here (no retrying coroutine per step while the backend answers).
                    try:
                        outcomes = await self._run_step(graph, record, run, to_run, step_limit)
                        self._outage.succeeded()
                    except BackendUnavailableError as exc:
                        outcomes = await retry_after(
                            exc, self._run_step, graph, record, run, to_run, step_limit,
                            what=f"run step {record.step} of workflow {record.workflow_id!r}", outage=self._outage)
                else:
                    outcomes = await self._alongside_commit(until_available(
                        self._run_step, graph, record, run, to_run, step_limit,
                        what=f"run step {record.step} of workflow {record.workflow_id!r}", outage=self._outage))
            except NodeNotFoundError as exc:
                missing = {"node": next_nodes[0]} if len(next_nodes) == 1 else {}
                await self._fail(record, lease, exc, {"nodes": list(next_nodes), "phase": "run", **missing})
                raise
            progress.phase = "merge"
            # One pass each over the outputs and the entries (a step usually runs one node).
            results: dict[str, Mapping[str, Any]] = dict(done)
            failed: list[tuple[TaskEntry, NodeOutcome]] = []
            for entry, outcome in zip(to_run, outcomes):
                if outcome.failure is None:
                    results[entry.key] = dict(outcome.updates or {})
                else:
                    failed.append((entry, outcome))
            parsed: dict[str, NodeResult] = {}
            finished: dict[str, Mapping[str, Any]] = {}  # the outputs that are not pauses
            pausing = to_parents = False
            for key, output in results.items():
                parsed[key] = read_output(output)
                if parsed[key].interrupt is None:
                    finished[key] = output
                else:
                    pausing = True
                to_parents = to_parents or parsed[key].parent
            paused = _paused_entries(entries, parsed) if pausing else []
            progress.pending = finished
            # A final failure of a node with on_error (not of a handler's own task) goes to its handler.
            unhandled = _unhandled_failures(graph, failed) if failed else []
            if unhandled:
                raise await self._node_failed(graph, record, lease, unhandled, progress.pending)
            handlers = []
            for entry, outcome in failed:
                handlers.append(await self._route_failure(graph, record, entry, outcome))
            for entry, outcome in zip(to_run, outcomes):
                if outcome.failure is not None:
                    continue
                if entry.index is None and not outcome.cached:
                    self._events.emit(record.workflow_id, "node.completed", step=record.step, node=outcome.node,
                                      duration=outcome.duration, attempts=outcome.attempts, worker=outcome.worker_id)
                    continue
                self._events.emit(record.workflow_id, "node.completed", step=record.step, node=outcome.node,
                                  duration=outcome.duration, attempts=outcome.attempts, worker=outcome.worker_id,
                                  **({"task": entry.key} if entry.is_send else {}),
                                  **({"cached": True} if outcome.cached else {}))
            if done:
                node_of = {entry.key: entry.node for entry in entries}
                for key in done:
                    self._events.emit(record.workflow_id, "node.completed", step=record.step,
                                      node=node_of.get(key, key), duration=0.0, attempts=0, worker="", reused=True)
            if paused:
                pauses = []
                for entry in paused:
                    info = parsed[entry.key].interrupt or {}
                    if "subgraph" in info:  # paused inside a subgraph: its pauses surface here
                        pauses.extend(subgraph_tasks.subgraph_pauses(record.step, entry, info))
                        continue
                    index = int(info.get("index", 0))
                    pauses.append(Interrupt(interrupt_id(record.step, entry.key, index), entry.node,
                                            info.get("value"), "interrupt", entry.key, index))
                return await self._pause(record, lease, pauses, progress.pending)
            to_parent = _parent_entries(entries, parsed) if to_parents else []
            if to_parent:  # Command(graph=Command.PARENT): this subgraph ends, its parent routes
                subgraph_tasks.check_parent_command(graph.name, record, [e.node for e in to_parent])
                progress.phase = "commit"
                return await self._end_for_parent(graph, record, lease, entries, parsed, to_parent)
            ran: list[str] = []
            writes: list[tuple[str, dict[str, Any]]] = []
            # Every node that ran is in the checkpoint's writes, None for one that wrote nothing
            # (LangGraph streams such a node's update as {node: None}).
            ran_writes: dict[str, dict[str, Any] | None] = {}
            gotos: list[tuple[str, list[str | Send]]] = []
            for entry in entries:
                got = parsed.get(entry.key)
                if got is None:
                    continue
                ran.append(entry.node)
                ran_writes[entry.key] = got.updates or None
                if got.updates:
                    writes.append((entry.key, got.updates))
                if got.goto:
                    gotos.append((entry.node, got.goto))
            try:
                merged = merge_updates(record.state, writes, reducers)
                graph.check_writes(writes, merged)  # a state schema's keys and types
                deferred = record.frontier.get("deferred", ())
                # (No coroutine for a step whose routing runs no condition: the usual one.)
                frontier = graph.plain_frontier(ran, gotos, deferred, handlers) or await graph.next_frontier(
                    ran, State._trusted(merged, record.workflow_id), record.frontier.get("joins", {}), gotos,
                    deferred, handlers, configurable=record.metadata.get(CONFIGURABLE_KEY),
                    remaining_steps=step_limit - record.step,
                )
                frontier = subgraph_tasks.with_positions(graph, record.workflow_id, record.step + 1, frontier)
            except ExecutionError as exc:
                await self._fail_unexpected(graph, progress, lease, exc)
                raise
            recent = (*recent[-7:], next_nodes)
            step = record.step + 1
            checkpoint = Checkpoint(record.workflow_id, step, merged, frontier, writes=ran_writes)
            status = WorkflowStatus.RUNNING if frontier["next"] or frontier.get("sends") else WorkflowStatus.COMPLETED
            after = _breakpoint_hits(breaks_after, [e.node for e in entries]) if breaks_after else []
            if after:
                status = WorkflowStatus.INTERRUPTED
                pauses = _breakpoint_pauses(record.step, after, "after")
                frontier = {**frontier, "interrupts": [pause.to_dict() for pause in pauses]}
            progress.phase = "commit"
            record = await self._commit(
                # The last step commits COMPLETED itself: one write fewer per workflow.
                record.evolve(state=merged, step=step, frontier=frontier, status=status),
                lease, checkpoint,
            )
            # Streams read the step's values and writes from this checkpoint (core.streaming).
            self._events.emit(record.workflow_id, "step.committed", step=record.step,
                              checkpoint=f"{record.workflow_id}:{record.step}")
            if handlers:
                await self._purge_handled(record)
            if status == WorkflowStatus.INTERRUPTED:
                self._events.emit(record.workflow_id, "workflow.interrupted", step=record.step,
                                  interrupts=frontier["interrupts"])
                return record

    async def _end_for_parent(
        self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease, entries: Sequence[TaskEntry],
        parsed: Mapping[str, Any], to_parent: Sequence[TaskEntry],
    ) -> WorkflowRecord:
        """Commit a child workflow COMPLETED with the step's ``Command.PARENT`` bodies for its parent.

        The step's other writes merge into the child's state as usual; the commands'
        updates and gotos are the parent's (``core.subgraphs``).
        """
        others = [e for e in entries if e.key in parsed and e not in to_parent]
        writes = [(e.key, parsed[e.key].updates) for e in others if parsed[e.key].updates]
        merged = merge_updates(record.state, writes, graph.reducers)
        graph.check_writes(writes, merged)
        frontier = {"next": [], "joins": {}, subgraph_tasks.PARENT_COMMAND_KEY: subgraph_tasks.parent_command_bodies(
            [(e.node, parsed[e.key].updates, parsed[e.key].goto) for e in to_parent])}
        step = record.step + 1
        checkpoint = Checkpoint(record.workflow_id, step, merged, frontier, writes=dict(writes))
        record = await self._commit(
            record.evolve(state=merged, step=step, frontier=frontier, status=WorkflowStatus.COMPLETED), lease, checkpoint)
        self._events.emit(record.workflow_id, "workflow.completed", step=record.step,
                          parent_command=[e.node for e in to_parent])
        return record

    async def _pause(
        self, record: WorkflowRecord, lease: WorkflowLease, pauses: Sequence[Interrupt],
        pending: Mapping[str, Mapping[str, Any]],
    ) -> WorkflowRecord:
        """Commit ``record`` as INTERRUPTED at its step with ``pauses`` and the step's finished ``pending`` outputs."""
        frontier = {key: value for key, value in record.frontier.items() if key not in ("pending_writes", "interrupts")}
        if pending:
            frontier["pending_writes"] = dict(pending)
        frontier["interrupts"] = [pause.to_dict() for pause in pauses]
        record = await self._commit(record.evolve(status=WorkflowStatus.INTERRUPTED, frontier=frontier), lease)
        self._events.emit(record.workflow_id, "workflow.interrupted", step=record.step,
                          interrupts=frontier["interrupts"])
        return record

    async def _run_step(
        self, graph: Graph, record: WorkflowRecord, run: int, entries: list[TaskEntry], step_limit: int,
        *, share: bool = True,
    ) -> list[NodeOutcome]:
        # Cached outputs (add_node(cache_policy=)) are used instead of running those tasks, and
        # tasks with the key of an earlier task of this step wait for its output (``share``).
        # (No comprehension here reads a local: see _drive_steps' helpers.)
        if any(entry.state_ref is not None for entry in entries):
            with_state = []
            for entry in entries:
                with_state.append(await self._handler_input(graph, record, entry))
            entries = with_state
        all_entries = entries
        keys, hits, followers = await self._cache_lookup(graph, record, entries, share, step_limit - record.step) \
            if self._cache is not None and _any_cached(graph, entries) else ({}, {}, {})
        if hits or followers:
            entries = _entries_outside(_entries_outside(entries, hits), followers)
        # Encoded only when a task needs it: an in-process node of a state of scalars gets a copy.
        flat = flat_state(record.state)
        encoded: bytes | None = None
        reference: dict[str, Any] | None = None  # to the committed state, for tasks on workers; {}: none
        workflow_priority = int(record.metadata.get("priority", 0))
        answers = record.frontier.get("resume") or {}
        local: dict[str, NodeFunction] = {}
        # (Made when a node runs here: what this coroutine holds while its tasks run is visited
        # by every collection meanwhile, hundreds of steps at once. The ids are a tuple of
        # strings, which the collector stops tracking.)
        local_calls: list[NodeCall] | None = None
        remote_calls: list[NodeCall] = []
        batches = []
        task_ids = _task_ids(record, entries)
        for entry, task_id in zip(entries, task_ids):
            name = entry.node
            spec = graph.node(name)
            if spec.subgraph is not None:  # a child workflow, driven from here (core.subgraphs)
                if self._subgraphs is None:
                    raise ExecutionError(f"node {name!r} of graph {graph.name!r} is a subgraph, which only an "
                                         "Orchestrator runs")
                self._events.emit(record.workflow_id, "node.started", step=record.step, node=name, where="subgraph",
                                  **({"task": entry.key} if entry.is_send else {}))
                batches.append(self._subgraph_batch(graph, record, entry, step_limit))
                continue
            func = self._local_function(spec)
            # Built already when the first step's tasks were queued with the create (first_step_calls).
            call, sent = self.first_calls.pop(task_id, _NOT_SENT) if self.first_calls else _NOT_SENT
            if call is None:
                shared = func is not None and entry.arg is None and flat
                if entry.arg is None and not shared and encoded is None:
                    encoded = self._state_json(record.state)
                if func is None and entry.arg is None and reference is None and \
                        len(encoded or b"") > INLINE_STATE_LIMIT:
                    reference = await self._state_reference(record, len(encoded or b"")) or {}
                call = _node_call(graph, record, entry, spec, task_id, bool(shared), encoded, reference,
                                  func is not None, workflow_priority, answers, step_limit, self._trace,
                                  self._budget_start)
            if func is not None:
                local[name] = func
                if local_calls is None:
                    local_calls = []
                local_calls.append(call)
            else:
                remote_calls.append(call)
            # A task queued with the workflow's create was dispatched then, not now.
            dated = {} if sent is None else {"time": sent}
            if entry.index is None:
                self._events.emit(record.workflow_id, "node.started", step=record.step, node=name,
                                  where="local" if func is not None else "worker", **dated)
            else:
                self._events.emit(record.workflow_id, "node.started", step=record.step, node=name,
                                  where="local" if func is not None else "worker", task=entry.key, **dated)
        if local_calls:
            batches.append(InProcessExecutor(local, self._instrumentation).run(local_calls))
        if remote_calls:
            batches.append(self._queue_executor.run(remote_calls))
        # One batch (the usual case) is awaited as it is: a task per step costs more than a no-op node.
        if len(batches) == 1:
            batch = batches[0]
            del batches  # (not kept while the step waits, as local_calls above)
            results = [await batch]
        else:
            results = await _all_or_stop(batches)
        if len(results) == 1 and len(results[0]) == len(entries) == 1:
            outcomes = results[0]  # one task: its outcome
        else:
            outcomes = _in_task_order(results, task_ids)
        if not keys:  # no task of this step is cached (so no hits, no followers): nothing to store or share
            return outcomes
        settled = await self._cache_store(graph, record, all_entries, keys, hits,
                                          dict(zip((e.key for e in entries), outcomes)))
        return await self._cache_share(graph, record, run, all_entries, followers, settled, step_limit)

    async def _handler_input(self, graph: Graph, record: WorkflowRecord, entry: TaskEntry) -> TaskEntry:
        """``entry`` with the state its ``state_ref`` names read into its ``arg`` (``{**arg, "state": ...}``)
        when its node runs here (in this process, or as a subgraph); as it is when a worker runs it
        (its task carries the reference, see ``_route_failure``) or it names no state.

        ``TaskStateError`` if that state is not stored any more (deleted, or expired).
        """
        spec = graph.node(entry.node)
        if entry.state_ref is None or (spec.subgraph is None and self._local_function(spec) is None):
            return entry
        state = await until_available(
            functools.partial(StateCache(0).state, self._store, record.workflow_id, read_ref(entry.state_ref)),
            what=f"read the state error handler {entry.node!r} of workflow {record.workflow_id!r} runs on",
            outage=self._outage)
        return replace(entry, arg={**(entry.arg or {}), "state": state}, state_ref=None)

    async def _state_reference(self, record: WorkflowRecord, encoded_size: int) -> dict[str, Any] | None:
        """A ``core.task_state`` reference to ``record``'s state for its step's tasks, or None: carry it inline.

        Only a state the store holds as the checkpoint of ``record.step`` is referenced.
        ``"async"``: the commit of that checkpoint may still be in flight; it is waited
        for (the step's tasks cannot read it before). ``"exit"``: steps after the first
        are not written, so their tasks carry the state.
        """
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.wait([inflight])  # not cancelled with this step: it is shielded where it is settled
        if inflight is not None and (inflight.cancelled() or inflight.exception() is not None):
            return None  # refused: the step is stopped (_alongside_commit raises its error)
        if self._stored_step != record.step or record.frontier.get(STATE_EDITED_KEY):
            return None  # (edited since its checkpoint: a reference would name the unedited state)
        return state_ref(record.step, record.state, encoded_size)

    async def _cache_lookup(
        self, graph: Graph, record: WorkflowRecord, entries: Sequence[TaskEntry], share: bool, remaining_steps: int,
    ) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, str]]:
        """The cache keys of ``entries`` whose node has a ``cache_policy``, the hits, and the followers.

        A key is made of the node's input: the state with the graph's managed values
        (``remaining_steps`` steps left: ``core.managed``), or a Send's argument.

        All by entry key. A follower (only with ``share``) is a miss with the node and key
        of an earlier miss of ``entries``, its leader: it waits for the leader's output
        instead of running too. A task resumed with answers to its interrupts is left
        out: its output depends on them.
        """
        if self._cache is None:
            return {}, {}, {}
        answers = record.frontier.get("resume") or {}
        keys: dict[str, str] = {}
        nodes: dict[str, str] = {}
        managed = graph.managed_keys
        state_input = {**record.state, **managed_inputs(managed, remaining_steps)} if managed else record.state
        for entry in entries:
            policy = graph.node(entry.node).cache_policy
            if policy is None or answers.get(entry.key) or not self._cache.usable(graph.name, entry.node):
                continue
            keys[entry.key] = self._cache.key(graph.name, entry.node, policy,
                                              state_input if entry.arg is None else entry.arg)
            nodes[entry.key] = entry.node
        hits: dict[str, dict[str, Any]] = {}
        pending = list(keys)
        for start in range(0, len(pending), CACHE_CONCURRENCY):
            batch = pending[start:start + CACHE_CONCURRENCY]
            found = await asyncio.gather(*(self._cache.get(graph, nodes[k], keys[k]) for k in batch))
            hits.update((k, output) for k, output in zip(batch, found) if output is not None)
        followers: dict[str, str] = {}
        if share:
            leaders: dict[tuple[str, str], str] = {}
            for k in pending:
                if k not in hits:
                    leader = leaders.setdefault((nodes[k], keys[k]), k)
                    if leader != k:
                        followers[k] = leader
        return keys, hits, followers

    async def _cache_store(
        self, graph: Graph, record: WorkflowRecord, entries: Sequence[TaskEntry], keys: Mapping[str, str],
        hits: Mapping[str, dict[str, Any]], ran: Mapping[str, NodeOutcome],
    ) -> dict[str, NodeOutcome]:
        """Store the cacheable outputs of the tasks that ran; the outcomes of those and of the hits, by entry key."""
        if self._cache is not None:
            cache = self._cache
            writes = [(entry, ran[entry.key]) for entry in entries if entry.key in keys and entry.key in ran
                      and ran[entry.key].ok and cacheable_output(ran[entry.key].updates)]
            for start in range(0, len(writes), CACHE_CONCURRENCY):
                await asyncio.gather(*(
                    cache.put(graph, entry.node, keys[entry.key], outcome.updates or {},
                              _cache_ttl(graph.node(entry.node)))
                    for entry, outcome in writes[start:start + CACHE_CONCURRENCY]))
        now = time.time()
        settled = dict(ran)
        settled.update((entry.key, NodeOutcome(entry.node, node_task_id(record, entry.key), hits[entry.key], None, 0,
                                               now, 0.0, cached=True))
                       for entry in entries if entry.key in hits)
        return settled

    async def _cache_share(
        self, graph: Graph, record: WorkflowRecord, run: int, entries: Sequence[TaskEntry],
        followers: Mapping[str, str], settled: Mapping[str, NodeOutcome], step_limit: int,
    ) -> list[NodeOutcome]:
        """Every entry's outcome, in order: a follower gets its leader's output when that is cacheable.

        Otherwise (the leader failed, paused, or returned what is not cached) the
        followers run after all, together, as tasks of their own.
        """
        outcomes = dict(settled)
        leftovers: list[TaskEntry] = []
        for entry in entries:
            leader = followers.get(entry.key)
            if leader is None:
                continue
            first = settled[leader]
            if first.ok and cacheable_output(first.updates):
                outcomes[entry.key] = replace(first, task_id=node_task_id(record, entry.key), attempts=0,
                                              duration=0.0, worker_id="", cached=True)
            else:
                leftovers.append(entry)
        if leftovers:
            again = await self._run_step(graph, record, run, leftovers, step_limit, share=False)
            outcomes.update(zip((entry.key for entry in leftovers), again))
        return [outcomes[entry.key] for entry in entries]

    async def _subgraph_batch(self, graph: Graph, record: WorkflowRecord, entry: TaskEntry,
                              step_limit: int) -> list[NodeOutcome]:
        assert self._subgraphs is not None
        # The child gets the call's own limit (counted in its own steps).
        return [await self._subgraphs(graph, record, entry, node_task_id(record, entry.key),
                                      step_limit - self._budget_start)]

    async def _route_failure(
        self, graph: Graph, record: WorkflowRecord, entry: TaskEntry, outcome: NodeOutcome
    ) -> dict[str, Any]:
        """The frontier Send of ``entry``'s error handler (``add_node(on_error=)``); emits ``node.failed``.

        The handler's input carries the error and, as ``"state"``, the input the failed task
        got (the shared state of this step, or its Send argument), so it runs the same on a
        worker. A shared state over ``INLINE_STATE_LIMIT`` that is this step's checkpoint is not
        copied: the Send names it (``"state_ref"``, as a task does, see ``core.task_state``), so
        neither the frontier nor the handler's task carries a second copy of a large state.
        """
        failure = outcome.failure
        assert failure is not None
        handler = graph.node(entry.node).on_error
        assert handler is not None
        error = {"node": entry.node, "task": entry.key, "error_type": failure.error_type,
                 "message": failure.message, "traceback": failure.traceback_text,
                 "attempts": outcome.attempts, "timed_out": failure.timed_out, "step": record.step}
        self._events.emit(record.workflow_id, "node.failed", step=record.step, node=outcome.node,
                          attempts=outcome.attempts, error=f"{failure.error_type}: {failure.message}",
                          duration=outcome.duration, on_error=handler,
                          **({"task": entry.key} if entry.is_send else {}))
        send: dict[str, Any] = {"node": handler, "handles": entry.key, "handles_task": node_task_id(record, entry.key)}
        if entry.arg is None:
            size = len(self._state_json(record.state))
            reference = await self._state_reference(record, size) if size > INLINE_STATE_LIMIT else None
            if reference is not None:
                return {**send, "arg": {"error": error}, "state_ref": reference}
        failed_input = dict(entry.arg) if entry.arg is not None else dict(record.state)
        return {**send, "arg": {"error": error, "state": failed_input}}

    async def _purge_handled(self, record: WorkflowRecord) -> None:
        """Delete the dead letters of the failed tasks whose handlers ``record``'s frontier holds.

        A handled failure needs no operator: listing it among the dead letters would ask
        for a re-drive the workflow does not want (it went on through the handler). Only
        the queue's letter goes; the failed result, the ``node.failed`` event and the
        handler's input keep the error. Housekeeping: retried through an outage, any
        other error logged, never raised. A purge that finds no letter (the task ran
        in-process, or a purge before) does nothing.
        """
        for send in record.frontier.get("sends") or ():
            task_id = send.get("handles_task") if isinstance(send, Mapping) else None
            if not isinstance(task_id, str):
                continue
            try:
                purged = await until_available(functools.partial(self._queue_executor.queue.purge_dead_letter, task_id),
                                               what=f"purge the handled dead letter {task_id}", outage=self._outage)
            except Exception as exc:
                log.warning("workflow %r: node %r's failure went to its error handler, but its dead letter %s could "
                            "not be purged (%s: %s); 'distributed-agents dead-letters purge %s' deletes it",
                            record.workflow_id, send.get("handles"), task_id, type(exc).__name__, exc, task_id)
                continue
            if purged:
                log.info("workflow %r: purged dead letter %s, whose failure its error handler %r handles",
                         record.workflow_id, task_id, send.get("node"))

    async def _node_failed(
        self, graph: Graph, record: WorkflowRecord, lease: WorkflowLease,
        failed: Sequence[tuple[TaskEntry, NodeOutcome]], pending: Mapping[str, Mapping[str, Any]],
    ) -> NodeExecutionError:
        entry, outcome = failed[0]
        failure = outcome.failure
        assert failure is not None
        # Run in this process, also of the node's own exception type (``except ValueError`` catches it).
        error_cls = node_error_class(NodeTimeoutError if failure.timed_out else NodeExecutionError, failure.exception)
        handled = dict((entry.arg or {}).get("error") or {}) if entry.handles is not None else {}
        what = f"node {outcome.node!r}"
        if entry.handles is not None:
            what = (f"error handler {outcome.node!r} of node {handled.get('node', entry.handles)!r} (which failed with "
                    f"{handled.get('error_type')}: {handled.get('message')})")
        others = ""
        if len(failed) > 1:  # a fan-out whose tasks fail together: every one is named, not the first alone
            shown = [f"{e.key!r} ({o.failure.error_type}: {bounded(o.failure.message, 200)})"  # node, node#i for a Send
                     for e, o in failed[1:6] if o.failure is not None]
            more = f" and {len(failed) - 6} more" if len(failed) > 6 else ""
            others = f"; {len(failed) - 1} other task(s) of the step failed too: {', '.join(shown)}{more}"
        error = error_cls(
            f"{what} of graph {graph.name!r} (workflow {record.workflow_id!r}) failed after "
            f"{outcome.attempts} attempt(s): {failure.error_type}: {failure.message}{others}",
            node=outcome.node, attempts=outcome.attempts, error_type=failure.error_type,
            error_message=failure.message, traceback_text=failure.traceback_text,
        )
        # Run in this process: the node's own exception is the cause (as LangGraph raises it itself).
        error.__cause__ = failure.exception
        self._events.emit(record.workflow_id, "node.failed", step=record.step, node=outcome.node,
                          attempts=outcome.attempts, error=f"{failure.error_type}: {failure.message}",
                          duration=outcome.duration)
        for _, other in failed[1:]:
            assert other.failure is not None
            self._events.emit(record.workflow_id, "node.failed", step=record.step, node=other.node,
                              attempts=other.attempts, error=f"{other.failure.error_type}: {other.failure.message}",
                              duration=other.duration)
        await self._fail(record, lease, error, {
            "phase": "run", "node": outcome.node, "attempts": outcome.attempts, "error_type": failure.error_type,
            "message": failure.message, "traceback": failure.traceback_text,
            "failed_nodes": [o.node for _, o in failed],
            **({"handles": handled.get("node", entry.handles)} if entry.handles is not None else {}),
        }, pending)
        return error

    async def _fail_unexpected(
        self, graph: Graph, progress: _Progress, lease: WorkflowLease, exc: BaseException
    ) -> DistributedAgentsError:
        """Record FAILED for an error no earlier path recorded; return what the caller raises."""
        record = progress.record
        what = {"run": "running its nodes", "merge": "merging its nodes' updates and routing",
                "commit": "committing it"}.get(progress.phase, progress.phase)
        error = exc if isinstance(exc, DistributedAgentsError) else ExecutionError(
            f"workflow {record.workflow_id!r} of graph {graph.name!r} failed in step {record.step} while {what}: "
            f"{type(exc).__name__}: {exc}"
        )
        details: dict[str, Any] = {"phase": progress.phase, "nodes": frontier_nodes(record.frontier)}
        for attribute in ("key", "node", "nodes", "reducer", "path", "condition"):
            value = getattr(exc, attribute, None)
            if value == "":
                continue
            if isinstance(value, (str, int)) or (isinstance(value, (list, tuple)) and
                                                 all(isinstance(v, str) for v in value)):
                details[attribute] = list(value) if isinstance(value, tuple) else value
        if isinstance(exc, PayloadTooLargeError) and "node" in details:
            # A commit too large is the step's writes together, not one node's fault.
            details["largest_writer"] = details.pop("node")
        if error is not exc:
            details["kind"] = type(exc).__name__
        if _only_our_errors(exc):
            # The graph's own input, a node's write or a route is wrong: the message says which and
            # what to do, and the caller gets the error with its traceback; the engine's in the log
            # (on stderr, where logging is not configured) would only hide it. An exception of other
            # code (a reducer's, a condition's, a bug) keeps its traceback here.
            log.error("workflow %r failed in step %d while %s: %s", record.workflow_id, record.step, what, exc)
        else:
            log.error("workflow %r failed in step %d while %s", record.workflow_id, record.step, what, exc_info=exc)
        await self._fail(record, lease, error, details, progress.pending)
        return error

    async def _fail(
        self, record: WorkflowRecord, lease: WorkflowLease, error: Exception, details: dict[str, Any],
        pending: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Commit FAILED with an error record; ``pending`` writes are kept for ``resume``.

        Marks ``error`` as recorded, so the step loop does not record it twice. If the
        failure cannot be committed with the pending writes (e.g. they are what is too
        large for the backend) it is committed without them.
        """
        setattr(error, _RECORDED, True)
        summary = str(error)
        if len(summary) > MAX_SUMMARY:
            summary = summary[:MAX_SUMMARY] + f"... ({len(summary) - MAX_SUMMARY} more characters)"
        info = {"kind": type(error).__name__, "summary": summary, "step": record.step, **details}
        failed = record.evolve(status=WorkflowStatus.FAILED, error=info)
        if pending:
            try:
                await self._commit(failed.evolve(frontier={**record.frontier, "pending_writes": dict(pending)}),
                                   lease)
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                log.warning("workflow %r: could not keep the failed step's finished writes (%s: %s); "
                            "resume will run those nodes again", record.workflow_id, type(exc).__name__, exc)
                info["pending_writes_dropped"] = f"{type(exc).__name__}: {exc}"[:MAX_SUMMARY]
                await self._commit(failed, lease)
        else:
            await self._commit(failed, lease)
        # Said where alerting looks (log_context.alert_level), in the process that drove it.
        log.log(alert_level(log), "workflow %r failed at step %d: %s", record.workflow_id, record.step,
                safe_text(summary))
        self._events.emit(record.workflow_id, "workflow.failed", step=record.step, error=summary)

    def _commit(
        self, record: WorkflowRecord, lease: WorkflowLease, checkpoint: Checkpoint | None = None
    ) -> Awaitable[WorkflowRecord]:
        """Commit ``record`` (with ``checkpoint``) as the run's durability mode says; await the record to go on from.

        The usual commit (``"sync"``, nothing in flight) is the write's own coroutine: no
        layer around it that its resumption passes through. Otherwise ``_commit_in_mode``.
        """
        if self._mode == "sync" and self._inflight is None:
            return self._write(record, lease, None if checkpoint is None else self._with_parent(checkpoint))
        return self._commit_in_mode(record, lease, checkpoint)

    async def _commit_in_mode(
        self, record: WorkflowRecord, lease: WorkflowLease, checkpoint: Checkpoint | None = None
    ) -> WorkflowRecord:
        """``_commit`` in any durability mode, settling a commit in flight first.

        ``"sync"``: written now. ``"async"``: a step's commit (a RUNNING record with its
        checkpoint) starts writing and is returned at once, carrying the version it will
        have. Every commit first waits for the one in flight, raising its error if it was
        refused (``WorkflowTakenOverError``, ``WorkflowCancelledError``). ``"exit"``: a
        step's commit is only kept in memory; the next commit that is not a step's (the
        end, a pause, a failure) carries the last kept checkpoint along.
        """
        # (No coroutine made to settle when nothing is in flight: the usual "sync" commit.)
        landed = await self._settle() if self._inflight is not None else None
        if landed is not None:
            record = record.evolve(version=landed.version)
        step_commit = checkpoint is not None and record.status == WorkflowStatus.RUNNING
        if self._mode == "exit" and step_commit:
            self._unsaved = checkpoint
            return record
        if checkpoint is None and self._unsaved is not None and self._unsaved.step == record.step:
            checkpoint = self._unsaved
        if checkpoint is not None:
            checkpoint = self._with_parent(checkpoint)
        if self._mode == "async" and step_commit:
            self._check_size(record, checkpoint)  # a commit too large fails this step, not a later one
            self._inflight = asyncio.ensure_future(self._write(record, lease, checkpoint))
            return record.evolve(version=record.version + 1)
        return await self._write(record, lease, checkpoint)

    async def _settle(self) -> WorkflowRecord | None:
        """Wait for the commit in flight (``"async"``); the record it stored, or None if there is none.

        Raises what the commit raised. A cancellation of the caller does not stop the
        write itself: it is shielded, and ``drive`` waits for it before returning.
        """
        inflight = self._inflight
        if inflight is None:
            return None
        if inflight.done():  # the usual case: it landed while the step ran
            self._inflight = None
            return inflight.result()
        try:
            return await asyncio.shield(inflight)
        finally:
            if inflight.done():
                self._inflight = None

    async def _alongside_commit(self, step: Coroutine[Any, Any, T]) -> T:
        """Await ``step`` while the previous step's commit is written (``"async"``).

        If that commit is refused first, ``step`` is cancelled and the refusal raised,
        so a workflow taken over or cancelled stops at once, as it does in ``"sync"``.
        """
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.sleep(0)  # a write that needs no I/O (memory://) lands here: no task for the step
        if inflight is None or inflight.done():
            if inflight is not None and (inflight.cancelled() or inflight.exception() is not None):
                step.close()  # refused: the step does not start
                await self._settle()  # raises the commit's error
            return await step
        run = asyncio.ensure_future(step)
        try:
            both: set[asyncio.Future[Any]] = {run, inflight}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if not run.done() and inflight.done() and (inflight.cancelled() or inflight.exception() is not None):
                await self._settle()  # raises the commit's error
            return await run
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run

    def _with_parent(self, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint``, naming the last written one as its parent when steps in between were not written."""
        if checkpoint.step - 1 <= self._stored_step or "parent" in checkpoint.metadata:
            return checkpoint
        parent = f"{checkpoint.workflow_id}:{self._stored_step}"  # history.checkpoint_id's form
        return replace(checkpoint, metadata={**checkpoint.metadata, "parent": parent,
                                             "durability": self._mode})

    async def _flush_on_stop(self, progress: _Progress, lease: WorkflowLease) -> None:
        """On a cancellation of the run: let a commit in flight land, and write an ``"exit"`` run's progress.

        The progress (the last step's record and checkpoint) is written fenced by the
        lease on top of the stored record if that is still this run's last write
        (the process stops; the lease lapsed but nobody took it), or onto the
        CANCELLED record ``cancel_workflow`` wrote, keeping that status. Anything else
        (another orchestrator committed) leaves the store alone. Best effort: a
        failure is logged, never raised over the cancellation.
        """
        try:
            with contextlib.suppress(Exception):
                await self._settle()
            unsaved = self._unsaved
            record = progress.record
            if unsaved is None or record.step != unsaved.step:
                return
            current = await self._store.get(record.workflow_id)
            if current is None:
                return
            if current.status == WorkflowStatus.CANCELLED:
                record = record.evolve(status=WorkflowStatus.CANCELLED, error=current.error, version=current.version)
            elif current.status != WorkflowStatus.RUNNING:
                return
            # RUNNING: a compare-and-set on the version this run last wrote (a waiting note on top
            # of it is allowed for by the store view), so a commit by another orchestrator wins.
            saved = await self._store.save(record, expected_version=record.version,
                                           checkpoint=self._with_parent(unsaved), fencing_token=lease.fencing_token)
            self._unsaved, self._stored_step = None, saved.step
            log.info("workflow %r stopped with durability 'exit': its progress up to step %d is written",
                     record.workflow_id, saved.step)
        except Exception as exc:
            log.warning("workflow %r stopped with durability %r, and its progress since step %d could not be "
                        "written (%s: %s); it resumes from there", progress.record.workflow_id, self._mode,
                        self._stored_step, type(exc).__name__, exc)

    def _check_size(self, record: WorkflowRecord, checkpoint: Checkpoint | None) -> None:
        """``PayloadTooLargeError`` if ``record`` or ``checkpoint`` is over the backend's size limit."""
        # Named by the step that ran (the record of a step's commit already carries the next step's number).
        ran = record.step - 1 if checkpoint is not None else record.step
        parts = kept_json(record)
        if parts is None:
            try:
                parts = self._state_json(record.state), encode_rest(record, keep=True)
            except (TypeError, ValueError):
                parts = None  # not JSON: the store's own check names the key
            else:
                remember_json(record, *parts)  # the store writes these bytes (core.record_json)
        check_commit_size(record.workflow_id, ran, record.state,
                          {**record.to_dict(), "state": None} if parts is None else parts[1],
                          None if checkpoint is None else checkpoint.writes,
                          self._payload_limit, state_json=None if parts is None else parts[0])

    def _state_json(self, state: Mapping[str, Any]) -> bytes:
        """``encode(state)``, kept for the state object encoded last.

        A step's merged state is encoded to check its commit's size and again as the next
        step's input: the same object both times (states are never changed in place).
        """
        memo = self._encoded
        if memo is not None and memo[0] is state:
            return memo[1]
        raw = encode(state)
        self._encoded = (state, raw)
        return raw

    async def _write(
        self, record: WorkflowRecord, lease: WorkflowLease, checkpoint: Checkpoint | None = None
    ) -> WorkflowRecord:
        """Save ``record`` (and ``checkpoint``) now, fenced by ``lease``; the stored record."""
        # Before writing: a record or checkpoint over the backend's size limit fails here,
        # naming the sizes, instead of failing (or, on NATS, hanging) in the store.
        self._check_size(record, checkpoint)
        # A run's last commit (it ends or pauses) gives the lease up with it: one round trip fewer.
        last = record.status in _LAST_COMMIT
        self._save_attempts = 0  # one write at a time per run: _commit settles the one in flight first
        try:
            try:  # the first attempt here: no retrying coroutine per commit while the backend answers
                saved = await self._save_once(record, lease, checkpoint)
                self._outage.succeeded()
            except BackendUnavailableError as exc:
                saved = await retry_after(exc, self._save_once, record, lease, checkpoint,
                                          what=f"commit step {record.step} of workflow {record.workflow_id!r}",
                                          outage=self._outage)
            self.lease_released = last
            if self._unsaved is not None and checkpoint is not None and checkpoint.step >= self._unsaved.step:
                self._unsaved = None
            self._stored_step = saved.step
            return saved
        except (VersionConflictError, LeaseLostError, FencingTokenRejectedError) as exc:
            current = await until_available(self._store.get, record.workflow_id, outage=self._outage,
                                            what=f"commit step {record.step} of workflow {record.workflow_id!r}")
            if self._save_attempts > 1 and current is not None and _landed(current, record):
                # An earlier attempt was applied but its reply was lost in the outage.
                self._stored_step = current.step
                return current
            if current is not None and current.status == WorkflowStatus.CANCELLED:
                if self._mode == "exit" and checkpoint is not None and current.step < record.step:
                    # Cancelled from elsewhere while nothing was written: keep the progress, cancelled.
                    with contextlib.suppress(Exception):
                        await self._store.save(
                            record.evolve(status=WorkflowStatus.CANCELLED, error=current.error, version=current.version),
                            expected_version=current.version, checkpoint=checkpoint, fencing_token=lease.fencing_token)
                raise WorkflowCancelledError(f"workflow {record.workflow_id!r} was cancelled") from None
            raise WorkflowTakenOverError(
                f"workflow {record.workflow_id!r}: another orchestrator committed step "
                f"{None if current is None else current.step} first; this one stopped driving it"
            ) from exc

    def _save_once(
        self, record: WorkflowRecord, lease: WorkflowLease, checkpoint: Checkpoint | None
    ) -> Awaitable[WorkflowRecord]:
        """One attempt of ``_write``'s save (counted in ``_save_attempts``); a last commit releases ``lease``.

        The store's own coroutine, to await (no layer of its own around the save's wait).
        """
        self._save_attempts += 1
        if record.status in _LAST_COMMIT:
            return self._store.save_releasing(
                record, expected_version=record.version, checkpoint=checkpoint, lease=lease)
        return self._store.save(
            record, expected_version=record.version, checkpoint=checkpoint, fencing_token=lease.fencing_token
        )


# Statuses a run's last commit writes: after it the driver releases the lease anyway.
_LAST_COMMIT = frozenset({*WorkflowStatus.TERMINAL, WorkflowStatus.INTERRUPTED})
MAX_SUMMARY = 4000  # characters of an error summary kept in the record
CACHE_CONCURRENCY = 64  # node cache reads (or writes) of one step in flight at once
_RECORDED = "_distributed_agents_recorded"  # set on an error once FAILED is committed for it
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    WorkflowTakenOverError, WorkflowCancelledError, BackendUnavailableError, LeaseLostError,
    FencingTokenRejectedError, VersionConflictError,
)


def _status_after(exc: BaseException) -> str:
    """The status a run that raised ``exc`` left its workflow in, as reported to instrumentation."""
    if isinstance(exc, WorkflowCancelledError):
        return WorkflowStatus.CANCELLED
    if isinstance(exc, (asyncio.CancelledError, WorkflowTakenOverError, LeaseLostError, KeyboardInterrupt,
                        SystemExit, GeneratorExit, BackendUnavailableError)):
        return "stopped"  # this process stopped driving it; it stays resumable
    return WorkflowStatus.FAILED


def _cache_ttl(spec: NodeSpec) -> float | None:
    """The seconds ``spec``'s cached outputs live (None: until cleared)."""
    return None if spec.cache_policy is None else spec.cache_policy.ttl


def _only_our_errors(exc: BaseException) -> bool:
    """Whether ``exc`` and every exception it was raised from (``__cause__``/``__context__``) are
    this package's own errors, whose messages say what is wrong: no other code's traceback to show."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if not isinstance(current, DistributedAgentsError):
            return False
        seen.add(id(current))
        # (``raise ... from None`` hides the exception being handled: not a cause to show.)
        current = current.__cause__ if current.__cause__ is not None else \
            None if current.__suppress_context__ else current.__context__
    return True


def _node_call(
    graph: Graph, record: WorkflowRecord, entry: TaskEntry, spec: NodeSpec, task_id: str, shared: bool,
    encoded: bytes | None, reference: Mapping[str, Any] | None, local: bool, workflow_priority: int,
    answers: Mapping[str, Any], step_limit: int, trace: Mapping[str, str] | None, budget_start: int = 0,
) -> NodeCall:
    """The call running ``entry`` of ``record``'s step (``shared``: an in-process node reads the state as it is;
    ``step_limit``: the step the run may not pass, ``budget_start`` the step its call's budget counts from)."""
    return NodeCall(
        workflow_id=record.workflow_id, graph_name=graph.name, step=record.step, node=entry.node,
        node_type=spec.node_type, task_id=task_id,
        # Named for a worker serving the graph's functions (a node run here needs no name).
        function=None if local or spec.func is None or spec.subgraph is not None else function_name(spec.func),
        # A Send's node gets the Send's argument, not the shared state.
        state_json=b"" if shared else (encoded or b"") if entry.arg is None else encode(entry.arg),
        state=record.state if shared else None,
        # A large shared state stays in its checkpoint: the task names it (core.task_state).
        state_ref=entry.state_ref if entry.state_ref is not None else
        (reference or None) if not local and entry.arg is None else None,
        wrap=entry.arg if entry.state_ref is not None else None,  # an error handler's: the error
        retry=spec.retry, timeout=spec.timeout, priority=workflow_priority + spec.priority,
        resume=list(answers.get(entry.key) or ()) or None,
        remaining_steps=step_limit - record.step,
        step_limit=step_limit - budget_start,  # the call's own (config["recursion_limit"])
        message_keys=graph.message_keys,
        # Managed values go into the node's input when that is the state (not a Send's argument, nor an error).
        managed=graph.managed_keys if entry.arg is None and entry.state_ref is None else None,
        # A subgraph's nodes have the metadata of the node running it too (LangGraph hands it down).
        node_metadata={**record.metadata[NODE_METADATA_KEY], **(spec.metadata or {})}
        if record.metadata.get(NODE_METADATA_KEY) else spec.metadata,
        configurable=record.metadata.get(CONFIGURABLE_KEY),
        trace=trace,
    )


def first_step_calls(
    graph: Graph, record: WorkflowRecord, step_limit: int, local_function: Callable[[NodeSpec], NodeFunction | None],
    state_json: bytes | None = None,
) -> list[NodeCall] | None:
    """The worker tasks the first step of the new workflow ``record`` enqueues, as ``NodeCall``s,
    when that step does nothing else first; else None.

    None when the step is not exactly "enqueue these tasks": a node runs in this process
    or is a subgraph, a node is cached (a hit runs no task), a breakpoint stops the step,
    the step limit is reached, the state is large enough to be referenced, or the frontier
    holds answers or earlier outputs. The engine's first step then builds the same calls
    (``StepEngine._run_step``, through ``_node_call``): a store may create the workflow and
    enqueue these in one step (``StateStore.create_leased_enqueuing``), and the engine
    skips enqueueing them again (``TaskQueueExecutor.enqueued``). ``state_json`` is
    ``encode(record.state)`` when the caller has it (not encoded again).
    """
    order = graph.node_order
    entries = read_entries(record.frontier, order)
    frontier = record.frontier
    if not entries or record.step >= step_limit or frontier.get("pending_writes") or frontier.get("resume"):
        return None
    names = [entry.node for entry in entries]
    if any(name not in order for name in names) or _breakpoint_hits(_breakpoint_names(graph, record, "before"), names):
        return None
    encoded = state_json
    workflow_priority = int(record.metadata.get("priority", 0))
    calls = []
    for entry in entries:
        spec = graph.node(entry.node)
        if entry.state_ref is not None or spec.subgraph is not None or spec.cache_policy is not None or \
                local_function(spec) is not None:
            return None
        if entry.arg is None:
            if encoded is None:
                encoded = encode(record.state)
            if len(encoded) > INLINE_STATE_LIMIT:
                return None
        calls.append(_node_call(graph, record, entry, spec, node_task_id(record, entry.key), False, encoded, None,
                                False, workflow_priority, {}, step_limit, None))
    return calls


def _breakpoint_names(graph: Graph, record: WorkflowRecord, when: str) -> Sequence[str]:
    """The nodes with a static breakpoint ``when`` ("before"/"after") for ``record``'s workflow (read only).

    Per-workflow lists (``execute(interrupt_before=...)``, kept in the record's
    metadata) replace the graph's compiled ones; ``"*"`` means every node.
    """
    stored = record.metadata.get("interrupt_before" if when == "before" else "interrupt_after")
    if isinstance(stored, list):
        return stored
    return graph.interrupt_before if when == "before" else graph.interrupt_after


# Helpers of StepEngine._drive_steps. Module functions rather than comprehensions inside it:
# a comprehension (a function in Python 3.11) that reads one of its locals turns that local
# into a cell, a GC-tracked object made on every call and kept for the whole run, and a
# run is alive across many collections while hundreds of workflows are in flight.

# A call not built before the step (queued with the workflow's create): none, and no time it was sent.
_NOT_SENT: tuple[NodeCall | None, float | None] = (None, None)


def _task_ids(record: WorkflowRecord, entries: Sequence[TaskEntry]) -> tuple[str, ...]:
    """The task ids of ``entries`` in ``record``'s current step, in their order."""
    return tuple([node_task_id(record, entry.key) for entry in entries])


def _step_limit_error(
    graph: Graph, record: WorkflowRecord, next_nodes: Sequence[str], recent: Sequence[Sequence[str]], limit: int
) -> tuple[StepLimitExceededError, list[str]]:
    """The error of a workflow at ``limit`` steps with ``next_nodes`` pending, and the nodes cycling.

    Cycling means running again: a node that ran in more than one of the ``recent``
    steps this run took, or ran in one of them and is pending again.
    """
    runs = collections.Counter(name for nodes in recent for name in set(nodes))
    pending = set(next_nodes)
    cycling = [name for name in graph.nodes if runs[name] + (name in pending) > 1]
    message = (f"workflow {record.workflow_id!r} of graph {graph.name!r} reached the step limit of "
               f"{limit} with {', '.join(map(repr, next_nodes))} pending; ")
    if cycling:
        how = [f"{name!r} ran {runs[name]} time(s){' and is pending again' if name in pending else ''}"
               for name in cycling]
        message += (f"in the last {len(recent)} step(s) {', '.join(how)}, so the graph is cycling: "
                    "fix the loop's exit condition or pass a larger step_limit")
    elif recent:
        message += (f"no node ran twice in the last {len(recent)} step(s), so this is no loop: "
                    "the workflow needs more steps, pass a larger step_limit")
    else:  # resumed at the limit: no step ran here to tell a loop from a long run
        message += "pass a larger step_limit if the workflow needs more steps"
    involved = tuple(dict.fromkeys([*next_nodes, *cycling]))
    return StepLimitExceededError(message, limit=limit, nodes=involved), cycling


def _any_cached(graph: Graph, entries: Sequence[TaskEntry]) -> bool:
    return any(graph.node(entry.node).cache_policy is not None for entry in entries)


def _in_task_order(batches: Sequence[Sequence[NodeOutcome]], task_ids: Sequence[str]) -> list[NodeOutcome]:
    """The outcomes of ``batches`` in the order of ``task_ids`` (each id has one)."""
    by_task = {outcome.task_id: outcome for batch in batches for outcome in batch}
    return [by_task[task_id] for task_id in task_ids]


def _names_outside(names: Sequence[str], known: Mapping[str, Any]) -> list[str]:
    return [name for name in names if name not in known]


def _any_outside(names: Sequence[str], known: Mapping[str, Any]) -> bool:
    for name in names:  # (a loop: no generator per step)
        if name not in known:
            return True
    return False


_NO_OUTPUTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({})  # a step without earlier outputs


def _entries_outside(entries: Sequence[TaskEntry], keys: Mapping[str, Any]) -> list[TaskEntry]:
    return [entry for entry in entries if entry.key not in keys]


def _paused_entries(entries: Sequence[TaskEntry], parsed: Mapping[str, NodeResult]) -> list[TaskEntry]:
    return [entry for entry in entries if entry.key in parsed and parsed[entry.key].interrupt is not None]


def _parent_entries(entries: Sequence[TaskEntry], parsed: Mapping[str, NodeResult]) -> list[TaskEntry]:
    return [entry for entry in entries if entry.key in parsed and parsed[entry.key].parent]


async def _all_or_stop(batches: Sequence[Awaitable[list[NodeOutcome]]]) -> list[list[NodeOutcome]]:
    """The outcomes of every batch of a step (its in-process nodes, its worker tasks, each
    subgraph), in order; when one batch raises (no worker after ``worker_timeout``, a backend
    outage), the others are cancelled and awaited before its error is raised.

    A node's failure is an outcome, not an error: only the step's machinery raises. Left
    running (``asyncio.gather`` leaves them), a subgraph's child workflow went on being driven
    after its parent's step had failed, and a step retried after an outage started a second
    driver of the same child beside the first. (A cancellation of the step cancels them all.)"""
    if not batches:
        return []  # (every task of the step came from the node cache)
    tasks = [asyncio.ensure_future(batch) for batch in batches]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # (as gather does: the step ends once its batches have)
        raise
    failed = next((task for task in tasks if task.done() and not task.cancelled() and task.exception() is not None),
                  None)
    if failed is None:
        return [task.result() for task in tasks]
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in tasks:  # (the others' errors are the step's too: retrieved, so none is logged as lost)
        if task is not failed and task.done() and not task.cancelled():
            task.exception()
    error = failed.exception()
    assert error is not None
    raise error


def _unhandled_failures(
    graph: Graph, failed: Sequence[tuple[TaskEntry, NodeOutcome]]
) -> list[tuple[TaskEntry, NodeOutcome]]:
    """The failures no ``on_error`` handler takes, then (if any) the others: all raised together.

    A final failure of a node with ``on_error`` (not of a handler's own task) goes to its
    handler; an empty list when every failure does.
    """
    unhandled = [(e, o) for e, o in failed if e.handles is not None or graph.node(e.node).on_error is None]
    if not unhandled:
        return []
    return [*unhandled, *(pair for pair in failed if pair not in unhandled)]


def _breakpoint_pauses(step: int, nodes: Sequence[str], when: str) -> list[Interrupt]:
    """The pauses of ``step``'s breakpoints (``when``: ``"before"`` or ``"after"``) at ``nodes``."""
    return [Interrupt(interrupt_id(step, node, 0) + f":{when}", node, None, when, node) for node in nodes]


def _breakpoint_hits(names: Sequence[str], nodes: Sequence[str]) -> list[str]:
    """The nodes of ``nodes`` among breakpoint ``names`` (from ``_breakpoint_names``), each once."""
    if not names:
        return []
    return list(dict.fromkeys(nodes)) if "*" in names else [n for n in dict.fromkeys(nodes) if n in names]


def _landed(current: WorkflowRecord, attempted: WorkflowRecord) -> bool:
    """Whether ``current`` is exactly what saving ``attempted`` stores (the next version)."""
    return (current.version == attempted.version + 1 and current.step == attempted.step
            and current.status == attempted.status and dict(current.state) == dict(attempted.state)
            and dict(current.frontier) == dict(attempted.frontier))
