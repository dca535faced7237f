"""Where nodes run: in this process, or as tasks on the backend's queue.

The step engine hands a batch of ``NodeCall``s to a ``NodeExecutor`` and gets one
``NodeOutcome`` per call. ``InProcessExecutor`` runs functions it has (applying retry
policy and timeouts itself); ``TaskQueueExecutor`` enqueues tasks for workers and waits
for their results. Both go through the same ``invoke_node``; only the transport differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import types
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from distributed_agents.core.codec import decode
from distributed_agents.core.errors import BackendUnavailableError, NodeNotFoundError
from distributed_agents.core.instrumentation import (
    CANCELLED,
    FAILED,
    RETRIED,
    SUCCEEDED,
    TRACE_KEY,
    Instrumentation,
    NodeAttempt,
)
from distributed_agents.core.node_runner import (
    NodeContext,
    NodeFailure,
    bounded,
    describe_failure,
    invoke_node,
    is_output_error,
)
from distributed_agents.core.ports.task_queue import Task, TaskQueue
from distributed_agents.core.ports.worker_registry import WorkerRegistry
from distributed_agents.core.quick_init import quick_init
from distributed_agents.core.registry import NodeFunction
from distributed_agents.core.retry import NodeRetry, RetryChain
from distributed_agents.core.state import State
from distributed_agents.core.task_payload import (
    FUNCTION_KEY,
    MANAGED_KEY,
    MANAGED_PAYLOAD_VERSION,
    NODE_METADATA_KEY,
    PAYLOAD_VERSION,
    RETRY_LIST_PAYLOAD_VERSION,
)
from distributed_agents.core.task_state import STATE_REF_KEY, WRAP_KEY

__all__ = ["CONFIGURABLE_KEY", "InProcessExecutor", "NodeCall", "NodeExecutor", "NodeOutcome", "TaskQueueExecutor",
           "flat_state", "node_task", "task_payload"]

_log = logging.getLogger("distributed_agents.orchestrator")

T = TypeVar("T")
CONFIGURABLE_KEY = "configurable"  # in a workflow record's metadata and a task's payload: the caller's configurable


@quick_init  # made every step
@dataclass(frozen=True)
class NodeCall:
    """One node to run in one step. ``state_json`` is the step's input state, encoded once.

    For a ``Send`` it is the Send's argument instead. ``resume`` lists the answers
    the node's ``interrupt()`` calls return; ``remaining_steps`` is what
    ``NodeContext.remaining_steps`` reports. ``state`` is the input itself for a call
    run in this process whose values are all scalars (``flat_state``): the node gets a
    shallow copy of it, and ``state_json`` may then be empty (never encoded).
    """

    workflow_id: str
    graph_name: str
    step: int
    node: str
    node_type: str
    task_id: str
    state_json: bytes
    retry: NodeRetry | None = None
    timeout: float | None = None
    priority: int = 0
    resume: list[Any] | None = None
    remaining_steps: int | None = None
    step_limit: int | None = None  # the run's step limit (LangGraph's recursion_limit), as config["recursion_limit"] shows
    message_keys: tuple[str, ...] = ()  # keys whose reducer is add_messages (LangGraph message shorthands)
    # The graph's managed values (core.managed: key -> kind) the node's input gets; None: none.
    managed: Mapping[str, str] | None = None
    node_metadata: Mapping[str, Any] | None = None  # add_node(metadata=): the node reads it in config["metadata"]
    configurable: Mapping[str, Any] | None = None  # the caller's config["configurable"] values (JSON)
    # A task on the queue carries this reference to the committed state instead of the state
    # itself (core.task_state); None: it carries ``state_json``.
    state_ref: Mapping[str, Any] | None = None
    # With ``state_ref``: the node's input is ``{**wrap, "state": <the referenced state>}`` (an
    # error handler's task: ``wrap`` holds the error; engine._route_failure). None: the state itself.
    wrap: Mapping[str, Any] | None = None
    trace: Mapping[str, str] | None = None  # the step's trace context (core.instrumentation), if traced
    state: Mapping[str, Any] | None = None  # see the class docstring
    # The node's own function, ``file:qualname`` (core.registry.function_name), when the graph
    # holds one: a worker serving the graph's functions runs only that one (Worker._foreign_function).
    function: str | None = None


_SCALARS = frozenset({str, int, float, bool, type(None)})


def flat_state(state: Mapping[str, Any]) -> bool:
    """Whether every value of ``state`` is a scalar (str, int, float, bool, None): a shallow copy is a full copy."""
    return all(type(value) in _SCALARS for value in state.values())


@quick_init  # made every step
@dataclass(frozen=True)
class NodeOutcome:
    """What became of a ``NodeCall``: ``updates`` on success, ``failure`` otherwise."""

    node: str
    task_id: str
    updates: Mapping[str, Any] | None
    failure: NodeFailure | None
    attempts: int
    started_at: float
    duration: float
    worker_id: str = ""
    cached: bool = False  # the output came from the node cache (core.cache); the node did not run

    def __init__(self, node: str, task_id: str, updates: Mapping[str, Any] | None, failure: NodeFailure | None,
                 attempts: int, started_at: float, duration: float, worker_id: str = "", cached: bool = False) -> None:
        # One per task: the fields at once (core.quick_init checks this against them).
        self.__dict__.update({"node": node, "task_id": task_id, "updates": updates, "failure": failure,
                              "attempts": attempts, "started_at": started_at, "duration": duration,
                              "worker_id": worker_id, "cached": cached})

    @property
    def ok(self) -> bool:
        """Whether the node succeeded."""
        return self.failure is None


class NodeExecutor:
    """Runs a batch of node calls concurrently; returns outcomes in the calls' order."""

    async def run(self, calls: Sequence[NodeCall]) -> list[NodeOutcome]:
        """Run every call to completion (success or final failure)."""
        raise NotImplementedError


