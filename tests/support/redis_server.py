"""Launcher and session fixture for a real ``redis-server``.

``RedisServer`` starts the binary on a free loopback port (``--bind 127.0.0.1``) with
its own temporary ``--dir``, no RDB snapshots (``--save ""``), optionally
``--appendonly yes`` and a ``--unixsocket``, waits until it answers ``PING``, and can be
stopped (SIGTERM or SIGKILL) and started again on the same port and directory, so fault
tests can take the engine away and bring it back (with its data when AOF is on).
Benchmarks and other tests import it directly::

    from support.redis_server import RedisServer, find_redis_server

The ``redis_url`` fixture is session-scoped and starts a server only when a test asks
for it. Without a binary it fails, never skips: a test run that claims to cover Redis
must.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.server_process import ServerProcess, free_port

__all__ = ["RedisServer", "find_redis_server", "free_port", "redis_server", "redis_url"]

_INSTALL_HINT = (
    "no redis-server binary found on PATH; install Redis 7+ (e.g. apt-get install redis-server, "
    "brew install redis) — the Redis tests need a real server and do not skip"
)


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary on PATH, or None."""
    return shutil.which("redis-server")


class RedisServer(ServerProcess):
    """One ``redis-server`` process bound to loopback; restartable on the same port and dir.

    ``password`` adds ``--requirepass``; ``unix_socket`` listens on a socket file in the
    data directory as well (``unix_url``); ``appendonly`` keeps data across restarts.
    """

    name = "redis-server"
    ready_line = "Ready to accept connections"

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        data_dir: str | None = None,
        appendonly: bool = False,
        password: str | None = None,
        unix_socket: bool = False,
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise RuntimeError(_INSTALL_HINT)
        super().__init__(found, port=port, directory=data_dir, temp_prefix="da-redis-")
        self.appendonly = appendonly
        self.password = password
        self.socket_path = str(Path(self.directory) / "redis.sock") if unix_socket else None

    @property
    def data_dir(self) -> str:
        """Redis's ``--dir`` (the AOF lives here)."""
        return self.directory

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix://[:password@]<socket path>?db=0`` (only with ``unix_socket=True``)."""
        if self.socket_path is None:
            raise RuntimeError("this RedisServer was started without unix_socket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    def command(self) -> list[str]:
        """The command line the server is started with."""
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "",  # to stdout, which the launcher sends to its log file
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        return args

    def ping(self) -> bool:
        """Whether the server answers PING now (a raw RESP exchange; needs no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                request = b""
                if self.password:
                    secret = self.password.encode()
                    request += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
                sock.sendall(request + b"*1\r\n$4\r\nPING\r\n")
                reply = b""
                while b"PONG" not in reply and len(reply) < 256:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                    if reply.startswith(b"-") or b"\r\n-" in reply:  # e.g. -LOADING while it reads the AOF
                        return False
                return b"+PONG" in reply
        except OSError:
            return False

    def ready(self) -> bool:
        """Ready once it answers PING (not while it is still loading its AOF)."""
        return self.ping()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` for the whole session; fails if there is no binary."""
    if find_redis_server() is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's server."""
    return redis_server.url
