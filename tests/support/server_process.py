"""What every real-server launcher shares: a free port, a directory, start/stop/restart.

Subclasses say how to start their server (``command``) and how to tell that it is ready
to serve (``ready``); this class runs the process with its output in a log file in the
server's directory, waits for readiness, and stops it with SIGTERM (or SIGKILL), keeping
the directory so a restart comes back with the server's data.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TypeVar

__all__ = ["ServerProcess", "free_port"]

S = TypeVar("S", bound="ServerProcess")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server process on loopback, restartable on the same port and directory."""

    name = "server"

    def __init__(self, binary: str, *, port: int | None, directory: str | None, temp_prefix: str) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix=temp_prefix)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = Path(self.directory) / "server.log"

    def command(self) -> list[str]:
        """The command line the server is started with."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server serves requests now."""
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        """Start the server (if it is not running) and wait until it is ready."""
        if self.process is not None and self.process.poll() is None:
            return
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.02)
        self.stop(kill=True)
        raise RuntimeError(f"{self.name} was not ready on port {self.port} within {timeout}s: {self.log_tail()}")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGKILL when ``kill``); the directory is kept."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port and directory."""
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the directory if this launcher created it."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self: S) -> S:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
