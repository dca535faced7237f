"""OpenTelemetry traces of workflows, steps and node attempts (the ``[otel]`` extra).

``enable()`` installs a ``Tracing`` observer (``core.instrumentation``) process-wide, or
pass one to ``Worker(instrumentation=...)`` / ``Orchestrator(instrumentation=...)``::

    from distributed_agents import telemetry
    telemetry.enable()                     # spans go to the global TracerProvider
    telemetry.enable(tracer_provider=tp)   # or to this one

The ``worker`` and ``orchestrator`` commands do it with ``--otel`` (``DA_OTEL=1``), with a
TracerProvider set up from the standard ``OTEL_*`` environment variables
(``configure_from_env``).

Spans (all names low-cardinality, ids in attributes):

* ``workflow {graph}``: one run of a workflow by one process (``execute``, ``resume``,
  a takeover), parented to the span current where the run started (a subgraph's run
  to its parent's step);
* ``step {graph}``: one step, a child of the run's span; its context is put into every
  task the step enqueues (payload key ``"trace"``, W3C ``traceparent`` through the
  globally configured propagator);
* ``node {node}``: one attempt of one node, a child of the step's span: in the
  orchestrator's process for a local node (kind INTERNAL), on the worker that claimed
  the task for a remote one (kind CONSUMER, parent taken from the task's payload, so
  the trace crosses processes). While it runs it is the current span, so spans the
  node function makes (an LLM client's, ``tracer.start_as_current_span``) are its children.

Attributes: ``distributed_agents.workflow.id``, ``distributed_agents.graph.name``,
``distributed_agents.step``, ``distributed_agents.node.name``,
``distributed_agents.node.type``, ``distributed_agents.task.id``,
``distributed_agents.task.attempt``, ``distributed_agents.worker.id``,
``distributed_agents.task.outcome`` (``core.instrumentation.OUTCOMES``) and
``distributed_agents.workflow.status``; worker spans also carry the messaging
conventions' ``messaging.system`` (``distributed_agents``), ``messaging.operation.type``
(``process``), ``messaging.destination.name`` (the node type, i.e. the queue) and
``messaging.message.id`` (the task id). A failed
attempt, step or run has status ERROR, ``error.type`` and the exception recorded as an event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from distributed_agents.core.errors import MissingExtraError
from distributed_agents.core.instrumentation import (
    CANCELLED,
    SUCCEEDED,
    Instrumentation,
    NodeAttempt,
    combine,
    install,
    installed,
)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise MissingExtraError(
        "distributed_agents.telemetry needs OpenTelemetry: pip install 'distributed-agents[otel]' "
        "(opentelemetry-api and opentelemetry-sdk)") from exc

__all__ = ["ATTRIBUTE_PREFIX", "Tracing", "configure_from_env", "enable"]

log = logging.getLogger("distributed_agents.telemetry")

ATTRIBUTE_PREFIX = "distributed_agents."
WORKFLOW_ID = ATTRIBUTE_PREFIX + "workflow.id"
GRAPH = ATTRIBUTE_PREFIX + "graph.name"
STEP = ATTRIBUTE_PREFIX + "step"
NODE = ATTRIBUTE_PREFIX + "node.name"
NODE_TYPE = ATTRIBUTE_PREFIX + "node.type"
TASK_ID = ATTRIBUTE_PREFIX + "task.id"
ATTEMPT = ATTRIBUTE_PREFIX + "task.attempt"
WORKER_ID = ATTRIBUTE_PREFIX + "worker.id"
OUTCOME = ATTRIBUTE_PREFIX + "task.outcome"
STATUS = ATTRIBUTE_PREFIX + "workflow.status"
DEFAULT_SERVICE_NAME = "distributed-agents"


class _Traced:
    """A started span and the context token that made it current (detached when it ends)."""

    __slots__ = ("graph", "span", "token")

    def __init__(self, span: trace.Span, token: object, graph: str = "") -> None:
        self.span, self.token, self.graph = span, token, graph


@contextmanager
def _guard(what: str) -> Iterator[None]:
    # A tracing failure must never fail a workflow or a task: log it and go on.
    try:
        yield
    except Exception:
        log.warning("tracing: %s failed", what, exc_info=True)


class Tracing(Instrumentation):
    """An observer that makes OpenTelemetry spans (see the module docstring).

    ``tracer_provider``: where spans go (default: the global one, as set by
    ``trace.set_tracer_provider`` or ``configure_from_env``).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from distributed_agents import __version__

        self._tracer = trace.get_tracer("distributed_agents", __version__, tracer_provider=tracer_provider)

    def _start(self, name: str, attributes: Mapping[str, Any], parent: Any, kind: SpanKind,
               graph: str = "") -> _Traced | None:
        with _guard(f"starting span {name!r}"):
            span = self._tracer.start_span(name, context=parent, kind=kind, attributes=dict(attributes))
            return _Traced(span, otel_context.attach(trace.set_span_in_context(span)), graph)
        return None

    def _end(self, traced: _Traced | None, error: BaseException | None, failed: bool,
             attributes: Mapping[str, Any] | None = None) -> None:
        if traced is None:
            return
        with _guard("ending a span"):
            span = traced.span
            if attributes:
                span.set_attributes(dict(attributes))
            if failed and error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            elif failed:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        with _guard("restoring the current span"):
            otel_context.detach(traced.token)  # type: ignore[arg-type]

    def workflow_started(self, workflow_id: str, graph: str, step: int) -> Any:
        return self._start(f"workflow {graph}", {WORKFLOW_ID: workflow_id, GRAPH: graph, STEP: step}, None,
                           SpanKind.INTERNAL, graph)

    def workflow_ended(self, handle: Any, status: str, error: BaseException | None) -> None:
        self._end(handle, error, status == "failed", {STATUS: status})

    def step_started(self, workflow: Any, workflow_id: str, step: int, nodes: Sequence[str]) -> Any:
        parent = trace.set_span_in_context(workflow.span) if isinstance(workflow, _Traced) else None
        graph = workflow.graph if isinstance(workflow, _Traced) else ""
        return self._start(f"step {graph}".rstrip(), {WORKFLOW_ID: workflow_id, GRAPH: graph, STEP: step,
                                                      ATTRIBUTE_PREFIX + "step.nodes": list(nodes)},
                           parent, SpanKind.INTERNAL, graph)

    def step_ended(self, handle: Any, error: BaseException | None) -> None:
        cancelled = isinstance(error, (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit))
        self._end(handle, error, error is not None and not cancelled)

    def carrier(self, step: Any) -> dict[str, str] | None:
        if not isinstance(step, _Traced):
            return None
        carrier: dict[str, str] = {}
        with _guard("injecting the trace context"):
            propagate.inject(carrier, context=trace.set_span_in_context(step.span))
        return carrier or None

    def node_started(self, attempt: NodeAttempt) -> Any:
        attributes: dict[str, Any] = {
            WORKFLOW_ID: attempt.workflow_id, STEP: attempt.step, NODE: attempt.node, NODE_TYPE: attempt.node_type,
            TASK_ID: attempt.task_id, ATTEMPT: attempt.attempt,
        }
        if attempt.graph:
            attributes[GRAPH] = attempt.graph
        parent = None
        if attempt.trace:
            with _guard("reading a task's trace context"):
                parent = propagate.extract(dict(attempt.trace))
        kind = SpanKind.INTERNAL
        if attempt.worker_id:
            kind = SpanKind.CONSUMER
            attributes.update({WORKER_ID: attempt.worker_id, "messaging.system": "distributed_agents",
                               "messaging.operation.type": "process",
                               "messaging.destination.name": attempt.node_type,
                               "messaging.message.id": attempt.task_id})
        return self._start(f"node {attempt.node}", attributes, parent, kind)

    def node_ended(self, handle: Any, outcome: str, error: BaseException | None) -> None:
        self._end(handle, error, outcome not in (SUCCEEDED, CANCELLED), {OUTCOME: outcome})


