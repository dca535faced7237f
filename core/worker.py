"""``Worker``: serves node tasks from a backend's queue.

A worker claims tasks of the node types it serves, runs each node with its timeout
while extending the task's lease (never more than ``capacity`` nodes at once), acks the
updates, and nacks failures with the delay the node's retry policy asks for (or
dead-letters them when the policy gives up). It heartbeats into the worker registry,
cancels running tasks of workflows that get cancelled, and on ``stop()`` drains:
it stops claiming, lets running tasks finish within the grace period, gives the rest
back to the queue and deregisters. A malformed task never crashes it: the task is
dead-lettered with the reason and the worker goes on.

Stopping on signals (``handle_signals``), as Celery's workers do: the first SIGTERM or
SIGINT drains (a warm stop, above; tasks the claim under way brings back after it are
given back, not run); a second one while it drains hurries the stop (a cold stop): the
claim under way, the running nodes and the settling calls are cancelled at once, and what is left of stopping (the releases of the stopped tasks,
flushing stream chunks, deregistering, closing the connection) gets ``HURRIED_CLEANUP``
seconds in all, so the worker ends within a few seconds even when the backend is gone.
A task whose release or ack did not land runs again once its lease expires (delivery
is at least once); a node's thread, which cannot be interrupted, is abandoned (the CLI
exits without waiting for such threads after any stop). A stop signal while the worker
still connects or registers (a backend that is not up yet) ends that wait.

Plain-function nodes run in a thread pool of the worker's own, ``capacity`` threads: the
event loop's default one has ``min(32, CPUs + 4)``, fewer than a large capacity.

A result the backend could not store (not JSON, over ``max_payload_bytes``) fails the
node before the ack, finally (no retry). Settling a task expects only two failures: a
backend outage (repeated with backoff) and a lost lease; any other exception is a bug,
logged with its traceback, and the task is dead-lettered with it as the reason. A
cancelled plain-function node's thread, which cannot be interrupted, keeps its capacity
slot until it returns (it is told through ``NodeContext.cancelled``). The worker's
registry entry shows its slots in ``metadata`` (``slot_usage()``: ``in_flight``,
``busy_abandoned``), refreshed at each heartbeat and at once when an abandoned thread
starts or ends.

Slots. A task takes a slot from its claim until its node has finished; while its result
is being settled (the ack, or a nack, on its way to the backend) it keeps its lease but
leaves its slot to the next claim, so the backend's work on one batch's acks overlaps
the claim and the nodes of the next (Celery's prefetch, bounded). At most ``capacity``
settling tasks are counted so: a worker holds at most ``2 * capacity`` leases, and one
whose acks stall (a backend outage) stops claiming once that many are waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from distributed_agents.core.backend_resolver import DEFAULT_BACKEND_URL, check_backend_argument, open_backend
from distributed_agents.core.backoff import INITIAL_DELAY, MAX_DELAY, Outage, until_available
from distributed_agents.core.errors import BackendUnavailableError, ConfigurationError, LeaseLostError
from distributed_agents.core.redaction import redact_url
from distributed_agents.core.events import EventPublisher
from distributed_agents.core.executors import CONFIGURABLE_KEY
from distributed_agents.core.instrumentation import (
    CANCELLED,
    DEAD_LETTERED,
    RETRIED,
    SUCCEEDED,
    Instrumentation,
    NodeAttempt,
    installed,
    trace_carrier,
)
from distributed_agents.core.limits import check_result_size
from distributed_agents.core.arguments import (
    check_count,
    check_flag_argument,
    check_instrumentation_argument,
    check_name_argument,
    check_node_types,
    check_options_argument,
)
from distributed_agents.core.log_context import alert_level
from distributed_agents.core.log_context import bind as bind_log_context
from distributed_agents.core.loop_stalls import StallWatch
from distributed_agents.core.node_runner import (
    NodeContext,
    describe_failure,
    exception_message,
    invoke_node,
    is_output_error,
    safe_text,
)
from distributed_agents.core.ports.backend import Backend, BackendOptions, check_duration
from distributed_agents.core.ports.message_bus import Subscription
from distributed_agents.core.ports.task_queue import ClaimedTask, Task, TaskQueue
from distributed_agents.core.ports.worker_registry import WorkerInfo
from distributed_agents.core.registry import NodeFunction, NodeRegistry, function_name
from distributed_agents.core.retry import NodeRetry, retry_from_wire
from distributed_agents.core.state import State
from distributed_agents.core.stream_writer import reset_stream_sink, set_stream_sink
from distributed_agents.core.task_payload import FUNCTION_KEY, MANAGED_KEY, NODE_METADATA_KEY, check_payload
from distributed_agents.core.task_state import (
    DEFAULT_CACHE_BYTES,
    STATE_REF_KEY,
    WRAP_KEY,
    StateCache,
    TaskStateError,
    read_ref,
)

__all__ = ["Worker", "WorkerStats"]


#: The signals that stop a worker or orchestrator process cleanly (drain, then exit; again:
#: at once): SIGTERM (Kubernetes, systemd, docker stop), SIGINT (Ctrl-C) and, where the platform
#: has it, SIGHUP (the terminal or SSH session that started the process closed), which would
#: otherwise end the process at once, leaving its leases and registry entry to expire.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    sig for sig in (getattr(signal, name, None) for name in ("SIGTERM", "SIGINT", "SIGHUP")) if sig is not None)

log = logging.getLogger("distributed_agents.worker")

CONTROL_CANCEL_CHANNEL = "control.cancel"
SETTLE_PATIENCE = 60.0  # seconds a result is kept trying to reach an unavailable backend
# Seconds a task's result waits for its stream chunks to be published: chunks are fire-and-forget,
# so a bus that is down delays the result by at most this much (the chunks are then reported lost).
STREAM_FLUSH_TIMEOUT = 5.0
F = TypeVar("F", bound=NodeFunction)
T = TypeVar("T")


# Seconds stop() lets the settling calls under way (ack, nack, release, and the releases of the
# tasks it stops) land before cancelling them: a settling task is not cancelled with the
# others (see Worker._settle), but a backend outage does not hold stop() up beyond this.
SETTLE_ON_STOP = 5.0
# Seconds a hurried stop (a second signal while draining) gives what is left of stopping, all
# together: the releases of the tasks it stopped, flushing stream chunks, deregistering and
# closing the connection. A backend that is gone answers none of them: each would otherwise
# wait out its own timeouts and retries (about 15 s beyond the grace, measured on Redis).
HURRIED_CLEANUP = 2.0
# Loop rounds a quick node's task is given from its start to its ack's write before the next
# claim is sent (see _claim_loop): the task's first run and a backend's batched send (Redis
# writes a lone ack at once) each take one; two more for a node that awaits something quick.
_SETTLE_HOPS = 4


def _after_rounds(rounds: int, done: asyncio.Future[None]) -> None:
    """Resolve ``done`` ``rounds`` loop rounds from now (a callback per round: cheaper than a
    task step and a sleep(0) per round)."""
    if rounds > 0:
        done.get_loop().call_soon(_after_rounds, rounds - 1, done)
    elif not done.done():
        done.set_result(None)


@dataclass
class WorkerStats:
    """Counters since the worker started."""

    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    lost_leases: int = 0
    malformed: int = 0

    def summary(self) -> str:
        """One line for logs."""
        return (f"{self.succeeded} succeeded, {self.failed} failed, {self.retried} retried, "
                f"{self.released} released, {self.lost_leases} lost leases, {self.malformed} malformed")


def _step_limit(payload: Mapping[str, Any]) -> int | None:
    """The run's step limit a task carries (``executors.task_payload``: checked by ``check_payload``), or None."""
    limit = payload.get("step_limit")
    return limit if type(limit) is int else None


