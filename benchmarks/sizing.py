"""Sizing: how many workers, concurrent workflows and tasks/s one Redis or one NATS server carries.

    python benchmarks/sizing.py --start redis,nats            # servers started here (their CPU and RSS read)
    python benchmarks/sizing.py --backend-url redis://host:6379/0 --server-pid 1234

For each backend, with real worker processes (the CLI, serving ``bench_app``'s no-op
node) and one orchestrator process (this one):

1. **Workers**: ``--workers`` (1,2,4,8) worker processes run ``--workflows`` chain
   workflows (``--chain`` no-op nodes each, one task per node) ``--concurrency`` at a
   time: workflows/s, tasks/s, the p50/p99 of one workflow's ``execute`` (submit to
   result), the server's CPU (% of one core) over the run, and the CPU ms per task of
   every process (orchestrator, workers, server). The ramp stops once throughput grows
   less than 10% over the previous count.
2. **Concurrent workflows**: with the worker count that gave the most throughput,
   ``--levels`` (10..1000) workflows in flight at once (each level runs twice its
   count, at least 200): throughput and p99, until the p99 passes ``--p99-bound``
   seconds or throughput stops growing (the row is kept and marked).
3. **Stored workflows**: ``--stored`` (1,000) finished workflows of the same graph on a
   fresh prefix: the server's resident memory (RSS) grows by this much per 1,000 stored
   (Redis also reports ``used_memory``; NATS also the bytes of its JetStream store
   directory, with ``--start``), with the default ``state_ttl`` (none: kept for ever).

One orchestrator process drives every workflow, so on a small machine it (not the
server) may be what stops the growth: the table shows each process's CPU so the limit
can be read off. Figures depend on the machine and its load: print the load average
with them (the table does). ``--results FILE`` writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import signal
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_support  # noqa: E402
from distributed_benchmark import SERVER_PIDS, cpu_seconds, local_server, wait_for_workers, workers  # noqa: E402

from distributed_agents import Graph  # noqa: E402
from distributed_agents.core.timeouts import wait_within  # noqa: E402
from distributed_agents.distributed import DistributedOrchestrator  # noqa: E402


def chain_graph(length: int) -> Graph:
    graph = Graph(f"sizing_chain_{length}")
    names = [f"n{i}" for i in range(length)]
    for name in names:
        graph.add_node(name, node_type="noop")
    for first, second in zip(names, names[1:]):
        graph.add_edge(first, second)
    return graph.set_entry_point(names[0]).set_finish_point(names[-1]).compile()


def server_cpu(pids: list[int]) -> float:
    """CPU seconds of the server processes only (``cpu_seconds`` counts this process too)."""
    return cpu_seconds(pids) - time.process_time() if pids else 0.0


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (Linux ``/proc``), 0 if unknown."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def nats_store_dir(pid: int | None) -> str | None:
    """The ``-sd`` store directory on a local nats-server's command line, if ``pid`` is one."""
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
    except OSError:
        return None
    if argv and b"nats-server" in argv[0] and b"-sd" in argv:
        return argv[argv.index(b"-sd") + 1].decode()
    return None


def directory_bytes(path: str | None) -> int:
    if not path:
        return 0
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def dump_tasks() -> None:
    """Print every asyncio task's stack (``kill -USR1 <pid>``): what a run that stopped moving waits for."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def run_workflows(orchestrator: DistributedOrchestrator, graph: Graph, total: int,
                        concurrency: int, timeout: float = 900.0) -> dict[str, float]:
    """``total`` workflows, ``concurrency`` at a time: throughput and per-workflow latency.

    ``TimeoutError`` naming the workflows still waited for if they take over ``timeout`` s.
    """
    limit = asyncio.Semaphore(concurrency)
    durations: list[float] = []
    waiting: set[str] = set()

    async def one(index: int) -> None:
        async with limit:
            workflow_id = f"{graph.name}-{uuid.uuid4().hex[:12]}"
            waiting.add(workflow_id)
            started = time.perf_counter()
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            durations.append(time.perf_counter() - started)
            waiting.discard(workflow_id)

    started = time.perf_counter()
    try:
        if not await wait_within(asyncio.gather(*(one(i) for i in range(total))), timeout):  # see core.timeouts
            raise asyncio.TimeoutError
    except asyncio.TimeoutError:
        statuses = {wf: (await orchestrator.get_workflow_status(wf)).status for wf in sorted(waiting)[:10]}
        raise TimeoutError(f"{len(waiting)} of {total} workflows not returned by execute() after {timeout}s; "
                           f"their stored status: {statuses}") from None
    elapsed = time.perf_counter() - started
    durations.sort()
    return {"workflows_s": total / elapsed, "elapsed": elapsed, "p50": statistics.median(durations),
            "p99": durations[min(len(durations) - 1, int(len(durations) * 0.99))]}


async def point(url: str, worker_count: int, total: int, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement on a fresh prefix with ``worker_count`` worker processes."""
    prefix = f"size{uuid.uuid4().hex[:8]}"
    graph = chain_graph(args.chain)
    with workers(url, prefix, worker_count, args.capacity) as pids:
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=120)
        await orchestrator.connect()
        try:
            await wait_for_workers(orchestrator, worker_count)
            await run_workflows(orchestrator, graph, min(20, total), min(20, concurrency))  # warm-up
            every = pids + SERVER_PIDS
            spent, server_spent = cpu_seconds(every), server_cpu(SERVER_PIDS)
            figures: dict[str, Any] = await run_workflows(orchestrator, graph, total, concurrency)
            tasks = total * args.chain
            figures.update(
                workers=worker_count, concurrency=concurrency, workflows=total,
                tasks_s=figures["workflows_s"] * args.chain,
                cpu_ms_per_task=(cpu_seconds(every) - spent) * 1000 / tasks,
                server_cpu_pct=100 * (server_cpu(SERVER_PIDS) - server_spent) / figures["elapsed"],
            )
        finally:
            await orchestrator.close()
    return figures


