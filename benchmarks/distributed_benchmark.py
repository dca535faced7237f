"""Distributed throughput and latency on a real backend, with real worker processes.

    python benchmarks/distributed_benchmark.py --backend-url redis://127.0.0.1:6379/0
    python benchmarks/distributed_benchmark.py --backend-url nats://127.0.0.1:4222
    python benchmarks/distributed_benchmark.py --start redis     # temporary local server
    python benchmarks/distributed_benchmark.py --start nats

Workloads, each with 1 and with 4 worker processes (``--workers 1,4``):
  * ``single``: 1,000 single-node workflows, run concurrently: node tasks per second;
  * ``fan-out``: one workflow fanning out to 1,000 parallel no-op nodes: tasks per second;
  * ``latency``: 200 single-node workflows one after another: from a node being
    triggered (dispatched) to its result being merged, p50 and p99.
Each throughput figure is the median of ``--rounds`` passes (default 3; arq's too, each
arq pass run right after a round of the 1-worker passes).
Every run uses a fresh key prefix. Figures depend on the machine: compare ratios
measured in one run rather than absolute numbers across machines. Each throughput figure
is followed by the CPU time spent per task by this (orchestrator) process, the worker
processes and, with ``--start``, the server (Linux ``/proc``): on a loaded machine the
CPU cost per task compares backends where wall-clock throughput cannot.

``--arq-python PATH`` (an interpreter with arq installed from
``benchmarks/requirements-bench.txt``, in its own environment) also runs
``arq_benchmark.py`` against the same Redis and prints the ratios: single-node
workflows/s and fan-out tasks/s (1 worker) over arq's no-op jobs/s, and fan-out with
the most workers over 1 worker. ``--results FILE`` writes every figure as JSON.

``--node-cpu-us N`` has every node keep its worker's CPU busy for N microseconds before it
returns (default 0: no-op nodes): how fast the throughput falls as N grows says how much of a
task's time is the worker's own CPU (``bench_app.py``).

``--redis-persistence aof`` starts the temporary Redis (``--start redis``) with
``appendonly yes`` (AOF, ``appendfsync everysec``): as durable as the NATS server
``--start nats`` runs (file storage), which is how ``run_all.py`` compares the two backends;
the default, ``none``, persists nothing (as arq's figures on this machine were measured).

Each measured pass must end within ``--pass-timeout`` seconds (default 120): a server
that stops mid-run ends the script with an error naming the pass, not a wait for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402
from bench_support import bounded, close_within  # noqa: E402

from distributed_agents import Graph  # noqa: E402
from distributed_agents.distributed import DistributedOrchestrator  # noqa: E402


def single_graph() -> Graph:
    return Graph("bench_single").add_node("n", node_type="noop").set_entry_point("n").set_finish_point("n").compile()


def fan_graph(width: int) -> Graph:
    graph = Graph(f"bench_fan_{width}")
    graph.add_node("start", node_type="noop").add_node("join", node_type="noop")
    leaves = [f"leaf{i}" for i in range(width)]
    for leaf in leaves:
        graph.add_node(leaf, node_type="noop")
        graph.add_edge("start", leaf)
    graph.add_edge(leaves, "join")
    return graph.set_entry_point("start").set_finish_point("join").compile()


# The server started by --start (its CPU time is counted too), if any.
SERVER_PIDS: list[int] = []


#: Below this much CPU (seconds) spent by one process in one workload, the CPU figures are called
#: coarse: /proc counts 10 ms ticks, so 0.2 s is 5% resolution.
COARSE_CPU_S = 0.2


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; 0 elsewhere or once it is gone)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_split(pids: list[int]) -> tuple[float, float, float]:
    """CPU seconds so far of (this orchestrator process, the worker processes, the server started by --start)."""
    workers_cpu = sum(process_cpu_seconds(pid) for pid in pids if pid not in SERVER_PIDS)
    server_cpu = sum(process_cpu_seconds(pid) for pid in SERVER_PIDS)
    return time.process_time(), workers_cpu, server_cpu


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of ``pids`` (Linux ``/proc``; 0 elsewhere)."""
    return time.process_time() + sum(process_cpu_seconds(pid) for pid in pids)


