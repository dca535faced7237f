"""Three ``nats-server -js`` processes routed into one JetStream cluster on loopback.

``NatsCluster`` gives each server a free client port, a free cluster (route) port, a
store directory of its own and a ``server_name`` (``n0``, ``n1``, ...: JetStream
clustering needs one), routes every server to the others, starts them, and waits until
JetStream answers through every server (its meta leader is elected). ``url`` lists all
servers (``nats://127.0.0.1:p0,127.0.0.1:p1,...``), ``server(i).url`` one of them; a
server can be SIGKILLed and started again on its ports and store directory. Used with a
module-scoped fixture (``nats_cluster``, below): starting a cluster takes seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.aio import run
from support.nats_server import NatsServer, free_port, require_nats_server
from support.server_process import port_taken

__all__ = ["NatsCluster", "nats_cluster", "servers_of", "stream_leader", "wait_for"]

_CLUSTER = "da-test"


class NatsCluster:
    """``size`` routed JetStream servers; ``start``, ``kill(i)``, ``restart(i)``, ``cleanup``."""

    def __init__(self, binary: str, size: int = 3) -> None:
        self.route_ports = [free_port() for _ in range(size)]
        self.servers = [NatsServer(binary, config=self._config(index)) for index in range(size)]

    def _config(self, index: int) -> str:
        """Server ``index``'s configuration: its name, its route port, routes to the others."""
        routes = ", ".join(f'"nats-route://127.0.0.1:{port}"'
                           for other, port in enumerate(self.route_ports) if other != index)
        return (f'server_name: "n{index}"\n'
                f'cluster {{\n  name: "{_CLUSTER}"\n  listen: "127.0.0.1:{self.route_ports[index]}"\n'
                f"  routes: [{routes}]\n}}\n")

    @property
    def url(self) -> str:
        """Every server's client address in one URL."""
        return "nats://" + ",".join(f"127.0.0.1:{server.port}" for server in self.servers)

    def server(self, index: int) -> NatsServer:
        return self.servers[index]

    def index_of(self, server_name: str) -> int:
        """Which server a JetStream ``server_name`` (``n<i>``) is."""
        return int(server_name.removeprefix("n"))

    def start(self, timeout: float = 60.0) -> None:
        """Start every server, then wait until JetStream answers through each of them.

        A route port found taken by the time its server starts (another test process bound
        it) is replaced and every server's routes rewritten, up to 5 times; a taken client
        port is replaced by ``NatsServer.start`` itself."""
        for _ in range(5):
            try:
                for server in self.servers:
                    server.start()
                break
            except RuntimeError:
                taken = [index for index, server in enumerate(self.servers)
                         if port_taken(server.log_tail(), self.route_ports[index])]
                if not taken:
                    raise
                for server in self.servers:
                    server.stop(kill=True)
                for index in taken:
                    self.route_ports[index] = free_port()
                for index, server in enumerate(self.servers):
                    server.config = self._config(index)
        else:
            raise RuntimeError(f"cluster route ports kept being taken: {self.route_ports}")
        self.wait_ready(timeout)
        self.wait_placement(timeout)

    def wait_placement(self, timeout: float = 60.0) -> None:
        """Wait until the meta leader places a stream on every server: JetStream answers as soon
        as a meta leader is elected, but until it has heard from each peer a stream of as many
        replicas as servers is refused ("no suitable peers for placement")."""
        give_up = time.monotonic() + timeout
        while not run(_places_on_all(self.url, len(self.servers)), timeout=30):
            if time.monotonic() > give_up:
                raise RuntimeError(f"cluster placed no {len(self.servers)}-replica stream within {timeout}s: "
                                   f"{self.servers[0].log_tail()}")
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 60.0, servers: list[int] | None = None) -> None:
        """Wait until JetStream answers account-info requests through each listed server (all by default)."""
        give_up = time.monotonic() + timeout
        for index in servers if servers is not None else range(len(self.servers)):
            while not run(_jetstream_answers(self.servers[index].url), timeout=30):
                if time.monotonic() > give_up:
                    raise RuntimeError(f"JetStream of cluster server n{index} not ready within {timeout}s: "
                                       f"{self.servers[index].log_tail()}")
                time.sleep(0.2)

    def kill(self, index: int) -> None:
        """SIGKILL one server (its store directory stays)."""
        self.servers[index].stop(kill=True)

    def restart(self, index: int) -> None:
        """Start a stopped server again on its ports and store directory."""
        self.servers[index].start()

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


async def _jetstream_answers(url: str) -> bool:
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    except Exception:
        return False
    try:
        await nc.jetstream().account_info()
        return True
    except Exception:  # no meta leader yet: JetStream is not available
        return False
    finally:
        await nc.close()


async def _places_on_all(url: str, replicas: int) -> bool:
    """Whether a probe stream of ``replicas`` replicas is created (then deleted) through ``url``."""
    import uuid

    import nats
    from nats.js import api

    try:
        nc = await nats.connect(servers=servers_of(url), connect_timeout=2, allow_reconnect=False)
    except Exception:
        return False
    name = f"PROBE_{uuid.uuid4().hex[:12]}"
    try:
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name=name, subjects=[f"probe.{name}"], num_replicas=replicas,
                                             storage=api.StorageType.MEMORY))
        await js.delete_stream(name)
        return True
    except Exception:  # "no suitable peers for placement", or no meta leader yet
        return False
    finally:
        await nc.close()


def servers_of(url: str) -> list[str]:
    """``nats://a:1,b:2`` as nats-py wants it: ``["nats://a:1", "nats://b:2"]``."""
    scheme, _, hosts = url.partition("://")
    return [f"{scheme}://{host}" for host in hosts.split("?")[0].split(",")]


async def stream_leader(url: str, stream: str) -> tuple[str, list[str]]:
    """The ``server_name`` leading ``stream`` and its followers', from ``$JS.API.STREAM.INFO``."""
    import nats

    nc = await nats.connect(servers=servers_of(url), connect_timeout=2)
    try:
        info: Any = await nc.jetstream().stream_info(stream)
        cluster = info.cluster
        return str(cluster.leader), [str(peer.name) for peer in cluster.replicas or ()]
    finally:
        await nc.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 0.1 s until true; ``AssertionError`` naming ``what`` after ``timeout`` s."""
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"{what}: not within {timeout}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    """A started three-server cluster for one test module; fails if there is no nats-server binary."""
    binary = require_nats_server()
    nodes = NatsCluster(binary)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()
