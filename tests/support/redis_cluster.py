"""Six ``redis-server --cluster-enabled yes`` processes made into one Redis Cluster on loopback.

``RedisCluster`` gives each node a free client port and a free cluster-bus port
(``--cluster-port``, so the bus never lands above 65535 as port+10000 could), a directory
of its own with its ``nodes.conf``, starts them, and joins them with ``redis-cli
--cluster create ... --cluster-replicas 1 --cluster-yes``: three primaries with one
replica each. ``url`` is a ``redis://`` URL of one node with ``?cluster=true`` (the client
discovers the others), ``seeds_url`` lists every node. Fault helpers: ``owner_of(key)`` (the node index serving the
key's slot), ``replica_of(i)``, ``failover(i)`` (``CLUSTER FAILOVER`` on a replica, which
then serves its primary's slots), ``kill(i)`` (SIGKILL), ``restart(i)``, ``wait_ok()``.

Administrative commands go through ``redis-cli`` (from the redis-tools package, which
Debian's redis-server depends on). A cluster takes a few seconds to form: the
session-scoped ``redis_cluster`` fixture starts one per test process, shared by the
modules that use it (a test that kills or fails over a node leaves the cluster whole
again: the killed node restarted, as a replica).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.redis_server import RedisServer, find_redis_server
from support.server_process import free_port

__all__ = ["ClusterNode", "RedisCluster", "find_redis_cli", "redis_cluster"]

_CLI_TIMEOUT = 20.0
# Milliseconds without an answer before the others mark a node as failing: small, so that
# a killed primary's replica takes over within a few seconds in the tests.
_NODE_TIMEOUT_MS = 1000


def find_redis_cli() -> str | None:
    """Path of a ``redis-cli`` binary on PATH, or None."""
    return shutil.which("redis-cli")


class ClusterNode(RedisServer):
    """One cluster-enabled ``redis-server``; its ``nodes.conf`` lives in its directory."""

    name = "redis-server (cluster)"

    def __init__(self, binary: str | None = None) -> None:
        super().__init__(binary)
        self.bus_port = free_port()

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(Path(self.directory) / "nodes.conf"),
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
        ]


class RedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on loopback."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        binary = find_redis_server()
        cli = find_redis_cli()
        if binary is None or cli is None:
            raise RuntimeError("Redis Cluster tests need redis-server and redis-cli on PATH "
                               "(apt-get install redis-server, which brings redis-tools)")
        self.cli = cli
        self.replicas = replicas
        self.nodes = [ClusterNode(binary) for _ in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of the first live node>/0?cluster=true``."""
        node = next((n for n in self.nodes if n.process is not None), self.nodes[0])
        return f"redis://127.0.0.1:{node.port}/0?cluster=true"

    @property
    def seeds_url(self) -> str:
        """Every node in one URL: ``redis://127.0.0.1:<p0>,127.0.0.1:<p1>,.../0?cluster=true``."""
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0?cluster=true"

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, create the cluster, and wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        self.cli_run("--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                     "--cluster-replicas", str(self.replicas), "--cluster-yes", timeout=timeout)
        self.wait_ok(timeout)

    def cli_run(self, *args: str, port: int | None = None, timeout: float = _CLI_TIMEOUT) -> str:
        """``redis-cli [-p port] args...``; its output, or RuntimeError with it."""
        command = [self.cli, "-h", "127.0.0.1"]
        if port is not None:
            command += ["-p", str(port)]
        done = subprocess.run([*command, *args], capture_output=True, timeout=timeout, text=True)
        if done.returncode != 0 or done.stdout.startswith("ERR") or "[ERR]" in done.stdout:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def node_cli(self, index: int, *args: str) -> str:
        return self.cli_run(*args, port=self.nodes[index].port)

    def live(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.process is not None and node.process.poll() is None]

    def _view(self, index: int) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by node ``index``: id, port, flags, master id, slots."""
        rows = []
        for line in self.node_cli(index, "cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            rows.append({"id": fields[0], "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                         "flags": fields[2], "master": fields[3], "slots": " ".join(fields[8:])})
        return rows

    def index_of_port(self, port: str | int) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.port == int(port))

    def slot_of(self, key: str) -> int:
        return int(self.node_cli(self.live()[0], "cluster", "keyslot", key).strip())

    def owner_of(self, key: str) -> int:
        """Index of the node that serves ``key``'s slot now (as the first live node sees it)."""
        slot = self.slot_of(key)
        for row in self._view(self.live()[0]):
            if "master" not in row["flags"] or "fail" in row["flags"]:
                continue
            for part in row["slots"].split():
                if part.startswith("["):
                    continue  # a slot being migrated or imported
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return self.index_of_port(row["port"])
        raise RuntimeError(f"no live primary serves slot {slot} of {key!r}")

    def replica_of(self, index: int) -> int:
        """Index of a live replica of primary ``index``."""
        rows = self._view(index)
        me = next(row["id"] for row in rows if "myself" in row["flags"])
        for row in rows:
            if row["master"] == me and "fail" not in row["flags"]:
                port = int(row["port"])
                candidate = self.index_of_port(port)
                if candidate in self.live():
                    return candidate
        raise RuntimeError(f"primary {index} (port {self.nodes[index].port}) has no live replica")

    def role(self, index: int) -> str:
        return self.node_cli(index, "role").split()[0]

    def failover(self, replica: int, timeout: float = 30.0) -> None:
        """``CLUSTER FAILOVER`` on a replica (coordinated with its primary); wait until it is primary."""
        self.node_cli(replica, "cluster", "failover")
        self._wait(lambda: self.role(replica) == "master", timeout, f"node {replica} to become primary")
        self.wait_ok(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL one node (its directory and nodes.conf stay)."""
        self.nodes[index].stop(kill=True)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped node again (it rejoins with its nodes.conf, as a replica if it was failed over)."""
        self.nodes[index].start()
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and agrees on who serves every slot."""
        def ok() -> bool:
            try:
                for index in self.live():
                    if "cluster_state:ok" not in self.node_cli(index, "cluster", "info"):
                        return False
                    rows = self._view(index)
                    if any("fail" in row["flags"] and "fail?" not in row["flags"] and row["slots"] for row in rows):
                        return False
                return True
            except (RuntimeError, subprocess.TimeoutExpired):
                return False

        self._wait(ok, timeout, "the cluster to be ok on every live node")

    def _wait(self, predicate: object, timeout: float, what: str) -> None:
        give_up = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > give_up:
                tails = "\n".join(f"node {i}: {n.log_tail(5)}" for i, n in enumerate(self.nodes))
                raise RuntimeError(f"waited {timeout}s for {what}\n{tails}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three primaries with a replica each, for the whole session; fails without the binaries."""
    if find_redis_server() is None or find_redis_cli() is None:
        pytest.fail("Redis Cluster tests need redis-server and redis-cli on PATH (apt-get install redis-server)",
                    pytrace=False)
    nodes = RedisCluster()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()
