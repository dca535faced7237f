"""Node functions for tests/distributed/test_review_s10.py, served by real worker processes.

``step`` appends a line per run to ``<DA_MARKER_DIR>/runs`` (worker id, workflow's ``n``,
attempt); a worker started with ``DA_HANG_AFTER=k`` hangs in every run after its k-th, so
it can be SIGKILLed while holding tasks (some of them handed to its parked registration).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()
_done = 0


@registry.register("step")
async def step(state: State, context: NodeContext) -> dict[str, Any]:
    global _done
    with open(pathlib.Path(os.environ["DA_MARKER_DIR"]) / "runs", "a") as runs:
        runs.write(f"{context.worker_id} {state['n']} {context.attempt}\n")
    hang_after = int(os.environ.get("DA_HANG_AFTER", "-1"))
    if 0 <= hang_after <= _done:
        await asyncio.sleep(300)
    _done += 1
    return {"out": state["n"] * 2}
