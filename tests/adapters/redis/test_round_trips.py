"""Round trips to Redis per workflow and per wake-up, counted by the server.

With ``slowlog-log-slower-than 0`` Redis logs every top-level command with the client's
name and address; commands run inside a Lua script are logged with address ``?:0`` and
are not round trips. Each test runs a private server so that other tests' traffic stays
out, and lengthens the periodic safety polls (``poll_cap``, heartbeats, lease renewals)
so that only the work under test is counted: the figures are counts, not timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents import Graph, NodeRegistry, State, Worker
from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.adapters.redis.message_bus import PUBLISH_SCRIPT
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.ports.backend import Backend, BackendOptions
from distributed_agents.core.ports.task_queue import Task

_TRACE: list[bytes] = []
_PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest().encode()
pytestmark = pytest.mark.timeout(120)


def _backend(url: str, prefix: str) -> Backend:
    options = BackendOptions.from_url(url, prefix=prefix, heartbeat_ttl=600)
    backend = open_redis_backend(url, options)
    backend.task_queue.poll_cap = 60.0  # type: ignore[attr-defined]
    return backend


async def _commands(meter: redis_asyncio.Redis) -> list[str]:
    """Top-level commands of other clients since the last reset, oldest first (``EVALSHA``, ...)."""
    # Raw entries: [id, time, µs, [command, args...], client address, client name].
    entries = await meter.execute_command("SLOWLOG", "GET", -1)
    names = []
    for entry in reversed(entries):
        address, name = entry[4], entry[5]
        if address == b"?:0" or name == b"meter":  # inside a script, or the meter itself
            continue
        name = entry[3][0].decode().upper()
        # The event publisher's batches run as one script of their own (message_bus).
        names.append("PUBLISH" if name == "EVALSHA" and entry[3][1] == _PUBLISH_SHA else name)
        _TRACE.append(b" ".join(entry[3][:6])[:120])
    return names


async def _script_and_block_calls(meter: redis_asyncio.Redis) -> Counter[str]:
    """Calls of EVALSHA and BLMPOP (a claimer's blocking wait) since the last ``CONFIG RESETSTAT``, from ``INFO commandstats``.

    Both are only ever top-level commands (a script cannot block, and the commands a
    script runs count under their own names), so they are round trips; cheaper to read
    than the slow log when thousands of commands run inside scripts.
    """
    stats = await meter.info("commandstats")
    return Counter({name: int(stats.get(f"cmdstat_{name.lower()}", {}).get("calls", 0))
                    for name in ("EVALSHA", "BLMPOP")})


async def _start_counting(url: str) -> redis_asyncio.Redis:
    meter = redis_asyncio.Redis.from_url(url, client_name="meter")
    await meter.config_set("slowlog-log-slower-than", 0)
    await meter.config_set("slowlog-max-len", 100000)
    await meter.slowlog_reset()
    return meter


def test_one_single_node_workflow_costs_four_round_trips_besides_its_events() -> None:
    """Orchestrator and worker together: on the orchestrator's side the create (lease grant,
    record and the first step's enqueue, which hands the task, leased, to the parked idle
    worker: one script) and the last commit (which releases the lease); on the worker's side the
    wake-up (its BLMPOP returns the task: no claim) and the ack (result stored and announced
    in the ack script). The result reaches the orchestrator inside the "done" event: no
    read. Events go out separately, batched off the workflow's path.
    """
    registry = NodeRegistry()

    @registry.register("noop")
    async def noop(state: State) -> dict[str, Any]:
        return {"x": 1}

    graph = Graph("rt").add_node("n", node_type="noop").set_entry_point("n").set_finish_point("n").compile()

    async def scenario(url: str) -> list[list[str]]:
        prefix = f"rt{uuid.uuid4().hex[:8]}"
        worker_backend, orchestrator_backend = _backend(url, prefix), _backend(url, prefix)
        worker = Worker(["noop"], capacity=4, backend=worker_backend, registry=registry, worker_id="w1",
                        heartbeat_interval=300, poll_wait=3)
        serving = asyncio.ensure_future(worker.start())
        # As DistributedOrchestrator runs: nodes on workers, which it waits for.
        orchestrator = Orchestrator(backend=orchestrator_backend, lease_ttl=600, recover=False, local_nodes=False,
                                    wait_for_workers=True)
        meter: redis_asyncio.Redis | None = None
        try:
            for _ in range(3):  # warm-up: scripts loaded, pub/sub subscribed, worker idle
                await orchestrator.execute(graph, {})
            await asyncio.sleep(0.2)
            meter = await _start_counting(url)
            runs = []
            for _ in range(3):
                await meter.slowlog_reset()
                result = await orchestrator.execute(graph, {})
                assert result["x"] == 1
                await asyncio.sleep(0.2)  # events published, the worker blocked again
                runs.append(await _commands(meter))
            return runs
        finally:
            await orchestrator.close()
            await worker.stop()
            await serving
            await orchestrator_backend.close()
            await worker_backend.close()
            if meter is not None:
                await meter.aclose()

    with RedisServer() as server:
        runs = run(scenario(server.url), 90)
    totals = []
    for commands in runs:
        counts = Counter(commands)
        events = counts.pop("PUBLISH", 0)
        for setup in ("HELLO", "PING", "CLIENT"):  # a pooled connection opened meanwhile: not per workflow
            counts.pop(setup, None)
        assert set(counts) <= {"EVALSHA", "BLMPOP"}, commands
        totals.append((counts["EVALSHA"], counts["BLMPOP"]))
        assert events <= 5, commands  # workflow.started, node.started/completed, step.committed, workflow.completed
    # 2 EVALSHA of the orchestrator (create with the enqueue, save_releasing) + the ack, and
    # the idle worker's BLMPOP. A parked worker's registration is kept by its acks
    # (test_parked_registration.py), but one that ran out while the worker was idle (5 s after
    # its last claim call) registers again (one more claim script, and a BLMPOP if its sleep
    # ended): a run on a stalled machine may see that.
    assert min(totals) == (3, 1), (totals, runs)
    assert all(e + b <= 6 for e, b in totals), (totals, runs)


async def _parked(meter: redis_asyncio.Redis, prefix: str, count: int, left_ms: int = 2000) -> None:
    """Wait until ``count`` claimers are parked, each registration live for ``left_ms`` more.

    Observed in Redis (the ``{p}:q:park:*`` hashes and their ``u`` deadline against the
    server's clock), not by sleeping: on a loaded machine a claimer may not have parked
    yet, or its registration (renewed every few seconds) may be about to run out, and an
    enqueue then pushes a wake-up token instead of handing the task over.
    """
    while True:
        seconds, micros = await meter.time()
        now_ms = seconds * 1000 + micros // 1000
        ends = [int(await meter.hget(key, "u") or 0) async for key in meter.scan_iter(f"{prefix}:q:park:*")]
        if len(ends) == count and min(ends) - now_ms >= left_ms:
            return
        await asyncio.sleep(0.02)


def test_one_new_task_wakes_one_idle_claimer_not_all() -> None:
    """Four claimers park waiting; one enqueue hands the task to one of them: no claim at all."""

    async def scenario(url: str) -> tuple[list[str], list[int], list[str]]:
        prefix = f"herd{uuid.uuid4().hex[:8]}"
        backends = [_backend(url, prefix) for _ in range(5)]
        for backend in backends:
            await backend.connect()
        producer, claimers = backends[0].task_queue, [b.task_queue for b in backends[1:]]
        await producer.enqueue(Task("warm", "wf", "n", "beta", {}))  # scripts loaded
        meter = await _start_counting(url)
        try:
            waits = [asyncio.ensure_future(q.claim(["alpha"], worker_id=f"w{i}", wait=30))
                     for i, q in enumerate(claimers)]
            await _parked(meter, prefix, 4)  # every claimer registered: the enqueue hands over
            await meter.slowlog_reset()
            await producer.enqueue(Task("t1", "wf", "n", "alpha", {}))
            done, pending = await asyncio.wait(waits, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.sleep(0.3)  # a herd would show up here: every claimer claiming
            after_one = await _commands(meter)
            got = [len(w.result()) for w in done]
            await _parked(meter, prefix, 3)
            await meter.slowlog_reset()
            await producer.enqueue_many([Task(f"m{i}", "wf", "n", "alpha", {}) for i in range(3)])
            rest = await asyncio.wait_for(asyncio.gather(*pending), 30)
            got += [len(r) for r in rest]
            await asyncio.sleep(0.3)
            after_three = await _commands(meter)
            return after_one, got, after_three
        finally:
            await meter.aclose()
            for backend in backends:
                await backend.close()

    with RedisServer() as server:
        after_one, got, after_three = run(scenario(server.url), 60)
    # A blocked BLMPOP also ends every 5 s without a token and blocks again (no claim):
    # up to one such per claimer may fall into a window.
    one, three = Counter(after_one), Counter(after_three)
    # The enqueue (which hands the task over), then one blocked BLMPOP returns it; with a
    # herd, every claimer would claim.
    # (A registration that ran out on a slow machine parks again after its BLMPOP ended: one
    # claim script per such BLMPOP; a herd would claim without them.)
    assert len(one) == 2 and 1 <= one["BLMPOP"] <= 5 and (one["EVALSHA"] == 1 or one["EVALSHA"] <= one["BLMPOP"]), \
        after_one
    assert sorted(got) == [1, 1, 1, 1]
    # Three tasks: one enqueue script handing one to each of the three parked claimers, three
    # wake-ups; no claim script.
    assert len(three) == 2 and 3 <= three["BLMPOP"] <= 7 and \
        (three["EVALSHA"] == 1 or three["EVALSHA"] <= three["BLMPOP"] - 2), after_three


def test_a_fan_out_is_enqueued_in_two_scripts_and_a_wake_up_needs_no_read() -> None:
    """1,000 tasks: two enqueue scripts (500 each). wait_results gets every result inside
    the "done" events of the acks: tasks this queue enqueued are never read."""

    async def scenario(url: str) -> tuple[Counter[str], Counter[str], int]:
        prefix = f"fan{uuid.uuid4().hex[:8]}"
        producer, consumer = _backend(url, prefix), _backend(url, prefix)
        await producer.connect()
        await consumer.connect()
        queue, other = producer.task_queue, consumer.task_queue
        meter = await _start_counting(url)
        try:
            # Warm-up: scripts loaded, "done" events subscribed.
            await queue.enqueue_many([Task("warm", "wf", "n", "alpha", {})])
            [warm] = await other.claim(["alpha"], worker_id="w")
            await other.ack(warm, None)
            assert await queue.wait_results(["warm"], timeout=5)
            await meter.config_set("slowlog-log-slower-than", -1)  # thousands of entries: too slow to read
            await meter.config_resetstat()
            tasks = [Task(f"t{i}", "wf", "n", "alpha", {"i": i}) for i in range(1000)]
            assert all(await queue.enqueue_many(tasks))
            claims = await other.claim(["alpha"], worker_id="w", max_tasks=1000)
            waiting = asyncio.ensure_future(queue.wait_results([t.id for t in tasks], timeout=30))
            await asyncio.sleep(0.2)  # it waits
            await other.ack(claims[0], {"i": claims[0].task.payload["i"]})
            first = await waiting
            assert list(first) == [claims[0].task.id] and first[claims[0].task.id].output == {"i": 0}
            one_wake_up = await _script_and_block_calls(meter)
            for claim in claims[1:]:
                await other.ack(claim, {"i": claim.task.payload["i"]})
            collected = dict(first)
            while len(collected) < 1000:
                found = await queue.wait_results([t.id for t in tasks if t.id not in collected], timeout=10)
                assert found
                collected.update(found)
            assert collected["t7"].output == {"i": 7}
            return one_wake_up, await _script_and_block_calls(meter), len(collected)
        finally:
            await meter.aclose()
            await producer.close()
            await consumer.close()

    with RedisServer() as server:
        one_wake_up, total, collected = run(scenario(server.url), 60)
    assert collected == 1000
    # 2 enqueue scripts + 1 claim + 1 ack: no result read.
    assert one_wake_up == {"EVALSHA": 4, "BLMPOP": 0}, one_wake_up
    # + 999 acks, and still no read.
    assert total == {"EVALSHA": 1003, "BLMPOP": 0}, total


def test_hand_overs_that_piled_up_come_back_in_one_wake_up() -> None:
    """Tasks handed to a parked claimer while it was busy (one message per enqueue script)
    are all returned by its next blocking wait: one BLMPOP, no claim script."""

    async def scenario(url: str) -> tuple[list[str], Counter[str]]:
        prefix = f"pile{uuid.uuid4().hex[:8]}"
        producer, consumer = _backend(url, prefix), _backend(url, prefix)
        await producer.connect()
        await consumer.connect()
        queue, claimer = producer.task_queue, consumer.task_queue
        await queue.enqueue(Task("warm", "wf", "n", "beta", {}))  # scripts loaded
        meter = await _start_counting(url)
        try:
            first = asyncio.ensure_future(claimer.claim(["alpha"], worker_id="w", wait=30, max_tasks=10))
            await _parked(meter, prefix, 1, left_ms=3000)
            await queue.enqueue(Task("t0", "wf", "n", "alpha", {}))
            assert [c.task.id for c in await asyncio.wait_for(first, 30)] == ["t0"]
            for i in (1, 2, 3):  # the claimer is busy: each enqueue hands its task over on the list
                await queue.enqueue(Task(f"t{i}", "wf", "n", "alpha", {}))
            await meter.config_resetstat()
            claims = await claimer.claim(["alpha"], worker_id="w", wait=30, max_tasks=9)
            return [c.task.id for c in claims], await _script_and_block_calls(meter)
        finally:
            await meter.aclose()
            await producer.close()
            await consumer.close()

    with RedisServer() as server:
        ids, calls = run(scenario(server.url), 60)
    assert ids == ["t1", "t2", "t3"]
    assert calls == {"EVALSHA": 0, "BLMPOP": 1}, calls
