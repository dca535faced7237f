"""A small HTTP endpoint for probes: ``GET /livez``, ``GET /readyz`` and JSON routes.

``worker --health-port`` and ``orchestrator --health-port`` serve it so that
Kubernetes ``httpGet`` probes, a Compose ``healthcheck`` or a load balancer can ask
whether the process is alive and ready. Standard library only (asyncio streams):
GET only (405 otherwise), one request per connection (``Connection: close``).

* ``/livez`` (also ``/healthz``): 200 while the process's event loop answers. A loop
  blocked (an ``async`` node calling ``time.sleep``) does not answer, and the probe
  times out. A backend outage does not fail it: restarting would not help, and the
  worker waits for the backend on its own.
* ``/readyz``: 200 when the ``ready`` check returns None, else 503 with its reason.
* any other route given in ``routes`` (e.g. the orchestrator's ``/queues``): 200 with
  the JSON the route returns, 503 if it raises.

Every answer is a JSON object: ``{"status": "ok"}``, or ``{"status": "unavailable",
"reason": "..."}`` with 503, or the route's own object. A check that takes longer than
``check_timeout`` seconds answers 503 saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.timeouts import within

__all__ = ["HealthServer"]

log = logging.getLogger("distributed_agents.health")

ReadyCheck = Callable[[], Awaitable[str | None]]
Route = Callable[[Mapping[str, str]], Awaitable[Any]]

REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request line and headers
MAX_HEADERS = 100
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


def _any_interface_socket(port: int) -> socket.socket:
    """A listening-ready TCP socket on every interface: dual-stack IPv6 where there is IPv6, else IPv4."""
    if socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:  # IPv6 compiled in but not available on this host
            pass
        else:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                return sock
            except OSError:
                sock.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


async def _always_live() -> str | None:
    return None


class HealthServer:
    """Answers probes on ``port`` (all interfaces unless ``host``); ``port`` 0 picks a free one.

    ``ready`` returns None when ready, else the reason (one line); ``live`` likewise
    (default: live while the loop answers). ``routes`` maps a path to a coroutine
    function taking the query parameters (last value of each) and returning JSON data.
    ``what`` names the process in logs ("worker w-1").
    """

    def __init__(self, port: int, *, ready: ReadyCheck, live: ReadyCheck = _always_live,
                 routes: Mapping[str, Route] | None = None, host: str | None = None, what: str = "process",
                 check_timeout: float = 5.0) -> None:
        self.port = port
        self.host = host
        self.what = what
        self.check_timeout = check_timeout
        self._checks: dict[str, ReadyCheck] = {"/livez": live, "/healthz": live, "/readyz": ready}
        self._routes = dict(routes or {})
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the port (the one chosen when ``port`` was 0).

        ``ConfigurationError`` naming the port if it cannot be listened on (in use, not allowed).
        """
        try:
            if self.host is None:  # one socket for IPv4 and IPv6, so that port 0 means one port
                self._server = await asyncio.start_server(self._handle, sock=_any_interface_socket(self.port))
            else:
                self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise ConfigurationError(f"{self.what}: cannot serve the health endpoint on port {self.port}: "
                                     f"{exc.strerror or exc}; pick a free port (--health-port / DA_HEALTH_PORT)"
                                     ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s: health endpoint on port %d (GET /livez, /readyz%s)", self.what, self.port,
                 "".join(f", {path}" for path in self._routes))
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await within(self._answer(reader), REQUEST_TIMEOUT + self.check_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            status, body = 400, {"status": "error", "reason": "incomplete or malformed request"}
        data = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(head + data)
            await writer.drain()
        except ConnectionError:
            pass  # the prober gave up; nothing to tell it
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request = await within(reader.readline(), REQUEST_TIMEOUT)
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            raise ValueError("no request line")
        for _ in range(MAX_HEADERS):  # the headers are not used; read them so the client sees a clean close
            line = await within(reader.readline(), REQUEST_TIMEOUT)
            if line in (b"\r\n", b"\n", b""):
                break
        method, target = parts[0], urlsplit(parts[1])
        if method != "GET":
            return 405, {"status": "error", "reason": f"{method} is not supported; use GET"}
        path = target.path.rstrip("/") or "/"
        check = self._checks.get(path)
        if check is not None:
            reason = await self._run(check)
            return (200, {"status": "ok"}) if reason is None else (503, {"status": "unavailable", "reason": reason})
        route = self._routes.get(path)
        if route is None:
            known = ", ".join([*self._checks, *self._routes])
            return 404, {"status": "error", "reason": f"no route {path!r}; use one of {known}"}
        query = {key: values[-1] for key, values in parse_qs(target.query).items()}
        try:
            return 200, await within(route(query), self.check_timeout)
        except asyncio.TimeoutError:
            return 503, {"status": "unavailable", "reason": f"{path} took longer than {self.check_timeout:g}s"}
        except Exception as exc:
            return 503, {"status": "unavailable", "reason": f"{path} failed: {type(exc).__name__}: {exc}"}

    async def _run(self, check: ReadyCheck) -> str | None:
        try:
            return await within(check(), self.check_timeout)
        except asyncio.TimeoutError:
            return f"the check took longer than {self.check_timeout:g}s"
        except Exception as exc:
            return f"the check failed: {type(exc).__name__}: {exc}"
