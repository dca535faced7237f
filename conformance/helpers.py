"""Small helpers shared by the checks: building tasks, expecting errors, waiting on time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

from distributed_agents.conformance.clauses import ContractViolation
from distributed_agents.core.ports.task_queue import ClaimedTask, Task, TaskQueue

__all__ = ["claim_ids", "make_task", "refused", "sleep_past"]


def make_task(
    task_id: str,
    node_type: str = "alpha",
    *,
    priority: int = 0,
    payload: Mapping[str, Any] | None = None,
    max_attempts: int | None = None,
) -> Task:
    """A task whose payload names it, so a mixed-up delivery is visible."""
    return Task(
        id=task_id,
        workflow_id=f"wf-{task_id}",
        node=f"node-{node_type}",
        node_type=node_type,
        payload=dict(payload) if payload is not None else {"task": task_id},
        priority=priority,
        max_attempts=max_attempts,
    )


async def claim_ids(
    queue: TaskQueue, node_types: list[str], *, worker_id: str = "w", max_tasks: int = 1, lease: float | None = None, wait: float = 0.0
) -> list[ClaimedTask]:
    """``queue.claim`` with keyword defaults the checks share."""
    return await queue.claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease, wait=wait)


async def refused(call: Awaitable[Any], error: type[BaseException], clause_id: str, what: str) -> BaseException:
    """Await ``call`` and require it to raise ``error``; a violation of ``clause_id`` otherwise."""
    try:
        result = await call
    except error as exc:
        return exc
    except ContractViolation:
        raise
    except Exception as exc:  # the wrong error is a contract breach too, not a crash of the suite
        raise ContractViolation(clause_id, f"{what} raised {type(exc).__name__}: {exc}, expected {error.__name__}") from exc
    raise ContractViolation(clause_id, f"{what} returned {result!r}, expected {error.__name__}")


async def sleep_past(seconds: float, slack: float) -> None:
    """Sleep until a deadline ``seconds`` from now has certainly passed."""
    await asyncio.sleep(seconds + 2 * slack)
