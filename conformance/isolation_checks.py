"""Prefix isolation across all four ports: two deployments sharing one engine never meet."""

from __future__ import annotations

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session
from distributed_agents.conformance.helpers import claim_ids, make_task
from distributed_agents.conformance.state_store_checks import record
from distributed_agents.conformance.worker_registry_checks import worker
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.state_store import Checkpoint

PORT = "task_queue"


@conformance_check(PORT, ("task_queue.prefix-isolation", "state_store.prefix-isolation",
                          "worker_registry.prefix-isolation", "message_bus.prefix-isolation"))
async def check_prefix_isolation(session: Session) -> None:
    """Everything written under one prefix is invisible under another, on the same URL."""
    mine = await session.open()
    theirs = await session.open()
    expect(mine.options.prefix != theirs.options.prefix, "state_store.prefix-isolation", "the factory reused a prefix")
    spy = await theirs.message_bus.subscribe(">")
    same_channel = await theirs.message_bus.subscribe("events.wf1")
    await mine.task_queue.enqueue(make_task("t1"))
    await mine.task_queue.enqueue(make_task("t2", max_attempts=1))
    [claim] = await claim_ids(mine.task_queue, ["alpha"], max_tasks=1)
    await mine.task_queue.ack(claim, {"x": 1})
    [doomed] = await claim_ids(mine.task_queue, ["alpha"], max_tasks=1)
    await mine.task_queue.nack(doomed, "dead")
    await mine.task_queue.enqueue(make_task("t3"))
    await mine.state_store.save(record("w1"), expected_version=0)
    lease = await mine.state_store.acquire_lease("w1", "orch", 30.0)
    await mine.worker_registry.register(worker("w1", "alpha"))
    await mine.message_bus.publish("events.wf1", {"secret": 1})

    clause = "task_queue.prefix-isolation"
    stats = await theirs.task_queue.stats("alpha")
    expect((stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), clause, f"another prefix sees stats {stats}")
    expect(await claim_ids(theirs.task_queue, ["alpha"], max_tasks=5) == [], clause, "another prefix claimed my task")
    expect(await theirs.task_queue.get_result("t1") is None, clause, "another prefix sees my result")
    expect(await theirs.task_queue.dead_letters() == [], clause, "another prefix sees my dead letters")
    expect(await theirs.task_queue.enqueue(make_task("t1")) is True, clause, "my task id blocks enqueue under another prefix")

    clause = "state_store.prefix-isolation"
    expect(await theirs.state_store.get("w1") is None, clause, "another prefix reads my workflow")
    expect(await theirs.state_store.list_workflows() == [], clause, "another prefix lists my workflows")
    expect(await theirs.state_store.acquire_lease("w1", "intruder", 30.0) is not None, clause, "my lease blocks another prefix")
    expect(lease is not None, "state_store.lease", "a free lease was not granted")
    created = await theirs.state_store.save(record("w1"), expected_version=0)
    expect(created.version == 1, clause, "my workflow id blocks creation under another prefix")

    clause = "worker_registry.prefix-isolation"
    expect(await theirs.worker_registry.list_workers() == [], clause, "another prefix lists my workers")
    expect(await theirs.worker_registry.heartbeat("w1") is False, clause, "another prefix heartbeats my worker")

    clause = "message_bus.prefix-isolation"
    for sub in (spy, same_channel):
        leaked = await sub.get(timeout=session.slack * 2 + 0.1)
        expect(leaked is None, clause, f"a subscriber under another prefix received {leaked!r}")

    # Sanity: the writes did land under my own prefix.
    expect(await mine.state_store.get("w1") is not None, "state_store.cas", "my own workflow is gone")


async def _write_everything(backend: Backend, tag: str) -> None:
    """One task queued, one done, one dead; a workflow with a checkpoint and a lease; a worker; a message."""
    queue = backend.task_queue
    await queue.enqueue(make_task(f"{tag}-done"))
    await queue.enqueue(make_task(f"{tag}-dead", max_attempts=1))
    for claim in await claim_ids(queue, ["alpha"], max_tasks=2):
        if claim.task.id.endswith("-done"):
            await queue.ack(claim, {"by": tag})
        else:
            await queue.nack(claim, "dead")
    await queue.enqueue(make_task(f"{tag}-queued"))
    await backend.state_store.save(record("wf", by=tag), expected_version=0, checkpoint=Checkpoint("wf", 0, {"by": tag}))
    await backend.state_store.acquire_lease("wf", tag, 30.0)
    await backend.worker_registry.register(worker(f"{tag}-worker", "alpha"))
    await backend.message_bus.publish("events.wf", {"by": tag})


@conformance_check(PORT, ("task_queue.prefix-isolation", "state_store.prefix-isolation",
                          "worker_registry.prefix-isolation", "message_bus.prefix-isolation"))
async def check_nested_prefixes_are_isolated(session: Session) -> None:
    """Prefixes that are prefixes of one another ('app-1', 'app-12', 'app-1.2', 'app-1:2') never see each other's data.

    The writer's prefix extends a reader's by a character, by '.' and by ':' (the key
    separators engines use), so a ``KEYS prefix*`` or ``prefix:*`` scan shows.
    """
    for suffix in ("2", ":2", ".2"):
        await _nested_prefixes(session, suffix)


async def _nested_prefixes(session: Session, suffix: str) -> None:
    base = session.context.factory.fresh_prefix()
    writer = f"{base}{suffix}"
    prefixes = list(dict.fromkeys([base, writer, f"{base}2", f"{base}.2", f"{base}:2", f"{base}_2e2"]))
    backends = {p: await session.open(prefix=p) for p in prefixes}
    spies = {p: await b.message_bus.subscribe(">" if session.requirements.supports("pattern_subscriptions") else "events.wf")
             for p, b in backends.items()}
    await _write_everything(backends[writer], "mine")
    for prefix, backend in backends.items():
        if prefix == writer:
            continue
        seen = f"prefix {prefix!r} beside {writer!r}"
        queue = backend.task_queue
        stats = await queue.stats("alpha")
        expect((stats.queued, stats.in_flight, stats.dead) == (0, 0, 0), "task_queue.prefix-isolation", f"{seen} sees stats {stats}")
        expect(await queue.get_result("mine-done") is None, "task_queue.prefix-isolation", f"{seen} sees a result")
        expect(await queue.dead_letters() == [], "task_queue.prefix-isolation", f"{seen} sees dead letters")
        expect(await claim_ids(queue, ["alpha"], max_tasks=5) == [], "task_queue.prefix-isolation", f"{seen} claims a task")
        store = backend.state_store
        expect(await store.get("wf") is None, "state_store.prefix-isolation", f"{seen} reads a workflow")
        expect(await store.list_workflows() == [], "state_store.prefix-isolation", f"{seen} lists workflows")
        expect(await store.list_checkpoints("wf") == [], "state_store.prefix-isolation", f"{seen} lists checkpoints")
        expect(await store.acquire_lease("wf", "other", 30.0) is not None, "state_store.prefix-isolation", f"{seen} finds the lease held")
        expect(await backend.worker_registry.list_workers() == [], "worker_registry.prefix-isolation", f"{seen} lists workers")
        leaked = await spies[prefix].get(timeout=session.slack * 2 + 0.05)
        expect(leaked is None, "message_bus.prefix-isolation", f"a subscriber of {seen} received {leaked!r}")
    own = await spies[writer].get(timeout=session.requirements.delivery_timeout)
    expect(own is not None, "message_bus.fanout", "the writer's own subscriber got nothing")
    expect(await backends[writer].state_store.get("wf") is not None, "state_store.cas", "the writer's own workflow is gone")
