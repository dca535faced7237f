"""NATS record holding its newest checkpoint entries, releasing commits and priority levels, attacked.

Differential checks against the expected states: histories over many steps with entries
below and above 32 KB, written by two stores in turn with status-only saves and releasing
commits between them; lease grants, renewals and steals around a releasing commit; a
claimer giving the same message back many times while new levels appear.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(90)


def _state(step: int, size: int, rng: random.Random) -> dict[str, Any]:
    # A value that changes every step (deltas), one that rarely does, and one of the chosen size.
    return {"n": step, "log": [f"m{i}" for i in range(step)], "doc": "d" * 20_000 if step % 5 else "e" * 20_000,
            "blob": "".join(rng.choice("ab") for _ in range(size))}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histories_of_mixed_entry_sizes_by_two_stores_read_back_whole(nats_url: str, seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 10, 3_000, 9_000, 30_000, 40_000]) for _ in range(14)]
    states = [_state(step, size, rng) for step, size in enumerate(sizes)]
    workflow_id = f"wf-{seed}"

    async def scenario() -> tuple[list[Any], dict[int, list[Any]], list[Any], list[Any]]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        stores = [first.state_store, second.state_store]
        try:
            version = 0
            lease = await first.state_store.acquire_lease(workflow_id, "o1", 30)
            assert lease is not None
            for step, state in enumerate(states):
                store = stores[rng.randrange(2)]
                rec = WorkflowRecord(workflow_id, "graph", "running", state, step=step)
                if step % 4 == 3:  # the last commit of a run, releasing its lease; then a new run's grant
                    saved = await store.save_releasing(rec, expected_version=version, lease=lease,
                                                       checkpoint=Checkpoint(workflow_id, step, state))
                    owner = rng.choice(["o1", "o2"])
                    lease = await stores[rng.randrange(2)].acquire_lease(workflow_id, owner, 30)
                    assert lease is not None, f"the released lease was not free at step {step}"
                else:
                    saved = await store.save(rec, expected_version=version, fencing_token=lease.fencing_token,
                                             checkpoint=Checkpoint(workflow_id, step, state))
                version = saved.version
                if step % 3 == 1:  # a status-only save (no checkpoint) keeps the held entries
                    saved = await stores[rng.randrange(2)].save(saved.evolve(metadata={"note": step}),
                                                               expected_version=version,
                                                               fencing_token=lease.fencing_token)
                    version = saved.version
            every = [cp.state for cp in await second.state_store.list_checkpoints(workflow_id)]
            pages = {}
            for before in (1, 3, 5, 8, 13, 14):
                pages[before] = [cp.state for cp in
                                 await first.state_store.list_checkpoints(workflow_id, limit=3, before=before)]
            single = []
            for step in range(len(states)):
                found = await stores[step % 2].get_checkpoint(workflow_id, step)
                single.append(None if found is None else found.state)
            record = await first.state_store.get(workflow_id)
            assert record is not None
            return every, pages, single, [record.state]
        finally:
            await second.close()
            await first.close()

    every, pages, single, newest = run(scenario(), 80)
    assert every == list(reversed(states))
    for before, page in pages.items():
        assert page == list(reversed(states[:before]))[:3], before
    assert single == states
    assert newest == [states[-1]]


def test_a_released_lease_taken_renewed_and_released_again_by_others_stays_consistent(nats_url: str) -> None:
    """A releases t1 with its commit; B takes t2 at once; A's renewal of t1 is lost; B renews,
    then releases t2; A takes t3 (its own earlier release names t1 only) and renews it."""

    async def scenario() -> list[Any]:
        a = await open_nats(nats_url)
        b = await open_nats(nats_url, prefix=a.options.prefix)
        seen: list[Any] = []
        try:
            t1 = await a.state_store.acquire_lease("wf", "A", 30)
            assert t1 is not None
            rec = WorkflowRecord("wf", "graph", "running", {"n": 0})
            saved = await a.state_store.save(rec, expected_version=0, fencing_token=t1.fencing_token,
                                             checkpoint=Checkpoint("wf", 0, {"n": 0}))
            saved = await a.state_store.save_releasing(saved.evolve(status="interrupted", state={"n": 1}, step=1),
                                                       expected_version=saved.version, lease=t1,
                                                       checkpoint=Checkpoint("wf", 1, {"n": 1}))
            seen.append(await b.state_store.lease_holder("wf"))
            t2 = await b.state_store.acquire_lease("wf", "B", 30)
            assert t2 is not None and t2.fencing_token > t1.fencing_token
            seen.append((await a.state_store.lease_holder("wf")).owner)  # type: ignore[union-attr]
            try:
                await a.state_store.renew_lease(t1, 30)
                seen.append("renewed a released lease")
            except LeaseLostError:
                seen.append("lost")
            t2 = await b.state_store.renew_lease(t2, 30)
            # A's stale token is fenced off.
            try:
                await a.state_store.save(saved.evolve(state={"n": 99}), expected_version=saved.version,
                                         fencing_token=t1.fencing_token)
                seen.append("stale write landed")
            except Exception as exc:
                seen.append(type(exc).__name__)
            current = await b.state_store.get("wf")
            assert current is not None
            saved = await b.state_store.save_releasing(current.evolve(status="completed", state={"n": 2}, step=2),
                                                       expected_version=current.version, lease=t2,
                                                       checkpoint=Checkpoint("wf", 2, {"n": 2}))
            seen.append(await a.state_store.lease_holder("wf"))
            t3 = await a.state_store.acquire_lease("wf", "A", 30)
            assert t3 is not None and t3.fencing_token > t2.fencing_token
            t3 = await a.state_store.renew_lease(t3, 30)
            seen.append((await b.state_store.lease_holder("wf")).fencing_token == t3.fencing_token)  # type: ignore[union-attr]
            seen.append([cp.state["n"] for cp in await b.state_store.list_checkpoints("wf")])
        finally:
            await b.close()
            await a.close()
        return seen

    seen = run(scenario(), 60)
    assert seen[0] is None
    assert seen[1] == "B" and seen[2] == "lost"
    assert seen[3] in ("FencingTokenRejectedError", "LeaseLostError", "VersionConflictError"), seen[3]
    assert seen[4] is None and seen[5] is True
    assert seen[6] == [2, 1, 0]


def test_a_message_given_back_many_times_as_levels_appear_is_still_claimed_once_at_attempt_one(nats_url: str) -> None:
    async def scenario() -> tuple[list[tuple[str, int]], int]:
        worker = await open_nats(nats_url)
        producer = await open_nats(nats_url, prefix=worker.options.prefix)
        queue = worker.task_queue
        queue.poll_interval = 60.0
        try:
            assert await producer.task_queue.enqueue(Task("warm", "wf", "n", "n", {}))
            (warm,) = await queue.claim(["n"], worker_id="w", max_tasks=1)
            await queue.ack(warm, None)
            assert await queue.claim(["n"], worker_id="w", max_tasks=1) == []
            assert await producer.task_queue.enqueue(Task("low", "wf", "n", "n", {}))
            order = []
            for level in range(1, 6):  # each claim pulled "low" at the level it knew, then a new one shows
                assert await producer.task_queue.enqueue(Task(f"p{level}", "wf", "n", "n", {}, priority=level))
                (claimed,) = await queue.claim(["n"], worker_id="w", max_tasks=1)
                order.append((claimed.task.id, claimed.attempt))
                await queue.ack(claimed, None)
                queue._level["n"] = 0  # as if its last claim had found one level: pull there with the read
            (claimed,) = await queue.claim(["n"], worker_id="w", max_tasks=1)
            order.append((claimed.task.id, claimed.attempt))
            await queue.ack(claimed, None)
            left = await queue.claim(["n"], worker_id="w", max_tasks=4)
            stats = await queue.stats("n")
            return order, len(left) + stats.queued + stats.in_flight + stats.dead
        finally:
            await producer.close()
            await worker.close()

    order, left = run(scenario(), 60)
    assert order == [(f"p{level}", 1) for level in range(1, 6)] + [("low", 1)]
    assert left == 0


def test_events_of_a_wide_in_process_step_arrive_whole_and_in_order_on_another_connection(nats_url: str) -> None:
    """Forty in-process nodes in one step publish their events in the same loop passes (one
    shared flush each): a subscriber on another connection gets every one, workflow.started
    first and workflow.completed last, each node's start before its end."""
    from distributed_agents import Graph, Orchestrator

    width = 40
    graph = Graph("wide_events").add_node("start", lambda s: {})
    for i in range(width):
        graph.add_node(f"n{i}", lambda s, i=i: {f"v{i}": i})
        graph.add_edge("start", f"n{i}")
        graph.set_finish_point(f"n{i}")
    compiled = graph.set_entry_point("start").compile()

    async def scenario() -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        prefix = f"ev{uuid.uuid4().hex[:8]}"
        url = f"{nats_url}{'&' if '?' in nats_url else '?'}prefix={prefix}"
        watcher = await open_nats(nats_url, prefix=prefix)
        orchestrator = Orchestrator(backend=url)
        try:
            subscription = await watcher.message_bus.subscribe("events.wf-wide.>")
            final = dict(await orchestrator.execute(compiled, {}, workflow_id="wf-wide"))
            seen: list[tuple[str, Any]] = []
            while (message := await subscription.get(timeout=10)) is not None:
                seen.append((str(message.data["type"]), message.data.get("node")))
                if seen[-1][0] == "workflow.completed":
                    break
            await subscription.close()
            return seen, final
        finally:
            await orchestrator.close()
            await watcher.close()

    seen, final = run(scenario(), 60)
    assert final == {f"v{i}": i for i in range(width)}
    assert seen[0][0] == "workflow.started" and seen[-1][0] == "workflow.completed"
    for i in range(width):
        mine = [kind for kind, node in seen if node == f"n{i}" and kind.startswith("node.")]
        assert mine[:1] == ["node.started"] and mine[-1:] == ["node.completed"], (i, mine)


