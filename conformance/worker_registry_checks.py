"""Scenario checks of the WorkerRegistry port: register, heartbeat, expiry, deregister, lookup."""

from __future__ import annotations

import asyncio
import time

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session, Window, monotonic
from distributed_agents.conformance.helpers import sleep_past
from distributed_agents.core.ports.worker_registry import WorkerInfo

PORT = "worker_registry"


def worker(worker_id: str, *node_types: str, capacity: int = 2) -> WorkerInfo:
    """A worker record with every field set, so a dropped field shows."""
    return WorkerInfo(worker_id, frozenset(node_types), capacity=capacity, host=f"host-{worker_id}", pid=1000 + len(worker_id),
                      metadata={"zone": "z1"})


@conformance_check(PORT, ("worker_registry.register", "worker_registry.lookup"))
async def check_register_and_lookup(session: Session) -> None:
    """Registered workers are listed with their fields, sorted by id, filtered by node type."""
    registry = (await session.open()).worker_registry
    await registry.register(worker("w2", "alpha", "beta", capacity=4))
    await registry.register(worker("w1", "alpha"))
    await registry.register(worker("w3", "gamma"))
    listed = await registry.list_workers()
    expect([w.worker_id for w in listed] == ["w1", "w2", "w3"], "worker_registry.register", f"listed {[w.worker_id for w in listed]}")
    w2 = listed[1]
    expect((w2.node_types, w2.capacity, w2.host, w2.pid) == (frozenset({"alpha", "beta"}), 4, "host-w2", 1002),
           "worker_registry.register", f"w2 was stored as {w2!r}")
    for node_type, expected in {"alpha": ["w1", "w2"], "beta": ["w2"], "gamma": ["w3"], "delta": []}.items():
        got = [w.worker_id for w in await registry.list_workers(node_type)]
        expect(got == expected, "worker_registry.lookup", f"list_workers({node_type!r}) gave {got}, expected {expected}")
    await registry.register(worker("w1", "delta"))  # re-registering replaces the record
    got = [w.worker_id for w in await registry.list_workers("alpha")]
    expect(got == ["w2"], "worker_registry.register", f"after w1 re-registered for delta only, alpha lists {got}")


@conformance_check(PORT, ("worker_registry.heartbeat", "worker_registry.expiry"))
async def check_heartbeat_and_expiry(session: Session) -> None:
    """Heartbeats keep a worker listed past heartbeat_ttl; silence drops it; heartbeat then says False."""
    ttl = session.short * 2
    registry = (await session.open(heartbeat_ttl=ttl)).worker_registry
    expect(await registry.heartbeat("never-registered") is False, "worker_registry.heartbeat", "heartbeat of an unknown worker returned True")
    for attempt in range(3):  # a loaded machine may wake too late between heartbeats to judge them; try again
        beating, silent = f"beating-{attempt}", f"silent-{attempt}"
        await registry.register(worker(beating, "alpha"))
        last_beat = monotonic()  # when the last write that keeps ``beating`` alive was answered
        await registry.register(worker(silent, "alpha"))
        [started] = [w.started_at for w in await registry.list_workers() if w.worker_id == beating]
        late = False
        for _ in range(3):
            await asyncio.sleep(ttl / 3)
            # A heartbeat sent a whole ttl after the last one may rightly find the worker expired.
            late = late or monotonic() - last_beat >= ttl - session.slack
            beat = await registry.heartbeat(beating)
            last_beat = monotonic()
            if not late:
                expect(beat is True, "worker_registry.heartbeat", "heartbeat of a live worker returned False")
        listed_workers = await registry.list_workers()
        late = late or monotonic() - last_beat >= ttl - session.slack
        if late:
            await registry.deregister(beating)
            await registry.deregister(silent)
            continue
        [after] = [w.started_at for w in listed_workers if w.worker_id == beating] or [None]
        expect(after == started, "worker_registry.heartbeat", f"heartbeats changed started_at from {started} to {after}")
        await sleep_past(ttl / 3, session.slack)
        probe = monotonic()
        listed = [w.worker_id for w in await registry.list_workers()]
        expect(silent not in listed, "worker_registry.expiry", f"a worker silent for longer than heartbeat_ttl={ttl}s is listed: {listed}")
        if probe - last_beat < ttl - session.slack:  # (else asked after ``beating`` may rightly have expired)
            expect(beating in listed, "worker_registry.heartbeat", f"a worker that kept beating is not listed: {listed}")
        expect(await registry.heartbeat(silent) is False, "worker_registry.expiry", "heartbeat of an expired worker returned True")
        return
    # never judged: the machine was too slow every time


