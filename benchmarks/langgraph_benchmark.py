"""The local engine next to LangGraph on the same 1,000-node chain, for the side-by-side ratios.

LangGraph is not a dependency of this project: install it into its own environment from
``benchmarks/requirements-bench.txt`` and point ``--langgraph-python`` at that
environment's interpreter, which runs the LangGraph half of this script::

    python -m venv /tmp/bench-env && /tmp/bench-env/bin/pip install -r benchmarks/requirements-bench.txt
    python benchmarks/langgraph_benchmark.py --langgraph-python /tmp/bench-env/bin/python \\
        [--chain 1000] [--repeat 7] [--results FILE]

Workload: a chain of ``--chain`` async no-op nodes (``n0 -> n1 -> ... ``), one node per
step, over a state ``{"n": 0}`` that no node changes, run to the end in one process:

* LangGraph 1.2 ``ainvoke`` with no checkpointer (and, for reference, with an
  ``InMemorySaver`` and ``durability="sync"`` / ``"exit"``);
* this project's local engine (``Orchestrator(backend="memory://").execute``) with
  ``durability="sync"`` (every step checkpointed before the next) and ``"exit"``
  (one checkpoint, at the end).

The LangGraph half runs in a child process of the LangGraph environment that builds its
graph once and runs it on request, so the runs of both take turns (``--repeat`` rounds,
each running every variant once): a noisy machine slows them alike. Both are single
threads busy on the CPU, so the ratios are of the median CPU time each run used (what
other processes take of the machine does not count), with those of the median wall
time alongside. Prints each variant's times and the ratios (LangGraph's time over
ours: how many times faster ours is); ``--results FILE`` writes the times and ratios
as JSON.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_support  # noqa: E402

PEER_VARIANTS = ("none", "memory-sync", "memory-exit")  # LangGraph: no checkpointer, InMemorySaver sync / exit
OUR_VARIANTS = ("sync", "exit")


def peer(chain: int) -> None:
    """The LangGraph half (in the LangGraph environment): one timed run per ``run VARIANT`` line on stdin."""
    from typing import TypedDict

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    class ChainState(TypedDict):
        n: int

    async def noop(state: ChainState) -> None:
        return None

    def build(checkpointer: Any) -> Any:
        graph = StateGraph(ChainState)
        names = [f"n{i}" for i in range(chain)]
        for name in names:
            graph.add_node(name, noop)
        graph.add_edge(START, names[0])
        for a, b in zip(names, names[1:]):
            graph.add_edge(a, b)
        graph.add_edge(names[-1], END)
        return graph.compile(checkpointer=checkpointer)

    plain, saved = build(None), build(InMemorySaver())
    loop = asyncio.new_event_loop()
    runs = 0
    for line in sys.stdin:
        variant = line.split()[-1]
        runs += 1
        config: dict[str, Any] = {"recursion_limit": chain + 10}
        kwargs: dict[str, Any] = {}
        graph = plain
        if variant != "none":
            graph = saved
            config["configurable"] = {"thread_id": f"bench-{runs}"}
            kwargs["durability"] = variant.split("-")[1]
        started, cpu = time.perf_counter(), time.process_time()
        loop.run_until_complete(graph.ainvoke({"n": 0}, config, **kwargs))
        print(f"seconds {time.perf_counter() - started:.6f} {time.process_time() - cpu:.6f}", flush=True)
    loop.close()


class Peer:
    """The LangGraph child process."""

    def __init__(self, python: str, chain: int) -> None:
        self._process = subprocess.Popen(
            [python, str(HERE / "langgraph_benchmark.py"), "--role", "peer", "--chain", str(chain)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, variant: str) -> tuple[float, float]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"run {variant}\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line.startswith("seconds "):
            raise RuntimeError(f"the LangGraph process printed {line!r}, not a time (did it start? is langgraph "
                               "installed in that environment? pip install -r benchmarks/requirements-bench.txt)")
        return float(line.split()[1]), float(line.split()[2])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=60)


async def measure(python: str, chain: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times and CPU times (seconds) of every variant, ``repeat`` rounds taking turns."""
    sys.path.insert(0, str(HERE))
    from local_benchmark import chain_graph

    from distributed_agents import Orchestrator

    graph = chain_graph(chain)
    orchestrator = Orchestrator(step_limit=chain + 10, backend="memory://")
    peer_process = Peer(python, chain)
    times: dict[str, list[float]] = {f"langgraph {v}": [] for v in PEER_VARIANTS}
    times.update({f"ours {v}": [] for v in OUR_VARIANTS})
    cpu: dict[str, list[float]] = {name: [] for name in times}
    try:
        # A warm-up run of each, not timed (imports, first allocations).
        for variant in PEER_VARIANTS:
            peer_process.run(variant)
        for mode in OUR_VARIANTS:
            await orchestrator.execute(graph, {"n": 0}, durability=mode)
        for _ in range(repeat):
            for variant in PEER_VARIANTS:
                wall, used = peer_process.run(variant)
                times[f"langgraph {variant}"].append(wall)
                cpu[f"langgraph {variant}"].append(used)
            for mode in OUR_VARIANTS:
                started, used = time.perf_counter(), time.process_time()
                await orchestrator.execute(graph, {"n": 0}, durability=mode)
                times[f"ours {mode}"].append(time.perf_counter() - started)
                cpu[f"ours {mode}"].append(time.process_time() - used)
    finally:
        peer_process.close()
        await orchestrator.close()
    return times, cpu


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """How many times faster ours is than LangGraph, by the medians of ``times``."""
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "ours sync vs langgraph no checkpointer": median["langgraph none"] / median["ours sync"],
        "ours exit vs langgraph no checkpointer": median["langgraph none"] / median["ours exit"],
        "ours sync vs langgraph InMemorySaver sync": median["langgraph memory-sync"] / median["ours sync"],
        "ours exit vs langgraph InMemorySaver exit": median["langgraph memory-exit"] / median["ours exit"],
    }


def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--langgraph-python", help="interpreter of an environment with langgraph installed")
    parser.add_argument("--chain", type=bench_support.positive_int, default=1000, help="nodes of the chain")
    parser.add_argument("--repeat", type=bench_support.positive_int, default=7,
                        help="rounds, each running every variant")
    parser.add_argument("--role", choices=("bench", "peer"), default="bench",
                        help="peer: the LangGraph half, run by the bench role in the LangGraph environment")
    parser.add_argument("--results", help="write the times and ratios to this JSON file")
    args = parser.parse_args()
    if args.role == "peer":
        peer(args.chain)
        return
    if not args.langgraph_python:
        raise SystemExit("pass --langgraph-python PATH: an interpreter of an environment made with "
                         "pip install -r benchmarks/requirements-bench.txt")
    times, cpu = bench_support.arun(measure(args.langgraph_python, args.chain, args.repeat))
    for name, values in times.items():
        median, cpu_median = statistics.median(values), statistics.median(cpu[name])
        print(f"chain of {args.chain}, {name:<24} wall best {min(values) * 1000:8.1f} ms  median {median * 1000:8.1f} ms"
              f"  CPU median {cpu_median * 1000:8.1f} ms, per step {cpu_median / args.chain * 1e6:7.1f} us")
    results: dict[str, Any] = {"chain": args.chain, "repeat": args.repeat, "times": times, "cpu_times": cpu,
                               "ratios": ratios(cpu), "wall_ratios": ratios(times)}
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}x by CPU time ({results['wall_ratios'][name]:.2f}x by wall time)")
    if args.results:
        pathlib.Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    bench_support.run(main)