def _big_chain(length: int) -> Any:
    from distributed_agents import Graph

    graph = Graph("nats_big_chain")
    for i in range(length):
        size = (40_000, 10, 5_000)[i % 3]
        graph.add_node(f"s{i}", lambda s, i=i, size=size: {"n": s.get("n", 0) + 1, f"k{i}": "z" * size})
    graph.set_entry_point("s0")
    for i in range(length - 1):
        graph.add_edge(f"s{i}", f"s{i + 1}")
    return graph.set_finish_point(f"s{length - 1}").compile()


def test_forks_from_every_checkpoint_of_a_long_run_with_large_entries_match_the_memory_backend(nats_url: str) -> None:
    from distributed_agents import Orchestrator

    length = 7

    async def forks(url: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
        orchestrator = Orchestrator(backend=url)
        graph = _big_chain(length)
        try:
            await orchestrator.execute(graph, {}, workflow_id="wf-tt")
            history = await orchestrator.get_state_history("wf-tt")
            finals = []
            for snapshot in history[1:]:  # every checkpoint but the last: the fork has steps left
                fork_id = await orchestrator.fork(snapshot.checkpoint_id, workflow_id=f"fork-{snapshot.step}")
                finals.append(dict(await orchestrator.resume(fork_id, graph)))
            return [(s.step, s.values.get("n")) for s in history], finals
        finally:
            await orchestrator.close()

    async def scenario() -> tuple[Any, Any]:
        on_nats = await forks(f"{nats_url}{'&' if '?' in nats_url else '?'}prefix=tt{uuid.uuid4().hex[:8]}")
        in_memory = await forks(f"memory://tt-{uuid.uuid4().hex[:8]}")
        return on_nats, in_memory

    on_nats, in_memory = run(scenario(), 80)
    assert on_nats == in_memory
    assert on_nats[0] == [(step, step or None) for step in range(length, -1, -1)]


def test_a_completed_run_is_continued_at_once_by_another_orchestrator_then_by_the_first(nats_url: str) -> None:
    """Each run's last commit releases its lease in the record: another orchestrator (another
    connection) continues the completed workflow without waiting for the lease, then the first
    one does, though a marker of an older release stays in the record."""
    from distributed_agents import Graph, Orchestrator

    graph = Graph("continued").add_node("add", lambda s: {"n": s.get("n", 0) + s.get("by", 1)})
    graph = graph.set_entry_point("add").set_finish_point("add").compile()
    url = f"{nats_url}{'&' if '?' in nats_url else '?'}prefix=cc{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[Any]:
        first, second = Orchestrator(backend=url, lease_ttl=60), Orchestrator(backend=url, lease_ttl=60)
        try:
            values = [(await first.execute(graph, {"n": 0}, workflow_id="wf-cc"))["n"]]
            for orchestrator in (second, first, second):
                state = await orchestrator.execute(graph, {"by": 10}, workflow_id="wf-cc", continue_completed=True)
                values.append(state["n"])
            values.append(await first.backend.state_store.lease_holder("wf-cc"))
            return values
        finally:
            await second.close()
            await first.close()

    assert run(scenario(), 60) == [1, 11, 21, 31, None]


def test_entries_held_in_the_record_and_moved_out_later_keep_unusual_values_exact(nats_url: str) -> None:
    """Entries held in the record are read back decoded and encoded again when they move to
    keys of their own: values JSON carries in more than one spelling (non-ASCII, escapes, big
    and negative numbers, floats, empty containers) must come back exactly."""
    odd = {"text": "naïve — 日本語 🎉 \\ \" \n \t \u2028", "big": 2**63 + 7, "neg": -(2**53) - 1,
           "float": 1.5e-300, "tiny": 5e-324, "zero": -0.0, "empty": {"a": [], "b": {}, "c": ""}}
    states = [{"n": n, **{k: v for i, (k, v) in enumerate(odd.items()) if i <= n}} for n in range(10)]

    async def scenario() -> list[Any]:
        first = await open_nats(nats_url)
        second = await open_nats(nats_url, prefix=first.options.prefix)
        try:
            version = 0
            for step, state in enumerate(states):
                store = (first, second)[step % 2].state_store
                rec = WorkflowRecord("w-odd", "graph", "running", state, step=step)
                version = (await store.save(rec, expected_version=version,
                                            checkpoint=Checkpoint("w-odd", step, state))).version
            return [cp.state for cp in await first.state_store.list_checkpoints("w-odd")]
        finally:
            await second.close()
            await first.close()

    every = run(scenario(), 60)
    assert every == list(reversed(states))
    assert [repr(s.get("zero")) for s in every] == [repr(s.get("zero")) for s in reversed(states)]


def test_a_level_appearing_while_a_claim_waits_keeps_priority_order_for_the_claims_after_it(nats_url: str) -> None:
    """A claimer that knows one level (0) waits on an empty queue; another connection then
    queues two tasks at 0 and one at a new level 9 in one batch. Whatever the waiting claim
    took (it was in flight), the claims after it take 9 before any 0 left, each task once at
    attempt one."""

    async def scenario() -> tuple[list[tuple[str, int]], int]:
        worker = await open_nats(nats_url)
        producer = await open_nats(nats_url, prefix=worker.options.prefix)
        queue = worker.task_queue
        try:
            assert await producer.task_queue.enqueue(Task("warm", "wf", "n", "n", {}))
            (warm,) = await queue.claim(["n"], worker_id="w", max_tasks=1)
            await queue.ack(warm, None)
            assert await queue.claim(["n"], worker_id="w", max_tasks=1) == []
            waiting = asyncio.ensure_future(queue.claim(["n"], worker_id="w", max_tasks=1, wait=20))
            await asyncio.sleep(0.05)  # the claim is waiting
            await producer.task_queue.enqueue_many([Task("low1", "wf", "n", "n", {}), Task("low2", "wf", "n", "n", {}),
                                                    Task("high", "wf", "n", "n", {}, priority=9)])
            order = []
            for claimed in await waiting:
                order.append((claimed.task.id, claimed.attempt))
                await queue.ack(claimed, None)
            while True:
                batch = await queue.claim(["n"], worker_id="w", max_tasks=1)
                if not batch:
                    break
                order.append((batch[0].task.id, batch[0].attempt))
                await queue.ack(batch[0], None)
            stats = await queue.stats("n")
            return order, stats.queued + stats.in_flight + stats.dead
        finally:
            await producer.close()
            await worker.close()

    order, left = run(scenario(), 60)
    assert sorted(order) == [("high", 1), ("low1", 1), ("low2", 1)] and left == 0
    after_first = [task_id for task_id, _ in order[1:]]
    if "high" in after_first:
        assert after_first[0] == "high", order
    assert [t for t in after_first if t != "high"] == sorted(t for t in after_first if t != "high")  # FIFO in a level
