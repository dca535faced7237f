"""Review of this session's Redis script changes, on a real redis-server.

cc0deb6: settling a lease applies time only once that task's own deadline has passed, a
first attempt's ack deletes no error list, and a save removes no expiry after a save that
set none (its 'ttl' field). bf312c2: one server clock reading per script, indexes written
only when the record is new or its status / created_at moves.

What must hold: a lease that ran out (but that no script has expired yet) is lost to every
settling call, not only to ack, and is expired exactly once; errors an earlier attempt left
are gone after a later attempt's ack; a record saved without state_ttl never keeps an
expiry some earlier save or lease left; listings by status follow every status move.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis.backend import open_redis_backend
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(60)


def _record(workflow_id: str, status: WorkflowStatus = WorkflowStatus.RUNNING) -> WorkflowRecord:
    return WorkflowRecord(workflow_id=workflow_id, graph_name="g", status=status, state={"x": 0}, step=0,
                          created_at=2000.25)


@pytest.mark.parametrize("call", ["extend", "nack", "release"])
def test_a_run_out_lease_not_yet_expired_is_lost_to_every_settling_call_and_expired_once(call: str) -> None:
    """Last attempt (max_attempts=1), lease run out, no claim or wait since (so no script has
    expired it yet): extend, nack and release each see it lost (the deadline check must not
    spare it the time step), and the task is dead-lettered once, with one 'lease expired'
    error, never as the nack's error."""

    async def scenario(url: str) -> tuple[bool, list[Any], Any]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="ro", heartbeat_ttl=600))
        queue = backend.task_queue
        try:
            await backend.connect()
            await queue.enqueue_many([Task("t", "wf", "n", "a", {}, max_attempts=1)])
            claim = (await queue.claim(["a"], worker_id="w", max_tasks=1, lease_seconds=0.05))[0]
            await asyncio.sleep(0.25)
            lost = False
            try:
                if call == "extend":
                    await queue.extend(claim, 30.0)
                elif call == "nack":
                    await queue.nack(claim, "boom")
                else:
                    await queue.release(claim)
            except LeaseLostError:
                lost = True
            letters = await queue.dead_letters("a")
            again = await queue.claim(["a"], worker_id="w2", max_tasks=1)
            result = (await queue.wait_results(["t"], timeout=1.0)).get("t")
            return lost, [(d.task_id, d.attempts, list(d.errors), d.reason) for d in letters], \
                (len(again), None if result is None else result.status)
        finally:
            await backend.close()

    with RedisServer() as server:
        lost, letters, (claimed_again, status) = run(scenario(server.url), 40)
    assert lost, f"{call} of a lease that ran out was accepted"
    assert len(letters) == 1, letters
    task_id, attempts, errors, reason = letters[0]
    assert task_id == "t" and attempts == 1 and "lease expired" in reason, letters
    assert len(errors) == 1 and "lease expired" in errors[0] and "boom" not in errors[0], errors
    assert claimed_again == 0 and status == "failed"


def test_errors_an_expired_first_attempt_left_are_deleted_by_the_second_attempts_ack() -> None:
    """The first attempt's lease runs out (the time step writes its error), the second attempt
    is acked: no error list is left behind (only a first attempt's ack may skip the DEL), and
    a further nack-less task of the same id space keeps none either."""

    async def scenario(url: str) -> tuple[int, int, int, Any]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="ea", heartbeat_ttl=600))
        probe = redis_asyncio.Redis.from_url(url)
        queue = backend.task_queue
        try:
            await backend.connect()
            await queue.enqueue_many([Task("t", "wf", "n", "a", {}, max_attempts=3)])
            await queue.claim(["a"], worker_id="w", max_tasks=1, lease_seconds=0.05)
            await asyncio.sleep(0.2)
            second = (await queue.claim(["a"], worker_id="w2", max_tasks=1))[0]
            errors_while_running = await probe.llen("ea:q:e:t")
            await queue.ack(second, {"ok": 2})
            result = (await queue.wait_results(["t"], timeout=1.0))["t"]
            return second.attempt, errors_while_running, await probe.exists("ea:q:e:t"), result.output
        finally:
            await probe.aclose()
            await backend.close()

    with RedisServer() as server:
        attempt, errors_while_running, left, output = run(scenario(server.url), 40)
    assert (attempt, errors_while_running, left, output) == (2, 1, 0, {"ok": 2})


