"""Workflows on a real Redis Cluster (``?cluster=true``), with failovers mid-run.

The session's cluster (``support.redis_cluster``: three primaries, one replica each, on
loopback; ``cluster-node-timeout`` 1 s; a test that kills a node restarts it). Worker processes (the
``distributed-agents worker`` CLI), each given a different node's address (the client
discovers the rest), and an in-process orchestrator run ``cluster_app``'s graph: a
fan-out with ``Send``, a join, then a chain.

- Layout: every key of the prefix is ``{prefix}:...`` and lives on the one primary that
  serves the tag's slot (the node-cache keys excepted: they spread over the slots).
- Failover by ``CLUSTER FAILOVER`` on the replica of the slot's primary mid-run (the
  coordinated kind: the primary stops writes until the replica caught up, so nothing
  acknowledged can be lost), and failover after a SIGKILL of that primary. For the kill,
  the primary's writes are paused (``CLIENT PAUSE WRITE``) until its replica holds all of
  them: Redis replicates asynchronously, and a write acknowledged in the moment before a
  crash may be lost with the primary (docs/durability.md says so); what this test pins
  down is everything else: the clients follow the failover (``MOVED``, a new slot map,
  new connections), repeat calls whose replies were lost without doing anything twice,
  and the run finishes with the fault-free result, one checkpoint per step, nothing left
  queued, leased or dead-lettered, and the workers still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import time
import uuid
from typing import Any

import pytest
from support import security_app
from support.aio import run
from support.redis_cluster import RedisCluster
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents import Orchestrator, Worker
from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.core.errors import BackendConfigError, BackendError
from distributed_agents.core.ports.state_store import WorkflowStatus
from distributed_agents.core.redaction import redact_url
from distributed_agents.distributed import DistributedOrchestrator
from distributed_agents.plugins import open_backend

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

app = load_test_app("cluster_app")
WORKFLOWS = 4
LEASE = 2.0


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster (``support.redis_cluster``), after every node is up and agrees."""
    redis_cluster.wait_ok()
    return redis_cluster


def test_cluster_mode_is_chosen_by_the_url_and_checked() -> None:
    assert RedisConnection("redis://h:1/0?cluster=true").key_prefix("app") == "{app}"
    assert RedisConnection("redis://h:1/0?cluster=false").key_prefix("app") == "app"
    assert RedisConnection("redis://h:1/0").key_prefix("app") == "app"  # the default: one server
    with pytest.raises(BackendConfigError, match="cluster='yes'.*not one of false, true"):
        RedisConnection("redis://h:1/0?cluster=yes")
    with pytest.raises(BackendConfigError, match="only database 0"):
        RedisConnection("redis://h:1/3?cluster=true")
    with pytest.raises(BackendConfigError, match="unix socket"):
        RedisConnection("unix:///tmp/redis.sock?cluster=true")
    with pytest.raises(BackendConfigError, match="several hosts, which only a Redis Cluster has"):
        RedisConnection("redis://h1:1,h2:2/0")
    with pytest.raises(BackendConfigError, match="unknown Redis option 'clusters'"):
        RedisConnection("redis://h:1/0?clusters=true")
    assert "cluster=true" in redact_url("redis://:secret@h:1/0?cluster=true")  # shown, not masked


def test_keys_and_channels_of_a_prefix_carry_its_hash_tag() -> None:
    backend: Any = open_backend("redis://127.0.0.1:1/0?cluster=true&prefix=app")
    assert backend.task_queue._keys.task("t1") == "{app}:q:t:t1"
    assert backend.task_queue._keys.route == "{app}:q:seq"
    assert backend.state_store._keys.record("w1") == "{app}:wf:r:w1"
    assert backend.state_store._keys.cache("ns", "k") == "app:cache:ns:k"  # spread over the slots
    assert backend.worker_registry._keys.beats == "{app}:w:beats"
    assert backend.message_bus._channel_prefix == "{app}"


def node_url(cluster: RedisCluster, index: int) -> str:
    return f"redis://127.0.0.1:{cluster.nodes[index].port}/0?cluster=true"


def keys_on(cluster: RedisCluster, index: int, pattern: str) -> list[str]:
    """Keys matching ``pattern`` stored on node ``index`` (``redis-cli --scan``)."""
    return cluster.node_cli(index, "--scan", "--pattern", pattern).split()


def start_workers(cluster: RedisCluster, prefix: str, tmp_path: pathlib.Path, count: int) -> WorkerProcesses:
    """``count`` worker processes, each given a different primary's address."""
    workers = WorkerProcesses(cluster.url, prefix, tmp_path, "cluster_app:registry")
    primaries = [i for i in cluster.live() if cluster.role(i) == "master"]
    for index in range(count):
        workers.url = node_url(cluster, primaries[index % len(primaries)])
        workers.start(f"w{index}", "--visibility-timeout", str(LEASE), "--shutdown-grace", "2")
    return workers


