"""The four ports every backend implements, and the ``Backend`` that bundles them."""

from __future__ import annotations

from distributed_agents.core.ports.backend import Backend, BackendOptions, split_backend_url
from distributed_agents.core.ports.message_bus import BusMessage, MessageBus, Subscription, pattern_matches
from distributed_agents.core.ports.state_store import (
    Checkpoint,
    StateStore,
    WorkflowLease,
    WorkflowRecord,
    WorkflowStatus,
    checkpoints_page,
)
from distributed_agents.core.ports.task_queue import (
    ClaimedTask,
    DeadLetter,
    QueueStats,
    Task,
    TaskQueue,
    TaskResult,
    task_from_dict,
    task_to_dict,
)
from distributed_agents.core.ports.worker_registry import WorkerInfo, WorkerRegistry

__all__ = [
    "Backend",
    "BackendOptions",
    "BusMessage",
    "Checkpoint",
    "ClaimedTask",
    "DeadLetter",
    "MessageBus",
    "QueueStats",
    "StateStore",
    "Subscription",
    "Task",
    "TaskQueue",
    "TaskResult",
    "WorkerInfo",
    "WorkerRegistry",
    "WorkflowLease",
    "WorkflowRecord",
    "WorkflowStatus",
    "checkpoints_page",
    "pattern_matches",
    "split_backend_url",
    "task_from_dict",
    "task_to_dict",
]
