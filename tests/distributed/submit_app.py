"""Submits two workflows and drives them until they end: the far side of test_client_processes.

Usage: python submit_app.py BACKEND_URL PREFIX MARKER_FILE [LEASE_TTL]. Prints each
workflow id on its own line as soon as ``submit`` returns it; the gate node waits for
MARKER_FILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
from typing import Any

from distributed_agents import Graph, Orchestrator, State


async def gate(state: State) -> dict[str, Any]:
    marker = pathlib.Path(state["marker"])
    while not marker.exists():
        await asyncio.sleep(0.02)
    return {"opened": state["name"]}


def gated_graph() -> Graph:
    return Graph("gated").add_node("gate", gate).set_entry_point("gate").set_finish_point("gate").compile()


async def main(url: str, prefix: str, marker: str, lease_ttl: str = "30") -> None:
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, lease_ttl=float(lease_ttl))
    ids = [await orchestrator.submit(gated_graph(), {"marker": marker, "name": name}) for name in ("first", "second")]
    for workflow_id in ids:
        print(workflow_id, flush=True)
    for workflow_id in ids:
        with contextlib.suppress(Exception):  # the other process cancels one of them
            await orchestrator.wait(workflow_id)
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
