"""A web dashboard for workflows: lists, graphs, step timelines, live events, workers, queues, dead letters.

Needs the ``[dashboard]`` extra (Starlette and Uvicorn). Two ways to run it:

* ``distributed-agents dashboard --backend-url redis://HOST:6379/0 [--graph MODULE:GRAPH ...]``
  (Redis, NATS or any shared backend; see ``serve``);
* inside a program, over its own orchestrator (e.g. on ``memory://``)::

      async with dashboard(orchestrator, port=8080) as board:
          print("dashboard at", board.url)
          await orchestrator.execute(graph, {"topic": "tides"})

The dashboard reads through the public client API and the backend's ports only. It
binds 127.0.0.1 unless told otherwise; actions (cancel, resume, answer, fork, requeue,
purge) need ``token`` when one is set and are refused with ``read_only``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

try:
    import uvicorn
    from starlette.applications import Starlette
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from distributed_agents.core.errors import MissingExtraError

    raise MissingExtraError(
        f"the dashboard needs the [dashboard] extra ({exc.name} is missing): pip install 'distributed-agents[dashboard]'"
    ) from None

from distributed_agents.core.graph import Graph
from distributed_agents.core.orchestrator import Orchestrator

from .app import allowed_hosts, create_app

__all__ = ["Dashboard", "create_app", "dashboard", "serve"]


class _Server(uvicorn.Server):
    """Uvicorn that ends the dashboard's event streams first when asked to stop, so it stops at once."""

    def __init__(self, config: uvicorn.Config, app: Starlette, signals: bool) -> None:
        super().__init__(config)
        self._app = app
        self._signals = signals

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self._app.state.hub.end_streams)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        # Embedded, the host program owns its signals. Served by the CLI, SIGINT/SIGTERM stop the
        # server and the command exits 0 (uvicorn's own handling re-raises the signal once stopped).
        if not self._signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port``; ``ConfigurationError`` saying what to do if not."""
    from distributed_agents.core.errors import ConfigurationError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise ConfigurationError(f"the dashboard cannot listen on {host}:{port}: {host!r} does not resolve "
                                 f"({exc}); pass --host with an address of this machine, e.g. 127.0.0.1") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ConfigurationError(f"the dashboard cannot listen on {host}:{port}: {reason}; pass another --port "
                                 "(or stop the program using it)") from None
    return listener


def _config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    # ws="none": the dashboard pushes by Server-Sent Events, so no WebSocket library is loaded.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", ws="none",
                          timeout_graceful_shutdown=5, access_log=False)


class Dashboard:
    """A dashboard served by this process's event loop; ``start``/``stop`` or ``async with``."""

    def __init__(self, orchestrator: Orchestrator, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, read_only: bool = False, graphs: Sequence[Graph] = (),
                 log_level: str = "warning", allowed_host: Sequence[str] = ()) -> None:
        self.app = create_app(orchestrator, token=token, read_only=read_only, graphs=graphs,
                              hosts=allowed_hosts(host, allowed_host))
        self.server = _Server(_config(self.app, host, port, log_level), self.app, signals=False)
        self.host = host
        self.port = port
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the port actually bound, also when 0 asked for a free one)."""
        port = self.port
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                port = sock.getsockname()[1]
        return f"http://{self.host}:{port}"

    async def start(self) -> None:
        """Start serving; returns once the server listens (``RuntimeError`` if it could not start)."""
        self._task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"the dashboard could not listen on {self.host}:{self.port} (see the log)")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """End open event streams and stop the server (the orchestrator stays open: it is the caller's)."""
        if self._task is None:
            return
        self.app.state.hub.end_streams()
        self.server.should_exit = True
        await self._task
        self._task = None

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()


def dashboard(orchestrator: Orchestrator, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
              read_only: bool = False, graphs: Sequence[Graph] = (), allowed_host: Sequence[str] = ()) -> Dashboard:
    """A ``Dashboard`` over ``orchestrator`` (not started: ``async with`` it, or ``await start()``).

    Works on any backend, including ``memory://`` (the dashboard then shows this
    process's workflows). ``graphs`` adds graphs to draw and resume besides those the
    orchestrator already ran or registered. Requests must name the dashboard in their Host
    header as 127.0.0.1, localhost, [::1], ``host`` or one of ``allowed_host`` (a reverse
    proxy's name); others are refused with 400 (DNS rebinding).
    """
    return Dashboard(orchestrator, host=host, port=port, token=token, read_only=read_only, graphs=graphs,
                     allowed_host=allowed_host)


async def serve(orchestrator: Orchestrator, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                read_only: bool = False, graphs: Sequence[Graph] = (), log_level: str = "info",
                allowed_host: Sequence[str] = ()) -> None:
    """Serve the dashboard until SIGINT/SIGTERM (the CLI's ``dashboard`` command); closes ``orchestrator``.

    Raises ``ConfigurationError`` at once (before connecting) when ``host:port`` cannot be bound.
    """
    listener = _bind(host, port)  # a port in use is one clear line, before anything else starts
    try:
        await orchestrator.connect()  # an unreachable backend is one error line here, not a startup traceback
    except BaseException:
        listener.close()
        raise
    app = create_app(orchestrator, token=token, read_only=read_only, graphs=graphs, own_orchestrator=True,
                     hosts=allowed_hosts(host, allowed_host))
    server = _Server(_config(app, host, port, log_level), app, signals=True)
    await server.serve(sockets=[listener])
    if not server.started:
        from distributed_agents.core.errors import ConfigurationError

        raise ConfigurationError(f"the dashboard could not start on {host}:{port} (the log above says why)")
