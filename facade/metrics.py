"""Prometheus metrics of tasks, queues and workflow runs (the ``[metrics]`` extra).

``enable(port=...)`` installs a ``Metrics`` observer (``core.instrumentation``)
process-wide and serves ``/metrics`` over HTTP; or pass one to
``Worker(instrumentation=...)`` / ``Orchestrator(instrumentation=...)`` and call its
``serve(port)``. The ``worker`` and ``orchestrator`` commands do it with
``--metrics-port PORT`` (``DA_METRICS_PORT``).

Metrics (Prometheus naming: ``_total`` counters, base units, ``_seconds``):

* ``distributed_agents_tasks_started_total{node_type}``: node attempts started (in
  this process: on a worker, or in-process nodes of an orchestrator);
* ``distributed_agents_tasks_succeeded_total``, ``..._tasks_failed_total`` (every failed
  attempt), ``..._tasks_retried_total`` (failed attempts another attempt follows),
  ``..._tasks_dead_lettered_total`` (a worker's final failures, malformed tasks
  included), ``..._tasks_cancelled_total`` (stopped from outside), all by ``node_type``;
* ``distributed_agents_node_duration_seconds{node_type,outcome}``: a histogram of attempt
  durations (from claim or start to settled);
* ``distributed_agents_tasks_in_progress{node_type}``: attempts running in this process;
* ``distributed_agents_queue_tasks{node_type,state}``: the backend's queue, polled every
  ``poll_interval`` seconds while the worker or orchestrator serves: ``state`` is
  ``queued`` (the queue depth), ``in_flight`` (claimed, by any worker) or ``dead_lettered``;
  a worker polls the types it serves, an orchestrator those of live workers, both also
  every type they ran;
* ``distributed_agents_workflow_runs_total{graph,status}``: workflow runs this process
  drove, by the status they left the workflow in (``completed``, ``failed``,
  ``interrupted``, ``cancelled``, ``stopped``); ``..._workflow_runs_in_progress{graph}``;
* ``distributed_agents_workflows{status}``: workflows in the state store by status, polled
  by an orchestrator (``count_workflows=True``, the default; it lists every stored workflow,
  so turn it off where there are very many);
* the client library's ``process_*`` and ``python_*`` metrics of this process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed_agents.core.errors import BackendUnavailableError, MissingExtraError
from distributed_agents.core.instrumentation import (
    CANCELLED,
    DEAD_LETTERED,
    FAILED,
    RETRIED,
    SUCCEEDED,
    Instrumentation,
    NodeAttempt,
    combine,
    install,
    installed,
)
from distributed_agents.core.ports.state_store import WorkflowStatus

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise MissingExtraError(
        "distributed_agents.metrics needs prometheus-client: pip install 'distributed-agents[metrics]'") from exc

__all__ = ["DURATION_BUCKETS", "Metrics", "enable"]

log = logging.getLogger("distributed_agents.metrics")

PREFIX = "distributed_agents_"
# Seconds: nodes range from microseconds (pure functions) to minutes (LLM calls, tools).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_POLL_INTERVAL = 5.0  # seconds between polls of the queue and the state store


@contextmanager
def _guard(what: str) -> Iterator[None]:
    # A metrics failure must never fail a workflow or a task: log it and go on.
    try:
        yield
    except BackendUnavailableError:
        raise  # an outage: poll() logs its start and end once, not a traceback per poll
    except Exception:
        log.warning("metrics: %s failed", what, exc_info=True)


class Metrics(Instrumentation):
    """An observer that keeps Prometheus metrics (see the module docstring).

    ``registry``: where the metrics are registered (default: a new one holding only
    these and the process collectors, so several ``Metrics`` can live in one process).
    ``poll_interval``: seconds between polls of queue depths (and workflow counts).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 count_workflows: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None:
            prometheus_client.ProcessCollector(registry=self.registry)
            prometheus_client.PlatformCollector(registry=self.registry)
            prometheus_client.GCCollector(registry=self.registry)
        self.poll_interval = poll_interval
        self.count_workflows = count_workflows
        self._seen_types: set[str] = set()
        self._backend_down = False  # an outage seen by the last poll: logged once, at its start
        self._lock = threading.Lock()  # _seen_types: hooks may run on several event loops' threads
        r = self.registry
        by_type = ["node_type"]
        self.started = Counter(PREFIX + "tasks_started", "Node attempts started.", by_type, registry=r)
        self.succeeded = Counter(PREFIX + "tasks_succeeded", "Node attempts that succeeded.", by_type, registry=r)
        self.failed = Counter(PREFIX + "tasks_failed", "Node attempts that failed (retried or not).", by_type,
                              registry=r)
        self.retried = Counter(PREFIX + "tasks_retried", "Failed node attempts another attempt follows.", by_type,
                               registry=r)
        self.dead_lettered = Counter(PREFIX + "tasks_dead_lettered",
                                     "Tasks a worker dead-lettered (final failure or malformed).", by_type, registry=r)
        self.cancelled = Counter(PREFIX + "tasks_cancelled",
                                 "Node attempts stopped from outside (workflow cancelled, worker stopping, lease "
                                 "lost).", by_type, registry=r)
        self.duration = Histogram(PREFIX + "node_duration_seconds", "Duration of node attempts in seconds.",
                                  ["node_type", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.in_progress = Gauge(PREFIX + "tasks_in_progress", "Node attempts running in this process.", by_type,
                                 registry=r)
        self.queue = Gauge(PREFIX + "queue_tasks", "Tasks on the backend's queue by state (queued, in_flight, "
                           "dead_lettered), as last polled.", ["node_type", "state"], registry=r)
        self.runs = Counter(PREFIX + "workflow_runs", "Workflow runs this process drove, by the status they "
                            "left the workflow in.", ["graph", "status"], registry=r)
        self.runs_in_progress = Gauge(PREFIX + "workflow_runs_in_progress", "Workflow runs this process is "
                                      "driving.", ["graph"], registry=r)
        self.workflows = Gauge(PREFIX + "workflows", "Workflows in the state store by status, as last polled.",
                               ["status"], registry=r)
        self._server: Any = None  # the HTTP server of serve()
        self._by_outcome = {SUCCEEDED: self.succeeded, RETRIED: self.retried, DEAD_LETTERED: self.dead_lettered,
                            CANCELLED: self.cancelled}

    # -- hooks ----------------------------------------------------------------------------

    def workflow_started(self, workflow_id: str, graph: str, step: int) -> Any:
        with _guard("counting a workflow run"):
            self.runs_in_progress.labels(graph).inc()
        return graph

    def workflow_ended(self, handle: Any, status: str, error: BaseException | None) -> None:
        with _guard("counting a workflow run"):
            self.runs_in_progress.labels(handle).dec()
            self.runs.labels(handle, status).inc()

    def node_started(self, attempt: NodeAttempt) -> Any:
        node_type = attempt.node_type
        with _guard("counting a node attempt"):
            with self._lock:
                self._seen_types.add(node_type)
            self.started.labels(node_type).inc()
            self.in_progress.labels(node_type).inc()
        return node_type, time.perf_counter()

    def node_ended(self, handle: Any, outcome: str, error: BaseException | None) -> None:
        node_type, began = handle
        with _guard("counting a node attempt"):
            self.in_progress.labels(node_type).dec()
            self.duration.labels(node_type, outcome).observe(time.perf_counter() - began)
            if outcome in (RETRIED, FAILED, DEAD_LETTERED):
                self.failed.labels(node_type).inc()
            counter = self._by_outcome.get(outcome)
            if counter is not None:
                counter.labels(node_type).inc()

    async def watch(self, backend: Any, node_types: frozenset[str]) -> None:
        """Poll queue depths (and, for an orchestrator, workflow counts) until cancelled."""
        while True:
            await self.poll(backend, node_types)
            await asyncio.sleep(self.poll_interval)

    async def poll(self, backend: Any, node_types: frozenset[str] = frozenset()) -> None:
        """Read queue stats of ``node_types`` (and the types seen or served) and workflow counts once.

        While the backend is unavailable one warning says so when the outage starts and one
        info line when it ends (no traceback every poll); the gauges keep their last values.
        """
        try:
            await self._poll(backend, node_types)
        except BackendUnavailableError as exc:
            if not self._backend_down:
                self._backend_down = True
                log.warning("metrics: the backend is unavailable, gauges keep their last values until it is back "
                            "(polling every %gs): %s", self.poll_interval, str(exc).splitlines()[0] if str(exc) else exc)
            return
        if self._backend_down:
            self._backend_down = False
            log.info("metrics: the backend is available again; gauges are current")

    async def _poll(self, backend: Any, node_types: frozenset[str]) -> None:
        types = set(node_types)
        with self._lock:
            types |= self._seen_types
        orchestrator = not node_types
        if orchestrator:
            with _guard("listing live workers"):
                for info in await backend.worker_registry.list_workers():
                    types |= set(info.node_types)
        for node_type in sorted(types):
            with _guard(f"reading the queue of node type {node_type!r}"):
                stats = await backend.task_queue.stats(node_type)
                self.queue.labels(node_type, "queued").set(stats.queued)
                self.queue.labels(node_type, "in_flight").set(stats.in_flight)
                self.queue.labels(node_type, "dead_lettered").set(stats.dead)
        if orchestrator and self.count_workflows:
            with _guard("counting workflows"):
                counts = dict.fromkeys(sorted(WorkflowStatus.ALL), 0)
                # counted by the store (Redis: inside the server), not by reading every record each poll
                counts.update(await backend.state_store.count_workflows())
                for status, count in counts.items():
                    self.workflows.labels(status).set(count)

    # -- serving --------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the port (``0`` picks a free one).

        Raises ``OSError`` when the port cannot be bound.
        """
        server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        bound: int = server.server_address[1]
        log.info("metrics: serving http://%s:%d/metrics", addr, bound)
        return bound

    def close(self) -> None:
        """Stop serving (if ``serve`` was called)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def text(self) -> str:
        """The metrics in the Prometheus text format (what ``/metrics`` serves)."""
        return prometheus_client.generate_latest(self.registry).decode()


def enable(port: int | None = None, addr: str = "0.0.0.0", *, poll_interval: float = DEFAULT_POLL_INTERVAL,
           count_workflows: bool = True) -> Metrics:
    """Keep metrics of every worker and orchestrator of this process; serve them on ``port`` if given.

    Installed process-wide (``core.instrumentation.install``) next to any observer
    already installed (e.g. ``distributed_agents.telemetry.enable()``'s).
    """
    metrics = Metrics(poll_interval=poll_interval, count_workflows=count_workflows)
    if port is not None:
        metrics.serve(port, addr)
    install(combine(installed(), metrics))
    return metrics
