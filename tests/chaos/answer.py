"""The chaos suite's human: answers the interrupts of its workflows from a process of its own.

    python answer.py --backend-url URL --prefix P --orchestrator-id ID --workflows 0,6 --go-file PATH
                     [--lease-ttl S]

Answers only once ``PATH`` exists: the test creates it after the orchestrators that ran
(and paused) those workflows were SIGKILLed and replaced. It connects a ``DistributedOrchestrator`` (recovery on, so it is
one more orchestrator that can take workflows over), and for each listed workflow
waits until it is ``interrupted``, then calls ``resume(id, Command(resume={interrupt id:
answer}))`` with ``chaos_app.answers_for`` (the answers a fault-free run gets), which
drives it on from this process. Answering is retried through backend outages, a lease
still held by a dead orchestrator, and a workflow that pauses again. Prints
``ANSWERING <id> <count>`` before each answer and ``DONE`` once every listed workflow
ended, then runs
its recovery loop until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from chaos_app import answers_for, build_graphs

from distributed_agents import Command
from distributed_agents.core.errors import BackendUnavailableError, ConfigurationError, ExecutionError
from distributed_agents.core.ports.state_store import WorkflowStatus
from distributed_agents.distributed import DistributedOrchestrator

log = logging.getLogger("chaos.answer")


async def main(args: argparse.Namespace) -> int:
    orchestrator = DistributedOrchestrator(
        backend_url=args.backend_url, prefix=args.prefix, orchestrator_id=args.orchestrator_id,
        lease_ttl=args.lease_ttl, recovery_interval=args.lease_ttl / 3, max_attempts=10,
    )
    graphs = build_graphs()
    for graph in graphs.values():
        orchestrator.register_graph(graph)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while True:
        try:
            await orchestrator.connect()
            break
        except BackendUnavailableError:
            await asyncio.sleep(0.5)
    print("READY", flush=True)

    async def answer(workflow_id: str) -> None:
        while True:
            try:
                record = await orchestrator.backend.state_store.get(workflow_id)
                if record is not None and record.status in WorkflowStatus.TERMINAL:
                    return
                if record is None or record.status != WorkflowStatus.INTERRUPTED:
                    await asyncio.sleep(0.3)
                    continue
                pauses = list(record.frontier.get("interrupts") or ())
                print(f"ANSWERING {workflow_id} {len(pauses)}", flush=True)
                result = await orchestrator.resume(workflow_id, graphs[record.graph_name],
                                                   Command(resume=answers_for(pauses)))
                if "__interrupt__" not in result:
                    return
            except (BackendUnavailableError, ExecutionError, ConfigurationError) as exc:
                # The backend restarts, a dead orchestrator's lease has not expired yet,
                # another orchestrator took the resumed workflow over, or it stopped being
                # interrupted between the read and the answer: look again.
                log.info("answering %s: %s: %s; trying again", workflow_id, type(exc).__name__, exc)
                await asyncio.sleep(0.5)

    while not os.path.exists(args.go_file):
        await asyncio.sleep(0.1)
    ids = [f"{args.prefix}-{i}" for i in args.workflows.split(",") if i.strip()]
    await asyncio.gather(*(answer(workflow_id) for workflow_id in ids))
    print("DONE", flush=True)
    await stop.wait()
    await orchestrator.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--orchestrator-id", required=True)
    parser.add_argument("--workflows", default="")
    parser.add_argument("--go-file", required=True, help="answer once this file exists")
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser.parse_args())))