async def stored_cost(url: str, args: argparse.Namespace, store_dir: str | None) -> dict[str, Any]:
    """Server memory (and store bytes) per 1,000 finished workflows kept."""
    prefix = f"size{uuid.uuid4().hex[:8]}"
    graph = chain_graph(args.chain)
    pid = SERVER_PIDS[0] if SERVER_PIDS else args.server_pid
    with workers(url, prefix, 2, args.capacity):
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=120)
        await orchestrator.connect()
        try:
            await wait_for_workers(orchestrator, 2)
            used_before = await redis_used_memory(url)
            rss_before, disk_before = rss_bytes(pid) if pid else 0, directory_bytes(store_dir)
            await run_workflows(orchestrator, graph, args.stored, 100)
            await asyncio.sleep(1.0)  # let the server settle (expired results, compaction)
            per = 1000 / args.stored
            figures = {
                "stored": args.stored,
                "rss_mb_per_1000": (rss_bytes(pid) - rss_before) * per / 1e6 if pid else None,
                "rss_mb_total": rss_bytes(pid) / 1e6 if pid else None,
            }
            used_after = await redis_used_memory(url)
            if used_before is not None and used_after is not None:
                figures["used_memory_mb_per_1000"] = (used_after - used_before) * per / 1e6
            if store_dir:
                figures["store_mb_per_1000"] = (directory_bytes(store_dir) - disk_before) * per / 1e6
        finally:
            await orchestrator.close()
    return figures


async def redis_used_memory(url: str) -> int | None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis.asyncio

    client = redis.asyncio.from_url(url)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def size_backend(kind: str, url: str, args: argparse.Namespace, store_dir: str | None) -> dict[str, Any]:
    ramp: list[dict[str, Any]] = []
    for count in [int(n) for n in args.workers.split(",")]:
        figures = await point(url, count, args.workflows, args.concurrency, args)
        ramp.append(figures)
        print(f"  [{kind}] workers={count}: {figures['tasks_s']:.0f} tasks/s p99 {figures['p99']:.3f}s "
              f"server CPU {figures['server_cpu_pct']:.0f}%", flush=True)
        if len(ramp) > 1 and figures["tasks_s"] < ramp[-2]["tasks_s"] * 1.10:
            break
    best = max(ramp, key=lambda f: f["tasks_s"])["workers"]
    levels: list[dict[str, Any]] = []
    for concurrency in [int(n) for n in args.levels.split(",")]:
        figures = await point(url, best, max(200, 2 * concurrency), concurrency, args)
        levels.append(figures)
        over = figures["p99"] > args.p99_bound
        flat = len(levels) > 1 and figures["tasks_s"] < levels[-2]["tasks_s"] * 1.05
        figures["stopped"] = "p99 over bound" if over else "throughput flat" if flat else ""
        print(f"  [{kind}] in flight={concurrency}: {figures['tasks_s']:.0f} tasks/s p99 {figures['p99']:.3f}s "
              f"{figures['stopped']}", flush=True)
        if over or flat:
            break
    stored = await stored_cost(url, args, store_dir)
    print(f"  [{kind}] stored: {stored}", flush=True)
    return {"workers": ramp, "concurrency": levels, "stored": stored, "best_workers": best}