def enable(tracer_provider: trace.TracerProvider | None = None) -> Tracing:
    """Trace every workflow run, step and node attempt of this process; returns the observer.

    Installed process-wide (``core.instrumentation.install``) next to any observer
    already installed (e.g. ``distributed_agents.metrics.enable()``'s).
    """
    tracing = Tracing(tracer_provider)
    install(combine(installed(), tracing))
    return tracing


def configure_from_env(service_name: str = DEFAULT_SERVICE_NAME) -> Any:
    """Set the global TracerProvider up from the standard ``OTEL_*`` environment variables; return it.

    ``OTEL_TRACES_EXPORTER``: comma-separated exporter names (default ``otlp``, which
    needs ``opentelemetry-exporter-otlp``; ``console`` prints spans as JSON to stdout;
    ``none``); ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the service
    (default ``service_name``); ``OTEL_TRACES_SAMPLER`` and the exporters' own variables
    (``OTEL_EXPORTER_OTLP_ENDPOINT``, ...) are read by the SDK. Spans are exported in
    batches: call ``shutdown()`` on the returned provider before exiting to flush them.
    Raises ``MissingExtraError`` for an exporter that is not installed.
    """
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise MissingExtraError("--otel needs the OpenTelemetry SDK: pip install 'distributed-agents[otel]'") from exc
    from importlib.metadata import entry_points

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    available = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    for name in names:
        if name == "none":
            continue
        if name not in available:
            raise MissingExtraError(
                f"OTEL_TRACES_EXPORTER names the span exporter {name!r}, which is not installed (installed: "
                f"{', '.join(sorted(available)) or 'none'}); install it (for otlp: pip install "
                "opentelemetry-exporter-otlp) or set OTEL_TRACES_EXPORTER=console")
        provider.add_span_processor(BatchSpanProcessor(available[name].load()()))
    trace.set_tracer_provider(provider)
    return provider