@conformance_check(PORT, ("worker_registry.deregister",))
async def check_deregister(session: Session) -> None:
    """Deregister removes a worker at once; deregistering an unknown id is no error."""
    registry = (await session.open()).worker_registry
    await registry.register(worker("w1", "alpha"))
    await registry.register(worker("w2", "alpha"))
    await registry.deregister("w1")
    await registry.deregister("unknown")
    listed = [w.worker_id for w in await registry.list_workers("alpha")]
    expect(listed == ["w2"], "worker_registry.deregister", f"after deregistering w1 the registry lists {listed}")
    expect(await registry.heartbeat("w1") is False, "worker_registry.deregister", "heartbeat of a deregistered worker returned True")


@conformance_check(PORT, ("worker_registry.heartbeat", "worker_registry.expiry"))
async def check_heartbeat_at_the_edge(session: Session) -> None:
    """A heartbeat just before heartbeat_ttl ends keeps the worker a full ttl more; silence then ends it."""
    ttl = session.short * 2
    registry = (await session.open(heartbeat_ttl=ttl)).worker_registry
    guard = max(2 * session.slack, 0.05)
    for attempt in range(3):  # a loaded machine may wake too late to judge the edge; try again
        worker_id = f"edge-{attempt}"
        started = monotonic()
        await registry.register(worker(worker_id, "alpha"))
        registered = Window.after(started, monotonic(), ttl, session.slack)
        await asyncio.sleep(max(0.0, registered.earliest - guard - monotonic()))
        probe = monotonic()
        alive = await registry.heartbeat(worker_id)
        beat = Window.after(probe, monotonic(), ttl, session.slack)
        if monotonic() < registered.earliest:
            break
        await registry.deregister(worker_id)
    else:
        return  # never judged: the machine was too slow every time
    expect(alive is True, "worker_registry.heartbeat", f"a heartbeat {registered.earliest + session.slack - probe:.2f}s "
           f"before heartbeat_ttl={ttl}s ran out returned {alive!r}")
    await asyncio.sleep(max(0.0, registered.latest - monotonic()))
    probe = monotonic()
    listed = [w.worker_id for w in await registry.list_workers("alpha")]
    if beat.state(probe, monotonic() - probe) == "pending":
        expect(listed == [worker_id], "worker_registry.heartbeat",
               f"a worker that sent a heartbeat just before heartbeat_ttl ran out is not listed after its first ttl: {listed}")
    await asyncio.sleep(max(0.0, beat.latest - monotonic()))
    expect(await registry.list_workers() == [], "worker_registry.expiry", f"a worker silent for heartbeat_ttl={ttl}s after its last heartbeat is listed")
    expect(await registry.heartbeat(worker_id) is False, "worker_registry.expiry", "a heartbeat just after heartbeat_ttl ran out returned True")


