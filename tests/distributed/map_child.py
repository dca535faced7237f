"""Submits a Send map driven by this process, prints its id, then drives it until killed.

Usage: python map_child.py BACKEND_URL PREFIX WORKFLOW_ID. The far side of the mid-map
SIGKILL test in test_send_distributed; the map's nodes run on worker processes.
"""

from __future__ import annotations

import asyncio
import sys

from control_app import map_graph

from distributed_agents.distributed import DistributedOrchestrator


async def main(url: str, prefix: str, workflow_id: str) -> None:
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False, lease_ttl=1.0)
    await orchestrator.submit(map_graph(), {"items": list(range(120)), "mark": True, "pause": 0.05},
                              workflow_id=workflow_id)
    print(workflow_id, flush=True)
    await orchestrator.wait(workflow_id)  # killed before the map ends


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
