"""Token latency: a node on a worker process emits, the caller in another process receives.

    python benchmarks/stream_latency.py --start redis,nats      # temporary local servers
    python benchmarks/stream_latency.py --backend-url redis://127.0.0.1:6379/0

One worker process runs a node that streams tokens (``writer.message``) while this
process runs the workflow with ``astream(..., stream_mode="messages")``. Each token is
stamped with ``time.time()`` when the node emits it; its latency is the time this
process receives it from ``astream`` minus that stamp (same machine, same clock).
Two workloads per backend:

  * ``paced``: ``--tokens`` tokens ``--interval`` seconds apart (an LLM's pace): the
    latency of one token through the publisher, the bus and the stream;
  * ``burst``: ``--burst`` tokens as fast as the node can emit them: latency under
    load (includes queueing), and tokens per second received.

p50 and p99 in milliseconds. Figures depend on the machine (and on what else runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from distributed_agents import Graph, Orchestrator

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_support  # noqa: E402
from distributed_benchmark import local_server  # noqa: E402


def token_graph() -> Graph:
    return Graph("bench_tokens").add_node("t", node_type="tokens").set_entry_point("t").set_finish_point("t").compile()


@contextlib.contextmanager
def worker(url: str, prefix: str) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    process = subprocess.Popen([sys.executable, "-m", "distributed_agents", "--log-level", "WARNING", "worker",
                                "--app", "stream_app:registry", "--backend-url", url, "--prefix", prefix,
                                "--worker-id", "stream-bench"], cwd=HERE, env=env)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def run_tokens(orchestrator: Orchestrator, count: int, interval: float) -> tuple[list[float], float]:
    """Latencies (seconds) of ``count`` tokens and the wall time from the first to the last received."""
    latencies: list[float] = []
    first = last = 0.0
    stream = orchestrator.astream(token_graph(), {"count": count, "interval": interval}, stream_mode="messages")
    async for chunk, metadata in stream:
        now = time.time()
        latencies.append(now - float(chunk["sent"]))
        first = first or now
        last = now
    if len(latencies) != count:
        raise RuntimeError(f"received {len(latencies)} of {count} tokens; dropped: {stream.dropped}")
    return latencies, last - first


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"sbench{uuid.uuid4().hex[:8]}"
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, local_nodes=False,
                                wait_for_workers=True)
    try:
        # Connected before the worker starts: a server that is not there fails here, at once.
        await orchestrator.connect()
        with worker(url, prefix):
            for _ in range(600):  # the worker process registers within moments
                if await orchestrator.backend.worker_registry.list_workers("tokens"):
                    break
                await asyncio.sleep(0.05)

            def within(awaitable: Any, what: str) -> Any:
                return bench_support.bounded(awaitable, args.pass_timeout, what, url)

            await within(run_tokens(orchestrator, 20, 0.0), "the warm-up pass")  # warm up: connections open
            paced, _ = await within(run_tokens(orchestrator, args.tokens, args.interval), "the paced pass")
            burst, seconds = await within(run_tokens(orchestrator, args.burst, 0.0), "the burst pass")
    finally:
        await bench_support.close_within(orchestrator.close())
    return {"paced": percentiles(paced), "burst": percentiles(burst), "rate": args.burst / max(seconds, 1e-9)}


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--backend-url", help="a running server's URL (redis://... or nats://...)")
    parser.add_argument("--start", type=bench_support.backends,
                        help="redis, nats or redis,nats: start temporary local servers instead of --backend-url")
    parser.add_argument("--tokens", type=bench_support.positive_int, default=500, help="paced tokens")
    parser.add_argument("--interval", type=bench_support.non_negative_float, default=0.005,
                        help="seconds between paced tokens")
    parser.add_argument("--burst", type=bench_support.positive_int, default=5000, help="tokens emitted back to back")
    parser.add_argument("--pass-timeout", type=bench_support.positive_float, default=120.0,
                        help="seconds each measured pass may take before the run fails")
    args = parser.parse_args()
    if args.start and args.backend_url:
        parser.error("--start and --backend-url exclude each other: --start runs temporary servers of its own")
    if not args.start and not args.backend_url:
        parser.error("pass --backend-url URL or --start redis|nats|redis,nats")
    kinds: list[str | None] = list(args.start) if args.start else [None]
    for kind in kinds:
        with local_server(kind, args.backend_url) as url:
            figures = await measure(url, args)
            (p50, p99), (b50, b99) = figures["paced"], figures["burst"]
            print(f"{url.split(':')[0]:5} paced {args.tokens} tokens every {args.interval * 1000:g} ms: "
                  f"p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms | burst {args.burst} tokens: "
                  f"p50 {b50 * 1000:7.2f} ms  p99 {b99 * 1000:7.2f} ms  {figures['rate']:8.0f} tokens/s", flush=True)


if __name__ == "__main__":
    bench_support.run(main)
