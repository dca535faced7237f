"""No-op node functions served by benchmark worker processes.

``BENCH_NODE_CPU_US`` (environment of the worker process, microseconds, default 0): each
node first keeps the CPU busy that long (a spin on ``time.perf_counter``), standing in for
a node that does some work; ``distributed_benchmark.py --node-cpu-us`` sets it. How the
throughput falls as it grows says how much of a task's time the worker's own CPU is.
"""

from __future__ import annotations

import os
import time

from distributed_agents import NodeRegistry, State

registry = NodeRegistry()

_NODE_CPU_S = int(os.environ.get("BENCH_NODE_CPU_US") or 0) / 1e6


@registry.register("noop")
async def noop(state: State) -> None:
    if _NODE_CPU_S > 0:
        end = time.perf_counter() + _NODE_CPU_S
        while time.perf_counter() < end:
            pass
    return None
