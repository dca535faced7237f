"""Charts of a ``run_all.py`` results file (matplotlib, from ``requirements-bench.txt``: run it in that environment).

    python benchmarks/plot_results.py benchmarks/results.json --out docs/

Writes ``bench-throughput-workers.svg`` (single-node workflows/s and a fan-out's tasks/s
against worker processes, per backend, with arq's no-op jobs/s on the same Redis for
reference) and ``bench-checkpoint-bytes.svg`` (stored checkpoint bytes against steps for
a state holding a value that never changes, per backend, next to what storing every
full state would take).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import matplotlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_support  # noqa: E402  (needs nothing of distributed_agents: this runs in the peers' environment)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

COLOURS = {"redis": "#c0392b", "redis-aof": "#e59866", "nats": "#2471a3", "memory": "#7d3c98", "full": "#7f8c8d", "arq": "#d68910"}


def throughput(results: dict[str, Any], path: pathlib.Path) -> None:
    distributed = results["figures"].get("distributed", {})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    arq = None
    for backend, figures in distributed.items():
        counts = sorted(figures["workers"], key=int)
        xs = [int(c) for c in counts]
        axes[0].plot(xs, [figures["workers"][c]["single"] for c in counts], marker="o", label=backend,
                     color=COLOURS.get(backend))
        axes[1].plot(xs, [figures["workers"][c]["fan-out"] for c in counts], marker="o", label=backend,
                     color=COLOURS.get(backend))
        arq = arq or figures.get("arq")
        for axis in axes:
            axis.set_xticks(xs)
    width = results.get("parameters", {}).get("width", 1000)
    for axis, title in zip(axes, ("single-node workflows per second", f"{width:,}-way fan-out: node tasks per second")):
        if arq:
            axis.axhline(arq, linestyle="--", color=COLOURS["arq"], label="arq 0.28, 1 worker (no-op jobs/s)")
        axis.set_title(title)
        axis.set_xlabel("worker processes")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    cpus = results.get("machine", {}).get("cpus")
    figure.suptitle(f"Throughput against worker processes ({cpus} CPUs, servers on loopback)")
    figure.savefig(path)
    plt.close(figure)


def checkpoint_bytes(results: dict[str, Any], path: pathlib.Path) -> None:
    growth = results["figures"]["checkpoint_growth"]
    rows = [r for r in growth["rows"] if r["workload"] == "constant"]
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["steps"])
        axis.plot([r["steps"] for r in mine], [r["stored_bytes"] / 1e6 for r in mine], marker="o",
                  label=f"{backend}: checkpoints as stored", color=COLOURS.get(backend))
    memory = sorted((r for r in rows if r["backend"] == rows[0]["backend"]), key=lambda r: r["steps"])
    axis.plot([r["steps"] for r in memory], [r["full_bytes"] / 1e6 for r in memory], linestyle="--",
              color=COLOURS["full"], label="every checkpoint's full state")
    axis.set_yscale("log")
    axis.set_xlabel("steps")
    axis.set_ylabel("MB")
    axis.set_title(f"Checkpoint bytes against steps: a {growth['value_kb']} KB value that never changes")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("results", type=pathlib.Path, help="a results file written by run_all.py --results")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs"), help="directory to write into")
    parser.add_argument("--formats", default="svg", help="file types to write, e.g. svg,png")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in args.formats.split(","):
        if results["figures"].get("distributed"):
            throughput(results, args.out / f"bench-throughput-workers.{suffix}")
            written.append(args.out / f"bench-throughput-workers.{suffix}")
        if results["figures"].get("checkpoint_growth"):
            checkpoint_bytes(results, args.out / f"bench-checkpoint-bytes.{suffix}")
            written.append(args.out / f"bench-checkpoint-bytes.{suffix}")
    for path in written:
        print(f"chart: {path}")


if __name__ == "__main__":
    main()
