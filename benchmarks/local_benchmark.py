"""Local engine benchmark on the in-process backend: per-run and per-step cost.

    python benchmarks/local_benchmark.py [--chain 1000] [--fan-out 100] [--repeat 5]
                                         [--durability sync|async|exit|all] [--backend URL]
                                         [--node-ms 0]

Workloads: a sequential chain of N no-op nodes (N steps), and one node fanning out to M
parallel no-op nodes joined by a final node (3 steps). Steps are checkpointed as the
durability mode says (``execute(durability=)``; default ``sync``, every step before the
next, as in production; ``all`` runs each mode and prints each one's time relative to
``sync``). ``--backend`` (default ``memory://``) runs the same in-process nodes over
another backend's state store, e.g. ``redis://localhost:6379/0``, where a write costs a
round trip. ``--node-ms`` makes each node wait that long (as I/O would), which is what
``async`` overlaps a step's write with. Prints the best and median wall time of
``--repeat`` runs of each.
"""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_support  # noqa: E402

from distributed_agents import Graph, Orchestrator, State  # noqa: E402


NODE_SECONDS = 0.0  # set by --node-ms: how long each node waits


async def noop(state: State) -> None:
    if NODE_SECONDS:
        await asyncio.sleep(NODE_SECONDS)
    return None


def chain_graph(length: int) -> Graph:
    graph = Graph(f"chain_{length}")
    names = [f"n{i}" for i in range(length)]
    for name in names:
        graph.add_node(name, noop)
    graph.set_entry_point(names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    return graph.set_finish_point(names[-1]).compile()


def fan_out_graph(width: int) -> Graph:
    graph = Graph(f"fan_{width}", reducers={"done": "append"})

    async def leaf(state: State) -> dict[str, Any]:
        if NODE_SECONDS:
            await asyncio.sleep(NODE_SECONDS)
        return {"done": 1}

    graph.add_node("start", noop).add_node("join", noop)
    leaves = [f"leaf{i}" for i in range(width)]
    for name in leaves:
        graph.add_node(name, leaf)
        graph.add_edge("start", name)
    graph.add_edge(leaves, "join")
    return graph.set_entry_point("start").set_finish_point("join").compile()


async def measure(graph: Graph, repeat: int, step_limit: int, modes: list[str],
                  backend: str = "memory://") -> dict[str, list[float]]:
    """Wall times of ``repeat`` runs per durability mode; the modes take turns, so a noisy
    machine slows each of them alike."""
    orchestrator = Orchestrator(step_limit=step_limit, backend=backend)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeat):
        for mode in modes:
            started = time.perf_counter()
            await orchestrator.execute(graph, {}, durability=mode)
            times[mode].append(time.perf_counter() - started)
    await orchestrator.close()
    return times


def report(label: str, times: list[float], steps: int, nodes: int) -> None:
    best, median = min(times), statistics.median(times)
    print(f"{label:<28} best {best * 1000:8.1f} ms  median {median * 1000:8.1f} ms  "
          f"per step {median / steps * 1e6:8.1f} us  per node {median / nodes * 1e6:8.1f} us")


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--chain", type=bench_support.positive_int, default=1000, help="nodes of the chain")
    parser.add_argument("--fan-out", type=bench_support.positive_int, default=100, help="parallel nodes of the fan-out")
    parser.add_argument("--repeat", type=bench_support.positive_int, default=5, help="runs of each workload and mode")
    parser.add_argument("--durability", choices=["sync", "async", "exit", "all"], default="sync",
                        help="when steps are written (execute(durability=)); all: each mode, with ratios to sync")
    parser.add_argument("--backend", default="memory://", help="backend URL")
    parser.add_argument("--node-ms", type=bench_support.non_negative_float, default=0.0,
                        help="milliseconds each node waits")
    args = parser.parse_args()
    if args.backend != "memory://":
        await bench_support.check_backend(args.backend)
    global NODE_SECONDS
    NODE_SECONDS = args.node_ms / 1000
    modes = ["sync", "async", "exit"] if args.durability == "all" else [args.durability]
    chain = await measure(chain_graph(args.chain), args.repeat, args.chain + 10, modes, args.backend)
    fan = await measure(fan_out_graph(args.fan_out), args.repeat, 10, modes, args.backend)
    for mode in modes:
        suffix = f" [{mode}]" if len(modes) > 1 or mode != "sync" else ""
        report(f"chain of {args.chain}{suffix}", chain[mode], steps=args.chain, nodes=args.chain)
    for mode in modes:
        suffix = f" [{mode}]" if len(modes) > 1 or mode != "sync" else ""
        report(f"fan-out to {args.fan_out}{suffix}", fan[mode], steps=3, nodes=args.fan_out + 2)
    if len(modes) > 1:
        for workload, times in (("chain", chain), ("fan-out", fan)):
            ratios = "  ".join(f"{mode} {statistics.median(times[mode]) / statistics.median(times['sync']):.2f}x"
                               for mode in modes)
            print(f"median time relative to sync, {workload}: {ratios}")


if __name__ == "__main__":
    bench_support.run(main)
