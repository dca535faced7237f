"""Every benchmark side by side in one run: the performance table, its ratios, a results file and charts.

    python benchmarks/run_all.py --start redis,nats --results benchmarks/results.json --charts docs/

Runs, one after another on this machine (each on servers of its own, started here):

* ``distributed_benchmark.py`` per backend of ``--start`` with ``--workers`` worker
  processes (single-node workflows/s, a 1,000-way fan-out's tasks/s, trigger -> merged
  latency), and on Redis ``arq_benchmark.py`` (arq 0.28's no-op jobs/s, same server);
  each throughput figure, arq's included, is the median of ``--rounds`` passes. The
  Redis of these runs persists nothing (as arq's figures are usually quoted); with both
  backends started, one more run of 1 worker on a Redis with AOF (``appendonly yes``,
  everysec: ``--redis-persistence aof``), right after NATS's, is what the NATS row
  compares against: NATS's file storage keeps every acknowledged write through a server
  restart or crash, as AOF does and a Redis without persistence does not
  (``docs/durability.md``); the row shows the ratios against both;
* ``round_trips.py`` (round trips to Redis per single-node workflow);
* ``latency_layers.py`` (dispatch -> result latency of the bare scripts-and-sockets path,
  of the task queue port, and of the engine: what the machine costs, what each layer adds);
* ``payload_bytes.py`` (bytes written to Redis for a 1,000-way fan-out over a 1 MB state);
* ``checkpoint_growth.py`` (stored checkpoint bytes against steps, memory and the
  started backends);
* ``langgraph_benchmark.py`` (the local engine next to LangGraph 1.2 on a 1,000-node chain);
* ``local_benchmark.py --durability all`` (the local engine alone, for reference).

arq, LangGraph and matplotlib are not dependencies of this project: they are installed
from ``benchmarks/requirements-bench.txt`` into an environment of their own
(``--peers-env DIR``, made on first use; or ``--peers-python PATH`` of one made
already), which runs the peers' halves and draws the charts.

Prints the performance goals table of the README's "Performance" section (workload,
what was measured now, the goal, met?; rows of backends left out of ``--start`` or of
scripts that failed are left out, and a note after the table says which and why) and
writes ``--results``: the table's rows, every script's figures and output, the command
and the machine (with its load average before and after). ``--from-results FILE`` runs nothing and prints the
table (and draws the charts) of a results file written before. With
``--charts DIR``: ``DIR/bench-throughput-workers.svg`` (throughput against worker
processes, per backend, arq's figure for reference) and ``DIR/bench-checkpoint-bytes.svg``
(stored checkpoint bytes against steps, next to storing every full state). Figures
depend on the machine and on what else runs on it: compare the ratios of one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_support  # noqa: E402

REQUIREMENTS = HERE / "requirements-bench.txt"
#: The key (in the results' ``figures["distributed"]``) of the run on a Redis with AOF
#: (``--redis-persistence aof``), which the NATS row compares against: NATS's file storage
#: and Redis's AOF both keep every acknowledged write through a server restart or crash
#: (``docs/durability.md``), so neither backend is measured with less work to do.
DURABLE_REDIS = "redis-aof"
DEFAULT_PEERS_ENV = pathlib.Path(tempfile.gettempdir()) / "distributed-agents-bench-peers"
#: What each step's failure takes out of the table (printed with the failure).
ROWS_OF_STEP = {
    "distributed redis": "rows: single-node and fan-out vs arq, worker processes, latency; the NATS row then has "
                         "no ratio against a Redis persisting nothing",
    "distributed nats": "row: NATS vs Redis",
    f"distributed {DURABLE_REDIS}": "the NATS row is then judged against the Redis persisting nothing",
    "round trips": "row: round trips",
    "latency layers": "the latency row's floor figures",
    "payload bytes": "row: bytes written for a fan-out",
    "checkpoint growth": "row: checkpoint bytes",
    "langgraph": "row: local engine vs LangGraph",
    "local": "no row: the durability modes' times",
    "charts": "no row: the charts",
}
#: What the peers' interpreter must import: arq and LangGraph for their runs, matplotlib for the charts.
PEER_MODULES = ("arq", "langgraph", "matplotlib")
PLOT_MODULES = ("matplotlib",)


def peers_python(env: pathlib.Path) -> str:
    """The interpreter of ``env``, made with the benchmark requirements installed (again when they changed)."""
    python = env / "bin" / "python"
    stamp = env / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return str(python)
    bench_support.writable_directory(env, "--peers-env")
    print(f"making the peers' environment {env} from {REQUIREMENTS.name} ...", flush=True)
    for what, command in (("python -m venv", [sys.executable, "-m", "venv", str(env)]),
                          ("pip install", [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)])):
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"--peers-env {env}: {what} failed (its error is above); pip needs the package "
                             "index; or pass --peers-python PATH of an environment with "
                             f"{', '.join(PEER_MODULES)} made already")
    stamp.write_text(wanted + "\n")
    return str(python)


def step(title: str, command: list[str], log: dict[str, Any], timeout: float = 1800) -> bool:
    """Run one benchmark script, echoing its output (kept in ``log``); whether it succeeded.

    A failed script is reported (its last error output) and the run goes on without its
    figures: their rows are left out of the table, and the results name the failure.
    """
    print(f"\n== {title}: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    try:  # a script stopped (timed out, or this one stopped) gets SIGTERM: it stops the servers it started
        process = bench_support.run_child(command, timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        log[title] = {"command": shlex.join(command), "error": f"timed out after {timeout}s"}
        print(f"{title} timed out after {timeout}s; going on without it", file=sys.stderr, flush=True)
        return False
    print(process.stdout, end="", flush=True)
    log[title] = {"command": shlex.join(command), "seconds": round(time.perf_counter() - started, 1),
                  "output": process.stdout, "exit_code": process.returncode}
    if process.returncode != 0:
        log[title]["error"] = process.stderr[-4000:]
        print(process.stderr[-4000:], file=sys.stderr, flush=True)
        print(f"{title} failed (exit code {process.returncode}); going on without it", file=sys.stderr, flush=True)
        return False
    return True


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    with bench_support.started_server(bench_support.redis_server()) as server:
        yield server.url


def read(path: pathlib.Path) -> Any:
    return json.loads(path.read_text())


def read_results(path: pathlib.Path) -> dict[str, Any]:
    """A results file written by ``--results`` before; ``SystemExit`` with one line saying what is wrong."""
    try:
        results = json.loads(path.read_text())
    except OSError as exc:
        raise SystemExit(f"--from-results: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SystemExit(f"--from-results: {path} is not JSON ({exc}); pass a file written by "
                         "run_all.py --results") from None
    if not isinstance(results, dict) or not isinstance(results.get("figures"), dict):
        raise SystemExit(f"--from-results: {path} is not a results file of run_all.py (it has no \"figures\"); "
                         "pass a file written by run_all.py --results")
    return results


def not_measured(start: list[str], workers: str | None = None) -> list[str]:
    """The table's rows that a run on ``start``'s backends with ``workers`` (``--workers``) does not
    measure, and why."""
    if "redis" not in start:
        return ["every Redis row (single-node and fan-out vs arq, worker processes, NATS vs Redis, latency, "
                "round trips, payload bytes): --start has no redis"]
    left_out = [] if "nats" in start else ["NATS vs Redis: --start has no nats"]
    if workers is not None and all(int(count) <= 1 for count in workers.split(",") if count.strip().isdigit()):
        left_out.append("worker processes vs 1: --workers has no count above 1")
    return left_out


def table(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the README's performance goals table: workload, what was measured (``now``), the goal, and
    whether it is met."""
    rows: list[dict[str, Any]] = []

    def row(workload: str, now: str, goal: str, met: bool | None, **values: Any) -> None:
        rows.append({"workload": workload, "now": now, "goal": goal, "met": met, "values": values})

    redis = figures.get("distributed", {}).get("redis")
    nats = figures.get("distributed", {}).get("nats")
    durable = figures.get("distributed", {}).get(DURABLE_REDIS)
    if redis:
        # The fan-out's width as run (results written before it was recorded ran the default, 1,000).
        width = int(redis.get("width", 1000))
        one = redis["workers"]["1"]
        arq = redis.get("arq")
        if arq:
            ratio = one["single"] / arq
            row("single-node workflows, 1 worker process, Redis: workflows/s vs arq 0.28 no-op jobs/s",
                f"{one['single']:,.0f} vs {arq:,.0f}: {ratio:.2f}x", ">= 1.5x", ratio >= 1.5,
                ours=one["single"], arq=arq, ratio=ratio)
            ratio = one["fan-out"] / arq
            row(f"one {width:,}-way fan-out, 1 worker, Redis: node tasks/s vs the same arq figure",
                f"{one['fan-out']:,.0f}: {ratio:.2f}x", ">= 2.5x", ratio >= 2.5,
                ours=one["fan-out"], arq=arq, ratio=ratio)
        most = max(redis["workers"], key=int)
        if most != "1":
            ratio = redis["workers"][most]["fan-out"] / one["fan-out"]
            row(f"{most} worker processes vs 1 (fan-out), Redis",
                f"{redis['workers'][most]['fan-out']:,.0f} vs {one['fan-out']:,.0f} tasks/s: {ratio:.2f}x",
                ">= 1x on 2 cores", ratio >= 1.0, ratio=ratio)
    if nats and (durable or redis):
        # Against the Redis as durable as NATS's file storage (AOF: DURABLE_REDIS) when it was
        # measured; the Redis that persists nothing is shown beside it (or instead, without the other).
        theirs = nats["workers"]["1"]
        base = (durable or redis)["workers"]["1"]
        single = theirs["single"] / base["single"]
        fan = theirs["fan-out"] / base["fan-out"]
        now = f"{single:.2f}x, {fan:.2f}x"
        cpu: dict[str, float] = {}
        if "single_cpu_ms" in base and "single_cpu_ms" in theirs:  # CPU per task: Redis's over NATS's
            cpu = {"single_cpu": base["single_cpu_ms"] / theirs["single_cpu_ms"],
                   "fan_out_cpu": base["fan_cpu_ms"] / theirs["fan_cpu_ms"]}
            now += f" (by CPU per task: {cpu['single_cpu']:.2f}x, {cpu['fan_out_cpu']:.2f}x)"
        volatile: dict[str, float] = {}
        if durable and redis:
            plain = redis["workers"]["1"]
            volatile = {"single_vs_no_persistence": theirs["single"] / plain["single"],
                        "fan_out_vs_no_persistence": theirs["fan-out"] / plain["fan-out"]}
            now += (f"; against a Redis persisting nothing: {volatile['single_vs_no_persistence']:.2f}x, "
                    f"{volatile['fan_out_vs_no_persistence']:.2f}x")
        against = ("judged against Redis with AOF, as durable as NATS's file storage" if durable
                   else "against Redis persisting nothing")
        row(f"NATS vs Redis, same workloads (1 worker: single-node workflows, fan-out; {against})",
            now, ">= 0.8x", min(single, fan) >= 0.8, single=single, fan_out=fan, **cpu, **volatile)
    if redis:
        one = redis["workers"]["1"]
        layers = figures.get("latency_layers")
        floor = ""
        if layers:  # the same path with no framework code: what the machine itself costs
            floor = (f" (floor on this machine, scripts and sockets alone: {layers['floor']['p50_ms']:.2f} / "
                     f"{layers['floor']['p99_ms']:.2f} ms; through the queue port: {layers['queue']['p50_ms']:.2f} / "
                     f"{layers['queue']['p99_ms']:.2f} ms)")
        row("trigger -> merged latency, Redis, p50 / p99",
            f"{one['p50_ms']:.2f} / {one['p99_ms']:.2f} ms{floor}", "<= 0.8 / 3 ms",
            one["p50_ms"] <= 0.8 and one["p99_ms"] <= 3.0, p50_ms=one["p50_ms"], p99_ms=one["p99_ms"])
    trips = figures.get("round_trips")
    if trips:
        row("round trips to the backend per single-node workflow, orchestrator + worker (Redis)",
            f"{trips['round_trips']:g} (+ {trips['publishes']:g} event publishes, batched off the path)", "<= 5",
            trips["round_trips"] <= 5, round_trips=trips["round_trips"], publishes=trips["publishes"])
    growth = figures.get("checkpoint_growth")
    if growth:
        steps = max(r["steps"] for r in growth["rows"] if r["workload"] == "constant")
        constant = {r["backend"]: r for r in growth["rows"] if r["workload"] == "constant" and r["steps"] == steps}
        shown = ", ".join(f"{backend} {r['stored_bytes'] / 1e6:.2f} MB" for backend, r in constant.items())
        worst = max(r["stored_bytes"] for r in constant.values()) / 1e6
        row(f"{steps:,} steps over a state holding a {growth['value_kb']} KB value that never changes: "
            "checkpoint bytes stored", shown, "<= 3 MB", worst <= 3.0,
            **{f"{backend}_mb": r["stored_bytes"] / 1e6 for backend, r in constant.items()})
    payload = figures.get("payload_bytes")
    if payload:
        first = payload[0]
        row(f"bytes written to the backend for one {first['width']:,}-way fan-out over a {first['state_mb']:g} MB "
            "state (Redis)", f"{first['mb_written']:.1f} MB", "<= 20 MB", first["mb_written"] <= 20,
            mb_written=first["mb_written"])
    lg = figures.get("langgraph")
    if lg:
        sync = lg["ratios"]["ours sync vs langgraph no checkpointer"]
        exit_ = lg["ratios"]["ours exit vs langgraph no checkpointer"]
        wall = lg.get("wall_ratios", {})
        now = f"{sync:.2f}x faster ({exit_:.2f}x at exit), by CPU time"
        if wall:
            now += (f"; by wall time {wall['ours sync vs langgraph no checkpointer']:.2f}x "
                    f"({wall['ours exit vs langgraph no checkpointer']:.2f}x)")
        row(f"local engine, {lg['chain']:,}-node chain, every step checkpointed (and only at exit), vs LangGraph "
            "1.2 with no checkpointer", now, ">= 3x (>= 6x at exit)", sync >= 3 and exit_ >= 6, sync=sync, exit=exit_)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| workload | now | goal | met? |\n|---|---|---|---|")
    for r in rows:
        met = "yes" if r["met"] else "no" if r["met"] is not None else "-"
        print(f"| {r['workload']} | {r['now']} | {r['goal']} | {met} |")