class InProcessExecutor(NodeExecutor):
    """Runs node functions in this process; ``functions`` maps node name to function.

    Each attempt is reported to ``instrumentation`` (if given) as a node attempt.
    """

    def __init__(self, functions: Mapping[str, NodeFunction], instrumentation: Instrumentation | None = None) -> None:
        self._functions = functions
        self._instrumentation = instrumentation

    async def run(self, calls: Sequence[NodeCall]) -> list[NodeOutcome]:
        if len(calls) == 1:
            # Its own copy of the context variables, as gather's task would give it, without a task
            # (whose scheduling costs more than a no-op node): a step of one node is the common case.
            return [await in_own_context(self._run_one(calls[0]))]
        return list(await asyncio.gather(*(self._run_one(call) for call in calls)))

    async def _run_one(self, call: NodeCall) -> NodeOutcome:
        func = self._functions[call.node]
        policy = call.retry
        started = time.time()
        attempt = 0
        while True:
            attempt += 1
            context = NodeContext(call.workflow_id, call.step, call.node, call.node_type, attempt, call.task_id,
                                  remaining_steps=call.remaining_steps, configurable=call.configurable,
                                  metadata=call.node_metadata, step_limit=call.step_limit)
            # The node's own copy of its input, sharing nothing it could change (``state`` is
            # given only when it holds scalars alone: a shallow copy is a full one).
            state = State._trusted(dict(call.state) if call.state is not None else decode(call.state_json),
                                   call.workflow_id)
            observer = self._instrumentation
            observed = None if observer is None else observer.node_started(NodeAttempt(
                call.workflow_id, call.step, call.node, call.node_type, call.task_id, attempt,
                graph=call.graph_name, trace=call.trace))
            try:
                updates = await invoke_node(func, state, context, timeout=call.timeout, resume=call.resume,
                                            message_keys=call.message_keys, managed=call.managed)
            except Exception as exc:
                # A rejected output (not JSON, not a dict, too large) would be the same again.
                again = policy is not None and not is_output_error(exc) and policy.should_retry(attempt, exc)
                if observer is not None:
                    observer.node_ended(observed, RETRIED if again else FAILED, exc)
                if again:
                    assert policy is not None
                    await asyncio.sleep(policy.delay(attempt, exc))
                    continue
                return NodeOutcome(call.node, call.task_id, None, describe_failure(exc), attempt, started,
                                   time.time() - started)
            except BaseException as exc:  # cancelled: the step, or the run
                if observer is not None:
                    observer.node_ended(observed, CANCELLED, exc)
                raise
            if observer is not None:
                observer.node_ended(observed, SUCCEEDED, None)
            return NodeOutcome(call.node, call.task_id, updates, None, attempt, started, time.time() - started)


