"""Subgraphs: a compiled ``Graph`` used as a node of another graph.

Two forms, as in LangGraph:

* ``parent.add_node("inner", subgraph)`` - *a compiled graph as a node*: the subgraph
  starts from the parent's state (a Send's argument, for a Send to the node), filtered
  by its input schema if it has one, and its final state (its output schema's keys)
  is the node's update in the parent, merged through the parent's reducers like any
  node's return value (with a parent state schema, keys the parent does not declare
  are left out). So a reducer such as ``operator.add`` on a shared key sees the
  subgraph's whole list again, exactly as in LangGraph: use ``add_messages`` (which
  replaces by id) or the mapped form to return only what is new.
* ``parent.add_node("inner", subgraph, input=map_in, output=map_out)`` - LangGraph's
  *invoke the subgraph inside a node*, for different schemas: ``map_in(parent_state)``
  returns the subgraph's input, ``map_out(subgraph_final_state)`` the parent's updates
  (both dicts of JSON values; either may be omitted: the identity). Both run in the
  orchestrator.

How a subgraph runs: the node's task is a *child workflow* driven by the orchestrator
driving the parent (``Orchestrator._drive``, with a step engine of its own: an engine
drives one run at a time), through the same step loop. Its id is
deterministic, ``<parent id>:sub:<step>:<task>`` (``child_workflow_id``), and the
parent's frontier names it (``"subgraphs": {task: child id}``), so a parent re-running
the step (after a restart, a takeover by another orchestrator, or ``resume``) finds
and continues the same child instead of starting another. The child's
record names its parent (``metadata["parent"]``), so ``recover_workflows`` never takes a
child over on its own: whoever drives the parent drives its children. Its nodes go to
workers exactly like the parent's, and its checkpoints are stored under its own id
(``get_state(parent, subgraphs=True)`` shows them). Its events are published on the
*root* workflow's channels with ``"namespace": ["<node>:<task id>", ...]`` (outermost
first) and ``"subgraph_workflow_id"``.

* An ``interrupt()`` inside the subgraph pauses the child, and the parent becomes
  ``interrupted`` with the child's pauses, each with id ``"<step>:<task>/<child id>"``
  (unique at every depth); ``resume(parent, answer)`` (by order or by those ids) hands
  the answers to the child, which continues; when it completes the node finishes.
* ``Command(graph=Command.PARENT, update=, goto=)`` returned by a node of the subgraph
  ends the subgraph (its step's other writes stay in the child's state) and becomes
  the subgraph node's ``Command(update=, goto=)`` in the parent; declare where it may
  go with ``add_node(..., destinations=[...])`` on the subgraph node.
* A failed child fails the subgraph node: ``on_error`` routes it to a handler as for
  any node; ``retry=RetryPolicy(max_attempts=n)`` resumes the child from its failed
  step up to ``n`` attempts in all (``retry_on`` is not consulted: the child's own
  nodes' retry policies decide per exception). ``timeout`` is refused on a subgraph
  node: set it on the subgraph's nodes.
* ``cancel_workflow(parent)`` cancels the children it is running too.
* A child runs with its parent's priority plus the subgraph node's ``priority``, and
  its parent's durability mode; its step limit is its parent's run's (``execute(...,
  step_limit=)``, LangGraph's ``config["recursion_limit"]``, else ``Orchestrator(step_limit=)``),
  counted apart from its parent's steps, as LangGraph hands a subgraph its caller's
  ``recursion_limit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed_agents.core.errors import (
    BackendUnavailableError,
    ExecutionError,
    GraphValidationError,
    InvalidNodeOutputError,
    NodeExecutionError,
    WorkflowExistsError,
    WorkflowLeaseHeldError,
)
from distributed_agents.core.events import EventPublisher
from distributed_agents.core.executors import CONFIGURABLE_KEY, NodeOutcome
from distributed_agents.core.frontier import TaskEntry, read_entries
from distributed_agents.core.incarnation import PARENT_INCARNATION_KEY, incarnation_of
from distributed_agents.core.interrupts import NO_ANSWER, Interrupt, read_interrupts
from distributed_agents.core.node_runner import RETURNS_TO_CALLER_KEY, NodeFailure, describe_failure
from distributed_agents.core.ports.state_store import StateStore, WorkflowRecord, WorkflowStatus
from distributed_agents.core.schema import result_values
from distributed_agents.core.state import State, check_values
from distributed_agents.core.task_payload import NODE_METADATA_KEY
from distributed_agents.core.types import COMMAND_KEY, INTERRUPT_KEY, Send

if TYPE_CHECKING:
    from distributed_agents.core.graph import Graph
    from distributed_agents.core.orchestrator import Orchestrator

__all__ = ["PARENT_KEY", "Subgraph", "SubgraphRunner", "child_workflow_id", "children_of", "is_child_of", "namespace_of",
           "parent_command_of"]

log = logging.getLogger("distributed_agents.orchestrator")

PARENT_KEY = "parent"  # record metadata of a child workflow: its parent's id
ROOT_KEY = "root"  # ... the outermost workflow's id (whose channels carry the child's events)
NAMESPACE_KEY = "namespace"  # ... ["<node>:<task id>", ...] from the root inward
PARENT_COMMAND_KEY = "parent_command"  # a completed child's frontier: Command.PARENT bodies for its parent
SUBGRAPH_RESUME_KEY = "subgraph_resume"  # a parent's frontier: {task: {child interrupt id: answer}}
SUBGRAPHS_KEY = "subgraphs"  # a parent's frontier: {task: child workflow id} of the step's subgraph tasks

_UNSAFE = frozenset(" \t\n\r.*>/\\")


@dataclass(frozen=True)
class Subgraph:
    """A subgraph node's graph and its optional ``input``/``output`` mappings."""

    graph: Graph
    input: Callable[..., Any] | None = None
    output: Callable[..., Any] | None = None

    @classmethod
    def of(cls, parent: str, node: str, func: Any, input: Callable[..., Any] | None,
           output: Callable[..., Any] | None, timeout: float | None) -> Subgraph:
        """Check ``add_node(node, func, input=, output=)`` of graph ``parent``; ``GraphValidationError`` if wrong."""
        from distributed_agents.core.graph import Graph

        where = f"graph {parent!r}: node {node!r}"
        if not isinstance(func, Graph):
            raise GraphValidationError(
                f"{where}: input= and output= map the state of a subgraph node; pass a compiled Graph as the "
                f"node (add_node({node!r}, subgraph, input=..., output=...)), got {func!r}", graph=parent, culprit=node)
        if not func.compiled:
            raise GraphValidationError(f"{where}: subgraph {func.name!r} is not compiled; call .compile() on it first",
                                       graph=parent, culprit=node)
        for label, mapping in (("input", input), ("output", output)):
            if mapping is not None and not callable(mapping):
                raise GraphValidationError(f"{where}: {label}= must be a function of a state, got {mapping!r}",
                                           graph=parent, culprit=node)
        if timeout is not None:
            raise GraphValidationError(
                f"{where}: a subgraph node takes no timeout (its child workflow runs many nodes); set timeouts on the "
                f"nodes of subgraph {func.name!r}", graph=parent, culprit=node)
        return cls(func, input, output)

    def spec(self) -> dict[str, Any]:
        """What the node's entry in ``Graph.spec()`` adds: the subgraph's own spec and mapping names."""
        spec: dict[str, Any] = {"subgraph": self.graph.spec()}
        for label, mapping in (("input", self.input), ("output", self.output)):
            if mapping is not None:
                spec[f"subgraph_{label}"] = getattr(mapping, "__qualname__", None) or repr(mapping)
        return spec