def test_a_record_saved_without_state_ttl_keeps_no_expiry_whatever_came_before() -> None:
    """Saves alternating between a store with state_ttl and one without, with and without a
    checkpoint, a lease taken between them, and a delete and re-create of the same id: after
    every save without state_ttl, none of the record, its checkpoints and its lease expires;
    after every save with it, all three do."""
    from distributed_agents.adapters.redis import RedisStateManager

    async def scenario(url: str) -> list[tuple[str, list[int]]]:
        plain = RedisStateManager(url, prefix="xt")
        expiring = RedisStateManager(url, prefix="xt", state_ttl=600)
        probe = redis_asyncio.Redis.from_url(url)
        keys = ["xt:wf:r:w", "xt:wf:c:w", "xt:wf:l:w"]
        seen: list[tuple[str, list[int]]] = []
        try:
            for round_ in range(2):
                lease = await expiring.acquire_lease("w", "o", 30.0)
                assert lease is not None
                saved = await expiring.save(_record("w"), expected_version=0, fencing_token=lease.fencing_token,
                                            checkpoint=Checkpoint("w", 0, {"x": 0}))
                seen.append(("ttl create", [await probe.pttl(k) for k in keys]))
                # A save without a checkpoint (the record alone) by the store without state_ttl.
                saved = await plain.save(saved.evolve(state={"x": 1}, step=1), expected_version=saved.version,
                                         fencing_token=lease.fencing_token)
                seen.append(("plain, no checkpoint", [await probe.pttl(k) for k in keys]))
                saved = await expiring.save(saved.evolve(state={"x": 2}, step=2), expected_version=saved.version,
                                            fencing_token=lease.fencing_token, checkpoint=Checkpoint("w", 2, {"x": 2}))
                seen.append(("ttl", [await probe.pttl(k) for k in keys]))
                renewed = await expiring.acquire_lease("w", "o", 30.0)  # takes the record's expiry
                assert renewed is not None
                saved = await plain.save(saved.evolve(state={"x": 3}, step=3), expected_version=saved.version,
                                         fencing_token=renewed.fencing_token, checkpoint=Checkpoint("w", 3, {"x": 3}))
                seen.append(("plain", [await probe.pttl(k) for k in keys]))
                saved = await plain.save(saved.evolve(state={"x": 4}, step=4), expected_version=saved.version,
                                         fencing_token=renewed.fencing_token, checkpoint=Checkpoint("w", 4, {"x": 4}))
                seen.append(("plain again", [await probe.pttl(k) for k in keys]))
                await plain.release_lease(renewed)
                await plain.delete("w")
                if round_ == 0:
                    # Re-created by the store without state_ttl: nothing of the old expiry stays.
                    fresh = await plain.acquire_lease("w", "o", 30.0)
                    assert fresh is not None
                    made = await plain.save(_record("w"), expected_version=0, fencing_token=fresh.fencing_token,
                                            checkpoint=Checkpoint("w", 0, {"x": 0}))
                    seen.append(("plain re-create", [await probe.pttl(k) for k in keys]))
                    await plain.save(made.evolve(state={"x": 5}, step=1), expected_version=made.version,
                                     fencing_token=fresh.fencing_token, checkpoint=Checkpoint("w", 1, {"x": 5}))
                    seen.append(("plain after re-create", [await probe.pttl(k) for k in keys]))
                    await plain.release_lease(fresh)
                    await plain.delete("w")
            return seen
        finally:
            await probe.aclose()
            await plain.close()
            await expiring.close()

    with RedisServer() as server:
        seen = run(scenario(server.url), 40)
    for what, ttls in seen:
        if what.startswith("ttl"):
            assert all(0 < t <= 600_000 for t in ttls), (what, ttls, seen)
        else:
            assert ttls == [-1, -1, -1], (what, ttls, seen)


def test_listings_by_status_follow_every_move_of_a_record_made_in_one_save() -> None:
    """A record moved RUNNING -> INTERRUPTED -> RUNNING -> COMPLETED, with saves in between that
    keep the status, each listed under its status only, and counted once: the saves that skip
    the index writes must still leave every move indexed."""

    async def scenario(url: str) -> list[tuple[str, list[str], list[str], list[str]]]:
        backend = open_redis_backend(url, BackendOptions.from_url(url, prefix="ix", heartbeat_ttl=600))
        store = backend.state_store
        seen = []
        try:
            await backend.connect()
            lease = await store.acquire_lease("w", "o", 30.0)
            assert lease is not None
            saved = await store.save(_record("w"), expected_version=0, fencing_token=lease.fencing_token)
            plan = [WorkflowStatus.RUNNING, WorkflowStatus.INTERRUPTED, WorkflowStatus.INTERRUPTED,
                    WorkflowStatus.RUNNING, WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED]
            for n, status in enumerate(plan, start=1):
                saved = await store.save(saved.evolve(state={"x": n}, step=n, status=status),
                                         expected_version=saved.version, fencing_token=lease.fencing_token)
                listed = {}
                for s in (WorkflowStatus.RUNNING, WorkflowStatus.INTERRUPTED, WorkflowStatus.COMPLETED):
                    listed[s] = [r.workflow_id for r in await store.list_workflows(status=s)]
                seen.append((str(status), listed[WorkflowStatus.RUNNING], listed[WorkflowStatus.INTERRUPTED],
                             listed[WorkflowStatus.COMPLETED]))
            return seen
        finally:
            await backend.close()

    with RedisServer() as server:
        seen = run(scenario(server.url), 40)
    for status, running, interrupted, completed in seen:
        expected = {"running": (["w"], [], []), "interrupted": ([], ["w"], []), "completed": ([], [], ["w"])}[status]
        assert (running, interrupted, completed) == expected, seen
