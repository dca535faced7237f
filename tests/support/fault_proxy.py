"""A loopback TCP proxy that injects network faults between clients and a server.

``FaultProxy(target_port)`` listens on ``127.0.0.1:<port>`` and forwards every
connection to ``127.0.0.1:<target_port>`` (a Redis or NATS server started by the
tests). It runs its own asyncio loop in a daemon thread, so plain tests, ``run(...)``
scenarios and worker subprocesses can all go through it; every control method is
thread-safe and takes effect at once:

- ``latency = seconds``: each chunk waits that long before it is forwarded (both ways,
  order kept).
- ``stall()`` / ``resume()``: nothing is forwarded on any connection, old or new, until
  ``resume()``; connections stay open and what was sent meanwhile is delivered
  afterwards, in order (a stall longer than a lease: a late ack arrives late).
- ``half_open()``: the connections open now stop forwarding for ever, without being
  closed (a peer vanished behind a NAT or firewall); new connections work. Only a
  client's own timeouts or keepalives can notice.
- ``reset()``: every open connection is aborted with a TCP RST, both sides.

``url(scheme)`` is the proxy's address as a backend URL. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")
_CHUNK = 65536


class _Link:
    """One proxied connection: the client's and the server's stream pairs."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.client, self.server = client, server
        self.dead = asyncio.Event()  # set by half_open(): never forward again
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self, *, rst: bool) -> None:
        for _, writer in (self.client, self.server):
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        # Linger 0: close() sends RST instead of FIN.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A fault-injecting TCP proxy to ``127.0.0.1:target_port``; ``start()`` it, ``close()`` it."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.latency = 0.0
        self.connections = 0  # accepted so far (a reconnect shows as one more)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start)
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort(rst=False)
        self._links.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, scheme: str, suffix: str = "") -> str:
        """``<scheme>://127.0.0.1:<port><suffix>``, e.g. ``url("redis", "/0")``."""
        return f"{scheme}://127.0.0.1:{self.port}{suffix}"

    # -- faults -----------------------------------------------------------------------
    def stall(self) -> None:
        """Stop forwarding on every connection (kept open) until ``resume()``."""
        self._call(self._set_flowing, False)

    def resume(self) -> None:
        """Deliver what was held back by ``stall()`` and forward again."""
        self._call(self._set_flowing, True)

    def half_open(self) -> int:
        """Silence the open connections for ever without closing them; returns how many."""
        return self._call(self._half_open)

    def reset(self) -> int:
        """Abort every open connection with a TCP RST; returns how many."""
        return self._call(self._reset)

    @property
    def open_connections(self) -> int:
        return self._call(self._count)

    async def _count(self) -> int:
        return sum(1 for link in self._links if not link.dead.is_set())

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _half_open(self) -> int:
        links = [link for link in self._links if not link.dead.is_set()]
        for link in links:
            link.dead.set()
        return len(links)

    async def _reset(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort(rst=True)
        self._links.clear()
        return len(links)

    # -- forwarding -------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link((reader, writer), upstream)
        self._links.add(link)
        link.tasks = [asyncio.ensure_future(self._pump(link, reader, upstream[1])),
                      asyncio.ensure_future(self._pump(link, upstream[0], writer))]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(_CHUNK)
                if self.latency:
                    await asyncio.sleep(self.latency)
                await self._flowing.wait()
                if link.dead.is_set():
                    await asyncio.Event().wait()  # half-open: hold the connection, forward nothing, ever
                if not data:  # end of stream: pass the FIN on
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            link.abort(rst=False)
            self._links.discard(link)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(timeout=10)