def child_workflow_id(parent_id: str, step: int, task: str) -> str:
    """The id of the child workflow that task ``task`` (node name or ``node#i``) of ``step`` runs.

    Deterministic (no run number: a resumed parent continues the same child); characters
    a workflow id cannot hold in a node name become ``_``.
    """
    safe = "".join("_" if char in _UNSAFE else char for char in task)
    return f"{parent_id}:sub:{step}:{safe}"


def namespace_of(record: WorkflowRecord) -> list[str]:
    """``record``'s namespace: ``[]`` for a root workflow, ``["<node>:<task id>", ...]`` for a child."""
    return [str(item) for item in record.metadata.get(NAMESPACE_KEY) or ()]


def with_positions(graph: Graph, workflow_id: str, step: int, frontier: dict[str, Any]) -> dict[str, Any]:
    """``frontier`` of ``step`` with ``"subgraphs": {task: child workflow id}`` for its subgraph tasks.

    The ids are derived (``child_workflow_id``), so any process finds the children from
    the stored frontier alone; frontiers without subgraph tasks keep their shape.
    """
    if not graph.has_subgraphs:
        return frontier  # the usual case: no node of the graph is a subgraph
    nodes = graph.nodes
    named = [*frontier.get("next", ()), *(send.get("node") for send in frontier.get("sends") or ())]
    if not any(name in nodes and nodes[name].subgraph is not None for name in named):
        return frontier  # the usual case, checked without building the step's entries
    positions = {entry.key: child_workflow_id(workflow_id, step, entry.key)
                 for entry in read_entries(frontier, {}) if entry.node in nodes
                 and nodes[entry.node].subgraph is not None}
    return {**frontier, SUBGRAPHS_KEY: positions} if positions else frontier