async def finish_and_inspect(orchestrator: DistributedOrchestrator, runs: list[asyncio.Task[Any]],
                             ids: list[str]) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    finals = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 120)
    store = orchestrator.backend.state_store
    steps = {wf: [cp.step for cp in await store.list_checkpoints(wf)] for wf in ids}
    records = {wf: await store.get(wf) for wf in ids}
    stats = {t: await orchestrator.backend.task_queue.stats(t) for t in app.NODE_TYPES}
    return finals, {"steps": steps, "records": records}, stats


def check_outcome(finals: list[Any], expected: list[Any], history: dict[str, Any], stats: dict[str, Any],
                  logs: str) -> None:
    assert finals == expected, logs
    for wf, record in history["records"].items():
        assert record is not None and record.status == WorkflowStatus.COMPLETED, (wf, record, logs)
        # One checkpoint per step, none missing, none twice: no step was committed twice.
        assert sorted(history["steps"][wf]) == list(range(record.step + 1)), (wf, history["steps"][wf], logs)
    busy = {t: (s.queued, s.in_flight, s.dead) for t, s in stats.items() if s.queued or s.in_flight or s.dead}
    assert not busy, f"tasks left queued, leased or dead-lettered: {busy} {logs}"


def test_fan_out_and_join_run_on_the_cluster_with_one_slot_per_prefix(cluster: RedisCluster,
                                                                     tmp_path: pathlib.Path) -> None:
    expected = app.fault_free_states(2)
    prefix = f"rc{uuid.uuid4().hex[:6]}"
    graph = app.build_graph()
    workers = start_workers(cluster, prefix, tmp_path, 1)
    ids = [f"{prefix}-{i}" for i in range(2)]

    async def scenario() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        orchestrator = DistributedOrchestrator(backend_url=cluster.url, prefix=prefix, visibility_timeout=LEASE)
        orchestrator.register_graph(graph)
        await orchestrator.connect()
        try:
            runs = [asyncio.create_task(orchestrator.execute(graph, {"value": f"in-{i}", "trail": []},
                                                             workflow_id=wf)) for i, wf in enumerate(ids)]
            return await finish_and_inspect(orchestrator, runs, ids)
        finally:
            await orchestrator.close()

    try:
        os.environ["DA_CLUSTER_DELAY"] = "0"
        finals, history, stats = run(scenario(), timeout=150)
    finally:
        os.environ.pop("DA_CLUSTER_DELAY", None)
        workers.close()
    check_outcome(finals, expected, history, stats, f"(worker logs in {tmp_path})")

    # Every key of the prefix carries its hash tag and is stored on the primary serving that slot.
    owner = cluster.owner_of(f"{{{prefix}}}")
    everywhere = {i: keys_on(cluster, i, f"*{prefix}*") for i in cluster.live() if cluster.role(i) == "master"}
    found = [key for keys in everywhere.values() for key in keys]
    assert any(":wf:c:" in key for key in found) and any(":q:t:" in key for key in found), found
    assert all(key.startswith(f"{{{prefix}}}:") for key in found), found
    assert sorted(everywhere[owner]) == sorted(found), everywhere


async def _cache_spreads(url: str, prefix: str) -> list[str]:
    from distributed_agents.plugins import open_backend

    backend = open_backend(url, prefix=prefix)
    await backend.connect()
    try:
        store = backend.state_store
        for i in range(40):
            await store.cache_set("ns", f"k{i}", b"v%d" % i)
        assert await store.cache_get("ns", "k7") == b"v7"
        await store.cache_clear("ns")
        assert await store.cache_get("ns", "k7") is None
        return [f"{prefix}:cache:ns:k{i}" for i in range(40)]
    finally:
        await backend.close()


def test_node_cache_keys_spread_over_the_slots(cluster: RedisCluster) -> None:
    prefix = f"rc{uuid.uuid4().hex[:6]}"
    names = run(_cache_spreads(cluster.url, prefix), timeout=60)
    # Untagged, so their slots differ (and clearing found them on every primary).
    assert len({cluster.slot_of(name) for name in names[:8]}) > 1


