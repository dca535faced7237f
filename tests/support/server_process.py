"""What every real-server launcher shares: a free port, a directory, start/stop/restart.

Subclasses say how to start their server (``command``) and how to tell that it is ready
to serve (``ready``); this class runs the process with its output in a log file in the
server's directory, waits for readiness, and stops it with SIGTERM (or SIGKILL), keeping
the directory so a restart comes back with the server's data.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TypeVar

__all__ = ["ServerProcess", "free_port", "port_taken"]

S = TypeVar("S", bound="ServerProcess")


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has
    not handed out before: the kernel may give a port just closed again at once, and two
    servers told the same port would look like one ready server (the second exits)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port on 127.0.0.1 in 100 tries")


def port_taken(log: str, port: int) -> bool:
    """Whether a server's log says it could not listen on ``port`` because it is in use."""
    address = re.compile(rf"127\.0\.0\.1:{port}(?!\d)")
    return any(address.search(line) and "address already in use" in line.lower() for line in log.splitlines())


class ServerProcess:
    """One server process on loopback, restartable on the same port and directory."""

    name = "server"
    #: A line the server logs once it serves (after it has bound its ports); readiness is
    #: judged on this start's log only, so another process answering on the port (a port
    #: collision) is never taken for this one. None: ``ready()`` alone.
    ready_line: str | None = None
    #: Start the server in a session of its own, out of the caller's process group: a Ctrl-C in
    #: the terminal then reaches the caller alone, which stops the server after what uses it (the
    #: benchmark scripts). False for the tests: a Ctrl-C stops pytest's servers with it.
    own_session = False

    def __init__(self, binary: str, *, port: int | None, directory: str | None, temp_prefix: str) -> None:
        self.binary = binary
        self._chosen_port = port is None
        self.port = port or free_port()
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix=temp_prefix)
        self.process: subprocess.Popen[bytes] | None = None
        self._served = False  # started once: a restart keeps its port
        self._log_path = Path(self.directory) / "server.log"

    def command(self) -> list[str]:
        """The command line the server is started with."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server serves requests now."""
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        """Start the server (if it is not running) and wait until it is ready.

        A port this launcher chose that turns out taken (another test process bound it
        between ``free_port`` and the server's start) is replaced by a fresh one, before the
        first start only (a restart must come back on its port). ``RuntimeError`` with the
        log's tail when the server exits or is not ready within ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            return
        for _ in range(5):
            if self._start_once(timeout):
                return
            self.port = free_port()
        raise RuntimeError(f"{self.name}: every port tried was taken: {self.log_tail()}")

    def _start_once(self, timeout: float) -> bool:
        """One start; False when the server exited because its (chosen) port was taken."""
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=self.own_session)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                if self._chosen_port and not self._served and port_taken(self._log_since(offset), self.port):
                    self.process = None
                    return False
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if (self.ready_line is None or self.ready_line in self._log_since(offset)) and self.ready():
                self._served = True
                return True
            time.sleep(0.02)
        self.stop(kill=True)
        raise RuntimeError(f"{self.name} was not ready on port {self.port} within {timeout}s: {self.log_tail()}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

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