#: Seconds a worker process may take to stop once this script is done with it (SIGTERM; its
#: no-op tasks need no grace) before it is killed: the run's key prefix is thrown away anyway.
WORKER_STOP_S = 15.0


@contextlib.contextmanager
def workers(url: str, prefix: str, count: int, capacity: int, node_cpu_us: int = 0) -> Iterator[list[int]]:
    """``count`` worker processes serving ``bench_app`` on ``url`` under ``prefix``, their pids yielded;
    stopped (SIGTERM, then SIGKILL after ``WORKER_STOP_S``) on the way out.

    Each runs in a session of its own, as the server does (``bench_support``): a Ctrl-C in the
    terminal reaches this script alone, which stops the workers while the server still serves,
    then the server; a second Ctrl-C kills both (``bench_support.own``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
           "BENCH_NODE_CPU_US": str(node_cpu_us)}
    processes = [
        subprocess.Popen([sys.executable, "-m", "distributed_agents", "--log-level", "WARNING", "worker",
                          "--app", "bench_app:registry", "--backend-url", url, "--prefix", prefix,
                          "--capacity", str(capacity), "--worker-id", f"bench-{i}", "--shutdown-grace", "1"],
                         cwd=HERE, env=env, start_new_session=True)
        for i in range(count)
    ]
    for process in processes:
        bench_support.own(process)  # a second Ctrl-C kills them
    try:
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            process.terminate()
        give_up = time.monotonic() + WORKER_STOP_S
        for process in processes:
            try:
                process.wait(timeout=max(give_up - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            bench_support.disown(process)


async def wait_for_workers(orchestrator: DistributedOrchestrator, count: int) -> None:
    for _ in range(600):
        if len(await orchestrator.backend.worker_registry.list_workers("noop")) >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{count} workers did not register within 30s")


async def single_workflows(orchestrator: DistributedOrchestrator, total: int, concurrency: int) -> float:
    graph = single_graph()
    remaining = iter(range(total))

    # ``concurrency`` runners taking the next workflow as each finishes one: at most that many
    # in flight, and no semaphore whose waiters the orchestrator's process would pay for.
    async def runner() -> None:
        for _ in remaining:
            await orchestrator.execute(graph, {})

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(min(concurrency, total))))
    return total / (time.perf_counter() - started)


async def fan_out(orchestrator: DistributedOrchestrator, width: int) -> float:
    started = time.perf_counter()
    await orchestrator.execute(fan_graph(width), {})
    return (width + 2) / (time.perf_counter() - started)


async def latency(orchestrator: DistributedOrchestrator, runs: int) -> tuple[float, float]:
    graph = single_graph()
    subscription = await orchestrator.backend.message_bus.subscribe("events.*.node.*")
    samples = []
    for _ in range(runs):
        result = await orchestrator.execute(graph, {})
        times: dict[str, float] = {}
        while len(times) < 2:
            message = await subscription.get(timeout=5)
            if message is None:
                raise RuntimeError("node events did not arrive")
            if message.data.get("workflow_id") == result.workflow_id:
                times[str(message.data["type"])] = float(message.data["time"])
        samples.append(times["node.completed"] - times["node.started"])
    await subscription.close()
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def measure(url: str, worker_count: int, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    # Connected before the workers start: a server that is not there fails here, at once.
    orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
    await orchestrator.connect()
    try:
        with workers(url, prefix, worker_count, args.capacity, args.node_cpu_us) as pids:
            return await measure_passes(orchestrator, url, pids + SERVER_PIDS, worker_count, args)
    finally:
        await close_within(orchestrator.close())


async def measure_passes(orchestrator: DistributedOrchestrator, url: str, pids: list[int], worker_count: int,
                         args: argparse.Namespace) -> dict[str, Any]:
    """Every pass of ``measure`` on its connected orchestrator, each bounded by ``--pass-timeout``."""
    def within(awaitable: Any, what: str) -> Any:
        return bounded(awaitable, args.pass_timeout, f"{what} ({worker_count} worker(s))", url)

    await within(wait_for_workers(orchestrator, worker_count), "waiting for the workers to register")
    # Warm-up, as arq_benchmark's first job: scripts loaded, connections and
    # subscriptions made, workers past their start-up (not counted).
    await within(single_workflows(orchestrator, 4 * worker_count, 4 * worker_count), "the warm-up pass")
    figures: dict[str, Any] = {"single_runs": [], "fan_runs": []}
    # Each throughput figure is the median of --rounds passes, the single-node and
    # fan-out passes alternated, so one pass that meets a busy moment of a shared
    # machine does not decide it; CPU per task is over all the passes. With one worker
    # and --arq-python, an arq pass follows each round, so the ratios to arq compare
    # passes minutes apart at most, not a run of ours with arq's run after it.
    single_cpu = fan_cpu = 0.0
    single_split = [0.0, 0.0, 0.0]
    fan_split = [0.0, 0.0, 0.0]
    with_arq = worker_count == 1 and bool(args.arq_python)
    if with_arq:
        figures["arq_runs"] = []
    for round_ in range(1, args.rounds + 1):
        spent, before = cpu_seconds(pids), cpu_split(pids)
        figures["single_runs"].append(await within(
            single_workflows(orchestrator, args.workflows, args.concurrency),
            f"single-node pass {round_} of {args.rounds}"))
        single_cpu += cpu_seconds(pids) - spent
        single_split = [total + after - earlier
                        for total, after, earlier in zip(single_split, cpu_split(pids), before)]
        spent, before = cpu_seconds(pids), cpu_split(pids)
        figures["fan_runs"].append(await within(fan_out(orchestrator, args.width),
                                                f"fan-out pass {round_} of {args.rounds}"))
        fan_cpu += cpu_seconds(pids) - spent
        fan_split = [total + after - earlier for total, after, earlier in zip(fan_split, cpu_split(pids), before)]
        if with_arq:  # in a thread: this loop keeps serving the orchestrator's connections meanwhile
            figures["arq_runs"].append(await asyncio.to_thread(arq_figure, args.arq_python, url, args.workflows))
    figures["single"] = statistics.median(figures["single_runs"])
    figures["single_cpu_ms"] = single_cpu * 1000 / (args.workflows * args.rounds)
    figures["fan-out"] = statistics.median(figures["fan_runs"])
    figures["fan_cpu_ms"] = fan_cpu * 1000 / ((args.width + 2) * args.rounds)
    # The same CPU per task split by process: orchestrator, workers, server.
    figures["single_cpu_split_ms"] = [part * 1000 / (args.workflows * args.rounds) for part in single_split]
    figures["fan_cpu_split_ms"] = [part * 1000 / ((args.width + 2) * args.rounds) for part in fan_split]
    # /proc counts whole clock ticks (10 ms here): the least busy process's total says how coarse the split is.
    # (The server's share is measured only for a server this script started: --start.)
    measured = slice(None) if SERVER_PIDS else slice(0, 2)
    figures["least_cpu_s"] = min(single_split[measured] + fan_split[measured])
    figures["latency"] = await within(latency(orchestrator, args.latency_runs), "the latency pass")
    return figures


@contextlib.contextmanager
def local_server(kind: str | None, url: str | None, redis_persistence: str = "none") -> Iterator[str]:
    """The URL of ``url``'s server, or of a temporary local ``kind`` server (Redis persisting as
    ``redis_persistence`` says: ``bench_support.REDIS_PERSISTENCE``), stopped and removed after."""
    if kind is None:
        if not url:
            raise SystemExit("pass --backend-url URL or --start redis|nats")
        yield url
        return
    server = bench_support.redis_server(redis_persistence) if kind == "redis" else bench_support.nats_server()
    # cleanup(), not stop(): the server's data directory (JetStream's store) goes too.
    with bench_support.started_server(server):
        SERVER_PIDS[:] = [server.process.pid] if getattr(server, "process", None) is not None else []
        try:
            yield server.url
        finally:
            SERVER_PIDS[:] = []


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--backend-url", help="a running server's URL (redis://... or nats://...)")
    parser.add_argument("--start", choices=("redis", "nats"),
                        help="start a temporary local server of this kind instead of --backend-url")
    parser.add_argument("--workers", type=bench_support.counts, default="1,4",
                        help="worker process counts to measure, comma-separated")
    parser.add_argument("--capacity", type=bench_support.positive_int, default=64,
                        help="tasks each worker process runs at once")
    parser.add_argument("--workflows", type=bench_support.positive_int, default=1000,
                        help="single-node workflows per pass")
    parser.add_argument("--concurrency", type=bench_support.positive_int, default=200,
                        help="single-node workflows in flight at once")
    parser.add_argument("--width", type=bench_support.positive_int, default=1000, help="fan-out width")
    parser.add_argument("--node-cpu-us", type=bench_support.non_negative_int, default=0,
                        help="microseconds of CPU each node spends before it returns (0: no-op nodes)")
    parser.add_argument("--latency-runs", type=bench_support.positive_int, default=200,
                        help="workflows of the latency pass, one after another")
    parser.add_argument("--rounds", type=bench_support.positive_int, default=3,
                        help="passes of each throughput workload (and of arq's); the median is reported")
    parser.add_argument("--pass-timeout", type=bench_support.positive_float, default=120.0,
                        help="seconds each measured pass may take before the run fails")
    parser.add_argument("--redis-persistence", choices=bench_support.REDIS_PERSISTENCE,
                        help="what the temporary Redis of --start redis persists: none (the default), or aof "
                             "(appendonly yes, everysec: as durable as NATS's file storage)")
    parser.add_argument("--arq-python", help="interpreter of an environment with arq installed (redis only)")
    parser.add_argument("--results", help="write the figures and ratios to this JSON file")
    args = parser.parse_args()
    if args.start and args.backend_url:
        parser.error("--start and --backend-url exclude each other: --start runs a temporary server of its own")
    if not args.start and not args.backend_url:
        parser.error("pass --backend-url URL or --start redis|nats")
    if args.arq_python and args.backend_url and not args.backend_url.startswith(("redis://", "rediss://")):
        parser.error("--arq-python needs a Redis server (arq runs on Redis only)")
    if args.arq_python and args.start == "nats":
        parser.error("--arq-python needs a Redis server (arq runs on Redis only): use --start redis")
    if args.redis_persistence is not None and args.start != "redis":
        parser.error("--redis-persistence applies to the temporary Redis of --start redis only")
    args.redis_persistence = args.redis_persistence or "none"
    # Checked before any server or worker starts: a typo fails now, not after the measurements
    # (--results by parse_args, see bench_support.BenchParser).
    if args.arq_python:
        bench_support.peers_interpreter(args.arq_python, "--arq-python", ["arq"])
    results: dict[str, Any] = {"workers": {}, "width": args.width, "workflows": args.workflows,
                               "node_cpu_us": args.node_cpu_us}
    if args.start == "redis":
        results["redis_persistence"] = args.redis_persistence
    with local_server(args.start, args.backend_url, args.redis_persistence) as url:
        if not args.start:
            await bench_support.check_backend(url)
        print(f"backend {url}" + (f" (persistence: {args.redis_persistence})" if args.start == "redis" else ""))
        for count in (int(c) for c in args.workers.split(",")):
            f = await measure(url, count, args)
            p50, p99 = f["latency"]
            results["workers"][count] = {"single": f["single"], "fan-out": f["fan-out"], "p50_ms": p50 * 1000,
                                         "p99_ms": p99 * 1000, "single_cpu_ms": f["single_cpu_ms"],
                                         "fan_cpu_ms": f["fan_cpu_ms"], "single_runs": f["single_runs"],
                                         "fan_runs": f["fan_runs"],
                                         "single_cpu_split_ms": f["single_cpu_split_ms"],
                                         "fan_cpu_split_ms": f["fan_cpu_split_ms"]}
            if "arq_runs" in f:
                results["arq_runs"] = f["arq_runs"]
                results["arq"] = statistics.median(f["arq_runs"])
            if args.rounds > 1:
                print(f"{count} worker(s): passes single-node {', '.join(f'{r:.0f}' for r in f['single_runs'])}"
                      f" | fan-out {', '.join(f'{r:.0f}' for r in f['fan_runs'])} (medians below)")
            print(f"{count} worker(s): single-node workflows {f['single']:8.0f} workflows/s "
                  f"({f['single_cpu_ms']:.2f} cpu ms/task) | "
                  f"fan-out {args.width} {f['fan-out']:8.0f} tasks/s ({f['fan_cpu_ms']:.2f} cpu ms/task) | "
                  f"trigger->merged p50 {p50 * 1000:6.2f} ms p99 {p99 * 1000:6.2f} ms")
            print(f"{count} worker(s): cpu ms/task by process (orchestrator / workers / server): single-node "
                  f"{' / '.join(f'{v:.3f}' for v in f['single_cpu_split_ms'])} | fan-out "
                  f"{' / '.join(f'{v:.3f}' for v in f['fan_cpu_split_ms'])}")
            if f["least_cpu_s"] < COARSE_CPU_S:
                tick = 1000 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
                least = f["least_cpu_s"] * 1000
                worst = f"±{100 * tick / least:.0f}%" if least > 0 else "not measured (0 ticks)"
                print(f"{count} worker(s): the CPU figures are coarse at this size: a process spent only "
                      f"{least:.0f} ms of CPU in a workload and /proc counts {tick:.0f} ms ticks, so its share is "
                      f"{worst} (more --workflows, --width or --rounds make them finer)")
        if args.arq_python:
            if "arq_runs" not in results:  # --workers without 1: arq's passes on their own
                results["arq_runs"] = [await asyncio.to_thread(arq_figure, args.arq_python, url, args.workflows)
                                       for _ in range(args.rounds)]
                results["arq"] = statistics.median(results["arq_runs"])
            print(f"arq 0.28, 1 worker (poll_delay 0.01, max_jobs 32): {results['arq']:8.0f} no-op jobs/s "
                  f"(median of {', '.join(f'{r:.0f}' for r in results['arq_runs'])})")
    results["ratios"] = ratios(results)
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}x")
    if args.results:
        pathlib.Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


def arq_figure(python: str, url: str, jobs: int) -> float:
    """arq's no-op jobs/s on ``url``, run by ``arq_benchmark.py`` in the arq environment."""
    done = bench_support.run_child([python, str(HERE / "arq_benchmark.py"), "--redis-url", url, "--jobs", str(jobs)],
                                   timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"arq_benchmark.py failed (exit code {done.returncode}): {done.stderr[-2000:]}")
    output = done.stdout
    for line in output.splitlines():
        if line.startswith("arq jobs/s "):
            return float(line.split()[-1])
    raise RuntimeError(f"arq_benchmark.py printed no figure: {output!r}")


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The comparisons of the README's performance goals table: ours over arq, many workers over one."""
    workers = results["workers"]
    out: dict[str, float] = {}
    one = workers.get(1)
    if one and results.get("arq"):
        out["single-node workflows/s vs arq jobs/s (1 worker)"] = one["single"] / results["arq"]
        out["fan-out tasks/s vs arq jobs/s (1 worker)"] = one["fan-out"] / results["arq"]
    most = max(workers) if workers else None
    if one and most and most != 1:
        out[f"fan-out tasks/s, {most} workers vs 1"] = workers[most]["fan-out"] / one["fan-out"]
        out[f"single-node workflows/s, {most} workers vs 1"] = workers[most]["single"] / one["single"]
    return out


if __name__ == "__main__":
    bench_support.run(main)