def print_tables(results: dict[str, Any], args: argparse.Namespace) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
          f"Python {platform.python_version()}; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"workload: chains of {args.chain} no-op nodes (one task each), worker capacity {args.capacity}\n")
    header = (f"{'backend':<8} {'workers':>7} {'in flight':>9} {'wf/s':>7} {'tasks/s':>8} {'p50 s':>7} {'p99 s':>7} "
              f"{'server CPU':>10} {'CPU ms/task':>11}  note")
    print(header)
    print("-" * len(header))
    for kind, found in results.items():
        for section in ("workers", "concurrency"):
            for f in found[section]:
                note = f.get("stopped", "") if section == "concurrency" else (
                    "best" if f["workers"] == found["best_workers"] else "")
                print(f"{kind:<8} {f['workers']:>7} {f['concurrency']:>9} {f['workflows_s']:>7.0f} {f['tasks_s']:>8.0f} "
                      f"{f['p50']:>7.3f} {f['p99']:>7.3f} {f['server_cpu_pct']:>9.0f}% {f['cpu_ms_per_task']:>11.2f}  "
                      f"{section} ramp{', ' + note if note else ''}")
    print()
    for kind, found in results.items():
        s = found["stored"]
        parts = [f"{kind}: {s['stored']} stored workflows"]
        if s.get("rss_mb_per_1000") is not None:
            parts.append(f"server RSS +{s['rss_mb_per_1000']:.1f} MB per 1,000 (now {s['rss_mb_total']:.0f} MB)")
        if "used_memory_mb_per_1000" in s:
            parts.append(f"used_memory +{s['used_memory_mb_per_1000']:.1f} MB per 1,000")
        if "store_mb_per_1000" in s:
            parts.append(f"JetStream store +{s['store_mb_per_1000']:.1f} MB per 1,000")
        print("; ".join(parts))


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--start", type=bench_support.backends,
                        help="backends to start here: redis, nats or redis,nats")
    parser.add_argument("--backend-url", help="an already running server instead of --start")
    parser.add_argument("--server-pid", type=bench_support.positive_int,
                        help="with --backend-url on this machine: the server's pid (CPU, RSS)")
    parser.add_argument("--workers", type=bench_support.counts, default="1,2,4,8",
                        help="worker process counts of the ramp")
    parser.add_argument("--capacity", type=bench_support.positive_int, default=64,
                        help="tasks each worker runs at once")
    parser.add_argument("--workflows", type=bench_support.positive_int, default=400,
                        help="workflows per point of the worker ramp")
    parser.add_argument("--concurrency", type=bench_support.positive_int, default=100,
                        help="workflows in flight in the worker ramp")
    parser.add_argument("--levels", type=bench_support.counts, default="10,50,100,250,500,1000",
                        help="workflows in flight, ramped")
    parser.add_argument("--p99-bound", type=bench_support.positive_float, default=2.0,
                        help="seconds: the concurrency ramp stops past it")
    parser.add_argument("--chain", type=bench_support.positive_int, default=2, help="no-op nodes per workflow")
    parser.add_argument("--stored", type=bench_support.positive_int, default=1000,
                        help="finished workflows kept for the memory figure")
    parser.add_argument("--results", help="write every figure as JSON")
    args = parser.parse_args()
    if args.start and args.backend_url:
        parser.error("--start and --backend-url exclude each other: --start runs temporary servers of its own")
    if not args.start and not args.backend_url:
        parser.error("pass --backend-url URL or --start redis|nats|redis,nats")
    if args.server_pid and not args.backend_url:
        parser.error("--server-pid goes with --backend-url (with --start the server's pid is known)")
    if args.backend_url:
        await bench_support.check_backend(args.backend_url)
    if hasattr(signal, "SIGUSR1"):
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    backends = [(k, None) for k in args.start] if args.start else [("server", args.backend_url)]
    results: dict[str, Any] = {}
    for kind, url in backends:
        with local_server(None if url else kind, url) as server_url:
            store_dir = nats_store_dir(SERVER_PIDS[0] if SERVER_PIDS else args.server_pid)
            print(f"sizing {kind} at {server_url}", flush=True)
            results[kind] = await size_backend(kind, server_url, args, store_dir)
    print_tables(results, args)
    if args.results:
        pathlib.Path(args.results).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if sys.platform != "linux":
        print("note: CPU and memory figures read Linux /proc; elsewhere they are 0", file=sys.stderr)
    bench_support.run(main)
