"""Runs the human-approval graph until it pauses, prints its status, then idles until killed.

Usage: python interrupt_child.py BACKEND_URL PREFIX WORKFLOW_ID. The far side of the
SIGKILL test in test_interrupts_distributed: the interrupt must outlive this process.
"""

from __future__ import annotations

import asyncio
import json
import sys

from control_app import approval_graph

from distributed_agents import Orchestrator


async def main(url: str, prefix: str, workflow_id: str) -> None:
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix})
    result = await orchestrator.execute(approval_graph(local=True), {"topic": "storms"}, workflow_id=workflow_id)
    status = await orchestrator.get_workflow_status(workflow_id)
    print(json.dumps({"status": status.status, "interrupt": result["__interrupt__"]}), flush=True)
    await asyncio.sleep(300)  # killed here, connections open, never closed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