async def children_of(store: StateStore, record: WorkflowRecord) -> dict[str, WorkflowRecord]:
    """The child workflows of ``record``'s current step, by task key (the node, or ``node#i``).

    The tasks named by the frontier's ``"subgraphs"``, or every task of a frontier without
    it (written by ``update_state``), are looked up by their derived ids, so no graph is
    needed; a fork, whose copied frontier names the original's children, finds its own.
    """
    found = {}
    keys = list(record.frontier.get(SUBGRAPHS_KEY) or {}) or [entry.key for entry in read_entries(record.frontier, {})]
    for key in keys:
        child = await store.get(child_workflow_id(record.workflow_id, record.step, key))
        if child is not None and is_child_of(child, record):
            found[key] = child
    return found


def is_child_of(child: WorkflowRecord, parent: WorkflowRecord) -> bool:
    """Whether ``child`` was created by ``parent`` as it is stored now, not by an earlier workflow of its id
    (deleted, or expired, and created again: ``core.incarnation``)."""
    return (child.metadata.get(PARENT_KEY) == parent.workflow_id
            and str(child.metadata.get(PARENT_INCARNATION_KEY) or "") == incarnation_of(parent))


class NamespacedEvents(EventPublisher):
    """A child workflow's events, published on its root workflow's channels with its namespace."""

    def __init__(self, inner: EventPublisher, root: str, namespace: Sequence[str]) -> None:
        # No bus of its own: everything goes through ``inner``.
        self._inner = inner
        self._root = root
        self._namespace = list(namespace)

    def emit(self, workflow_id: str, kind: str, **fields: Any) -> None:
        self._inner.emit(self._root, kind, namespace=list(self._namespace), subgraph_workflow_id=workflow_id, **fields)

    def flush(self) -> Awaitable[bool]:
        return self._inner.flush()

    async def close(self) -> None:
        await self._inner.flush()


def scoped_events(events: EventPublisher, metadata: Mapping[str, Any] | None) -> EventPublisher:
    """``events`` for a workflow with record ``metadata``: namespaced for a child, unchanged otherwise."""
    if not metadata or not metadata.get(NAMESPACE_KEY):
        return events
    return NamespacedEvents(events, str(metadata.get(ROOT_KEY)), list(metadata[NAMESPACE_KEY]))


def subgraph_pauses(step: int, entry: TaskEntry, info: Mapping[str, Any]) -> list[Interrupt]:
    """The parent's pauses for a subgraph task paused with ``info`` (see ``SubgraphRunner``)."""
    child = info["subgraph"]
    pauses = []
    for item in child.get("interrupts") or ():
        inner = Interrupt.from_dict(item)
        pauses.append(Interrupt(f"{step}:{entry.key}/{inner.id}", inner.node, inner.value, inner.kind, entry.key,
                                inner.index, subgraph=inner.id,
                                namespace=(str(child.get("namespace", entry.node)), *inner.namespace)))
    return pauses


