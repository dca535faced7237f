"""Bytes written to Redis for one fan-out over a large state: tasks name the state, they do not carry it.

    python benchmarks/payload_bytes.py                     # temporary redis-server
    python benchmarks/payload_bytes.py --backend-url redis://127.0.0.1:6379/0 --width 1000 --state-mb 1
    python benchmarks/payload_bytes.py --inline            # also the old way, every task carrying the state

One workflow: ``start`` writes a ``--state-mb`` MB string into the state, then ``--width``
parallel nodes (on a worker in this process, ``--capacity`` slots) each read it, and a
join ends it. Prints the bytes clients sent the server while it ran (``INFO stats``
``total_net_input_bytes``: use an otherwise idle server), the seconds it took, and how
many times the worker read the state. ``--inline`` runs it again with every task
carrying the state (the threshold ``INLINE_STATE_LIMIT`` raised past the state's size),
which is how tasks were built before: with the defaults that writes about 1 GB, and the
server holds the queued tasks in memory meanwhile (``--width 100`` keeps it at 100 MB).
``--results FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis.asyncio as redis_asyncio

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core import engine
from distributed_agents.core.ports.backend import BackendOptions

HERE = pathlib.Path(__file__).resolve().parent
MB = 1_000_000


def fan_graph(width: int, state_mb: float) -> Graph:
    graph = Graph(f"payload_fan_{width}")
    graph.add_node("start", lambda s: {"doc": "d" * int(state_mb * MB)})
    leaves = [f"leaf{i}" for i in range(width)]
    for leaf in leaves:
        graph.add_node(leaf, node_type="reader")
        graph.add_edge("start", leaf)
    graph.add_node("join", lambda s: None)
    graph.add_edge(leaves, "join")
    return graph.set_entry_point("start").set_finish_point("join").compile()


async def one_run(url: str, width: int, state_mb: float, capacity: int) -> dict[str, Any]:
    options = BackendOptions.from_url(url, prefix=f"pb{uuid.uuid4().hex[:8]}", max_payload_bytes=int(4 * state_mb * MB))
    worker_backend, orchestrator_backend = open_redis_backend(url, options), open_redis_backend(url, options)
    worker = Worker(["reader"], capacity=capacity, backend=worker_backend, poll_wait=0.2)
    worker.register_node("reader", lambda state: {} if len(state["doc"]) else None)
    serving = asyncio.ensure_future(worker.start())
    meter = redis_asyncio.Redis.from_url(url)
    orchestrator = Orchestrator(backend=orchestrator_backend, wait_for_workers=True)
    try:
        graph = fan_graph(width, state_mb)
        while not worker._serving:
            await asyncio.sleep(0.01)
        before = int((await meter.info("stats"))["total_net_input_bytes"])
        started = time.perf_counter()
        await orchestrator.execute(graph, {})
        seconds = time.perf_counter() - started
        written = int((await meter.info("stats"))["total_net_input_bytes"]) - before
        return {"width": width, "state_mb": state_mb, "mb_written": round(written / MB, 2),
                "seconds": round(seconds, 2), "state_reads": worker.state_cache.fetches}
    finally:
        await orchestrator.close()
        await worker.stop(grace=10)
        await serving
        await meter.aclose()
        await orchestrator_backend.close()
        await worker_backend.close()


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.redis_server import RedisServer  # type: ignore[import-not-found]

    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-url", help="a Redis URL (default: start a temporary redis-server)")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--state-mb", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--inline", action="store_true", help="also run with every task carrying the state")
    parser.add_argument("--results", type=pathlib.Path)
    args = parser.parse_args()
    figures = []
    with redis_url(args.backend_url) as url:
        by_reference = await one_run(url, args.width, args.state_mb, args.capacity)
        figures.append({"tasks": "reference", **by_reference})
        if args.inline:
            limit = engine.INLINE_STATE_LIMIT
            engine.INLINE_STATE_LIMIT = int(4 * args.state_mb * MB)  # type: ignore[attr-defined]
            try:
                figures.append({"tasks": "inline", **await one_run(url, args.width, args.state_mb, args.capacity)})
            finally:
                engine.INLINE_STATE_LIMIT = limit  # type: ignore[attr-defined]
    for row in figures:
        print(f"{row['tasks']:>9}: {row['width']}-way fan-out over a {row['state_mb']:g} MB state: "
              f"{row['mb_written']:.1f} MB written to the backend in {row['seconds']:.1f}s; "
              f"the worker read the state {row['state_reads']} time(s)")
    if args.results:
        args.results.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
