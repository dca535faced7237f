"""``WorkflowStatusInfo``: what ``get_workflow_status`` and ``list_workflows`` report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus

__all__ = ["WorkflowStatusInfo"]


@dataclass(frozen=True)
class WorkflowStatusInfo:
    """A workflow's status at one moment.

    ``status`` is one of ``pending``, ``running``, ``completed``, ``failed``,
    ``cancelled``. ``next_nodes`` are the nodes of the step in progress (or next).
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

    @property
    def done(self) -> bool:
        """Whether the workflow reached a terminal status."""
        return self.status in WorkflowStatus.TERMINAL

    @classmethod
    def from_record(cls, record: WorkflowRecord, *, waiting_for: str | None = None) -> WorkflowStatusInfo:
        """The status described by a stored record (``waiting_for`` from the driving process)."""
        waiting = waiting_for or record.metadata.get("waiting_for")
        return cls(
            workflow_id=record.workflow_id,
            graph_name=record.graph_name,
            status=record.status,
            step=record.step,
            next_nodes=tuple(record.frontier.get("next", ())),
            error=record.error,
            waiting_for=waiting if record.status == WorkflowStatus.RUNNING else None,
            created_at=record.created_at,
            updated_at=record.updated_at,
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
        }