async def _bus_survives_its_node(cluster: RedisCluster, node: int) -> tuple[list[Any], list[Any]]:
    backend = open_backend(node_url(cluster, node), prefix=f"rc{uuid.uuid4().hex[:6]}")
    await backend.connect()
    try:
        subscription = await backend.message_bus.subscribe("ev.>")
        before = []
        await backend.message_bus.publish("ev.a", {"n": 0})
        before.append(await subscription.get(timeout=10))
        cluster.kill(node)
        # Pub/sub is at most once: what is published while the subscriber reconnects is
        # lost, so publish until one arrives (through a connection to another node).
        after: list[Any] = []
        for n in range(1, 200):
            await backend.message_bus.publish("ev.b", {"n": n})
            message = await subscription.get(timeout=0.2)
            if message is not None:
                after.append(message)
                break
        return before, after
    finally:
        await backend.close()


def test_a_subscriber_whose_node_dies_moves_to_another_node(cluster: RedisCluster) -> None:
    # A replica: its death moves no slot, so only the pub/sub connection has to move.
    victim = cluster.replica_of(cluster.owner_of("any"))
    try:
        before, after = run(_bus_survives_its_node(cluster, victim), timeout=90)
    finally:
        cluster.restart(victim)
    assert [m.data for m in before if m is not None] == [{"n": 0}]
    assert len(after) == 1 and after[0].channel == "ev.b", after


async def _many_at_once(url: str, count: int) -> tuple[list[bool], int]:
    from distributed_agents.core.ports.task_queue import Task

    backend = open_backend(url, prefix=f"rc{uuid.uuid4().hex[:6]}")
    await backend.connect()
    try:
        queue = backend.task_queue
        tasks = [Task(f"t{i}", "wf", "node", "busy", {"i": i}) for i in range(count)]
        created = await asyncio.gather(*(queue.enqueue(task) for task in tasks))
        return list(created), (await queue.stats("busy")).queued
    finally:
        await backend.close()


def test_hundreds_of_script_calls_at_once_wait_for_a_connection(cluster: RedisCluster) -> None:
    # More than redis-py's default connections per node (100), which fails the rest at once.
    created, queued = run(_many_at_once(cluster.url, 400), timeout=90)
    assert created == [True] * 400 and queued == 400


def test_a_url_listing_several_nodes_connects_while_the_first_is_down(cluster: RedisCluster) -> None:
    from support.server_process import free_port

    live = ",".join(f"127.0.0.1:{cluster.nodes[i].port}" for i in cluster.live())
    url = f"redis://127.0.0.1:{free_port()},{live}/0?cluster=true"  # nothing listens on the first

    async def scenario() -> tuple[list[bool], int]:
        return await _many_at_once(url, 3)

    assert run(scenario(), timeout=60) == ([True, True, True], 3)


def _pause_until_replicated(cluster: RedisCluster, primary: int, replica: int, timeout: float = 20.0) -> None:
    """Stop writes on ``primary`` (``CLIENT PAUSE WRITE``) and wait until ``replica`` holds all of them."""
    cluster.node_cli(primary, "client", "pause", "10000", "write")
    give_up = time.monotonic() + timeout
    while True:
        info = cluster.node_cli(primary, "info", "replication")
        offset = int(re.search(r"master_repl_offset:(\d+)", info).group(1))  # type: ignore[union-attr]
        port = cluster.nodes[replica].port
        match = re.search(rf"slave\d+:ip=[^,]+,port={port},state=online,offset=(\d+)", info)
        if match is not None and int(match.group(1)) >= offset:
            return
        assert time.monotonic() < give_up, f"replica {replica} did not catch up with {primary}: {info}"
        time.sleep(0.02)


@pytest.mark.parametrize("fault", ["cluster_failover", "sigkill"])
def test_a_failover_of_the_prefix_primary_mid_run_loses_nothing(cluster: RedisCluster, tmp_path: pathlib.Path,
                                                                fault: str) -> None:
    expected = app.fault_free_states(WORKFLOWS)
    prefix = f"rc{uuid.uuid4().hex[:6]}"
    graph = app.build_graph()
    workers = start_workers(cluster, prefix, tmp_path, 2)
    ids = [f"{prefix}-{i}" for i in range(WORKFLOWS)]
    victims: list[int] = []
    primaries: list[int] = []

    async def scenario() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        orchestrator = DistributedOrchestrator(backend_url=cluster.seeds_url, prefix=prefix,
                                               visibility_timeout=LEASE, lease_ttl=3.0)
        orchestrator.register_graph(graph)
        await orchestrator.connect()
        try:
            runs = [asyncio.create_task(orchestrator.execute(graph, {"value": f"in-{i}", "trail": []},
                                                             workflow_id=wf)) for i, wf in enumerate(ids)]
            store = orchestrator.backend.state_store
            while True:  # mid-run: every workflow recorded, some steps committed, none finished
                records = [await store.get(wf) for wf in ids]
                if all(r is not None for r in records) and sum(r.step for r in records if r) >= WORKFLOWS:
                    break
                assert not any(t.done() for t in runs), [t.result() for t in runs if t.done()]
                await asyncio.sleep(0.05)
            primary = cluster.owner_of(f"{{{prefix}}}")
            replica = cluster.replica_of(primary)
            primaries.append(primary)
            if fault == "cluster_failover":
                await asyncio.to_thread(cluster.failover, replica)
            else:
                await asyncio.to_thread(_pause_until_replicated, cluster, primary, replica)
                cluster.kill(primary)
                victims.append(primary)
            assert not any(t.done() for t in runs), "the workflows finished before the failover"
            return await finish_and_inspect(orchestrator, runs, ids)
        finally:
            await orchestrator.close()

    try:
        finals, history, stats = run(scenario(), timeout=170)
        assert cluster.owner_of(f"{{{prefix}}}") not in primaries  # another node serves the slot now
        for index, process in enumerate(workers.processes):
            assert process.poll() is None, workers.log(f"w{index}")
    finally:
        workers.close()
        for victim in victims:
            cluster.restart(victim)  # it rejoins as a replica: the cluster is whole for the next test
    check_outcome(finals, expected, history, stats,
                  f"(worker logs in {tmp_path}; node logs in {[n.directory for n in cluster.nodes]})")


