"""Workflows on a three-server NATS JetStream cluster, with a server SIGKILLed mid-run.

One cluster for the module (``support.nats_cluster``: three ``nats-server -js`` routed
on loopback, their own ports and store directories). The backend URL lists all three
servers and asks for ``?replicas=3``:

- the task stream and every key-value bucket are created with three replicas, one on
  each server;
- worker processes (the ``distributed-agents worker`` CLI), each given one server only
  (so they are on different servers; NATS clients learn the others from the server),
  and an orchestrator given all three run workflows with ``Send`` maps and chains; the
  server leading the task stream (``$JS.API.STREAM.INFO``) is SIGKILLed mid-run: another
  server takes the lead, nothing acknowledged is lost (every workflow completes with
  the fault-free result, its checkpoints one per step, nothing left queued, leased or
  dead-lettered), and the worker whose server died reconnects to a survivor (proven by
  running more workflows with it as the only worker).
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import uuid
from typing import Any

import pytest
from support.aio import run
from support.nats_cluster import NatsCluster, servers_of, stream_leader
from support.worker_processes import WorkerProcesses, load_test_app

from distributed_agents.adapters.nats.naming import Names
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowStatus
from distributed_agents.distributed import DistributedOrchestrator
from distributed_agents.plugins import open_backend

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]

app = load_test_app("cluster_app")
WORKFLOWS = 6
LEASE = 2.0


@pytest.fixture(scope="module")
def cluster(nats_cluster: NatsCluster) -> NatsCluster:
    return nats_cluster


def r3(url: str) -> str:
    return url + "?replicas=3"


async def _leader_of(url: str, stream: str) -> str:
    """The server leading ``stream``; asked again while the cluster elects one (a request of the
    first seconds after a kill, or after the stream was made on a loaded machine, goes unanswered)."""
    import nats.errors

    for _ in range(60):
        try:
            return (await stream_leader(url, stream))[0]
        except (nats.errors.Error, asyncio.TimeoutError, OSError):
            await asyncio.sleep(0.5)
    return (await stream_leader(url, stream))[0]


def test_streams_and_buckets_are_stored_on_three_servers(cluster: NatsCluster) -> None:
    prefix = f"cl{uuid.uuid4().hex[:6]}"

    async def check() -> dict[str, tuple[int, str, list[str]]]:
        backend = open_backend(r3(cluster.url), prefix=prefix)
        await backend.connect()
        await backend.close()
        names = Names(prefix)
        import nats

        nc = await nats.connect(servers=servers_of(cluster.url))
        try:
            js = nc.jetstream()
            found = {}
            for stream in (names.task_stream, *(f"KV_{b}" for b in (
                    names.task_bucket, names.claim_bucket, names.dead_bucket, names.state_bucket,
                    names.worker_bucket))):
                info: Any = await js.stream_info(stream)
                found[stream] = (info.config.num_replicas, str(info.cluster.leader),
                                 sorted(str(peer.name) for peer in info.cluster.replicas or ()))
            return found
        finally:
            await nc.close()

    found = run(check(), timeout=60)
    assert len(found) == 6
    for stream, (replicas, leader, followers) in found.items():
        assert replicas == 3, (stream, replicas)
        assert sorted([leader, *followers]) == ["n0", "n1", "n2"], (stream, leader, followers)


def test_killing_the_stream_leader_mid_run_loses_nothing(cluster: NatsCluster, tmp_path: pathlib.Path) -> None:
    expected = app.fault_free_states(WORKFLOWS + 2)
    prefix = f"cl{uuid.uuid4().hex[:6]}"
    graph = app.build_graph()
    workers = WorkerProcesses(r3(cluster.url), prefix, tmp_path, "cluster_app:registry")
    # Each worker knows one server; it learns the others from it (NATS cluster discovery).
    for index in range(3):
        workers.url = r3(cluster.server(index).url)
        workers.start(f"w{index}", "--visibility-timeout", str(LEASE), "--shutdown-grace", "2")
    killed: list[int] = []
    leaders: list[str] = []

    async def scenario() -> tuple[list[Any], list[Any], dict[str, Any], dict[str, Any]]:
        orchestrator = DistributedOrchestrator(backend_url=r3(cluster.url), prefix=prefix,
                                               visibility_timeout=LEASE, lease_ttl=3.0)
        orchestrator.register_graph(graph)
        await orchestrator.connect()
        try:
            runs = [asyncio.create_task(orchestrator.execute(graph, {"value": f"in-{i}", "trail": []},
                                                             workflow_id=f"{prefix}-{i}"))
                    for i in range(WORKFLOWS)]
            store = orchestrator.backend.state_store
            # Mid-run: once every workflow is recorded and some have committed steps.
            while True:
                try:
                    records = [await store.get(f"{prefix}-{i}") for i in range(WORKFLOWS)]
                except BackendUnavailableError:  # buckets just made: their leaders may still be elected
                    await asyncio.sleep(0.2)
                    continue
                if all(r is not None for r in records) and sum(r.step for r in records if r) >= WORKFLOWS:
                    break
                assert not any(t.done() for t in runs), [t.result() for t in runs if t.done()]
                await asyncio.sleep(0.05)
            leader = await _leader_of(cluster.url, Names(prefix).task_stream)
            victim = cluster.index_of(leader)
            cluster.kill(victim)
            killed.append(victim)
            finals = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 120)
            survivors = ",".join(f"127.0.0.1:{cluster.server(i).port}" for i in range(3) if i != victim)
            leaders.append(await _leader_of(f"nats://{survivors}", Names(prefix).task_stream))
            # Only the worker whose server died serves now: more workflows complete only if it reconnected.
            for index, process in enumerate(workers.processes):
                if index != victim:
                    process.send_signal(signal.SIGKILL)
            later = await asyncio.wait_for(asyncio.gather(*(
                orchestrator.execute(graph, {"value": f"in-{i}", "trail": []}, workflow_id=f"{prefix}-{i}")
                for i in range(WORKFLOWS, WORKFLOWS + 2)), return_exceptions=True), 120)
            ids = [f"{prefix}-{i}" for i in range(WORKFLOWS + 2)]
            steps = {wf: [cp.step for cp in await store.list_checkpoints(wf)] for wf in ids}
            records_now = {wf: await store.get(wf) for wf in ids}
            stats = {t: await orchestrator.backend.task_queue.stats(t) for t in app.NODE_TYPES}
            return finals, later, {"steps": steps, "records": records_now}, stats
        finally:
            await orchestrator.close()

    try:
        finals, later, history, stats = run(scenario(), timeout=170)
        reconnected_worker = workers.processes[killed[0]]
        assert reconnected_worker.poll() is None, workers.log(f"w{killed[0]}")
    finally:
        workers.close()
        if killed:
            cluster.restart(killed[0])  # whole again for the module's other tests
            cluster.wait_ready()

    logs = f"(worker logs in {tmp_path}; server logs in {[s.directory for s in cluster.servers]})"
    assert finals == expected[:WORKFLOWS], logs
    assert later == expected[WORKFLOWS:], logs
    assert leaders[0] != f"n{killed[0]}", logs  # a survivor leads the stream now
    for wf, record in history["records"].items():
        assert record is not None and record.status == WorkflowStatus.COMPLETED, (wf, record, logs)
        assert sorted(history["steps"][wf]) == list(range(record.step + 1)), (wf, history["steps"][wf], logs)
    busy = {t: (s.queued, s.in_flight, s.dead) for t, s in stats.items() if s.queued or s.in_flight or s.dead}
    assert not busy, f"tasks left queued, leased or dead-lettered: {busy} {logs}"
    assert "reconnected" in workers.log(f"w{killed[0]}"), workers.log(f"w{killed[0]}")
