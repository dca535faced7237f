"""``WorkflowStatusInfo``: what ``get_workflow_status`` and ``list_workflows`` report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.frontier import frontier_nodes
from distributed_agents.core.interrupts import Interrupt, read_interrupts
from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus

__all__ = ["ACTIVE", "WorkflowStatusInfo", "page_workflows", "status_filter"]

ACTIVE = "active"  # list_workflows(status=ACTIVE): not yet terminal (pending, running or interrupted)


@dataclass(frozen=True)
class WorkflowStatusInfo:
    """A workflow's status at one moment.

    ``status`` is one of ``pending``, ``running``, ``completed``, ``failed``,
    ``cancelled``, ``interrupted`` (paused by ``interrupt()`` or a breakpoint; not
    done: ``resume`` continues it). ``interrupts`` lists the pending pauses of an
    interrupted workflow (``Interrupt``: ``id``, ``node``, ``value``, ``kind``). ``next_nodes`` are the nodes of the step in progress (or next).
    ``error`` (when failed) holds ``kind`` (the exception's class), ``summary``,
    ``step``, ``phase`` (``run``, ``merge`` or ``commit``) and what is known of the
    culprit (``node``, ``key``, ``nodes``); for a node failure also ``attempts``,
    ``error_type``, ``message``, ``traceback`` and ``failed_nodes`` (every node of the
    step that failed). The writes of the step's nodes that succeeded are kept for
    ``resume`` unless ``pending_writes_dropped`` says why they could not be.
    ``waiting_for`` says what a running workflow is blocked on, e.g.
    "waiting for a worker of type 'writer'".
    """

    workflow_id: str
    graph_name: str
    status: str
    step: int
    next_nodes: tuple[str, ...]
    error: Mapping[str, Any] | None
    waiting_for: str | None
    created_at: float
    updated_at: float
    interrupts: tuple[Interrupt, ...] = ()

    @property
    def done(self) -> bool:
        """Whether the workflow reached a terminal status."""
        return self.status in WorkflowStatus.TERMINAL

    @property
    def cursor(self) -> str:
        """Where a ``list_workflows`` page ending with this workflow stops: pass it as ``cursor=``."""
        return f"{self.created_at!r}/{self.workflow_id}"

    @classmethod
    def from_record(cls, record: WorkflowRecord, *, waiting_for: str | None = None) -> WorkflowStatusInfo:
        """The status described by a stored record (``waiting_for`` from the driving process)."""
        waiting = waiting_for or record.metadata.get("waiting_for")
        return cls(
            workflow_id=record.workflow_id,
            graph_name=record.graph_name,
            status=record.status,
            step=record.step,
            next_nodes=tuple(frontier_nodes(record.frontier)),
            error=record.error,
            waiting_for=waiting if record.status == WorkflowStatus.RUNNING else None,
            created_at=record.created_at,
            updated_at=record.updated_at,
            interrupts=read_interrupts(record.frontier) if record.status == WorkflowStatus.INTERRUPTED else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "workflow_id": self.workflow_id,
            "graph_name": self.graph_name,
            "status": self.status,
            "step": self.step,
            "next_nodes": list(self.next_nodes),
            "error": None if self.error is None else dict(self.error),
            "waiting_for": self.waiting_for,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "interrupts": [i.to_dict() for i in self.interrupts],
        }


def status_filter(status: str | None, graph: Any, limit: int | None) -> str | None:
    """Check ``list_workflows`` arguments; the status to ask the store for (None: all).

    ``ConfigurationError`` for an unknown status, a ``graph`` that is neither a name
    nor a ``Graph``, or a ``limit`` that is not an int >= 1.
    """
    if status is not None and status != ACTIVE and status not in WorkflowStatus.ALL:
        raise ConfigurationError(f"unknown status {status!r}; use one of {sorted(WorkflowStatus.ALL | {ACTIVE})}")
    if graph is not None and not isinstance(graph, str) and not isinstance(getattr(graph, "name", None), str):
        raise ConfigurationError(f"list_workflows(graph={graph!r}): pass a graph name or a Graph")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"list_workflows(limit={limit!r}): limit must be an int >= 1 or None")
    return None if status == ACTIVE else status


def _cursor_key(cursor: str) -> tuple[float, str]:
    # "<created_at>/<workflow_id>": workflow ids never contain '/'.
    created, separator, workflow_id = cursor.partition("/") if isinstance(cursor, str) else ("", "", "")
    try:
        if separator and workflow_id:
            return float(created), workflow_id
    except ValueError:
        pass
    raise ConfigurationError(
        f"list_workflows(cursor={cursor!r}) is not a cursor; pass the .cursor of the last workflow of a page"
    )


def page_workflows(
    infos: Sequence[WorkflowStatusInfo], *, status: str | None, graph: Any, limit: int | None, cursor: str | None
) -> list[WorkflowStatusInfo]:
    """One page of ``infos``: filtered by ``status`` (``ACTIVE`` included) and ``graph`` name,
    ordered by (``created_at``, ``workflow_id``), after ``cursor``, at most ``limit``.

    A cursor names a position, not a workflow: a page continues correctly even if the
    workflow it ended with has since been deleted or expired.
    """
    name = graph if isinstance(graph, str) or graph is None else str(graph.name)
    after = None if cursor is None else _cursor_key(cursor)
    selected = sorted(
        (info for info in infos
         if (status is None or info.status == status or (status == ACTIVE and not info.done))
         and (name is None or info.graph_name == name)),
        key=lambda info: (info.created_at, info.workflow_id),
    )
    if after is not None:
        selected = [info for info in selected if (info.created_at, info.workflow_id) > after]
    return selected if limit is None else selected[:limit]