def _configurable(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The caller's ``configurable`` values a task carries (``executors.task_payload``), or None."""
    values = payload.get(CONFIGURABLE_KEY)
    return dict(values) if isinstance(values, Mapping) and values else None


def _known_heartbeat_ttl(backend: str | Backend | None, options: Mapping[str, Any]) -> float | None:
    """The registry's heartbeat TTL in seconds as far as it is known before the backend opens.

    None if it cannot be told yet (a malformed URL is reported when the backend opens;
    ``start()`` checks the opened backend's registry again).
    """
    if isinstance(backend, Backend):
        return backend.worker_registry.heartbeat_ttl
    try:
        return BackendOptions.from_url(backend or DEFAULT_BACKEND_URL,
                                       heartbeat_ttl=options.get("heartbeat_ttl")).heartbeat_ttl
    except Exception:  # reported, with its URL, when the backend is opened
        return None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s exception retrieved (``Worker._unless_hurried``: a cleanup step that
    failed is not worth the loop's "exception was never retrieved" report)."""
    if not future.cancelled():
        future.exception()


def _graph_name(payload: Any) -> str:
    """The graph name a task payload carries (``executors.task_payload``), or "" for a malformed one."""
    graph = payload.get("graph") if isinstance(payload, Mapping) else None
    return graph if isinstance(graph, str) else ""


class _Cancelled(Exception):
    """Why a running node task was stopped from outside."""


class _StoppedEarly(Exception):
    """``Worker.start`` was stopped before it served (while connecting or registering)."""


class Worker:
    """Serves node tasks of ``node_types`` from ``backend`` (default ``memory://``).

    ``node_types`` defaults to every type with a registered function; each listed
    type must have one by ``start()``. ``capacity`` bounds the nodes running at once
    (a task settling its result leaves its slot: see the module docstring, "Slots").
    ``heartbeat_interval`` paces registry heartbeats (at most half the registry's
    ``heartbeat_ttl``, else ``ConfigurationError``); ``shutdown_grace`` is how long
    ``stop()`` lets running tasks finish before giving them back; ``poll_wait`` is
    the longest a claim waits for work (and so the longest ``stop()`` waits for it).
    With ``handle_signals``, SIGTERM and SIGINT make the worker drain and stop, and a
    second one while it drains hurries the stop (``hurried``; the module docstring says
    what that gives up), only when serving on the main thread's event loop. ``state_cache_bytes`` bounds the states kept
    that tasks name instead of carrying (``core.task_state``; 0: read for every task). ``instrumentation`` (default: the
    process-wide one of ``core.instrumentation.install``, read by ``start()``) is told
    of every task attempt and runs its ``watch`` while the worker serves.
    """

    def __init__(
        self,
        node_types: Iterable[str] | None = None,
        capacity: int = 1,
        *,
        backend: str | Backend | None = None,
        worker_id: str | None = None,
        registry: NodeRegistry | Any | None = None,
        heartbeat_interval: float = 10.0,
        lease_seconds: float | None = None,
        shutdown_grace: float = 30.0,
        poll_wait: float = 1.0,
        backend_options: Mapping[str, Any] | None = None,
        handle_signals: bool = False,
        state_cache_bytes: int = DEFAULT_CACHE_BYTES,
        instrumentation: Instrumentation | None = None,
    ) -> None:
        if isinstance(node_types, (str, bytes)):
            # Worker("redis://...") or Worker(node_types="llm") would otherwise serve the string's characters.
            text = node_types.decode(errors="replace") if isinstance(node_types, bytes) else node_types
            if "://" in text:
                raise ConfigurationError(
                    f"Worker({redact_url(text)!r}): the first argument (node_types) is the node types to serve, not "
                    f"a backend; pass the backend by keyword (Worker(backend={redact_url(text)!r})) and node types "
                    "as a list (Worker(['llm'], backend=...))")
            raise ConfigurationError(
                f"Worker(node_types={node_types!r}) takes a collection of node type names, got one string (it would "
                f"serve each of its characters); pass a list or set: node_types=[{text!r}]")
        from distributed_agents.core.graph import Graph  # the graph module builds on this one's imports

        if isinstance(node_types, Graph) and registry is None:
            node_types, registry = None, node_types  # Worker(graph): serve its functions
        if isinstance(registry, Graph):
            # A graph built the LangGraph way carries its node functions: serve every one.
            registry = NodeRegistry.from_graph(registry)
        elif registry is not None and not isinstance(registry, NodeRegistry):
            raise ConfigurationError(
                f"Worker(registry={type(registry).__name__}): pass a NodeRegistry, or a Graph whose node functions "
                "to serve (its nodes' and subgraphs' functions, by node type)")
        if isinstance(node_types, NodeRegistry):
            raise ConfigurationError(
                "Worker(registry): the first argument is the node types to serve; pass the registry by keyword: "
                "Worker(registry=registry, backend='redis://host:6379/0')")
        name = type(self).__name__  # Worker, or the subclass the caller made (DistributedWorker)
        check_count(f"{name}(capacity=...)", capacity, 1, "the nodes it runs at once",
                    "pass a whole number such as capacity=4")
        check_duration(f"{name}(lease_seconds=...)", lease_seconds, optional=True, error=ConfigurationError)
        check_duration(f"{name}(heartbeat_interval=...)", heartbeat_interval, error=ConfigurationError)
        check_duration(f"{name}(poll_wait=...)", poll_wait, error=ConfigurationError)
        if isinstance(shutdown_grace, bool) or not isinstance(shutdown_grace, (int, float)) or not shutdown_grace >= 0:
            raise ConfigurationError(  # (NaN fails the comparison)
                f"{name}(shutdown_grace=...) must be a number of seconds >= 0 (0: give running tasks back at once), "
                f"got {type(shutdown_grace).__name__} {shutdown_grace!r}")
        check_name_argument(f"{name}(worker_id=...)", worker_id, "worker-1")
        check_options_argument(f"{name}(backend_options=...)", backend_options)
        check_flag_argument(f"{name}(handle_signals=...)", handle_signals)
        check_instrumentation_argument(f"{name}(instrumentation=...)", instrumentation)
        check_count(f"{name}(state_cache_bytes=...)", state_cache_bytes, 0, "bytes of workflow states kept; 0 keeps none")
        self.node_types = check_node_types(f"{name}(node_types=...)", node_types)
        self.capacity = capacity
        self.worker_id = worker_id or f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.registry = registry if registry is not None else NodeRegistry()
        self.heartbeat_interval = heartbeat_interval
        self._check_heartbeat(_known_heartbeat_ttl(backend, backend_options or {}))
        self.lease_seconds = lease_seconds
        self.shutdown_grace = shutdown_grace
        self.poll_wait = poll_wait
        self.stats = WorkerStats()
        self.handle_signals = handle_signals
        self._backend_options = dict(backend_options or {})
        check_backend_argument(backend, "Worker(backend=...)")
        self._backend_arg = backend
        self._backend: Backend | None = backend if isinstance(backend, Backend) else None
        self._owns_backend = not isinstance(backend, Backend)
        self._stopping: asyncio.Event | None = None  # created on the serving loop
        # Set by a second stop signal (``_hurry``); ``_hurried_at`` is then its loop time.
        self._hurry: asyncio.Event | None = None
        self._hurried_at = math.inf
        # Plain-function nodes' threads: ``capacity`` of them (a thread abandoned by its
        # cancelled node keeps its slot, so no more are ever busy). The event loop's default
        # executor has min(32, CPUs + 4): a capacity above that would leave claimed tasks
        # waiting for a thread, their leases kept, nothing running.
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        # ``start()``'s task while it connects and registers; whether a stop cancelled that.
        self._setting_up: asyncio.Task[Any] | None = None
        self._set_up_interrupted = False
        self._running: dict[asyncio.Task[None], ClaimedTask] = {}
        # Tasks inside a settling call (_settle): cancellations leave them alone until it returns.
        self._settling: set[asyncio.Task[Any]] = set()
        # Set when a task starts settling (its slot freed): wakes a claim loop waiting for a slot.
        self._slot_freed: asyncio.Event | None = None  # created on the serving loop
        self._unstarted: set[asyncio.Task[Any]] = set()  # node tasks made, first step not taken yet
        self._lease_watch = _LeaseWatch()  # lease keepers of running nodes not extending yet
        self._stalls = StallWatch(self.worker_id, self._running_nodes)  # (started by start())
        self._runs_on_loop: dict[str, tuple[Any, bool]] = {}  # node type -> (its function, async def?)
        self._cancel_reasons: dict[asyncio.Task[None], str] = {}
        # Threads of cancelled plain-function nodes that have not returned yet: each
        # still uses a capacity slot, though its task is settled.
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._beat_now: asyncio.Event | None = None  # wakes the heartbeat to publish slot usage
        self._serving = False
        self._stopped: asyncio.Event | None = None
        self._outage = Outage(log, f"worker {self.worker_id}")
        self._stream: EventPublisher | None = None  # publishes what nodes stream (see core.stream_writer)
        # States that tasks name instead of carrying (core.task_state): read once per workflow step.
        self.state_cache = StateCache(state_cache_bytes)
        self.instrumentation = instrumentation
        self._observer: Instrumentation | None = None  # the one in use while serving (core.instrumentation)
        # time.monotonic() of the last registry write that succeeded (register or heartbeat): readiness().
        self._beat_ok_at: float | None = None

    def _check_heartbeat(self, ttl: float | None) -> None:
        """Raise ``ConfigurationError`` unless at least two heartbeats fit in ``ttl`` seconds.

        With fewer, the registry forgets a live worker between two beats (one late beat
        is enough), so operators and waiting orchestrators would see no worker.
        """
        if ttl is None or self.heartbeat_interval * 2 <= ttl:
            return
        raise ConfigurationError(
            f"worker {self.worker_id!r}: heartbeat interval "
            f"{self.heartbeat_interval:g}s is more than half the backend's heartbeat_ttl {ttl:g}s, so the live "
            "worker would drop out of the registry between heartbeats; use a heartbeat interval of at most "
            f"{ttl / 2:g}s (--heartbeat-interval / HEARTBEAT_INTERVAL) or raise heartbeat_ttl "
            "(e.g. ?heartbeat_ttl=60 in the backend URL)"
        )

    # -- registration ---------------------------------------------------------------------

    def register(self, node_type: str) -> Callable[[F], F]:
        """Decorator: ``@worker.register("researcher")``."""
        return self.registry.register(node_type)

    def register_node(self, node_type: str, func: NodeFunction) -> None:
        """Serve ``node_type`` with ``func``."""
        self.registry.register_node(node_type, func)

    @property
    def backend(self) -> Backend:
        """The backend, opened on first use."""
        if self._backend is None:
            url = self._backend_arg if isinstance(self._backend_arg, str) else DEFAULT_BACKEND_URL
            self._backend = open_backend(url, **self._backend_options)
        return self._backend

    def served_types(self) -> frozenset[str]:
        """The node types this worker claims; raises if one has no function."""
        types = self.node_types if self.node_types is not None else self.registry.node_types()
        if not types:
            raise ConfigurationError(f"worker {self.worker_id!r} serves no node types: register a function first")
        missing = sorted(t for t in types if t not in self.registry)
        if missing:
            raise ConfigurationError(
                f"worker {self.worker_id!r} lists node type(s) {missing} without a function; "
                "register each with worker.register_node(name, func) before start()"
            )
        return frozenset(types)

    # -- serving --------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve tasks until ``stop()`` is called (or this coroutine is cancelled)."""
        if self._serving:
            raise ConfigurationError(f"worker {self.worker_id!r} is already serving")
        types = self.served_types()
        backend = self.backend
        self._check_heartbeat(backend.worker_registry.heartbeat_ttl)
        self._serving = True
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._hurried_at = math.inf
        self._threads = concurrent.futures.ThreadPoolExecutor(self.capacity, thread_name_prefix=f"node-{self.worker_id}")
        self._slot_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._beat_now = asyncio.Event()
        info = WorkerInfo(self.worker_id, types, self.capacity, socket.gethostname(), os.getpid(),
                          metadata=self.slot_usage())
        # Installed first: a stop signal while the backend is not up yet ends the wait for it.
        signals = self._install_signal_handlers()
        registered = False

        async def set_up() -> Subscription:
            nonlocal registered
            # A worker started while the backend is down waits for it instead of exiting.
            await until_available(backend.connect, what="connect", outage=self._outage)
            await until_available(lambda: backend.worker_registry.register(info), what="register", outage=self._outage)
            registered = True
            self._beat_ok_at = time.monotonic()
            return await until_available(lambda: backend.message_bus.subscribe(CONTROL_CANCEL_CHANNEL),
                                         what="subscribe to cancellations", outage=self._outage)

        # Run in this task (a task of its own would register a beat later: a caller that starts
        # the worker and goes on at once must find it registered); a stop meanwhile cancels it
        # (``_interrupt_set_up``).
        self._setting_up, self._set_up_interrupted = asyncio.current_task(), False
        try:
            try:
                subscription = await set_up()  # refused (credentials, ACL, config): raised here
            except asyncio.CancelledError:
                if not self._set_up_interrupted:
                    raise  # cancelled from outside
                current = asyncio.current_task()
                if current is not None and hasattr(current, "uncancel"):  # (Python 3.11+)
                    current.uncancel()
                if registered:
                    await self._unless_hurried(backend.worker_registry.deregister(self.worker_id), SETTLE_ON_STOP)
                log.info("worker %s stopped before it served (%s)", self.worker_id,
                         "registered, not yet subscribed" if registered else "the backend had not answered yet")
                raise _StoppedEarly from None
            finally:
                self._setting_up = None
        except BaseException as exc:  # release the connection, stop being "serving"
            if self._owns_backend:
                await self._unless_hurried(backend.close(), SETTLE_ON_STOP)
            self._end_serving(signals)
            if isinstance(exc, _StoppedEarly):
                return
            raise
        helpers = [
            asyncio.ensure_future(self._heartbeat(info)),
            asyncio.ensure_future(self._listen_for_cancels(subscription)),
        ]
        self._stalls.start()
        self._observer = self.instrumentation if self.instrumentation is not None else installed()
        if self._observer is not None:
            helpers.append(asyncio.ensure_future(self._observer.watch(backend, types)))
        log.info("worker %s serving %s (capacity %d) on %s", self.worker_id, sorted(types), self.capacity, backend.redacted_url)
        # Nodes' stream writers publish through one ordered publisher per worker; tasks inherit the sink.
        self._stream = EventPublisher(backend.message_bus)
        self._stream.start()
        sink = set_stream_sink(self._stream)
        try:
            # A hurried stop abandons the claim under way (a backend that is gone holds it
            # through its retries); tasks it took meanwhile come back when their leases expire.
            claiming = await self._unless_hurried(self._claim_loop(types))
            if claiming.done() and not claiming.cancelled():
                claiming.result()
            # No task is handed to a worker that claims no more (a Redis parked registration
            # would be, until it ran out): those handed already go back to the queue.
            await self._unless_hurried(backend.task_queue.stop_claiming(self.worker_id))
            await self._drain()
        finally:
            for helper in helpers:
                helper.cancel()
            self._stalls.close()
            self._lease_watch.close()  # (the nodes are stopped below; any keeper is cancelled with its node)
            for task in list(self._running):
                if task not in self._settling:
                    self._stop_task(task, "worker stopped")
            if self._running:
                # Acks, nacks and releases under way, and the releases of the tasks just
                # stopped (they start theirs now): let them land, within SETTLE_ON_STOP in all
                # (HURRIED_CLEANUP once hurried). One a backend outage holds longer is abandoned:
                # its lease runs out and the task is delivered again (a stop() is never held up
                # to SETTLE_PATIENCE).
                await self._unless_hurried(asyncio.wait(list(self._running)), SETTLE_ON_STOP)
                for task in list(self._running):
                    task.cancel()
            # Bounded too: a node that ignores its cancellation (a library swallowing it) is
            # left to its lease, named below.
            await self._unless_hurried(asyncio.gather(*helpers, *self._running, return_exceptions=True),
                                       SETTLE_ON_STOP)
            reset_stream_sink(sink)
            await self._unless_hurried(self._stream.close(), STREAM_FLUSH_TIMEOUT)
            await self._unless_hurried(subscription.close())
            await self._unless_hurried(backend.worker_registry.deregister(self.worker_id))
            if self._owns_backend:
                await self._unless_hurried(backend.close())
            left = [(claim.task, task in self._settling) for task, claim in self._running.items() if not task.done()]
            for settling, what in ((False, "node(s) did not stop when cancelled"),
                                   (True, "release(s) or result(s) did not reach the backend in time")):
                tasks = [task for task, late in left if late is settling]
                if tasks:  # each runs again once its lease expires
                    log.warning("worker %s: %d %s; their tasks are left to their leases (they run again once "
                                "those expire): %s", self.worker_id, len(tasks), what,
                                ", ".join(f"{t.id} (node {t.node!r})" for t in tasks[:10])
                                + (", ..." if len(tasks) > 10 else ""))
            log.info("worker %s stopped: %s", self.worker_id, self.stats.summary())
            self._end_serving(signals)

    def _end_serving(self, signals: list[tuple[int, Any]]) -> None:
        """The last of every ``start()``: the signal handlers put back, the node threads' pool
        shut down (not waited for: a thread still running was abandoned by its stopped node),
        and ``stop()`` callers woken."""
        self._remove_signal_handlers(signals)
        self._serving = False
        if self._threads is not None:
            self._threads.shutdown(wait=False)
        if self._stopped is not None:
            self._stopped.set()

    def _install_signal_handlers(self) -> list[tuple[int, Any]]:
        """The event loop's handlers for ``STOP_SIGNALS``, and the handlers they replace."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        installed: list[tuple[int, Any]] = []
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append((sig, previous))
            except (NotImplementedError, RuntimeError):  # not supported on this platform/loop
                pass
        return installed

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stopping is None:
            return
        if self._stopping.is_set():
            self._hurry_stop(f"received {name} while stopping")
            return
        if self._setting_up is not None:
            log.info("worker %s received %s before it served: stopping", self.worker_id, name)
            self._stopping.set()
            self._interrupt_set_up()
            return
        log.info("worker %s received %s: draining (running tasks get up to %gs to finish; %s again stops at once)",
                 self.worker_id, name, self.shutdown_grace, name)
        self._stopping.set()
        self._interrupt_set_up()

    def _interrupt_set_up(self) -> None:
        """A stop while ``start()`` still connects or registers: that wait ends now."""
        if self._setting_up is not None and not self._set_up_interrupted:
            self._set_up_interrupted = True
            self._setting_up.cancel()

    def _hurry_stop(self, why: str) -> None:
        """Make the stop a cold one (see the module docstring): what it still waits for gets
        ``HURRIED_CLEANUP`` seconds from now, in all."""
        if self._hurry is None or self._stopping is None or self._hurry.is_set():
            return
        busy = [task for task in self._running if not task.done()]
        settling = sum(1 for task in busy if task in self._settling)
        log.warning("worker %s %s: stopping now: %d running node(s) are stopped and given back, and %d result(s) "
                    "on their way are let land, if the backend answers within %gs in all (a task that is not "
                    "runs again once its lease expires)", self.worker_id, why, len(busy) - settling, settling,
                    HURRIED_CLEANUP)
        self._hurried_at = asyncio.get_running_loop().time()
        self._hurry.set()
        self._stopping.set()
        for task in busy:
            self._stop_task(task, "worker stopped")  # settling ones too: their ack may be lost

    @property
    def hurried(self) -> bool:
        """Whether the last stop was hurried by a second signal (a cold stop: module docstring)."""
        return self._hurry is not None and self._hurry.is_set()

    async def _unless_hurried(self, awaitable: Awaitable[T], timeout: float = math.inf) -> asyncio.Future[T]:
        """Run ``awaitable`` (a coroutine or future) for at most ``timeout`` seconds, and once the
        stop is hurried no longer than ``HURRIED_CLEANUP`` seconds from then; returns its future,
        cancelled if it did not end in time. Its exception, if any, is marked retrieved (the
        caller reads it with ``result()`` if it cares). A cancellation of the caller cancels it."""
        assert self._hurry is not None
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(awaitable)
        future.add_done_callback(_retrieve)
        deadline = loop.time() + timeout
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            while not future.done():
                if self._hurry.is_set():
                    deadline = min(deadline, self._hurried_at + HURRIED_CLEANUP)
                left = deadline - loop.time()
                if left <= 0:
                    break
                waits: list[asyncio.Future[Any]] = [future] if self._hurry.is_set() else [future, hurried]
                await asyncio.wait(waits, timeout=None if math.isinf(left) else left,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
            if not future.done():
                future.cancel()
        return future

    def _remove_signal_handlers(self, signals: list[tuple[int, Any]]) -> None:
        """Put back the handlers the worker's replaced (the event loop's removal alone would
        leave the default action: a signal then would kill a process still shutting down)."""
        if not signals:
            return
        loop = asyncio.get_running_loop()
        # Blocked meanwhile: between the loop's removal (which sets the default action) and
        # the previous handler's return, a signal would end the process. One that comes
        # meanwhile is handled by the previous handler once they are unblocked.
        blocked = {sig for sig, _ in signals}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            for sig, previous in signals:
                loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def readiness(self) -> str | None:
        """None while the worker serves and is registered as live; else why not, in one line.

        Not ready: before ``start()`` has registered it, once it drains (``stop()`` or
        SIGTERM) and while its last successful heartbeat is older than the registry's
        ``heartbeat_ttl`` (the backend has been unreachable that long, so the registry no
        longer lists it). What a readiness probe reports (``worker --health-port``).
        """
        if self._stopping is not None and self._stopping.is_set():
            if not self._serving:
                return "stopped"
            return "draining: stopped claiming, finishing or giving back running tasks"
        if not self._serving or self._beat_ok_at is None:
            return "not serving yet: connecting to the backend and registering"
        age = time.monotonic() - self._beat_ok_at
        ttl = self.backend.worker_registry.heartbeat_ttl
        if age > ttl:
            return (f"no successful heartbeat for {age:.0f}s (the registry forgets a worker after {ttl:g}s): "
                    "the backend is unreachable (the worker's log names it and the error)")
        return None

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running tasks finish (up to ``grace``), release the rest, deregister."""
        if grace is not None:
            self.shutdown_grace = grace
        if self._stopping is not None:
            self._stopping.set()
            self._interrupt_set_up()
        if self._serving and self._stopped is not None:
            await self._stopped.wait()

    async def _claim_loop(self, types: frozenset[str]) -> None:
        assert self._stopping is not None and self._slot_freed is not None
        freed_slot = self._slot_freed
        queue = self.backend.task_queue
        loop = asyncio.get_running_loop()
        backoff = 0.1
        while not self._stopping.is_set():
            # A task settling (its node done, its ack on its way) leaves its slot: the next
            # claim overlaps the backend's work on the acks. At most ``capacity`` of them.
            settling = min(len(self._settling), self.capacity)
            free = self.capacity - (len(self._running) - settling) - len(self._abandoned)
            if free <= 0:
                stopping = asyncio.ensure_future(self._stopping.wait())
                freed_slot.clear()
                freed = asyncio.ensure_future(freed_slot.wait())
                await asyncio.wait([*self._running, *self._abandoned, stopping, freed], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                freed.cancel()
                continue
            try:
                claims = await queue.claim(types, worker_id=self.worker_id, max_tasks=free,
                                           lease_seconds=self.lease_seconds, wait=self.poll_wait)
                backoff = 0.1
                self._outage.succeeded()
            except BackendUnavailableError as exc:  # the engine is down: report once, back off, keep serving
                self._outage.failed("claim tasks", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_DELAY)
                continue
            except Exception as exc:
                log.warning("worker %s could not claim tasks (%s); retrying in %.1fs", self.worker_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_DELAY)
                continue
            for claim in claims:
                task = loop.create_task(self._handle_guarded(claim))
                self._running[task] = claim
                self._unstarted.add(task)
                task.add_done_callback(self._forget)
                if self._stopping.is_set():
                    # The claim under way when the stop came back with this task (on Redis, it can
                    # be one the stop just released): given back at once, not run.
                    self._stop_task(task, "worker stopped")
            if claims:
                # The tasks start (a quick node runs and sends its ack) before the next claim
                # is sent: a claim's send costs the loop a few hundred microseconds, which
                # would otherwise come first on every task's path to its result.
                rounds: asyncio.Future[None] = loop.create_future()
                _after_rounds(_SETTLE_HOPS - 1, rounds)  # resuming takes one more round
                await rounds

    def _hold_slot(self, thread: asyncio.Future[Any]) -> None:
        """Count a cancelled plain function's still-running thread against capacity until it returns."""
        self._abandoned.add(thread)
        thread.add_done_callback(self._abandoned_done)
        self._publish_slots()

    def _abandoned_done(self, thread: asyncio.Future[Any]) -> None:
        self._abandoned.discard(thread)
        self._publish_slots()

    def _publish_slots(self) -> None:
        """Have the heartbeat publish the slot usage now (an abandoned thread is rare and worth seeing)."""
        if self._beat_now is not None:
            self._beat_now.set()

    def slot_usage(self) -> dict[str, int]:
        """What the worker's capacity slots hold, as published in its registry ``metadata``.

        ``in_flight``: tasks it holds now, running or settling their result (up to
        ``2 * capacity``: see the module docstring, "Slots"); ``busy_abandoned``: threads of cancelled
        plain-function nodes that have not returned (each still takes a slot, though
        its task is settled and no queue counts it).
        """
        return {"in_flight": len(self._running), "busy_abandoned": len(self._abandoned)}

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._cancel_reasons.pop(task, None)
        self._unstarted.discard(task)

    async def _drain(self) -> None:
        if not self._running:
            return
        await self._unless_hurried(asyncio.wait(list(self._running)), self.shutdown_grace)
        for task in [task for task in self._running if not task.done()]:
            if task not in self._settling:  # (a settling one is about to end: start() waits for it)
                self._stop_task(task, "worker stopped")

    async def _heartbeat(self, info: WorkerInfo) -> None:
        """Heartbeat every interval; when the slot usage changed, re-register with it instead."""
        assert self._beat_now is not None
        registry = self.backend.worker_registry
        while True:
            # asyncio.wait, not wait_for: on Python < 3.12 wait_for can swallow a cancellation
            # that arrives as the event fires, and this loop would then outlive stop() for ever
            # (the worker process hung after SIGTERM, in the chaos suite).
            woken = asyncio.ensure_future(self._beat_now.wait())
            try:
                await asyncio.wait([woken], timeout=self.heartbeat_interval)
            finally:
                woken.cancel()
            self._beat_now.clear()
            usage = self.slot_usage()
            try:
                if usage != info.metadata:
                    fresh = replace(info, metadata=usage)
                    await registry.register(fresh)
                    info = fresh
                elif not await registry.heartbeat(self.worker_id):
                    await registry.register(info)
                self._beat_ok_at = time.monotonic()
            except BackendUnavailableError as exc:
                self._outage.failed("heartbeat", exc)
            except Exception as exc:
                log.warning("worker %s heartbeat failed: %s", self.worker_id, exc)

    async def _listen_for_cancels(self, subscription: Subscription) -> None:
        async for message in subscription:
            workflow_id = message.data.get("workflow_id")
            for task, claim in list(self._running.items()):
                # A task settling already ends by itself (its result, for a workflow that no longer waits).
                if claim.task.workflow_id == workflow_id and task not in self._settling:
                    self._stop_task(task, "workflow cancelled")

    def _stop_task(self, task: asyncio.Task[None], reason: str) -> None:
        """Stop a node task for ``reason`` ("workflow cancelled", "worker stopped").

        A task that has not taken its first step is not cancelled (it would never run, and
        its claim would stay in flight until its lease ran out): it finds the reason when it
        starts and settles its claim as a stopped task does (``_handle``).
        """
        self._cancel_reasons[task] = reason
        if task not in self._unstarted:
            task.cancel()

    # -- one task ------------------------------------------------------------------------

    async def _handle_guarded(self, claim: ClaimedTask) -> None:
        """``_handle``, with a backstop: an error in handling a task dead-letters it at once.

        Without this, an exception escaping the handler (a custom ``RetryPolicy`` that
        raises, a bug) would leave the task unsettled: re-delivered after each lease
        and run again until its attempts ran out, with the real cause only in a log.
        """
        current = asyncio.current_task()
        self._unstarted.discard(current)
        # Every record logged while this task is handled (this task's own context) names it.
        step = claim.task.payload.get("step") if isinstance(claim.task.payload, Mapping) else None
        with bind_log_context(workflow_id=claim.task.workflow_id, step=step if isinstance(step, int) else None,
                              node=claim.task.node, task_id=claim.task.id, attempt=claim.attempt):
            observer = self._observer
            observed = None if observer is None else observer.node_started(NodeAttempt(
                claim.task.workflow_id, step if isinstance(step, int) else 0, claim.task.node, claim.task.node_type,
                claim.task.id, claim.attempt, self.worker_id, _graph_name(claim.task.payload),
                trace=trace_carrier(claim.task.payload) if isinstance(claim.task.payload, Mapping) else None))
            outcome: tuple[str, BaseException | None] = (CANCELLED, None)
            try:
                outcome = await self._handle(claim)
            except Exception as exc:
                outcome = (DEAD_LETTERED, exc)
                reason = safe_text(f"the worker failed while handling the task: {type(exc).__name__}: "
                                   f"{exception_message(exc)}")
                log.error("task %s node %r: %s; dead-lettering it", claim.task.id, claim.task.node, reason,
                          exc_info=exc)
                await self._settle(lambda: self.backend.task_queue.nack(claim, reason, final=True), claim)
            finally:
                if observer is not None:
                    observer.node_ended(observed, *outcome)
                # Its slot is free from here (nothing is awaited after this), not from the done
                # callback a loop round later: a claim sent meanwhile (the claim loop's next) asks
                # for as many tasks as the backend, told by the ack, may hand over (a Redis
                # parked claim gets the slot back from the ack).
                if current is not None:
                    self._forget(current)

    async def _handle(self, claim: ClaimedTask) -> tuple[str, BaseException | None]:
        """Run and settle one claimed task; its outcome (``core.instrumentation.OUTCOMES``) and error."""
        stopped = self._cancel_reasons.get(asyncio.current_task())  # type: ignore[arg-type]
        if stopped:  # stopped before its first step (_stop_task): settled as a stopped task is
            await self._on_cancelled(claim, stopped)
            return CANCELLED, None
        backend = self.backend
        queue = backend.task_queue
        task = claim.task
        foreign = self._foreign_function(task) if FUNCTION_KEY in task.payload else ""
        if foreign:
            self.stats.malformed += 1  # (with the other tasks it cannot run as they came)
            log.error("task %s: %s; it was dead-lettered", task.id, foreign)
            await self._settle(lambda: queue.nack(claim, foreign, final=True), claim)
            return DEAD_LETTERED, ValueError(foreign)
        try:
            func, state, retry, timeout = self._prepare(claim)
        except ValueError as exc:
            self.stats.malformed += 1
            log.error("task %s (node %r) is malformed and was dead-lettered: %s", task.id, task.node, exc)
            reason = f"malformed task: {exc}"
            await self._settle(lambda: queue.nack(claim, reason, final=True), claim)
            return DEAD_LETTERED, exc
        remaining = task.payload.get("remaining_steps")
        context = NodeContext(task.workflow_id, int(task.payload.get("step", 0)), task.node, task.node_type,
                              claim.attempt, task.id, self.worker_id,
                              remaining_steps=remaining if isinstance(remaining, int) else None,
                              configurable=_configurable(task.payload),
                              metadata=task.payload.get(NODE_METADATA_KEY),
                              step_limit=_step_limit(task.payload))
        lease = _LeaseKeeper(self, claim, queue)
        keeper = lease.start()
        started = time.monotonic()
        # Wall clock, stored with the result: the node's run time on the worker that
        # produced it, apart from any wait in the queue or for a dead worker's lease.
        started_at = time.time()
        try:
            if state is None:  # a large state stays in its checkpoint; the task names it
                state = await self._referenced_state(task)
            try:
                updates = await invoke_node(func, state, context, timeout=timeout, on_abandoned=self._hold_slot,
                                            executor=self._threads,
                                            resume=task.payload.get("resume"),
                                            message_keys=[str(k) for k in task.payload.get("message_keys") or ()],
                                            managed=task.payload.get(MANAGED_KEY))
            finally:
                # The node's last step ended (returned or raised): a tick of the watch overdue by a
                # second means the loop was blocked in it. Inline: no call per task otherwise.
                stalls = self._stalls
                if time.monotonic() - stalls.due >= stalls.warn_after and self._on_loop(task.node_type, func):
                    stalls.ended_step(f"node {task.node!r} (task {task.id})")
            # Checked here, before the ack writes it: a result the backend cannot store
            # fails the node now, with the reason, instead of failing the write.
            check_result_size(updates, backend.max_payload_bytes, node=task.node, workflow_id=task.workflow_id)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.get(asyncio.current_task(), "") or lease.lost_reason  # type: ignore[arg-type]
            keeper.cancel()
            await self._on_cancelled(lease.claim, reason, lease.broken)
            raise
        except Exception as exc:
            keeper.cancel()
            failure = describe_failure(exc)
            # A state that is gone stays gone: no retry.
            if (retry is not None and not is_output_error(exc) and not isinstance(exc, TaskStateError)
                    and retry.should_retry(claim.attempt, exc)):
                self.stats.retried += 1
                delay = retry.delay(claim.attempt, exc)
                log.info("task %s node %r attempt %d failed (%s); retrying in %.2fs",
                         task.id, task.node, claim.attempt, failure.error_type, delay)
                await self._settle(lambda: queue.nack(lease.claim, failure.to_text(), delay=delay), claim)
                return RETRIED, exc
            else:
                self.stats.failed += 1
                # A final failure (dead-lettered, its workflow's step fails): where alerting looks
                # (log_context.alert_level), with the traceback the status shows too (as Celery logs
                # a failed task); escaped: a message a log stream cannot encode would fail the handler.
                log.log(alert_level(log), "task %s node %r failed on attempt %d: %s", task.id, task.node,
                        claim.attempt, safe_text(failure.to_text()))
                await self._settle(lambda: queue.nack(lease.claim, failure.to_text(), final=True), claim)
            return DEAD_LETTERED, exc
        keeper.cancel()
        # What the node streamed goes out before its result: a caller sees a step's chunks before its values.
        streamed = context._stream_seq()
        if streamed and self._stream is not None:
            # The node is done: its chunks, then its result, go out whatever cancellation comes
            # meanwhile (as for the settling call itself, see _settle).
            current = asyncio.current_task()
            if current is not None:
                self._start_settling(current)
            try:
                await self._stream.wait_published(streamed, timeout=STREAM_FLUSH_TIMEOUT)
            finally:
                if current is not None:
                    self._settling.discard(current)
        held = lease.claim  # (a ClaimedTask built directly: dataclasses.replace costs ~10x more)
        acked = ClaimedTask(held.task, held.lease_id, held.attempt, held.deadline, held.worker_id, started_at)
        if await self._settle(lambda: queue.ack(acked, updates), claim):
            self.stats.succeeded += 1
            log.info("task %s node %r done in %.3fs (attempt %d)", task.id, task.node,
                     time.monotonic() - started, claim.attempt)
        return SUCCEEDED, None

    def _foreign_function(self, task: Task) -> str:
        """Why this worker must not run ``task`` with its function (the reason its dead letter
        gives), or "": its function was taken from graphs (``NodeRegistry.graphs_of``), and the
        task names another function (``core.registry.function_name``) or another graph. Node
        types are shared by every graph on a key prefix, and a node's type is its name unless
        given: a worker serving graph ``faq`` would otherwise run graph ``support``'s node
        ``agent`` with ``faq``'s function. (The graph's name tells apart what the function's
        name cannot: two packages' ``agents.py:agent``, closures of one factory, partials, lambdas.)"""
        graphs = self.registry.graphs_of(task.node_type)
        named = task.payload.get(FUNCTION_KEY) if graphs is not None else None
        func = self.registry.get(task.node_type)
        if not isinstance(named, str) or func is None:
            return ""
        own = function_name(func)
        graph = _graph_name(task.payload)
        same = own == named
        if same and (not graph or graph in (graphs or ())):
            return ""
        served = ", ".join(repr(name) for name in sorted(graphs or ()))
        runs = (f"which runs {named!r}" if not same else
                "whose function has the same name, but which this worker was not started from (start one from it)")
        return (f"wrong function: worker {self.worker_id!r} serves node type {task.node_type!r} with {own!r} of "
                f"graph {served} (it was started from that graph), and this task is node {task.node!r} of graph "
                f"{graph!r}, {runs}; node types are shared by every graph on the same key prefix, so give one of "
                f"the nodes a type of its own (add_node({task.node!r}, ..., node_type='{graph}.{task.node}')), or "
                "run each graph's workflows and workers under their own --prefix")

    def _prepare(self, claim: ClaimedTask) -> tuple[NodeFunction, State | None, NodeRetry | None, float | None]:
        """The task's function, state (None: the task names it, ``_referenced_state`` reads it), retry, timeout.

        Raises ``ValueError`` if the task is malformed.
        """
        payload = claim.task.payload
        func = self.registry.get(claim.task.node_type)
        if func is None:
            raise ValueError(f"worker {self.worker_id!r} has no function for node type {claim.task.node_type!r}")
        check_payload(payload)  # the whole shape, version included: a bad task is dead-lettered, never run
        state = payload.get("state")
        retry_data = payload.get("retry")
        try:
            retry = None if retry_data is None else retry_from_wire(retry_data)
            timeout = payload.get("timeout")
            timeout = None if timeout is None else float(timeout)
        except (TypeError, ValueError, AttributeError, ConfigurationError) as exc:
            raise ValueError(f"payload has an invalid retry policy or timeout: {exc}") from None
        return func, None if state is None else State._trusted(state, claim.task.workflow_id), retry, timeout

    async def _referenced_state(self, task: Task) -> State:
        """The state a task names (``core.task_state``), read through the worker's state cache.

        Waits through a backend outage (the lease keeper keeps the task meanwhile); raises
        ``TaskStateError`` if the state is not stored any more.
        """
        ref = read_ref(task.payload.get(STATE_REF_KEY))
        store = self.backend.state_store
        state = await until_available(lambda: self.state_cache.state(store, task.workflow_id, ref),
                                      what=f"read the state task {task.id} runs on", outage=self._outage)
        wrap = task.payload.get(WRAP_KEY)
        if isinstance(wrap, dict):  # an error handler's task: the error, and the failed task's state
            state = {**wrap, "state": state}
        return State._trusted(state, task.workflow_id)  # each task its own copy

    async def _on_cancelled(self, claim: ClaimedTask, reason: str, broken: BaseException | None = None) -> None:
        queue = self.backend.task_queue
        if broken is not None:  # extending the lease raised something other than an outage: a bug
            self.stats.failed += 1
            text = safe_text(f"extending the lease failed: {type(broken).__name__}: {broken}")
            await self._settle(lambda: queue.nack(claim, text, final=True), claim)
        elif reason == "workflow cancelled":
            # Cancelling is deliberate, not a failure (Celery's revoked and Temporal's cancelled
            # tasks are not failures either): the task ends with a "cancelled" result, which the
            # cancelled workflow never waits for, and leaves no dead letter needing attention.
            # nack(final) then purge: the queue port has no "finish as cancelled" call; a worker
            # dying in between leaves the letter, which 'dead-letters purge' deletes.
            if await self._settle(lambda: queue.nack(claim, "cancelled: the workflow was cancelled", final=True),
                                  claim):
                # (As Celery logs a revoked task: the worker's log says why the node stopped.)
                log.info("task %s node %r stopped on attempt %d: its workflow %s was cancelled", claim.task.id,
                         claim.task.node, claim.attempt, safe_text(claim.task.workflow_id))
                await self._purge_cancelled(claim.task.id)
        elif reason == "worker stopped":
            if await self._settle(lambda: queue.release(claim), claim):
                self.stats.released += 1  # (given back: one whose release did not land runs again after its lease)
        # a lost lease: another worker owns the task now; nothing to settle

    async def _purge_cancelled(self, task_id: str) -> None:
        """Delete the dead letter a cancelled task's final nack left; a failure is logged, never raised."""
        try:
            await until_available(lambda: self.backend.task_queue.purge_dead_letter(task_id),
                                  what=f"purge the cancelled task {task_id}'s dead letter", outage=self._outage,
                                  give_up_after=SETTLE_PATIENCE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the task is settled; only a stale letter remains
            log.warning("task %s was cancelled, but its dead letter could not be purged (%s: %s); "
                        "'distributed-agents dead-letters purge %s' deletes it", task_id, type(exc).__name__, exc,
                        task_id)

    async def _settle(self, operation: Callable[[], Awaitable[Any]], claim: ClaimedTask) -> bool:
        """Run one settling call (ack, nack or release); True if it was applied.

        Only two failures are expected: a backend outage (the call is repeated with
        backoff, as ack, nack and release are safe to repeat, for up to
        ``SETTLE_PATIENCE`` seconds; after that the lease runs out and the task is
        re-delivered) and a lost lease (another worker owns the task). Anything else
        is a bug (in an adapter, or a result the backend cannot store): it is logged
        with its traceback and the task is dead-lettered with that reason, so the
        workflow learns of it at once instead of after every attempt's lease expiry.

        The call is not interrupted by the worker's own cancellations (a cancelled workflow,
        stop()): they skip a task while it settles (``_settling``), and stop() waits up to
        ``SETTLE_ON_STOP`` for it. (Not ``asyncio.shield``: its task would cost every ack a
        loop round before the ack is even sent.)
        """
        task = asyncio.current_task()
        if task is not None:
            self._start_settling(task)
        try:
            # The first attempt made here: no retry coroutine per task while the backend answers.
            try:
                await operation()
            except BackendUnavailableError as exc:
                self._outage.failed(f"settle task {claim.task.id}", exc, INITIAL_DELAY)
                await asyncio.sleep(INITIAL_DELAY)
                await self._until_settled(operation, claim)
            else:
                self._outage.succeeded()
            return True
        except LeaseLostError:
            self._lease_lost_before_settling(claim)
        except BackendUnavailableError as exc:
            log.error("task %s node %r could not be settled (%s); it will be re-delivered after its lease",
                      claim.task.id, claim.task.node, exc)
        except Exception as exc:
            reason = safe_text(f"settling the task failed: {type(exc).__name__}: {exc}")
            log.error("task %s node %r: settling raised %s; dead-lettering the task with that reason",
                      claim.task.id, claim.task.node, type(exc).__name__, exc_info=exc)
            try:
                await self._until_settled(lambda: self.backend.task_queue.nack(claim, reason, final=True), claim)
                self.stats.failed += 1
            except LeaseLostError:
                self._lease_lost_before_settling(claim)
            except Exception as second:
                log.error("task %s node %r could not be dead-lettered either (%s: %s); it will be re-delivered "
                          "after its lease", claim.task.id, claim.task.node, type(second).__name__, second,
                          exc_info=second)
        finally:
            if task is not None:
                self._settling.discard(task)
        return False

    def _start_settling(self, task: asyncio.Task[Any]) -> None:
        """``task``'s node is done and its result on its way: cancellations leave it alone
        (``_settling``), and its slot is free for the next claim, whose loop is woken if it
        waits for one (module docstring, "Slots")."""
        self._settling.add(task)
        if self._slot_freed is not None:
            self._slot_freed.set()

    def _until_settled(self, operation: Callable[[], Awaitable[Any]], claim: ClaimedTask) -> Awaitable[Any]:
        return until_available(operation, what=f"settle task {claim.task.id}", outage=self._outage,
                               give_up_after=SETTLE_PATIENCE)

    def _lease_lost_before_settling(self, claim: ClaimedTask) -> None:
        self.stats.lost_leases += 1
        lease = self.lease_seconds or self.backend.task_queue.visibility_timeout
        blocked = self._stalls.longest_since(asyncio.get_running_loop().time() - lease)
        log.warning("task %s node %r: lease lost before settling; its result is dropped: the task is delivered "
                    "again (to this worker or another), or was taken back (its workflow cancelled or gone)%s",
                    claim.task.id, claim.task.node,
                    f" (this worker's event loop was blocked for at least {blocked:.1f}s within the lease, and "
                    "renewed no lease meanwhile: see the warning naming the nodes that ran then)" if blocked else "")

    def _running_nodes(self) -> list[tuple[str, bool]]:
        """The nodes running now (not settling), each with whether it runs on the event loop (``StallWatch``)."""
        return [(f"node {claim.task.node!r} (task {claim.task.id})",
                 self._on_loop(claim.task.node_type, self.registry.get(claim.task.node_type)))
                for task, claim in list(self._running.items()) if task not in self._settling]

    def _on_loop(self, node_type: str, func: Any) -> bool:
        """Whether ``func`` (``node_type``'s) runs on the event loop (``async def``), not in a thread."""
        known = self._runs_on_loop.get(node_type)
        if known is None or known[0] is not func:
            known = self._runs_on_loop[node_type] = (func, inspect.iscoroutinefunction(func) or
                                                     inspect.iscoroutinefunction(getattr(func, "__call__", None)))
        return known[1]


class _LeaseWatch:
    """The lease keepers of a worker's running nodes that have not begun extending, looked at
    by one timer every half of their extension interval (``_LeaseKeeper._every``).

    A keeper begins at the first look at which its node has run for at least half the
    interval, so its first extension comes between a sixth and a third of the lease after
    the node started (never later than a timer of its own would have made it). Most nodes end long
    before: each costs a dictionary entry, not a timer (a timer's scheduling, cancelling,
    and the cancelled handles the loop's heap keeps).
    """

    def __init__(self) -> None:
        self._waiting: dict[_LeaseKeeper, float] = {}  # keeper -> loop time its node started
        self._timer: asyncio.TimerHandle | None = None

    def add(self, keeper: _LeaseKeeper) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[keeper] = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(keeper._every / 2, self._look)

    def discard(self, keeper: _LeaseKeeper) -> None:
        self._waiting.pop(keeper, None)

    def _look(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for keeper, since in list(self._waiting.items()):  # oldest first
            if now - since < keeper._every / 2:
                break
            del self._waiting[keeper]
            keeper._begin()
        if self._waiting:
            self._timer = loop.call_later(next(iter(self._waiting))._every / 2, self._look)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()


class _LeaseKeeper:
    """Extends a task's lease while its node runs; cancels the node if the lease is lost.

    ``start()`` hands the keeper to the worker's ``_LeaseWatch``, which has it begin once
    the node has run for a sixth to a third of the lease; only a node still running then
    gets a task that extends the lease every third of it. Most nodes end sooner, and
    ``cancel()`` just takes the keeper off the watch: no task, no sleep and no timer per
    node task.
    """

    def __init__(self, worker: Worker, claim: ClaimedTask, queue: TaskQueue) -> None:
        self.worker = worker
        self.claim = claim
        self.lost_reason = ""
        self.broken: BaseException | None = None
        self._node_task = asyncio.current_task()
        self._every = max((worker.lease_seconds or queue.visibility_timeout) / 3, 0.01)
        self._keeping: asyncio.Future[None] | None = None

    def start(self) -> _LeaseKeeper:
        self.worker._lease_watch.add(self)
        return self

    def _begin(self) -> None:
        self._keeping = asyncio.ensure_future(self.keep(first_wait=False))

    def cancel(self) -> None:
        """Stop extending (the node ended)."""
        self.worker._lease_watch.discard(self)
        if self._keeping is not None:
            self._keeping.cancel()

    async def keep(self, first_wait: bool = True) -> None:
        queue = self.worker.backend.task_queue
        lease = self.worker.lease_seconds or queue.visibility_timeout
        wait = first_wait
        while True:
            if wait:
                await asyncio.sleep(self._every)
            wait = True
            try:
                self.claim = await queue.extend(self.claim, lease)
            except LeaseLostError:
                self.lost_reason = "lease lost"
                self.worker.stats.lost_leases += 1
                if self._node_task is not None:
                    self._node_task.cancel()
                return
            except BackendUnavailableError as exc:  # an outage: the lease has slack until the next try
                self.worker._outage.failed(f"extend the lease of task {self.claim.task.id}", exc)
            except Exception as exc:
                # Not an outage and not a lost lease: a bug (in the adapter, most likely).
                # Stop the node and dead-letter the task with this reason rather than let
                # the lease lapse and the task run again, attempt after attempt.
                log.error("task %s node %r: extending its lease raised %s; stopping the node and dead-lettering "
                          "the task", self.claim.task.id, self.claim.task.node, type(exc).__name__, exc_info=exc)
                self.broken = exc
                self.lost_reason = "extend failed"
                if self._node_task is not None:
                    self._node_task.cancel()
                return
