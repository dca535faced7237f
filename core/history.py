"""State history and time travel: snapshots of checkpoints, ``update_state`` and forks.

Every commit of a workflow stores a ``Checkpoint``; this module reads them back as
``StateSnapshot``s (the shape LangGraph users know) and writes the two kinds of
checkpoint the engine's step loop does not:

* an **update** (``Orchestrator.update_state``): values merged through the graph's
  reducers as if node ``as_node`` had returned them, in a new step; the next nodes are
  what the graph routes after ``as_node`` on the merged state (``Graph.route``), so a
  later ``resume`` continues from there;
* a **fork** (``Orchestrator.fork`` / ``execute(from_checkpoint=)``): a new workflow
  whose first checkpoint copies a past checkpoint of another workflow (state, step,
  next nodes, join progress); the original's history is left as it was.

Checkpoint ids are ``"<workflow_id>:<step>"``: a workflow commits each step number at
most once and its steps are consecutive (every commit, update included, is the
previous step plus one), so the pair names one checkpoint across every backend
without storing an id, and an id alone says which workflow to read. The parent of
checkpoint ``w:s`` is ``w:s-1``, except for a workflow's first checkpoint: none for
step 0 of ``execute``, the source checkpoint for a fork (``metadata["parent"]``).

A checkpoint's ``metadata["source"]`` says how it came about: ``input`` (step 0,
written by ``execute``), ``loop`` (a step the engine ran), ``update`` or ``fork``.
Checkpoints written before the field existed read as ``input``/``loop`` by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from distributed_agents.core.errors import ConfigurationError, InvalidNodeOutputError, WorkflowNotFoundError
from distributed_agents.core.executors import CONFIGURABLE_KEY
from distributed_agents.core.frontier import TaskEntry, frontier_nodes, read_entries
from distributed_agents.core.graph import START, Graph
from distributed_agents.core.interrupts import read_interrupts
from distributed_agents.core.limits import check_commit_size
from distributed_agents.core.merge import merge_updates
from distributed_agents.core.messages import coerce_message_updates
from distributed_agents.core.ports.state_store import Checkpoint, StateStore, WorkflowRecord, WorkflowStatus
from distributed_agents.core.schema import OUTPUT_KEYS
from distributed_agents.core.state import State, check_values, reserved_keys
from distributed_agents.core.subgraphs import children_of
from distributed_agents.core.types import read_output, update_dict

__all__ = [
    "PregelTask",
    "StateSnapshot",
    "checkpoint_config",
    "checkpoint_id",
    "edited_state",
    "parse_checkpoint_id",
    "paused_values",
    "plan_fork",
    "plan_update",
    "read_checkpoint",
    "read_history",
    "read_state",
    "snapshot_of",
]


def checkpoint_id(workflow_id: str, step: int) -> str:
    """The id of the checkpoint of ``workflow_id`` after ``step`` committed steps."""
    return f"{workflow_id}:{step}"


def checkpoint_config(workflow_id: str, checkpoint: str) -> dict[str, Any]:
    """The LangGraph ``config`` naming checkpoint ``checkpoint`` of ``workflow_id`` (its thread)."""
    return {"configurable": {"thread_id": workflow_id, "checkpoint_ns": "", "checkpoint_id": checkpoint}}


def parse_checkpoint_id(text: str) -> tuple[str, int]:
    """``(workflow_id, step)`` of a checkpoint id; ``ConfigurationError`` if it is not one."""
    if isinstance(text, str):
        workflow_id, separator, step = text.rpartition(":")
        if separator and workflow_id and step.isascii() and step.isdigit():
            return workflow_id, int(step)
    raise ConfigurationError(
        f"checkpoint id {text!r} is not of the form '<workflow_id>:<step>'; use a StateSnapshot's "
        "checkpoint_id, as get_state() or get_state_history() return it"
    )


@dataclass(frozen=True)
class PregelTask:
    """One task of a snapshot's next step, as LangGraph's ``StateSnapshot.tasks`` holds it.

    ``id`` is ``"<checkpoint_id>:<task>"`` (``task``: the node, or ``node#i`` for its i-th
    ``Send``); ``name`` its node; ``path`` ``("__pregel_pull", node)`` for an edge-triggered
    task, ``("__pregel_push", i)`` for a Send; ``interrupts`` the pending ``Interrupt``s its
    ``interrupt()`` calls raised (a static breakpoint is not one, as in LangGraph: it is in
    the snapshot's ``interrupts`` only). On a workflow's latest snapshot, as LangGraph sets
    them: ``error`` of a task whose failure failed the step (``"<Type>('<message>')"``, the
    string LangGraph's stored task error reads as),
    ``result`` the writes of a task that finished in a step that paused or failed (else
    None), ``state`` (``get_state(subgraphs=True)``) the snapshot of the subgraph it runs.
    """

    id: str
    name: str
    path: tuple[Any, ...] = ()
    error: Any = None
    interrupts: tuple[Any, ...] = ()
    state: Any = None
    result: Any = None


def _tasks_of(checkpoint_key: str, frontier: Mapping[str, Any], interrupts: tuple[Any, ...],
              errors: Mapping[str, str] | None = None) -> tuple[PregelTask, ...]:
    """The ``PregelTask`` of each task ``frontier``'s step runs, in ``_next_tasks``'s order, with the
    ``errors`` of the failed ones (by task key) and the results a paused or failed step kept."""
    by_task: dict[str, list[Any]] = {}
    for pause in interrupts:
        if getattr(pause, "kind", "interrupt") == "interrupt":
            by_task.setdefault(str(getattr(pause, "task", "") or getattr(pause, "node", "")), []).append(pause)
    kept = frontier.get("pending_writes") or {}
    failed = errors or {}

    def task(key: str, node: str, path: tuple[Any, ...]) -> PregelTask:
        result = read_output(kept[key]) if key in kept else None
        done = None if result is None or result.interrupt is not None else dict(result.updates)
        return PregelTask(f"{checkpoint_key}:{key}", node, path, failed.get(key), tuple(by_task.get(key, ())),
                          None, done)

    tasks: list[PregelTask] = []
    counts: dict[str, int] = {}
    for position, send in enumerate(frontier.get("sends") or ()):
        node = str(send["node"])
        index = counts.get(node, 0)
        counts[node] = index + 1
        tasks.append(task(f"{node}#{index}", node, ("__pregel_push", position)))
    tasks.extend(task(name, name, ("__pregel_pull", name))
                 for name in dict.fromkeys(str(name) for name in frontier.get("next", ())))
    return tuple(tasks)


def _failed_errors(record: WorkflowRecord) -> dict[str, str]:
    """Of a workflow whose step failed: the error of each task that failed it, by task key, as
    LangGraph's ``PregelTask.error`` reads once stored: ``"<Type>('<message>')"``."""
    error = record.error or {}
    failed = error.get("failed_nodes") or ([error["node"]] if error.get("node") else [])
    errors: dict[str, str] = {}
    kind, message = str(error.get("error_type") or ""), str(error.get("message") or "")
    for name in failed if isinstance(failed, list) else ():
        errors[str(name)] = f"{kind}({message!r})" if kind else str(error.get("summary") or message)
    return errors


@dataclass(frozen=True)
class StateSnapshot:
    """A workflow's state at one checkpoint.

    ``values`` is the full state after ``step`` committed steps; ``next`` the nodes of
    the tasks the next step runs, one entry per task as in LangGraph 1.2 (three ``Send`` tasks to
    ``w`` are ``("w", "w", "w")``; the Sends in order first, then edge-triggered nodes;
    empty: nothing left to run); ``checkpoint_id`` is
    ``"<workflow_id>:<step>"`` and ``parent_checkpoint_id`` the checkpoint it followed
    (None for a workflow's first; for a fork, a checkpoint of the workflow it was
    forked from). ``created_at`` is when it was committed (``time.time()`` seconds).
    ``metadata`` holds ``source`` (``input``, ``loop``, ``update`` or ``fork``), ``step``
    and ``writes`` (each node that ran in the step -> the updates it returned), plus
    ``as_node`` for an update and ``parent`` for a fork. ``interrupts`` lists the
    pending ``Interrupt``s of an interrupted workflow's latest snapshot. ``status`` and ``error`` are the workflow's
    (as ``get_workflow_status`` reports them) on its latest checkpoint, None on older ones.
    ``subgraphs`` (only from ``get_state(id, subgraphs=True)``) maps each task of the
    current step that runs a subgraph (the node name, or ``node#i``) to that child
    workflow's latest snapshot, itself with its ``subgraphs``. ``tasks`` (LangGraph's) has a
    ``PregelTask`` per entry of ``next``, each with the interrupts its node raised
    (``state.tasks[0].interrupts[0].value``).
    """

    workflow_id: str
    values: Mapping[str, Any]
    next: tuple[str, ...]
    step: int
    checkpoint_id: str
    parent_checkpoint_id: str | None
    created_at: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    interrupts: tuple[Any, ...] = ()
    status: str | None = None
    error: Mapping[str, Any] | None = None
    subgraphs: Mapping[str, StateSnapshot] = field(default_factory=dict)
    tasks: tuple[PregelTask, ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        """LangGraph's ``snapshot.config``: ``{"configurable": {"thread_id", "checkpoint_ns", "checkpoint_id"}}``.

        Passed back to ``graph.get_state(config)`` it reads this very checkpoint; a
        fresh dict each call. The empty snapshot of a thread with no checkpoint yet names
        no ``checkpoint_id``.
        """
        if not self.checkpoint_id:
            return {"configurable": {"thread_id": self.workflow_id, "checkpoint_ns": ""}}
        return checkpoint_config(self.workflow_id, self.checkpoint_id)

    @property
    def parent_config(self) -> dict[str, Any] | None:
        """LangGraph's ``snapshot.parent_config``: the ``config`` of ``parent_checkpoint_id``, None for a first checkpoint.

        A fork's parent is a checkpoint of the workflow it was forked from: its
        ``thread_id`` is that workflow's.
        """
        if self.parent_checkpoint_id is None:
            return None
        return checkpoint_config(parse_checkpoint_id(self.parent_checkpoint_id)[0], self.parent_checkpoint_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "workflow_id": self.workflow_id,
            "values": dict(self.values),
            "next": list(self.next),
            "step": self.step,
            "checkpoint_id": self.checkpoint_id,
            "parent_checkpoint_id": self.parent_checkpoint_id,
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
            "interrupts": list(self.interrupts),
            "status": self.status,
            "error": None if self.error is None else dict(self.error),
            **({"subgraphs": {task: snap.to_dict() for task, snap in self.subgraphs.items()}}
               if self.subgraphs else {}),
        }


def _source(checkpoint: Checkpoint) -> str:
    source = checkpoint.metadata.get("source")
    if isinstance(source, str):
        return source
    return "input" if checkpoint.step == 0 else "loop"


def _parent(checkpoint: Checkpoint) -> str | None:
    parent = checkpoint.metadata.get("parent")
    if isinstance(parent, str):
        return parent
    return None if checkpoint.step == 0 else checkpoint_id(checkpoint.workflow_id, checkpoint.step - 1)


def _next_tasks(frontier: Mapping[str, Any]) -> tuple[str, ...]:
    """The node of each task ``frontier``'s step still runs: one per Send, in order, then the
    edge-triggered nodes once each (LangGraph 1.2's order: its push tasks before its pull tasks);
    as LangGraph's, tasks of a paused or failed step that finished (``pending_writes``) are left out."""
    done = frontier.get("pending_writes") or {}
    names: list[str] = []
    sent: dict[str, int] = {}
    for send in frontier.get("sends") or ():
        node = str(send["node"])
        index = sent[node] = sent.get(node, -1) + 1
        if f"{node}#{index}" not in done:  # (a task of a paused or failed step that finished: not next)
            names.append(node)
    names.extend(dict.fromkeys(str(name) for name in frontier.get("next", ()) if str(name) not in done))
    return tuple(names)


def snapshot_of(checkpoint: Checkpoint, record: WorkflowRecord | None = None) -> StateSnapshot:
    """The snapshot of ``checkpoint``; pass the workflow's ``record`` if it is the latest.

    With ``record`` (at the checkpoint's step) the snapshot carries the workflow's
    status and error, and its values and next nodes are the record's.
    """
    latest = record is not None and record.step == checkpoint.step
    values = record.state if latest and record is not None else checkpoint.state
    frontier = record.frontier if latest and record is not None else checkpoint.frontier
    metadata = {**checkpoint.metadata, "source": _source(checkpoint), "step": checkpoint.step,
                "writes": dict(checkpoint.writes)}
    interrupts = read_interrupts(frontier) if latest and record is not None \
        and record.status == WorkflowStatus.INTERRUPTED else ()
    errors = _failed_errors(record) if latest and record is not None and record.status == WorkflowStatus.FAILED else {}
    key = checkpoint_id(checkpoint.workflow_id, checkpoint.step)
    return StateSnapshot(
        workflow_id=checkpoint.workflow_id,
        values=dict(values),
        next=_next_tasks(frontier),
        step=checkpoint.step,
        checkpoint_id=checkpoint_id(checkpoint.workflow_id, checkpoint.step),
        parent_checkpoint_id=_parent(checkpoint),
        created_at=checkpoint.created_at,
        metadata=metadata,
        status=record.status if latest and record is not None else None,
        error=record.error if latest and record is not None else None,
        interrupts=interrupts,
        tasks=_tasks_of(key, frontier, interrupts, errors),
    )


def _not_found(workflow_id: str, where: str) -> WorkflowNotFoundError:
    return WorkflowNotFoundError(f"no workflow {workflow_id!r} in {where!r}")


async def read_state(store: StateStore, workflow_id: str, *, where: str, subgraphs: bool = False) -> StateSnapshot:
    """The latest snapshot of ``workflow_id``; ``WorkflowNotFoundError`` (naming ``where``) if unknown.

    With ``subgraphs``, the snapshots of the child workflows its current step runs too.
    """
    record = await store.get(workflow_id)
    if record is None:
        raise _not_found(workflow_id, where)
    # The record's step is its newest checkpoint's: limit=1 alone lets a store read only the tail.
    latest = await store.list_checkpoints(workflow_id, limit=1)
    if latest and latest[0].step == record.step:
        checkpoint = latest[0]
    else:  # its checkpoint expired or was never kept: the record alone still says where it is
        checkpoint = Checkpoint(workflow_id, record.step, record.state, record.frontier, created_at=record.updated_at)
    snapshot = snapshot_of(checkpoint, record)
    if subgraphs:
        children = {task: await read_state(store, child.workflow_id, where=where, subgraphs=True)
                    for task, child in (await children_of(store, record)).items()}
        if children:
            # As LangGraph's: each subgraph task's ``state`` is its child's snapshot too.
            prefix = len(snapshot.checkpoint_id) + 1
            tasks = tuple(replace(task, state=children.get(task.id[prefix:], task.state)) for task in snapshot.tasks)
            snapshot = replace(snapshot, subgraphs=children, tasks=tasks)
    return snapshot


def _before_step(workflow_id: str, before: str | int | None) -> int | None:
    if before is None:
        return None
    if isinstance(before, int) and not isinstance(before, bool):
        return before
    if isinstance(before, str):
        owner, step = parse_checkpoint_id(before)
        if owner != workflow_id:
            raise ConfigurationError(
                f"get_state_history({workflow_id!r}, before={before!r}): that checkpoint belongs to workflow "
                f"{owner!r}; pass a checkpoint id of {workflow_id!r} (or a step number)"
            )
        return step
    raise ConfigurationError(f"before={before!r} must be a checkpoint id ('<workflow_id>:<step>') or a step number")


async def read_history(
    store: StateStore, workflow_id: str, *, limit: int | None, before: str | int | None, where: str
) -> list[StateSnapshot]:
    """Snapshots of ``workflow_id``'s checkpoints, newest first.

    At most ``limit`` (an int >= 1); ``before`` (a checkpoint id of this workflow, or a
    step number) keeps only older checkpoints, for paging. ``WorkflowNotFoundError``
    if the workflow is unknown, ``ConfigurationError`` for a bad ``limit``/``before``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"get_state_history(limit={limit!r}): limit must be an int >= 1 or None")
    before_step = _before_step(workflow_id, before)
    record = await store.get(workflow_id)
    if record is None:
        raise _not_found(workflow_id, where)
    checkpoints = await store.list_checkpoints(workflow_id, limit=limit, before=before_step)
    return [snapshot_of(cp, record) for cp in checkpoints]


async def read_checkpoint(store: StateStore, checkpoint: str, *, where: str) -> tuple[WorkflowRecord, Checkpoint]:
    """The record of the workflow a checkpoint id names, and that checkpoint.

    ``WorkflowNotFoundError`` if the workflow or the checkpoint is not (or no longer)
    stored, naming the steps that are.
    """
    workflow_id, step = parse_checkpoint_id(checkpoint)
    record = await store.get(workflow_id)
    if record is None:
        raise WorkflowNotFoundError(f"checkpoint {checkpoint!r}: no workflow {workflow_id!r} in {where!r}")
    found = await store.list_checkpoints(workflow_id, limit=1, before=step + 1)
    if not found or found[0].step != step:
        steps = [cp.step for cp in await store.list_checkpoints(workflow_id)]
        have = f"steps {min(steps)}..{max(steps)}" if steps else "none"
        raise WorkflowNotFoundError(
            f"no checkpoint {checkpoint!r}: workflow {workflow_id!r} has checkpoints at {have} "
            "(get_state_history lists them)"
        )
    return record, found[0]


def _as_node(graph: Graph, record: WorkflowRecord, as_node: str | None, last: Checkpoint | None) -> str:
    call = f"update_state({record.workflow_id!r})"
    if as_node is None:
        if record.step == 0:
            return START
        writers = sorted((last.writes if last is not None and last.step == record.step else {}).keys())
        if not writers and last is not None and last.step == record.step and last.metadata.get("source") == "fork":
            # A fork's first checkpoint: the writers of the step it was forked at (``plan_fork``).
            writers = sorted(str(name) for name in last.metadata.get("writers") or ())
        if len(writers) == 1:
            return str(writers[0])
        ran = f"nodes {', '.join(map(repr, writers))} wrote" if writers else "no node wrote"
        raise ConfigurationError(
            f"{call}: pass as_node= (a node of graph {graph.name!r}, or START): {ran} in the last step, "
            "so which node the update stands for is ambiguous"
        )
    if as_node != START and as_node not in graph.nodes:
        raise ConfigurationError(
            f"{call}: as_node={as_node!r} is not a node of graph {graph.name!r}; use one of "
            f"{', '.join(map(repr, graph.nodes))} or START"
        )
    return as_node


async def plan_update(
    graph: Graph, record: WorkflowRecord, values: Mapping[str, Any], as_node: str | None,
    last: Checkpoint | None, payload_limit: int | None,
) -> tuple[WorkflowRecord, Checkpoint]:
    """The record and checkpoint that writing ``values`` as node ``as_node`` commits (not saved).

    ``values`` merge into ``record``'s state through the graph's reducers
    (``merge_updates``, as a node's updates do) in a new step; the next nodes are those
    ``graph`` routes after ``as_node`` on the merged state (from ``START``: the entry
    points on it), and the workflow's join progress advances as if ``as_node`` ran.
    ``as_node`` None means the one node that wrote in the last step (``START`` before
    any step ran). The status becomes ``completed`` when nothing is left to run,
    stays ``running`` for a running workflow nobody drives (recovery or ``resume``
    continues it), and is ``pending`` otherwise (``resume`` continues it); the error
    of a failed workflow is dropped. When the last step did not commit (it failed, or
    paused on an interrupt), the update stands in for ``as_node``'s output in *that*
    step: the outputs its other tasks kept are merged with it and routed as the step
    would have been, and its tasks still without an output run next (never dropped).
    A node whose kept output was merged so is not run again by the routing from an
    ``as_node`` outside the step (by default the last committed step's writer, whose
    successors are that step's nodes): its write would count twice.
    A workflow paused at a static breakpoint (``interrupt_before`` or ``interrupt_after``) or
    in ``interrupt()`` does not pause again at the same point: the new frontier is marked
    ``breakpoint_passed``, so ``resume`` runs the step it routes to without an
    ``interrupt_before`` pause there (as LangGraph's resume after an update).

    Raises ``ConfigurationError`` for a bad ``values`` or ``as_node``,
    ``StateNotSerializableError``/``ReducerConflictError``/``ExecutionError`` as a step
    would, ``PayloadTooLargeError`` over ``payload_limit`` bytes.
    """
    call = f"update_state({record.workflow_id!r})"
    if not isinstance(values, Mapping):
        raise ConfigurationError(f"{call}: values must be a dict of state updates, got {type(values).__name__}")
    node = _as_node(graph, record, as_node, last)
    updates, merged = _merged_update(graph, record, values, node, call)
    view = State._trusted(merged, record.workflow_id)
    joins: Mapping[str, Sequence[str]] = record.frontier.get("joins", {})
    step_writes: list[tuple[str, Mapping[str, Any]]] = [(node, updates)]
    configurable = record.metadata.get(CONFIGURABLE_KEY)
    if node == START:
        frontier = await graph.start_frontier(view, configurable=configurable)
        frontier["joins"] = {key: list(seen) for key, seen in joins.items()}
    elif record.frontier.get("pending_writes"):
        step_writes, merged, frontier = await _complete_step(graph, record, node, updates)
    else:
        frontier = await graph.next_frontier([node], view, joins, deferred=record.frontier.get("deferred", ()),
                                             configurable=configurable)
    if frontier_nodes(frontier) and _paused_before(record):
        # As LangGraph's resume after a breakpoint: the pause was seen, so the next step runs
        # (the paused node, kept by routing after the last writer, or what ``as_node`` routes to).
        frontier["breakpoint_passed"] = True
    if not frontier_nodes(frontier):
        status = WorkflowStatus.COMPLETED
    elif record.status == WorkflowStatus.RUNNING:
        status = WorkflowStatus.RUNNING
    else:
        status = WorkflowStatus.PENDING
    step = record.step + 1
    writes = dict(step_writes)
    updated = record.evolve(state=merged, step=step, frontier=frontier, status=status, error=None)
    check_commit_size(record.workflow_id, step, merged, {**updated.to_dict(), "state": None}, writes, payload_limit)
    checkpoint = Checkpoint(record.workflow_id, step, merged, frontier, writes=writes,
                            metadata={"source": "update", "as_node": node})
    return updated, checkpoint


def edited_state(graph: Graph, record: WorkflowRecord, values: Any, payload_limit: int | None) -> dict[str, Any]:
    """``record``'s state with ``Command(update=values)`` merged in, as a paused workflow is resumed (not saved).

    LangGraph's ``invoke(Command(resume=answer, update=values), config)``: ``values``
    merge through the graph's reducers as a write of ``START``, before the paused step
    runs again: the nodes that run again (the interrupted one, the one paused before)
    see the edit, and the step's writes (kept or new) merge after it. The step keeps its
    number (interrupt and subgraph ids are the step's), so the edit has no checkpoint of
    its own: the step's commit holds it, and ``resume`` marks the frontier
    ``state_edited`` so that the step's tasks carry the edited state instead of
    referring to the step's checkpoint (``core.task_state``).

    Raises ``ConfigurationError`` for a ``values`` that is not a dict or uses a reserved
    key, ``StateNotSerializableError``/``ReducerConflictError``/``StateValidationError``
    as a node's write would, and ``PayloadTooLargeError`` over ``payload_limit`` bytes.
    """
    call = f"resume({record.workflow_id!r}, Command(update=...))"
    try:  # a dict, or LangGraph's list of (key, value) pairs, as a node's Command takes them
        updates = update_dict(values, call)
    except InvalidNodeOutputError as exc:
        raise ConfigurationError(str(exc)) from None
    merged = _merged_update(graph, record, updates, START, call)[1]
    check_commit_size(record.workflow_id, record.step, merged, b"{}", None, payload_limit)
    return merged


def paused_values(graph: Graph | None, record: WorkflowRecord) -> Mapping[str, Any]:
    """``record``'s state with the writes its paused (or failed) step kept merged in, as LangGraph
    shows a paused thread's values; the state itself without a ``graph`` (its reducers) or kept
    writes. Only for display: the step's commit merges those writes into the stored state."""
    pending = record.frontier.get("pending_writes") or {}
    if graph is None or not pending or record.status not in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED):
        return record.state
    order = {name: i for i, name in enumerate(graph.nodes)}
    writes: list[tuple[str, Mapping[str, Any]]] = []
    for entry in read_entries(record.frontier, order):
        result = read_output(pending[entry.key]) if entry.key in pending else None
        if result is not None and result.interrupt is None and result.updates:
            writes.append((entry.key, result.updates))
    try:
        return merge_updates(record.state, writes, graph.reducers) if writes else record.state
    except Exception:  # the step's own commit reports what fails to merge; shown as stored until then
        return record.state


def _merged_update(
    graph: Graph, record: WorkflowRecord, values: Mapping[str, Any], node: str, call: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` as ``node``'s update (message shorthands read as a node's are) and ``record``'s
    state with it merged through the graph's reducers, checked as a node's writes are."""
    updates = dict(values)
    if graph.message_keys:  # ("user", "hi") and the other shorthands a node may return: the same here
        updates = coerce_message_updates(updates, graph.message_keys)
    reserved = reserved_keys(updates)
    if reserved:
        raise ConfigurationError(
            f"{call}: state key(s) {', '.join(map(repr, reserved))} start with '__', "
            "which is reserved for the framework (e.g. '__interrupt__'); rename the key")
    check_values(updates)
    merged = merge_updates(record.state, [(node, updates)], graph.reducers)
    graph.check_writes([(node, updates)], merged)  # a state schema's keys and types, as for a node
    return updates, merged


def _paused_before(record: WorkflowRecord) -> bool:
    """Whether ``record`` is paused by a pause of its own (a static breakpoint before or after a
    step, or ``interrupt()``), or passed a breakpoint in its current step: an update then does
    not make ``resume`` pause again before the step it routes to. A pause inside a subgraph is
    answered in the child workflow, so it does not count here."""
    if record.frontier.get("breakpoint_passed"):
        return True
    return any(isinstance(pause, Mapping) and not pause.get("subgraph")
               for pause in record.frontier.get("interrupts") or ())


async def _complete_step(
    graph: Graph, record: WorkflowRecord, node: str, updates: Mapping[str, Any],
) -> tuple[list[tuple[str, Mapping[str, Any]]], dict[str, Any], dict[str, Any]]:
    """Finish ``record``'s uncommitted step (failed or interrupted) with ``updates`` as ``node``'s output.

    The outputs its tasks kept (``pending_writes``) are merged with the update, in the
    step's merge order, and routing follows every node that now has an output, as if the
    step had run; tasks of the step that still have no output run in the next step.
    Returns the step's writes, the merged state and the next frontier.
    """
    order = {name: i for i, name in enumerate(graph.nodes)}
    pending = record.frontier.get("pending_writes") or {}
    entries = read_entries(record.frontier, order)
    writes: list[tuple[str, Mapping[str, Any]]] = []
    gotos: list[tuple[str, Sequence[Any]]] = []
    ran: list[str] = []
    missing: list[TaskEntry] = []
    placed = False
    for entry in entries:
        if entry.node == node and not entry.is_send and not placed:
            writes.append((node, updates))
            ran.append(node)
            placed = True
            continue
        result = read_output(pending[entry.key]) if entry.key in pending else None
        if result is None or result.interrupt is not None:
            missing.append(entry)
            continue
        ran.append(entry.node)
        if result.updates:
            writes.append((entry.key, result.updates))
        if result.goto:
            gotos.append((entry.node, result.goto))
    if not placed:
        writes.append((node, updates))
        ran.append(node)
    merged = merge_updates(record.state, writes, graph.reducers)
    graph.check_writes(writes, merged)
    frontier = await graph.next_frontier(list(dict.fromkeys(ran)), State._trusted(merged, record.workflow_id),
                                         record.frontier.get("joins", {}), gotos,
                                         record.frontier.get("deferred", ()),
                                         configurable=record.metadata.get(CONFIGURABLE_KEY))
    if not placed:
        # Routed from a node outside the step (its predecessor, by default): the step's nodes whose
        # kept outputs were just merged are not run again (each write counts once).
        kept = {entry.node for entry in entries if not entry.is_send and entry.node in ran}
        frontier["next"] = [name for name in frontier["next"] if name not in kept]
    again = [entry.node for entry in missing if not entry.is_send]
    if again:
        frontier["next"] = sorted(dict.fromkeys([*frontier["next"], *again]), key=lambda n: order.get(n, len(order)))
    resent = [{"node": entry.node, "arg": dict(entry.arg or {}),
               # a handler's input state stays where it is (engine._route_failure)
               **({"state_ref": dict(entry.state_ref)} if entry.state_ref is not None else {})}
              for entry in missing if entry.is_send]
    if resent:
        frontier["sends"] = [*resent, *(frontier.get("sends") or ())]
    return writes, merged, frontier


def plan_fork(
    graph: Graph, source: WorkflowRecord, checkpoint: Checkpoint, workflow_id: str, *,
    status: str, metadata: Mapping[str, Any],
) -> tuple[WorkflowRecord, Checkpoint]:
    """The record and first checkpoint of a new workflow ``workflow_id`` forked from ``checkpoint``.

    The fork starts with the checkpoint's state, step, next nodes and join progress
    (a failed step's pending writes are not copied: its nodes run again), under
    ``graph`` with ``status`` (``completed`` if the checkpoint had nothing left to run).
    Its record's metadata is ``metadata`` plus ``forked_from`` (``workflow_id``,
    ``checkpoint_id``) and the source's priority and output keys (unless ``metadata``
    sets them); its checkpoint's metadata names the parent checkpoint.
    """
    parent = checkpoint_id(checkpoint.workflow_id, checkpoint.step)
    frontier: dict[str, Any] = {
        "next": list(checkpoint.frontier.get("next", ())),
        "joins": {key: list(seen) for key, seen in checkpoint.frontier.get("joins", {}).items()}}
    for key in ("sends", "deferred"):  # pending Send tasks and deferred nodes go with the fork
        if checkpoint.frontier.get(key):
            frontier[key] = list(checkpoint.frontier[key])
    # What the source was started with and every process reads from its record: its
    # priority, and the output schema's keys (what the workflow returns).
    inherited = {key: source.metadata[key] for key in ("priority", OUTPUT_KEYS) if source.metadata.get(key)}
    record = WorkflowRecord(
        workflow_id=workflow_id, graph_name=graph.name,
        status=status if frontier_nodes(frontier) else WorkflowStatus.COMPLETED,
        state=dict(checkpoint.state), step=checkpoint.step, frontier=frontier, graph=graph.fingerprint(),
        metadata={**inherited, **metadata,
                  "forked_from": {"workflow_id": checkpoint.workflow_id, "checkpoint_id": parent}},
    )
    # The nodes that wrote in the forked checkpoint's step: update_state(fork) without as_node
    # stands for the one of them, as it would on the source (``_as_node``).
    first = Checkpoint(workflow_id, checkpoint.step, dict(checkpoint.state), frontier,
                       metadata={"source": "fork", "parent": parent, "writers": sorted(checkpoint.writes)})
    return record, first
