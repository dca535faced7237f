"""Worker processes serving ``tests/distributed/crash_app.py`` through the CLI, for tests
that need real workers to fail, crash, hang or be stopped by signals."""

from __future__ import annotations

import pathlib
from typing import Any

from support.worker_processes import WorkerProcesses

from distributed_agents import Graph


def single(node_type: str, **options: Any) -> Graph:
    graph = Graph(f"single_{node_type}").add_node(node_type, **options)
    return graph.set_entry_point(node_type).set_finish_point(node_type).compile()


def crash_workers(url: str, prefix: str, tmp: pathlib.Path, **env: str) -> WorkerProcesses:
    """``WorkerProcesses`` serving ``crash_app:registry`` (``DA_HANG``, ``DA_RUNS_LOG``: see that app)."""
    return WorkerProcesses(url, prefix, tmp, "crash_app:registry", **env)