def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--start", type=bench_support.backends, default="redis,nats",
                        help="backends to measure on servers started here: redis, nats or redis,nats")
    parser.add_argument("--results", type=pathlib.Path, help="write the table and every figure as JSON")
    parser.add_argument("--charts", type=pathlib.Path, help="write the charts (SVG) into this directory")
    parser.add_argument("--peers-env", type=pathlib.Path, default=DEFAULT_PEERS_ENV,
                        help="environment for arq, LangGraph and matplotlib")
    parser.add_argument("--peers-python", help="interpreter of such an environment made already")
    parser.add_argument("--workers", type=bench_support.counts, default="1,2,4",
                        help="worker process counts of the distributed runs")
    parser.add_argument("--workflows", type=bench_support.positive_int, default=1000,
                        help="single-node workflows per distributed run")
    parser.add_argument("--rounds", type=bench_support.positive_int, default=3,
                        help="passes of each distributed throughput workload and of arq's; medians are compared")
    parser.add_argument("--width", type=bench_support.positive_int, default=1000, help="fan-out width")
    parser.add_argument("--steps", type=bench_support.positive_int, default=1000,
                        help="steps of the checkpoint growth and chain runs")
    parser.add_argument("--repeat", type=bench_support.positive_int, default=7,
                        help="runs of each variant of the chain")
    parser.add_argument("--from-results", type=pathlib.Path,
                        help="run nothing: the table (and --charts) of a results file written before")
    args = parser.parse_args()
    # Checked before anything runs: a typo fails now, not after the measurements with a traceback
    # (--results and --charts by parse_args, see bench_support.BenchParser).
    if args.peers_python:
        bench_support.peers_interpreter(args.peers_python, "--peers-python",
                                        PLOT_MODULES if args.from_results else PEER_MODULES)
    if args.from_results:
        earlier = read_results(args.from_results)
        earlier["table"] = table(earlier["figures"])
        print_table(earlier["table"])
        start = earlier.get("parameters", {}).get("start")
        workers = earlier.get("parameters", {}).get("workers")
        left_out = not_measured(start, workers if isinstance(workers, str) else None) if isinstance(start, list) else []
        if left_out:
            print(f"\nnot measured, so left out of the table: {'; '.join(left_out)}")
        if args.results:
            args.results.write_text(json.dumps(earlier, indent=2) + "\n")
        if args.charts:
            draw(args.peers_python or peers_python(args.peers_env), earlier, args.charts, {})
        return
    backends = args.start
    python = sys.executable
    load_before = os.getloadavg()
    peers = args.peers_python or peers_python(args.peers_env)
    log: dict[str, Any] = {}
    figures: dict[str, Any] = {"distributed": {}}
    with tempfile.TemporaryDirectory(prefix="da-bench-") as scratch:
        bench_support.own_directory(scratch)  # a second Ctrl-C removes it too
        out = pathlib.Path(scratch)

        def script(name: str, *extra: str) -> list[str]:
            return [python, str(HERE / name), *extra]

        for backend in backends:
            command = script("distributed_benchmark.py", "--start", backend, "--workers", args.workers,
                             "--workflows", str(args.workflows), "--width", str(args.width),
                             "--rounds", str(args.rounds), "--results", str(out / f"{backend}.json"))
            if backend == "redis":
                command += ["--arq-python", peers]
            if step(f"distributed {backend}", command, log):
                figures["distributed"][backend] = read(out / f"{backend}.json")
        if "redis" in backends and "nats" in backends:  # right after NATS's run: the two compared
            command = script("distributed_benchmark.py", "--start", "redis", "--redis-persistence", "aof",
                             "--workers", "1", "--workflows", str(args.workflows), "--width", str(args.width),
                             "--rounds", str(args.rounds), "--results", str(out / f"{DURABLE_REDIS}.json"))
            if step(f"distributed {DURABLE_REDIS}", command, log):
                figures["distributed"][DURABLE_REDIS] = read(out / f"{DURABLE_REDIS}.json")
        if "redis" in backends:
            if step("round trips", script("round_trips.py", "--results", str(out / "trips.json")), log):
                figures["round_trips"] = read(out / "trips.json")
            if step("latency layers", script("latency_layers.py", "--results", str(out / "layers.json")), log):
                figures["latency_layers"] = read(out / "layers.json")
            if step("payload bytes", script("payload_bytes.py", "--width", str(args.width),
                                            "--results", str(out / "payload.json")), log):
                figures["payload_bytes"] = read(out / "payload.json")
        with contextlib.ExitStack() as servers:
            growth = script("checkpoint_growth.py", "--steps", str(args.steps), "--turns", str(args.steps),
                            "--series", ",".join(str(args.steps * k // 4) for k in (1, 2, 3)),
                            "--results", str(out / "growth.json"))
            if "redis" in backends:
                growth += ["--redis", servers.enter_context(redis_server())]
            if "nats" in backends:
                growth += ["--start-nats"]
            if step("checkpoint growth", growth, log):
                figures["checkpoint_growth"] = read(out / "growth.json")
        if step("langgraph", script("langgraph_benchmark.py", "--langgraph-python", peers, "--chain", str(args.steps),
                                    "--repeat", str(args.repeat), "--results", str(out / "langgraph.json")), log):
            figures["langgraph"] = read(out / "langgraph.json")
        step("local", script("local_benchmark.py", "--chain", str(args.steps), "--durability", "all"), log)
    rows = table(figures)
    print_table(rows)
    failed = [title for title, run in log.items() if "error" in run]
    if failed:
        print(f"\nfailed, so left out of the table: "
              f"{'; '.join(f'{title} ({ROWS_OF_STEP.get(title, title)})' for title in failed)}")
    left_out = not_measured(backends, args.workers)
    if left_out:
        print(f"\nnot measured, so left out of the table: {'; '.join(left_out)}")
    print(f"\nload average (1, 5, 15 min) before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    results = {
        "command": shlex.join([pathlib.Path(sys.executable).name, *sys.argv]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {"start": backends, "workers": args.workers, "workflows": args.workflows,
                       "rounds": args.rounds, "width": args.width, "steps": args.steps, "repeat": args.repeat},
        "table": rows, "figures": figures, "runs": log,
    }
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {args.results}")
    if args.charts:
        draw(peers, results, args.charts, log)
    if failed:
        raise SystemExit(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}")


def draw(peers: str, results: dict[str, Any], charts: pathlib.Path, log: dict[str, Any]) -> None:
    """The charts of ``results`` into ``charts``, drawn by ``plot_results.py`` in the peers' environment."""
    charts.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(results, handle)
    try:
        step("charts", [peers, str(HERE / "plot_results.py"), handle.name, "--out", str(charts)], log)
    finally:
        os.unlink(handle.name)


if __name__ == "__main__":
    bench_support.run(main)
