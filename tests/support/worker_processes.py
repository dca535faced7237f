"""Real worker processes (the CLI) for distributed tests, with output in log files."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time
from types import ModuleType

HERE = pathlib.Path(__file__).resolve().parent.parent / "distributed"  # where the test apps live


def load_test_app(name: str) -> ModuleType:
    """Import ``tests/distributed/<name>.py``, the module the worker processes serve, in this process too."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WorkerProcesses:
    """Worker processes serving ``app`` on one backend and prefix, with ``env`` added to their
    environment; all killed by ``close``."""

    def __init__(self, url: str, prefix: str, tmp: pathlib.Path, app: str, **env: str) -> None:
        self.url, self.prefix, self.tmp, self.app = url, prefix, tmp, app
        self.env = {**os.environ, "PYTHONPATH": str(HERE), "DA_MARKER_DIR": str(tmp), **env}
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, worker_id: str, *extra: str) -> subprocess.Popen[str]:
        with open(self.tmp / f"{worker_id}.log", "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", self.app,
                 "--backend-url", self.url, "--prefix", self.prefix, "--worker-id", worker_id,
                 "--heartbeat-interval", "0.5", *extra],
                cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``distributed-agents ARGS --backend-url URL --prefix PREFIX``."""
        return subprocess.run([sys.executable, "-m", "distributed_agents", *args, "--backend-url", self.url,
                               "--prefix", self.prefix], capture_output=True, text=True, timeout=60, cwd=HERE,
                              env=self.env)

    def log(self, worker_id: str) -> str:
        return (self.tmp / f"{worker_id}.log").read_text()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def sigkill_orchestrator_child(
    script: str, url: str, prefix: str, workflow_id: str, tmp: pathlib.Path,
    *, markers: str | None = None, count: int = 0,
) -> str:
    """Run ``tests/distributed/<script> url prefix workflow_id``, an orchestrator in a child process, and SIGKILL it.

    The kill comes after the child's first stdout line and, with ``markers``, once
    ``count`` files matching that glob exist in ``tmp`` (nodes write them as they run).
    Asserts that the SIGKILL is what ended it. Returns that first line (stripped); the
    child's stderr is in ``tmp/child.log``.
    """
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    log = tmp / "child.log"
    with open(log, "w") as errors, subprocess.Popen(
        [sys.executable, str(HERE / script), url, prefix, workflow_id],
        stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=HERE,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, log.read_text()
            while markers is not None and len(list(tmp.glob(markers))) < count:
                assert child.poll() is None, log.read_text()
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            assert child.returncode == -signal.SIGKILL, log.read_text()  # killed, not ended on its own
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    return line.strip()
