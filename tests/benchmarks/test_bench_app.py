"""The benchmark workers' node (``benchmarks/bench_app.py``): a no-op, or a node that keeps the
CPU busy for ``BENCH_NODE_CPU_US`` microseconds first (``distributed_benchmark.py --node-cpu-us``)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"

# Runs the node in a fresh interpreter (the variable is read when bench_app is imported) and
# prints the wall time it took, in microseconds: a lower bound is all a spin can promise.
RUN_NODE = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
import bench_app
from distributed_agents import State
started = time.perf_counter()
result = asyncio.run(bench_app.noop(State({})))
print(result, round((time.perf_counter() - started) * 1e6))
"""


def run_node(node_cpu_us: str | None) -> tuple[str, int]:
    env = {key: value for key, value in os.environ.items() if key != "BENCH_NODE_CPU_US"}
    if node_cpu_us is not None:
        env["BENCH_NODE_CPU_US"] = node_cpu_us
    done = subprocess.run([sys.executable, "-c", RUN_NODE, str(BENCHMARKS)], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    result, took_us = done.stdout.split()
    return result, int(took_us)


def test_the_node_spins_for_the_microseconds_it_is_given_and_returns_nothing() -> None:
    result, took_us = run_node("20000")
    assert result == "None"
    assert took_us >= 20_000


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_variable_the_node_is_a_no_op(value: str | None) -> None:
    assert run_node(value)[0] == "None"


def test_distributed_benchmark_refuses_a_negative_node_cpu() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "distributed_benchmark.py"), "--start", "redis",
                           "--node-cpu-us", "-5"], capture_output=True, text=True, timeout=60, cwd=BENCHMARKS.parent)
    assert done.returncode == 2, done
    assert "--node-cpu-us" in done.stderr and "Traceback" not in done.stderr
    assert "backend " not in done.stdout  # refused before any server started
