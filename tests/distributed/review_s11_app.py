"""Node functions for tests/distributed/test_review_s11.py, served by real worker processes.

``pause`` appends a line per run to ``<DA_MARKER_DIR>/runs`` (worker id, the workflow's
``n``, attempt), sleeps ``state["pause"]`` seconds (longer than the lease for some, so the
lease must be kept while it runs) and returns ``out = 2 * n``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()


@registry.register("pause")
async def pause(state: State, context: NodeContext) -> dict[str, Any]:
    with open(pathlib.Path(os.environ["DA_MARKER_DIR"]) / "runs", "a") as runs:
        runs.write(f"{context.worker_id} {state['n']} {context.attempt}\n")
    await asyncio.sleep(float(state["pause"]))
    return {"out": state["n"] * 2}