def check_parent_command(graph_name: str, record: WorkflowRecord, nodes: Sequence[str]) -> None:
    """``InvalidNodeOutputError`` if ``record`` is no child workflow, nor a graph invoked inside a node
    (``node_runner.RETURNS_TO_CALLER_KEY``): ``Command.PARENT`` has nowhere to go."""
    configurable = record.metadata.get(CONFIGURABLE_KEY)
    if isinstance(configurable, Mapping) and configurable.get(RETURNS_TO_CALLER_KEY):
        return
    if not record.metadata.get(PARENT_KEY):
        raise InvalidNodeOutputError(
            f"node {nodes[0]!r} of graph {graph_name!r} (workflow {record.workflow_id!r}) returned "
            "Command(graph=Command.PARENT), but the graph runs as a graph of its own, not as a subgraph of another: "
            "return Command(update=..., goto=...) without graph=, or add this graph to a parent with "
            "parent.add_node(name, this_graph)")


def parent_command_of(record: WorkflowRecord) -> tuple[dict[str, Any], list[Any]] | None:
    """The ``Command.PARENT`` a completed child ``record`` ended with, as one ``(update, goto)``
    (its bodies' updates merged in order, their gotos in order: names, or Send dicts), or None."""
    commands = record.frontier.get(PARENT_COMMAND_KEY)
    if not commands:
        return None
    update: dict[str, Any] = {}
    goto: list[Any] = []
    for body in commands:
        update.update(body.get("update") or {})
        goto.extend(body.get("goto") or ())
    return update, goto


def parent_command_bodies(results: Sequence[tuple[str, Mapping[str, Any], Sequence[Any]]]) -> list[dict[str, Any]]:
    """The JSON ``Command.PARENT`` bodies ``(node, update, goto)`` a child stores when it ends for its parent."""
    return [{"node": node, "update": dict(update),
             "goto": [target.to_dict() if isinstance(target, Send) else target for target in goto]}
            for node, update, goto in results]


