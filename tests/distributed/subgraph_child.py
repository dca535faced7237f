"""Submits the subgraph pipeline driven by this process, prints its id, then drives it until killed.

Usage: python subgraph_child.py BACKEND_URL PREFIX WORKFLOW_ID. The far side of the
mid-subgraph SIGKILL test in test_subgraphs_distributed; every node runs on a worker.
"""

from __future__ import annotations

import asyncio
import sys

from subgraph_app import pipeline

from distributed_agents.distributed import DistributedOrchestrator


async def main(url: str, prefix: str, workflow_id: str) -> None:
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False, lease_ttl=1.0)
    await orchestrator.submit(pipeline(), {"rounds": 6, "auto": True, "mark": True, "pause": 0.3},
                              workflow_id=workflow_id)
    print(workflow_id, flush=True)
    await orchestrator.wait(workflow_id)  # killed while the subgraph runs


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
