"""Round trips to Redis per single-node workflow, orchestrator and worker together, counted by the server.

    python benchmarks/round_trips.py                      # temporary redis-server
    python benchmarks/round_trips.py --backend-url redis://127.0.0.1:6379/0 [--runs 10] [--results FILE]

One worker (in this process, ``--capacity`` slots) serves a one-node graph; after a few
warm-up workflows, ``--runs`` workflows run one after another. With
``slowlog-log-slower-than 0`` the server logs every top-level command with its client's
address; commands a Lua script runs are logged with address ``?:0`` and are not round
trips. Periodic safety polls (heartbeats, lease renewals, the worker's poll cap) are
lengthened so that only the workflows' own work is counted. Prints the median per
workflow: round trips without event publishes, the event publishes (batched off the
workflow's path), and the commands by name. Use an otherwise idle server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pathlib
import statistics
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis.asyncio as redis_asyncio

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402

from distributed_agents import Graph, NodeRegistry, State, Worker  # noqa: E402
from distributed_agents.adapters.redis.backend import open_redis_backend  # noqa: E402
from distributed_agents.adapters.redis.message_bus import PUBLISH_SCRIPT  # noqa: E402
from distributed_agents.core.orchestrator import Orchestrator  # noqa: E402
from distributed_agents.core.ports.backend import Backend, BackendOptions  # noqa: E402


def _backend(url: str, prefix: str) -> Backend:
    options = BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600)
    backend = open_redis_backend(url, options)
    backend.task_queue.poll_cap = 60.0  # type: ignore[attr-defined]
    return backend


async def _commands(meter: redis_asyncio.Redis) -> list[str]:
    """Top-level commands of other clients since the last reset (not the meter's, not inside scripts)."""
    entries = await meter.execute_command("SLOWLOG", "GET", -1)
    publish = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest().encode()  # the event batches' script
    return ["PUBLISH" if entry[3][0].upper() == b"EVALSHA" and entry[3][1] == publish else entry[3][0].decode().upper()
            for entry in reversed(entries) if entry[4] != b"?:0" and entry[5] != b"meter"]


async def measure(url: str, runs: int, capacity: int) -> dict[str, Any]:
    registry = NodeRegistry()

    @registry.register("noop")
    async def noop(state: State) -> dict[str, Any]:
        return {"x": 1}

    graph = Graph("round_trips").add_node("n", node_type="noop").set_entry_point("n").set_finish_point("n").compile()
    prefix = f"rt{uuid.uuid4().hex[:8]}"
    worker_backend, orchestrator_backend = _backend(url, prefix), _backend(url, prefix)
    worker = Worker(["noop"], capacity=capacity, backend=worker_backend, registry=registry, worker_id="rt-worker",
                    heartbeat_interval=300, poll_wait=3)
    serving = asyncio.ensure_future(worker.start())
    orchestrator = Orchestrator(backend=orchestrator_backend, lease_ttl=600, recover=False, local_nodes=False,
                                wait_for_workers=True)
    meter = redis_asyncio.Redis.from_url(url, client_name="meter")
    per_run: list[Counter[str]] = []
    try:
        for _ in range(3):  # warm-up: scripts loaded, pub/sub subscribed, the worker idle
            await orchestrator.execute(graph, {})
        await asyncio.sleep(0.2)
        await meter.config_set("slowlog-log-slower-than", 0)
        await meter.config_set("slowlog-max-len", 100000)
        for _ in range(runs):
            await meter.slowlog_reset()
            await orchestrator.execute(graph, {})
            await asyncio.sleep(0.2)  # events published, the worker waiting again
            per_run.append(Counter(await _commands(meter)))
    finally:
        with contextlib.suppress(Exception):
            await meter.config_set("slowlog-log-slower-than", 10000)
        await orchestrator.close()
        await worker.stop()
        await serving
        await orchestrator_backend.close()
        await worker_backend.close()
        await meter.aclose()
    trips = [sum(n for name, n in counts.items() if name != "PUBLISH") for counts in per_run]
    publishes = [counts.get("PUBLISH", 0) for counts in per_run]
    names = sorted({name for counts in per_run for name in counts})
    return {"runs": runs, "round_trips": statistics.median(trips), "publishes": statistics.median(publishes),
            "per_run": trips, "commands": {name: statistics.median(c.get(name, 0) for c in per_run)
                                           for name in names}}


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    if url:
        bench_support.arun(bench_support.check_backend(url))
        yield url
        return
    with bench_support.started_server(bench_support.redis_server()) as server:
        yield server.url


def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--backend-url", help="a Redis URL (default: start a temporary redis-server)")
    parser.add_argument("--runs", type=bench_support.positive_int, default=10, help="workflows counted")
    parser.add_argument("--capacity", type=bench_support.positive_int, default=4, help="tasks the worker runs at once")
    parser.add_argument("--results", type=pathlib.Path, help="write the figures as JSON to this file")
    args = parser.parse_args()
    if args.backend_url and not args.backend_url.startswith(("redis://", "rediss://", "unix://")):
        parser.error(f"--backend-url must be a Redis URL (redis://, rediss:// or unix://), not {args.backend_url!r}")
    with redis_url(args.backend_url) as url:
        figures = bench_support.arun(measure(url, args.runs, args.capacity))
    commands = ", ".join(f"{name} {count:g}" for name, count in figures["commands"].items())
    print(f"round trips per single-node workflow {figures['round_trips']:g} (besides {figures['publishes']:g} "
          f"event publishes); commands: {commands}")
    if args.results:
        args.results.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    bench_support.run(main)
