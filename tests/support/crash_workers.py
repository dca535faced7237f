"""Worker processes serving ``tests/distributed/crash_app.py`` through the CLI, for tests
that need real workers to fail, crash, hang or be stopped by signals."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

from distributed_agents import Graph

HERE = pathlib.Path(__file__).resolve().parent.parent / "distributed"


def single(node_type: str, **options: Any) -> Graph:
    graph = Graph(f"single_{node_type}").add_node(node_type, **options)
    return graph.set_entry_point(node_type).set_finish_point(node_type).compile()


class Workers:
    """Worker processes for one test, with output in log files; all killed at the end."""

    def __init__(self, url: str, prefix: str, tmp: pathlib.Path, **env: str) -> None:
        self.url, self.prefix, self.tmp = url, prefix, tmp
        self.env = {**os.environ, "PYTHONPATH": str(HERE), "DA_MARKER_DIR": str(tmp), **env}
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, worker_id: str, *extra: str) -> subprocess.Popen[str]:
        with open(self.tmp / f"{worker_id}.log", "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", "crash_app:registry",
                 "--backend-url", self.url, "--prefix", self.prefix, "--worker-id", worker_id,
                 "--heartbeat-interval", "0.5", *extra],
                cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        return process

    def log(self, worker_id: str) -> str:
        return (self.tmp / f"{worker_id}.log").read_text()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
