"""How many cancellations a task had pending when a workflow run started in it.

A run is driven in the task that awaits ``execute`` (``core.orchestrator``), and its
in-process nodes run there too. ``node_runner.cancel_requested`` tells a genuine
cancellation of the run from a ``CancelledError`` a node raised itself by the task's
``cancelling()`` count; a caller may start a run where that count is above zero already
(``execute`` awaited in an ``except CancelledError`` cleanup). Such a run records the count
it started with here, and only cancellations beyond it are the run's. A run started with
none pending (the usual case) records nothing. Standard library only.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["begin", "end", "pending_at_start"]

_at_start: dict[asyncio.Task[Any], int] = {}


def begin(task: asyncio.Task[Any]) -> int | None:
    """Record ``task``'s pending cancellations as a run starts in it; what ``end`` restores (None: nothing recorded)."""
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    count = cancelling() if cancelling is not None else 0
    before = _at_start.get(task)
    if count == 0 and before is None:
        return None
    _at_start[task] = count
    return -1 if before is None else before


def end(task: asyncio.Task[Any], before: int | None) -> None:
    """Undo ``begin`` (``before`` is what it returned) as the run ends."""
    if before is None:
        return
    if before < 0:
        _at_start.pop(task, None)
    else:
        _at_start[task] = before


def pending_at_start(task: asyncio.Task[Any]) -> int:
    """The cancellations ``task`` had pending when the run now driven in it started (0 if none)."""
    return _at_start.get(task, 0) if _at_start else 0
