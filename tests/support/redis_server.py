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
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "find_redis_server", "free_port", "redis_server", "redis_url"]

_INSTALL_HINT = (
    "no redis-server binary found on PATH; install Redis 7+ (e.g. apt-get install redis-server, "
    "brew install redis) — the Redis tests need a real server and do not skip"
)


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary on PATH, or None."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process bound to loopback; restartable on the same port and dir.

    ``password`` adds ``--requirepass``; ``unix_socket`` listens on a socket file in the
    data directory as well (``unix_url``); ``appendonly`` keeps data across restarts.
    """

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
        self.binary = found
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="da-redis-")
        self.appendonly = appendonly
        self.password = password
        self.socket_path = str(Path(self.data_dir) / "redis.sock") if unix_socket else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = Path(self.data_dir) / "server.log"

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
            "--logfile", str(self._log_path),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        return args

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {stderr}{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop(kill=True)
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout}s: {self.log_tail()}")

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

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGKILL when ``kill``); the data directory is kept."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory if this launcher created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


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