@conformance_check(PORT, ("worker_registry.register", "worker_registry.lookup"))
async def check_many_workers_and_names(session: Session) -> None:
    """Past ten workers with Unicode ids and overlapping node-type names: all listed, sorted, filtered exactly."""
    registry = (await session.open()).worker_registry
    types = ["a", "ab", "ba", "a.b", "日本", "日本語"]
    plan = {f"w{i}" if i % 4 else f"wörker-{i}-ü": {types[i % len(types)], types[(i * 2) % len(types)]} for i in range(14)}
    for worker_id, node_types in plan.items():
        await registry.register(worker(worker_id, *sorted(node_types)))
    listed = [w.worker_id for w in await registry.list_workers()]
    expect(listed == sorted(plan), "worker_registry.register", f"{len(plan)} workers listed as {listed}, expected {sorted(plan)}")
    for node_type in types + ["b", "日"]:
        got = [w.worker_id for w in await registry.list_workers(node_type)]
        want = sorted(w for w, ts in plan.items() if node_type in ts)
        expect(got == want, "worker_registry.lookup", f"list_workers({node_type!r}) gave {got}, expected {want}")


@conformance_check(PORT, ("worker_registry.register",))
async def check_every_worker_field_round_trips(session: Session) -> None:
    """Every field a worker registers reads back; register counts as a heartbeat whatever last_heartbeat it carries."""
    registry = (await session.open(heartbeat_ttl=session.short * 4)).worker_registry
    clause = "worker_registry.register"
    # Built long ago (a worker re-registering with the info it made at start-up): the
    # registry's own clock decides liveness, not the caller's last_heartbeat.
    info = WorkerInfo("w-Ω", frozenset({"alpha", "日本"}), capacity=7, host="host-ü.example", pid=4242, started_at=1234.5,
                      last_heartbeat=time.time() - 3600.0,
                      metadata={"zone": "eu-1", "none": None, "nested": {"list": [1, 2.5, "ü"]}, "big": 2**40})
    before = time.time()
    await registry.register(info)
    listed = await registry.list_workers()
    expect([w.worker_id for w in listed] == ["w-Ω"], clause,
           f"a worker registered with a last_heartbeat an hour old is not listed ({[w.worker_id for w in listed]}): register is a heartbeat")
    [got] = listed
    fields = (got.node_types, got.capacity, got.host, got.pid, got.started_at, dict(got.metadata))
    want = (info.node_types, info.capacity, info.host, info.pid, info.started_at, dict(info.metadata))
    expect(fields == want, clause, f"the worker reads back (node_types, capacity, host, pid, started_at, metadata)={fields}, expected {want}")
    expect(got.last_heartbeat >= before - 5.0, clause, f"register recorded last_heartbeat {got.last_heartbeat}, not the time of registering")
    expect(await registry.heartbeat("w-Ω") is True, "worker_registry.heartbeat", "heartbeat of a just-registered worker returned False")


@conformance_check(PORT, ("worker_registry.listing",))
async def check_listing_past_a_page_sorted_exactly(session: Session) -> None:
    """120 workers (past any page) with mixed-case and Unicode ids: all listed, sorted by id as exact strings."""
    registry = (await session.open()).worker_registry
    clause = "worker_registry.listing"
    special = ["B", "a", "b", "A", "Ä", "ä", "Z", "z", "_x", "10", "9", "é", "e\u0301", "ß", "SS", "ss"]
    ids = special + [f"{'W' if i % 2 else 'w'}{i:03d}" for i in range(120 - len(special))]
    for worker_id in ids:
        await registry.register(worker(worker_id, "alpha" if len(worker_id) % 2 else "beta"))
    listed = [w.worker_id for w in await registry.list_workers()]
    want = sorted(ids)
    expect(len(listed) == len(want), clause, f"{len(ids)} live workers, list_workers() returned {len(listed)}")
    expect(listed == want, clause, f"list_workers() order {listed[:16]}..., expected sorted by id as exact strings {want[:16]}...")
    alphas = [w.worker_id for w in await registry.list_workers("alpha")]
    expect(alphas == [w for w in want if len(w) % 2], clause, f"list_workers('alpha') gave {len(alphas)} workers, out of order or incomplete")