@types.coroutine
def in_own_context(coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, T]:
    """``await coro``, every step of it run in a copy of the caller's context variables.

    What a task of its own would give ``coro`` (what it sets is not seen by the caller),
    in the caller's task: no task is scheduled, so a coroutine that never suspends
    finishes at once, and a cancellation of the caller reaches ``coro`` as it would
    through ``await``. Returns what ``coro`` returns; raises what it raises.
    """
    context = contextvars.copy_context()
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = context.run(coro.send, value) if error is None else context.run(coro.throw, error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            value, error = (yield yielded), None
        except GeneratorExit:  # closed (the caller's coroutine is discarded): close coro as ``await`` would
            context.run(coro.close)
            raise
        except BaseException as exc:  # thrown in (a cancellation): on to coro, which may handle it
            value, error = None, exc


def task_payload(call: NodeCall) -> dict[str, Any]:
    """The JSON payload of a node task: what a worker needs to run the node.

    It holds the node's input as ``"state"``, or as ``"state_ref"`` (``core.task_state``)
    when the call has one: a large shared state is read by workers from its checkpoint;
    ``"wrap"`` (with ``"state_ref"`` only) makes the input ``{**wrap, "state": <that state>}``.
    """
    return {
        # The lowest version that says all this payload holds: older workers keep reading the rest.
        "v": RETRY_LIST_PAYLOAD_VERSION if isinstance(call.retry, RetryChain) else MANAGED_PAYLOAD_VERSION
        if call.managed else PAYLOAD_VERSION,
        "graph": call.graph_name,
        "step": call.step,
        **({STATE_REF_KEY: dict(call.state_ref)} if call.state_ref is not None else {"state": decode(call.state_json)}),
        **({WRAP_KEY: dict(call.wrap)} if call.state_ref is not None and call.wrap is not None else {}),
        "retry": None if call.retry is None else call.retry.to_dict(),
        "timeout": call.timeout,
        # Only when set, so other tasks' payloads keep their shape.
        **({"resume": list(call.resume)} if call.resume else {}),
        **({"remaining_steps": call.remaining_steps} if call.remaining_steps is not None else {}),
        **({"step_limit": call.step_limit} if call.step_limit is not None else {}),
        **({"message_keys": list(call.message_keys)} if call.message_keys else {}),
        **({MANAGED_KEY: dict(call.managed)} if call.managed else {}),
        **({NODE_METADATA_KEY: dict(call.node_metadata)} if call.node_metadata else {}),
        **({CONFIGURABLE_KEY: dict(call.configurable)} if call.configurable else {}),
        **({TRACE_KEY: dict(call.trace)} if call.trace else {}),
        **({FUNCTION_KEY: call.function} if call.function else {}),
    }


def node_task(call: NodeCall, max_attempts: int) -> Task:
    """The queue task running ``call`` on a worker; ``max_attempts`` applies when the node has no retry policy.

    The enqueuer fixes the attempt limit, so every worker agrees on it whatever its own
    queue default is.
    """
    return Task(call.task_id, call.workflow_id, call.node, call.node_type, task_payload(call),
                priority=call.priority, max_attempts=max_attempts if call.retry is None else call.retry.max_attempts)


# (missing node types, and what failed meanwhile: "" or "; meanwhile node 'x' failed ...": _failed_meanwhile)
WaitingHook = Callable[[Sequence[str], str], Awaitable[None]]


@dataclass
class TaskQueueExecutor(NodeExecutor):
    """Runs nodes as tasks on ``queue``, served by workers found in ``workers``.

    Results of tasks that already finished (for example before an orchestrator was
    restarted) are reused: task ids are deterministic and enqueue is idempotent.
    When no live worker serves a node type, ``on_waiting`` is told which types are
    missing (and which nodes of the step failed meanwhile: the step waits for the others all
    the same, their outputs kept, unless ``worker_timeout`` ends the wait), at every poll
    while that lasts, and once with none when the wait is over
    (the orchestrator logs it and records it in the workflow's status); with
    ``worker_timeout`` set, waiting longer than that fails the node.

    When the step is cancelled, tasks no worker has claimed yet are taken back only if
    ``withdraw_on_cancel(workflow_id)`` says so for the calls' workflow (it was cancelled). A step stopped
    because this orchestrator lost the workflow's lease, or is closing, leaves its tasks
    queued: the orchestrator that takes over enqueues the same task ids and reuses them,
    and withdrawing them here could remove tasks the new owner is waiting for.

    A run that ends in an error instead (``NodeNotFoundError`` after ``worker_timeout``,
    an error of the queue) leaves its tasks queued too, for the same reason: it cannot
    tell whether the lease still holds. It names those without a result in
    ``left_queued`` (until the next run); whoever records the step's failure withdraws
    them once that is committed (``Orchestrator._drive``, with ``withdraw``).
    """

    queue: TaskQueue
    workers: WorkerRegistry
    worker_timeout: float | None = None
    on_waiting: WaitingHook | None = None
    poll_interval: float = 1.0
    require_workers: bool = False
    # Given the workflow id (one callable per orchestrator, not one made per run: each is a
    # GC-tracked object kept while the run lasts, hundreds of runs at once).
    withdraw_on_cancel: Callable[[str], bool] | None = None
    # Ids of tasks already queued when the workflow was created with them
    # (``StateStore.create_leased_enqueuing``): their first run does not enqueue them again.
    # (A tuple of strings: the collector stops tracking it.)
    enqueued: Collection[str] = ()
    # Ids of the tasks the last run left queued when it ended in an error other than a
    # cancellation (see the class docstring); () otherwise. A tuple of strings, as ``enqueued``.
    left_queued: tuple[str, ...] = ()

    async def run(self, calls: Sequence[NodeCall]) -> list[NodeOutcome]:
        self.left_queued = ()
        if self.require_workers:
            missing = await self._types_without_workers(calls)
            if missing:
                # A worker started just before (asyncio.ensure_future(worker.start()) then
                # execute()) registers on its first loop pass: let that pass run, look again.
                await asyncio.sleep(0)
                missing = await self._types_without_workers(calls)
            if missing:
                raise _no_worker_error(calls, missing)
        # (The step's wait is here, not in a coroutine of its own: one layer fewer that every
        # resumption of the wait passes through.)
        # (No comprehension here reads a local or self: each would make a cell per step, kept
        # while its tasks run, for the GC to visit; hundreds of steps wait at once.)
        # Calls by task id; none for one call (the usual step), looked up as ``_call_of`` says.
        by_id = _by_task_id(calls)
        outcomes: dict[str, NodeOutcome] = {}
        try:
            started = time.time()
            fresh: Sequence[NodeCall] = calls
            if self.enqueued:  # queued with the workflow's create: once only (a retried step enqueues again)
                fresh = _not_enqueued(calls, self.enqueued)
                self.enqueued = ()
            if fresh:
                # A fan-out's tasks go out as one batch (one round trip on Redis).
                await self._enqueue_whole(_tasks_of(fresh, self.queue.max_attempts))
            waiting_since: float | None = None
            while len(outcomes) < len(calls):
                pending = _ids_outside(calls, by_id, outcomes)
                results = await self.queue.wait_results(pending, timeout=self.poll_interval)
                for task_id, result in results.items():
                    call = _call_of(calls, by_id, task_id)
                    failure = None if result.status == "succeeded" else NodeFailure.from_text(result.error or "failed")
                    outcomes[task_id] = NodeOutcome(
                        call.node, task_id, dict(result.output or {}) if result.output is not None else None,
                        # The run time on the worker that produced the result when it says when it
                        # started; else (an older worker) the time since the task was enqueued.
                        failure, result.attempts, started if result.started_at is None else result.started_at,
                        max(result.finished_at - (started if result.started_at is None else result.started_at), 0.0),
                        result.worker_id,
                    )
                if results:
                    if waiting_since is not None:  # (no coroutine made for the usual case)
                        await self._waited(waiting_since)
                        waiting_since = None
                    continue
                missing = await self._types_without_workers(_calls_of(calls, by_id, pending))
                if not missing:
                    if waiting_since is not None:
                        await self._waited(waiting_since)
                        waiting_since = None
                    continue
                waiting_since = waiting_since or time.monotonic()
                if self.on_waiting is not None:
                    await self.on_waiting(missing, _failed_meanwhile(outcomes))
                if self.worker_timeout is not None and time.monotonic() - waiting_since >= self.worker_timeout:
                    raise NodeNotFoundError(
                        f"workflow {calls[0].workflow_id!r} of graph {calls[0].graph_name!r}: no live worker "
                        f"serves node type(s) {', '.join(map(repr, missing))} after waiting {self.worker_timeout}s; "
                        f"start a worker with those node types{_failed_meanwhile(outcomes)}"
                    )
            return _outcomes_of(calls, outcomes)
        except asyncio.CancelledError:
            if self.withdraw_on_cancel is not None and not self.withdraw_on_cancel(calls[0].workflow_id):
                raise
            await self.withdraw(_ids_outside(calls, None, {}))  # take back tasks no worker has claimed yet
            raise
        except Exception:
            # Left queued here (see the class docstring): the recorder of the failure withdraws them.
            self.left_queued = _ids_outside(calls, by_id, outcomes)
            raise

    async def withdraw(self, task_ids: Sequence[str]) -> int:
        """Take back the tasks of ``task_ids`` that no worker has claimed (``TaskQueue.cancel``); how many were.

        Best effort: a claimed task ends with its worker, and a cancel the queue refuses
        (an error, an outage) leaves that task queued. A cancel under way runs to its end
        when the caller is cancelled meanwhile (the cancellation goes on at once, the
        tasks after it left queued).
        """
        withdrawn = 0
        for task_id in task_ids:
            try:
                withdrawn += bool(await asyncio.shield(self.queue.cancel(task_id)))
            except Exception:
                pass
        return withdrawn

    async def _enqueue_whole(self, tasks: list[Task]) -> None:
        """``queue.enqueue_many(tasks)``, run to its end even when the step is cancelled meanwhile
        to withdraw its tasks (the workflow was cancelled); the cancellation is raised after it.

        An enqueue is more than one write on some backends (NATS: the task's record, then its
        message; older versions the other way round, where a cut between them left a message
        the withdraw found no record of, to be adopted and run by a worker started later).
        Finished first, every task it queued is there, whole, for the withdraw to take back.
        """
        enqueue = asyncio.ensure_future(self.queue.enqueue_many(tasks))
        try:
            await asyncio.shield(enqueue)
        except asyncio.CancelledError:
            if self.withdraw_on_cancel is None or not self.withdraw_on_cancel(tasks[0].workflow_id):
                enqueue.cancel()
                raise
            with contextlib.suppress(Exception):  # what it failed to queue needs no withdrawing
                await asyncio.shield(enqueue)
            raise

    async def _waited(self, waiting_since: float | None) -> None:
        """The wait (if there was one) is over: tell ``on_waiting`` with no types."""
        if waiting_since is not None and self.on_waiting is not None:
            await self.on_waiting([], "")

    async def _types_without_workers(self, calls: Sequence[NodeCall]) -> list[str]:
        """The node types of ``calls`` no live worker serves. The registry only informs (a note
        while waiting, a quicker error with ``require_workers``): one it cannot read (its keys
        damaged below the engine) is logged and counts as "no type missing", never failing
        the step, whose tasks wait in the queue as they would anyway."""
        missing = []
        for node_type in sorted({call.node_type for call in calls}):
            try:
                found = await self.workers.list_workers(node_type)
            except (BackendUnavailableError, asyncio.CancelledError):
                raise
            except Exception as exc:
                _log.warning("workflow %r: the worker registry could not be read (%s: %s); its tasks are queued "
                             "without knowing whether a worker serves them", calls[0].workflow_id,
                             type(exc).__name__, exc)
                return []
            if not found:
                missing.append(node_type)
        return missing


# Helpers of TaskQueueExecutor (module functions: see its _run).

def _failed_meanwhile(outcomes: Mapping[str, NodeOutcome]) -> str:
    """For the no-worker error of a step some of whose nodes had failed already (their final
    failures, dead-lettered): "; meanwhile node 'x' failed after N attempt(s): Type: message"
    for each (up to five), so the step's error does not hide them; "" when none did."""
    failed = [outcome for outcome in outcomes.values() if outcome.failure is not None]
    if not failed:
        return ""
    shown = "; ".join(f"node {outcome.node!r} failed after {outcome.attempts} attempt(s): "
                      f"{outcome.failure.error_type}: {bounded(outcome.failure.message, 200)}"
                      for outcome in failed[:5] if outcome.failure is not None)
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    return (f"; meanwhile {shown}{more} (each failure's dead letter keeps its traceback: "
            "distributed-agents dead-letters list)")


def _no_worker_error(calls: Sequence[NodeCall], missing: Sequence[str]) -> NodeNotFoundError:
    nodes = ", ".join(f"{c.node!r} (type {c.node_type!r})" for c in calls if c.node_type in missing)
    return NodeNotFoundError(
        f"no function and no live worker for node(s) {nodes} of graph {calls[0].graph_name!r} "
        f"(workflow {calls[0].workflow_id!r}): "
        "pass the function to graph.add_node(name, func), register it with "
        "@registry.register(node_type), or start a Worker serving that type"
    )


def _not_enqueued(calls: Sequence[NodeCall], enqueued: Collection[str]) -> tuple[NodeCall, ...]:
    # (A tuple: none, the usual answer, is the empty tuple, which no collection visits.)
    # ``enqueued`` is kept as a tuple per run (untracked by GC when small); a first step that
    # fans out is looked up through a set built here once, not by a scan per call.
    ids = enqueued if len(enqueued) <= 8 else frozenset(enqueued)
    return tuple([call for call in calls if call.task_id not in ids])


def _tasks_of(calls: Sequence[NodeCall], max_attempts: int) -> list[Task]:
    return [node_task(call, max_attempts) for call in calls]


def _by_task_id(calls: Sequence[NodeCall]) -> dict[str, NodeCall] | None:
    """``calls`` by task id; None for a single call: a dict is a GC-tracked object, kept while the step waits."""
    return {call.task_id: call for call in calls} if len(calls) > 1 else None


def _call_of(calls: Sequence[NodeCall], by_id: Mapping[str, NodeCall] | None, task_id: str) -> NodeCall:
    """The call of ``task_id`` (``KeyError`` if it is none of them); ``by_id`` is ``_by_task_id(calls)``."""
    if by_id is not None:
        return by_id[task_id]
    if calls[0].task_id != task_id:
        raise KeyError(task_id)
    return calls[0]


def _ids_outside(calls: Sequence[NodeCall], by_id: Mapping[str, NodeCall] | None,
                 done: Mapping[str, Any]) -> tuple[str, ...]:
    """The task ids of ``calls`` not in ``done``, in order.

    A tuple of strings: the collector stops tracking it while the step waits on it.
    """
    if by_id is None:
        return tuple([call.task_id for call in calls if call.task_id not in done])
    return tuple([key for key in by_id if key not in done])


def _calls_of(calls: Sequence[NodeCall], by_id: Mapping[str, NodeCall] | None, keys: Sequence[str]) -> list[NodeCall]:
    return [_call_of(calls, by_id, key) for key in keys]


def _outcomes_of(calls: Sequence[NodeCall], outcomes: Mapping[str, NodeOutcome]) -> list[NodeOutcome]:
    return [outcomes[call.task_id] for call in calls]
