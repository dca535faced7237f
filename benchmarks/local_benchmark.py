"""Local engine benchmark on the in-process backend: per-run and per-step cost.

    python benchmarks/local_benchmark.py [--chain 1000] [--fan-out 100] [--repeat 5]

Workloads: a sequential chain of N no-op nodes (N steps), and one node fanning out to M
parallel no-op nodes joined by a final node (3 steps). Every step is checkpointed, as in
production. Prints the best and median wall time of ``--repeat`` runs of each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from distributed_agents import Graph, Orchestrator, State


async def noop(state: State) -> None:
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
        return {"done": 1}

    graph.add_node("start", noop).add_node("join", noop)
    leaves = [f"leaf{i}" for i in range(width)]
    for name in leaves:
        graph.add_node(name, leaf)
        graph.add_edge("start", name)
    graph.add_edge(leaves, "join")
    return graph.set_entry_point("start").set_finish_point("join").compile()


async def measure(graph: Graph, repeat: int, step_limit: int) -> list[float]:
    orchestrator = Orchestrator(step_limit=step_limit)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await orchestrator.execute(graph, {})
        times.append(time.perf_counter() - started)
    await orchestrator.close()
    return times


def report(label: str, times: list[float], steps: int, nodes: int) -> None:
    best, median = min(times), statistics.median(times)
    print(f"{label:<28} best {best * 1000:8.1f} ms  median {median * 1000:8.1f} ms  "
          f"per step {median / steps * 1e6:8.1f} us  per node {median / nodes * 1e6:8.1f} us")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=1000)
    parser.add_argument("--fan-out", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    chain = await measure(chain_graph(args.chain), args.repeat, args.chain + 10)
    report(f"chain of {args.chain}", chain, steps=args.chain, nodes=args.chain)
    fan = await measure(fan_out_graph(args.fan_out), args.repeat, 10)
    report(f"fan-out to {args.fan_out}", fan, steps=3, nodes=args.fan_out + 2)


if __name__ == "__main__":
    asyncio.run(main())