class SubgraphRunner:
    """Runs subgraph nodes' tasks as child workflows of ``orchestrator`` (see the module docstring)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    async def run(self, graph: Graph, record: WorkflowRecord, entry: TaskEntry, task_id: str,
                  step_limit: int) -> NodeOutcome:
        """Advance the child of ``entry`` (a subgraph node's task of ``record``'s step) as far as it goes.

        ``step_limit`` is the parent's call's own limit (``engine.DriveOptions``); the child runs
        with the same number of steps of its own.

        Returns the node's outcome: its updates (or a ``Command`` of the child's
        ``Command.PARENT``), a pause (``{INTERRUPT_KEY: {..., "subgraph": ...}}``) or a
        failure. Raises ``BackendUnavailableError`` (the step is retried) and cancellation.
        """
        spec = graph.node(entry.node)
        sub = spec.subgraph
        assert sub is not None
        child_id = child_workflow_id(record.workflow_id, record.step, entry.key)
        namespace = [*namespace_of(record), f"{entry.node}:{task_id}"]
        inherited = {**(record.metadata.get(NODE_METADATA_KEY) or {}), **(spec.metadata or {})}
        metadata = {PARENT_KEY: record.workflow_id, ROOT_KEY: str(record.metadata.get(ROOT_KEY) or record.workflow_id),
                    PARENT_INCARNATION_KEY: incarnation_of(record),
                    NAMESPACE_KEY: namespace, "parent_task": entry.key,
                    # The caller's config["configurable"] reaches the child's nodes too (as LangGraph's do).
                    **({"configurable": record.metadata["configurable"]} if record.metadata.get("configurable") else {}),
                    # ... and so does the metadata of the node running it (and of its own callers).
                    **({NODE_METADATA_KEY: inherited} if inherited else {})}
        answers = (record.frontier.get(SUBGRAPH_RESUME_KEY) or {}).get(entry.key)
        state = dict(entry.arg) if entry.arg is not None else dict(record.state)
        from distributed_agents.core.graph import MAX_PRIORITY  # graph imports this module

        # The node's priority adds to the workflow's for every task of its child, as for a node's own task.
        priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, int(record.metadata.get("priority", 0)) + spec.priority))
        durability = str(record.metadata.get("durability") or "sync")  # the parent's mode (engine.durability_of)
        limit = max(1, step_limit)
        started = time.time()
        attempts = 0
        while True:
            attempts += 1
            try:
                child, raised = await self._advance(sub, child_id, state, metadata, answers, priority, durability,
                                                    limit)
                answers = None  # handed to the child once
                if child.status == WorkflowStatus.FAILED and spec.retry is not None \
                        and attempts < spec.retry.max_attempts:
                    await asyncio.sleep(spec.retry.delay(attempts))
                    continue
                output = self._output(graph, entry.node, sub, child, namespace[-1], raised)
            except (BackendUnavailableError, asyncio.CancelledError):
                raise
            except Exception as exc:
                return NodeOutcome(entry.node, task_id, None, describe_failure(exc), attempts, started,
                                   time.time() - started)
            if isinstance(output, NodeFailure):
                return NodeOutcome(entry.node, task_id, None, output, attempts, started, time.time() - started)
            return NodeOutcome(entry.node, task_id, output, None, attempts, started, time.time() - started)

    async def _advance(self, sub: Subgraph, child_id: str, state: Mapping[str, Any], metadata: Mapping[str, Any],
                       answers: Mapping[str, Any] | None, priority: int, durability: str,
                       step_limit: int) -> tuple[WorkflowRecord, BaseException | None]:
        """Create, continue or answer the child until it completes, fails, is cancelled or pauses.

        Returns its final record, and the exception its run raised here when it failed in
        this call (None otherwise): the cause of the subgraph node's failure, as LangGraph
        raises a subgraph's exception from its parent.
        """
        orchestrator = self._orchestrator
        store = orchestrator.backend.state_store

        async def read() -> WorkflowRecord | None:  # through an outage: the parent's step goes on waiting
            return await orchestrator._retrying(lambda: store.get(child_id), f"read subgraph workflow {child_id!r}")

        raised: BaseException | None = None
        while True:
            current = await read()
            if current is not None and current.metadata.get(PARENT_INCARNATION_KEY, "") != \
                    metadata.get(PARENT_INCARNATION_KEY, ""):
                # Left by an earlier workflow of the parent's id (deleted and created again): its
                # state and outcome are not this parent's; it starts over.
                await orchestrator._retrying(lambda: store.delete(child_id), f"replace stale subgraph workflow "
                                                                             f"{child_id!r}")
                continue
            version = None if current is None else current.version
            try:
                if current is None:
                    values = _mapped(sub.input, state, f"the input= mapping of subgraph {sub.graph.name!r}")
                    schema = sub.graph.schema
                    if sub.input is None and schema is not None:
                        # The keys it shares with the parent (its input schema's, else its state's), as
                        # LangGraph hands a subgraph node its own channels: a parent-only key is not its input.
                        shared = schema.input_keys if schema.input_keys is not None else schema.keys
                        values = {key: value for key, value in values.items() if key in shared}
                    record, lease = await orchestrator._start(
                        sub.graph, values, workflow_id=child_id, step_limit=step_limit, priority=priority,
                        from_checkpoint=None, durability=durability, metadata=metadata)
                    await orchestrator._drive(sub.graph, record, lease, step_limit)
                elif current.status == WorkflowStatus.COMPLETED:
                    return current, None
                elif current.status == WorkflowStatus.INTERRUPTED:
                    pending = read_interrupts(current.frontier)
                    chosen = {key: value for key, value in (answers or {}).items() if key in {p.id for p in pending}}
                    if answers is None or (not chosen and any(p.kind == "interrupt" for p in pending)):
                        if answers:
                            _undelivered(child_id, answers, current, metadata)
                        return current, None  # no answer for it (yet): the parent pauses with it
                    answers = None
                    await orchestrator.resume(child_id, sub.graph, resume=chosen if chosen else NO_ANSWER,
                                              step_limit=step_limit)
                else:  # running (its driver stopped), pending, failed or cancelled: continue it
                    if answers:  # it was changed since it paused (update_state on it): they answer nothing
                        _undelivered(child_id, answers, current, metadata)
                        answers = None
                    await orchestrator.resume(child_id, sub.graph, step_limit=step_limit)
            except (BackendUnavailableError, asyncio.CancelledError):
                raise
            except Exception as exc:
                if isinstance(exc, WorkflowExistsError) or _driven_elsewhere(exc, child_id, orchestrator):
                    # Another orchestrator drives the child (or its dead owner's lease has not
                    # lapsed yet): look again shortly; it ends, pauses, or becomes ours.
                    await asyncio.sleep(min(orchestrator.lease_ttl / 3, 1.0))
                    continue
                final = await read()
                if final is None or final.version == version:
                    raise  # nothing was recorded: the error is the node's failure
                # Otherwise the child recorded how it ended (failed, cancelled): read below. A
                # node's own exception (run in this process) is the cause; else the child's error.
                raised = exc.__cause__ if isinstance(exc, NodeExecutionError) and exc.__cause__ is not None else exc
            final = await read()
            if final is None:
                raise ExecutionError(f"subgraph workflow {child_id!r} disappeared from the store while it ran")
            if final.status in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING):
                await asyncio.sleep(min(orchestrator.lease_ttl / 3, 1.0))
                continue  # its driver stopped (a lost lease): continue it
            return final, (raised if final.status == WorkflowStatus.FAILED else None)

    def _output(self, graph: Graph, node: str, sub: Subgraph, child: WorkflowRecord,
                scope: str, raised: BaseException | None = None) -> dict[str, Any] | NodeFailure:
        """The subgraph node's output for its child's final record ``child`` (``raised``: what its run raised here)."""
        if child.status == WorkflowStatus.INTERRUPTED:
            return {INTERRUPT_KEY: {"value": None, "index": 0, "subgraph": {
                "workflow_id": child.workflow_id, "namespace": scope,
                "interrupts": list(child.frontier.get("interrupts") or ())}}}
        if child.status == WorkflowStatus.CANCELLED:
            return NodeFailure("WorkflowCancelledError", f"subgraph {sub.graph.name!r} of node {node!r} (workflow "
                               f"{child.workflow_id!r}) was cancelled", "")
        if child.status == WorkflowStatus.FAILED:
            error = dict(child.error or {})
            return NodeFailure(
                str(error.get("error_type") or error.get("kind") or "ExecutionError"),
                f"subgraph {sub.graph.name!r} of node {node!r} (workflow {child.workflow_id!r}) failed: "
                f"{error.get('summary', 'no details recorded')}", str(error.get("traceback") or ""),
                bool(error.get("kind") == "NodeTimeoutError"), exception=raised)
        folded = parent_command_of(child)
        if folded is not None:
            return {COMMAND_KEY: {"update": folded[0], "goto": folded[1]}}
        values = result_values(child.state, child.metadata)
        if sub.output is not None:
            return _mapped(sub.output, values, f"the output= mapping of subgraph node {node!r}")
        if graph.schema is not None:
            return {key: value for key, value in values.items() if key in graph.schema.keys}
        return dict(values)


def _undelivered(child_id: str, answers: Mapping[str, Any], child: WorkflowRecord, metadata: Mapping[str, Any]) -> None:
    """Log that ``answers`` (for pauses the child had) reach nothing: never dropped without a word.

    The child was changed since the parent recorded its pauses (``update_state`` on the
    child's own id drops them); the parent pauses again with what the child asks now.
    """
    pending = read_interrupts(child.frontier) if child.status == WorkflowStatus.INTERRUPTED else ()
    log.warning("subgraph workflow %r: the answer(s) for %s were not delivered: the child is %s with pending "
                "interrupt(s) %s (its state was changed directly, e.g. by update_state on it); its parent %r "
                "pauses again with what it asks now: answer those", child_id, ", ".join(map(repr, answers)),
                child.status, ", ".join(repr(p.id) for p in pending) or "none", metadata.get(PARENT_KEY))


def _driven_elsewhere(exc: Exception, child_id: str, orchestrator: Orchestrator) -> bool:
    """Whether ``exc`` says the child is being driven already (its lease held, or a drive of ours still on)."""
    if isinstance(exc, WorkflowLeaseHeldError):
        return True
    text = str(exc)
    return isinstance(exc, ExecutionError) and (
        "(its lease is held)" in text or ("already" in text and child_id in orchestrator._running))


def _mapped(mapping: Callable[..., Any] | None, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``mapping(State(values))`` checked to be a dict of JSON values (``values`` itself without a mapping)."""
    if mapping is None:
        return dict(values)
    result = mapping(State(dict(values)))
    if not isinstance(result, Mapping):
        raise InvalidNodeOutputError(f"{what} returned {type(result).__name__}; it must return a dict of state values")
    result = dict(result)
    check_values(result)
    return result
