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

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402

from distributed_agents import Graph, Orchestrator, Worker  # noqa: E402
from distributed_agents.adapters.redis.backend import open_redis_backend  # noqa: E402
from distributed_agents.core import engine  # noqa: E402
from distributed_agents.core.ports.backend import BackendOptions  # noqa: E402
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
    # Connected before the worker starts: a server that is not there fails here, at once (a
    # worker waits for its backend, retrying with backoff, for as long as it takes).
    try:
        await orchestrator_backend.connect()
    except BaseException:
        await bench_support.close_within(orchestrator_backend.close())
        raise
    worker = Worker(["reader"], capacity=capacity, backend=worker_backend, poll_wait=0.2)
    worker.register_node("reader", lambda state: {} if len(state["doc"]) else None)
    serving = asyncio.ensure_future(worker.start())
    meter = redis_asyncio.Redis.from_url(url)
    orchestrator = Orchestrator(backend=orchestrator_backend, wait_for_workers=True)
    try:
        graph = fan_graph(width, state_mb)
        while not worker._serving and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()  # the worker's own error, if it could not start
        before = int((await meter.info("stats"))["total_net_input_bytes"])
        started = time.perf_counter()
        await orchestrator.execute(graph, {})
        seconds = time.perf_counter() - started
        written = int((await meter.info("stats"))["total_net_input_bytes"]) - before
        return {"width": width, "state_mb": state_mb, "mb_written": round(written / MB, 2),
                "seconds": round(seconds, 2), "state_reads": worker.state_cache.fetches}
    finally:
        # Each bounded: with the server gone, a close could wait on it for ever.
        await bench_support.close_within(orchestrator.close())
        await bench_support.close_within(worker.stop(grace=10), 15)
        if not serving.done():
            serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await bench_support.close_within(meter.aclose())
        await bench_support.close_within(orchestrator_backend.close())
        await bench_support.close_within(worker_backend.close())


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with bench_support.started_server(bench_support.redis_server()) as server:  # its data directory removed after
        yield server.url


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--backend-url", help="a Redis URL (default: start a temporary redis-server)")
    parser.add_argument("--width", type=bench_support.positive_int, default=1000, help="fan-out width")
    parser.add_argument("--state-mb", type=bench_support.positive_float, default=1.0,
                        help="megabytes of the string the state holds")
    parser.add_argument("--capacity", type=bench_support.positive_int, default=64,
                        help="tasks the worker runs at once")
    parser.add_argument("--inline", action="store_true", help="also run with every task carrying the state")
    parser.add_argument("--results", type=pathlib.Path, help="write the figures as JSON to this file")
    args = parser.parse_args()
    if args.backend_url and not args.backend_url.startswith(("redis://", "rediss://", "unix://")):
        parser.error(f"--backend-url must be a Redis URL (redis://, rediss:// or unix://), not {args.backend_url!r}")
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
    bench_support.run(main)
