"""An orchestrator process of the chaos suite (so that the test can SIGKILL it).

    python orchestrate.py --backend-url URL --prefix P --orchestrator-id ID
                          [--workflows 0,3,7] [--lease-ttl S] [--visibility-timeout S]
                          [--stagger S] [--resubmit]

Connects a ``DistributedOrchestrator`` with recovery on, registers the chaos graphs
(so it can take over any chaos workflow whose owner died), starts the listed
workflows (ids ``<prefix>-<index>``, inputs from ``chaos_app.workflow_spec``) and
waits for them, printing one ``RESULT {json}`` line per workflow. With ``--resubmit``
(a replacement for a killed orchestrator, like a client retrying) a workflow that
already exists is waited for instead of started. A workflow that pauses in
``interrupt()`` is waited for until it ends: another process (``answer.py``) answers it.
It then keeps running its recovery loop until SIGTERM, when it closes cleanly and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from chaos_app import build_graphs, workflow_spec

from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.distributed import DistributedOrchestrator


async def main(args: argparse.Namespace) -> int:
    graphs = build_graphs()
    orchestrator = DistributedOrchestrator(
        backend_url=args.backend_url, prefix=args.prefix, orchestrator_id=args.orchestrator_id,
        visibility_timeout=args.visibility_timeout, lease_ttl=args.lease_ttl,
        recovery_interval=args.lease_ttl / 3, max_attempts=10,
    )
    for graph in graphs.values():
        orchestrator.register_graph(graph)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while True:  # a replacement may start while the backend is restarting
        try:
            await orchestrator.connect()
            break
        except BackendUnavailableError:
            await asyncio.sleep(0.5)
    print("READY", flush=True)

    async def exists(workflow_id: str) -> bool:
        while True:  # the client's own look-up, through a backend outage
            try:
                return await orchestrator.backend.state_store.get(workflow_id) is not None
            except BackendUnavailableError:
                await asyncio.sleep(0.5)

    async def one(position: int, index: int) -> None:
        await asyncio.sleep(position * args.stagger)
        graph_name, state = workflow_spec(index)
        workflow_id = f"{args.prefix}-{index}"
        outcome: dict[str, Any] = {"workflow_id": workflow_id}
        try:
            if args.resubmit and await exists(workflow_id):
                # A client retrying after its orchestrator died: the workflow exists; wait for it.
                final = await orchestrator.wait(workflow_id)
            else:
                final = await orchestrator.execute(graphs[graph_name], state, workflow_id=workflow_id)
            while "__interrupt__" in final:  # paused: answered from another process, then driven by any
                await asyncio.sleep(0.5)
                final = await orchestrator.wait(workflow_id)
            outcome["state"] = dict(final)
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        print("RESULT " + json.dumps(outcome), flush=True)

    indexes = [int(i) for i in args.workflows.split(",") if i.strip()] if args.workflows else []
    await asyncio.gather(*(one(position, i) for position, i in enumerate(indexes)))
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
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--visibility-timeout", type=float, default=2.0)
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between workflow submissions")
    parser.add_argument("--resubmit", action="store_true",
                        help="a replacement: wait for workflows that exist instead of starting them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser.parse_args())))