def cluster_tenant_rule(prefix: str) -> str:
    """The ACL rule docs/security.md gives for a prefix on a Redis Cluster (kept identical to it)."""
    return (f"resetkeys ~{{{prefix}}}:* ~{prefix}:cache:* resetchannels &{{{prefix}}}:* &{{{prefix}}}:bus:* "
            "-@all +@read +@write +@keyspace +@pubsub +@connection +@transaction +time "
            "+evalsha +eval +script|load +script|exists -@dangerous +cluster|slots +cluster|shards +cluster|nodes")


def test_a_tenant_acl_confines_a_user_to_its_prefix_on_the_cluster(cluster: RedisCluster) -> None:
    passwords = {user: f"pw-{uuid.uuid4().hex}" for user in ("ctenant_a", "ctenant_b")}
    prefixes = {"ctenant_a": f"ca{uuid.uuid4().hex[:6]}", "ctenant_b": f"cb{uuid.uuid4().hex[:6]}"}
    for index in cluster.live():  # ACLs are per node: every node gets the users
        for user, password in passwords.items():
            cluster.node_cli(index, "acl", "setuser", user, "on", f">{password}",
                             *cluster_tenant_rule(prefixes[user]).split())

    def url(user: str) -> str:
        return (f"redis://{user}:{passwords[user]}@127.0.0.1:{cluster.nodes[cluster.live()[0]].port}/0"
                "?cluster=true&bus_subscribe=prefix")

    async def scenario() -> tuple[dict[str, Any], BaseException | None, BaseException | None]:
        prefix = prefixes["ctenant_a"]
        worker = Worker(backend=url("ctenant_a"), backend_options={"prefix": prefix},
                        registry=security_app.registry, poll_wait=0.1, heartbeat_interval=0.5)
        serving = asyncio.ensure_future(worker.start())
        try:
            async with Orchestrator(backend=url("ctenant_a"), backend_options={"prefix": prefix},
                                    wait_for_workers=True, worker_timeout=30) as orchestrator:
                state = dict(await asyncio.wait_for(orchestrator.execute(security_app.graph, {"name": "ann"}), 60))
                cache = orchestrator.backend.state_store
                await cache.cache_set("ns", "k", b"v")
                assert await cache.cache_get("ns", "k") == b"v"
        finally:
            await worker.stop(grace=1)
            with contextlib.suppress(Exception):
                await serving
        intruder = open_backend(url("ctenant_b"), prefix=prefix)  # B's user on A's prefix
        await intruder.connect()
        claim_error = subscribe_error = None
        try:
            try:
                await intruder.task_queue.claim(["greet"], worker_id="w-intruder")
            except BackendError as exc:
                claim_error = exc
            try:
                subscription = await intruder.message_bus.subscribe("events.>")
                await subscription.close()
            except BackendError as exc:
                subscribe_error = exc
        finally:
            await intruder.close()
        return state, claim_error, subscribe_error

    try:
        state, claim_error, subscribe_error = run(scenario(), timeout=100)
    finally:
        for index in cluster.live():
            for user in passwords:
                cluster.node_cli(index, "acl", "deluser", user)
    assert state["greeting"] == "HELLO ANN"
    for error in (claim_error, subscribe_error):
        assert error is not None and "lacks the permission" in str(error), error
        assert passwords["ctenant_b"] not in str(error)


def test_docs_give_exactly_the_cluster_acl_rule_these_tests_run() -> None:
    docs = (pathlib.Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    assert f"user tenant_a on >PASSWORD {cluster_tenant_rule('ta')}" in docs
