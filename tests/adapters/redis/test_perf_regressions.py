"""Faults against the connections the Redis client keeps checked out between calls.

Batched round trips (``batching.HeldConnections``) and the claimer's ``BLMPOP``
(``RedisConnection.run_blocking``) reuse a connection without the pool's checkout probe:
a connection the server closed between calls, a call cancelled while its reply is on its
way, and a close while a call is under way must neither lose nor mix up replies, nor leave
a socket open.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import warnings
from typing import Any

import pytest
import redis
from support.aio import run

from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import Task

pytestmark = pytest.mark.timeout(60)


def _raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def _kill_others(redis_url: str) -> int:
    """Close every other normal client's connection on the server (as a restart or a proxy would)."""
    with _raw(redis_url) as raw:
        return int(raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))


def _client_ids(redis_url: str) -> set[int]:
    with _raw(redis_url) as raw:
        me = raw.client_id()
        return {int(c["id"]) for c in raw.client_list() if int(c["id"]) != me}


def _record(workflow_id: str, x: int) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "graph", WorkflowStatus.RUNNING, {"x": x}, frontier={"next": ["n"]})


async def _create(store: Any, workflow_id: str, x: int) -> None:
    record = _record(workflow_id, x)
    made = await store.create_leased(record, owner="o", ttl=30.0,
                                     checkpoint=Checkpoint(workflow_id, 0, record.state, record.frontier))
    assert made is not None


def test_calls_after_the_server_closed_the_kept_connections_get_their_own_replies(
    open_redis: Any, redis_url: str,
) -> None:
    """CLIENT KILL between calls: the kept batched connection and the kept BLMPOP connection
    are dead; the next calls reconnect and each gets its own reply (no error, no lost task)."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        store, queue = backend.state_store, backend.task_queue
        try:
            await _create(store, "a", 1)
            await queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
            first = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1.0)]
            # A waiting claim that finds nothing blocks in BLMPOP on its kept connection.
            empty = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.2)
            killed = await asyncio.to_thread(_kill_others, redis_url)
            got = [await store.get(w) for w in ("a", "missing")]
            await _create(store, "b", 2)
            await queue.enqueue_many([Task("t2", "b", "n", "alpha", {})])
            second = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=2.0)]
            killed_again = await asyncio.to_thread(_kill_others, redis_url)
            b = await store.get("b")
            return (first, empty, killed, got[0] and got[0].state.get("x"), got[1], second, killed_again,
                    b and b.state.get("x"))
        finally:
            await backend.close()

    first, empty, killed, a_x, missing, second, killed_again, b_x = run(scenario(), 40)
    assert first == ["t1"] and empty == []
    assert killed >= 1 and killed_again >= 1  # the backend's connections really were closed
    assert (a_x, missing) == (1, None)
    assert second == ["t2"]
    assert b_x == 2


def test_a_blocking_claim_whose_connection_is_killed_mid_call_loses_no_task(open_redis: Any, redis_url: str) -> None:
    """CLIENT KILL while a claim blocks in BLMPOP: the claim reconnects (or returns nothing)
    and the task enqueued meanwhile is claimed exactly once, by this or the next claim."""

    async def scenario() -> list[str]:
        backend = await open_redis()
        producer = await open_redis(prefix=backend.options.prefix)
        queue = backend.task_queue
        try:
            claimed: list[str] = []
            waiting = asyncio.ensure_future(queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=3.0))
            await asyncio.sleep(0.3)  # the claim is blocked in BLMPOP now (or soon: either way is valid)
            await asyncio.to_thread(_kill_others, redis_url)
            await producer.task_queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
            try:
                claimed += [c.task.id for c in await waiting]
            except Exception:  # an error is acceptable; losing the task is not
                pass
            for _ in range(20):
                if claimed:
                    break
                claimed += [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.5)]
            claimed += [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.2)]
            return claimed
        finally:
            await producer.close()
            await backend.close()

    assert run(scenario(), 40) == ["t1"]


def _pause_server(redis_url: str, ms: int) -> None:
    with _raw(redis_url) as raw:
        raw.execute_command("CLIENT", "PAUSE", ms, "ALL")


def test_a_call_cancelled_while_its_reply_is_on_its_way_does_not_hand_that_reply_to_the_next_call(
    open_redis: Any, redis_url: str,
) -> None:
    """A batched ``get`` and a blocking claim are cancelled after they were sent (the server
    is paused, so their replies come later): the next calls on the kept connections get
    their own replies, not the cancelled calls'."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis()
        store, queue = backend.state_store, backend.task_queue
        try:
            await _create(store, "a", 1)
            await _create(store, "b", 2)
            await store.get("a")  # the batcher now keeps a connection
            await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.1)  # and the claimer one
            await asyncio.to_thread(_pause_server, redis_url, 600)
            pending_get = asyncio.ensure_future(store.get("a"))
            pending_claim = asyncio.ensure_future(queue.claim(["beta"], worker_id="w", max_tasks=1, wait=0.5))
            await asyncio.sleep(0.2)  # both are sent, their replies held up by the pause
            pending_get.cancel()
            pending_claim.cancel()
            for pending in (pending_get, pending_claim):
                try:
                    await pending
                except asyncio.CancelledError:
                    pass
            results = []
            for _ in range(5):  # several rounds: a stale reply would answer one of them
                results.append((await store.get("b")).state["x"])
                results.append((await store.get("a")).state["x"])
            await queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=2.0)]
            return results, claimed
        finally:
            await backend.close()

    results, claimed = run(scenario(), 40)
    assert results == [2, 1] * 5
    assert claimed == ["t1"]


def test_close_while_a_blocking_claim_and_batched_calls_are_under_way_leaves_no_connection_open(
    open_redis: Any, redis_url: str,
) -> None:
    """close() while a claim blocks in BLMPOP and saves are in flight: every connection the
    backend opened is closed (the server sees none left) and nothing warns of an unclosed socket."""
    before = _client_ids(redis_url)

    async def scenario() -> None:
        backend = await open_redis()
        store, queue = backend.state_store, backend.task_queue
        await _create(store, "a", 1)
        await store.get("a")
        waiting = asyncio.ensure_future(queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=3.0))
        gets = [asyncio.ensure_future(store.get("a")) for _ in range(20)]
        await asyncio.sleep(0.2)
        await backend.close()
        for pending in (waiting, *gets):
            try:
                await pending
            except Exception:
                pass  # an error after close is fine; a socket left open is not

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(scenario(), 30)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    left: set[int] = set()
    for _ in range(100):  # the server drops a closed client on its next event-loop turn
        left = _client_ids(redis_url) - before
        if not left:
            break
        threading.Event().wait(0.05)
    assert left == set()


def test_a_backend_used_in_one_event_loop_and_then_another_serves_both(open_redis: Any, redis_url: str) -> None:
    """Two asyncio.run calls on one backend object, closed at the end of each (as the sync
    API does: a loop per call): the connections kept in the first loop are not reused in
    the second, whose calls and claims work; nothing warns of an unclosed socket."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    holder: dict[str, Any] = {}

    async def first() -> list[str]:
        backend = holder["backend"] = await open_redis(prefix=prefix)
        await _create(backend.state_store, "a", 1)
        await backend.task_queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
        try:
            return [c.task.id for c in
                    await backend.task_queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1.0)]
        finally:
            await backend.close()

    async def second() -> tuple[Any, ...]:
        backend = holder["backend"]
        try:
            a = await backend.state_store.get("a")
            await _create(backend.state_store, "b", 2)
            await backend.task_queue.enqueue_many([Task("t2", "b", "n", "alpha", {})])
            claimed = [c.task.id for c in
                       await backend.task_queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1.0)]
            b = await backend.state_store.get("b")
            return a.state["x"], b.state["x"], claimed
        finally:
            await backend.close()

    assert run(first(), 30) == ["t1"]
    assert run(second(), 30) == (1, 2, ["t2"])


@pytest.mark.parametrize("secure", ["acl", "tls"])
def test_kept_connections_reconnect_with_the_url_s_user_and_tls_after_the_server_closed_them(
    secure: str, tmp_path: Any,
) -> None:
    """An ACL user's URL, or rediss:// with a client certificate: after CLIENT KILL between
    calls, the kept batched and BLMPOP connections reconnect authenticated (and over TLS)."""
    from support.secure_redis import SecureRedisServer
    from support.tls import make_certificates

    from distributed_agents.plugins import open_backend

    password = f"pw-{uuid.uuid4().hex}"
    rule = ("resetkeys ~perf:* resetchannels &perf:* -@all +@read +@write +@keyspace +@pubsub +@connection "
            "+@transaction +@blocking +time +evalsha +eval +script|load +script|exists")
    certs = make_certificates(tmp_path / "certs") if secure == "tls" else None
    with SecureRedisServer(acl=[f"user perf on >{password} {rule}"], certs=certs,
                           client_certs="yes" if certs else "no") as server:
        tls = "" if certs is None else f"?tls_ca={certs.ca}&tls_cert={certs.client_cert}&tls_key={certs.client_key}"
        url = server.url_for("perf", password) + tls
        admin = server.admin_url + ("" if certs is None else
                                    f"?ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}"
                                    f"&ssl_keyfile={certs.client_key}")

        async def scenario() -> tuple[Any, ...]:
            backend = open_backend(url, prefix="perf")
            await backend.connect()
            store, queue = backend.state_store, backend.task_queue
            try:
                await _create(store, "a", 1)
                await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.1)
                killed = await asyncio.to_thread(_kill_others, admin)
                await queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
                claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=2.0)]
                record = await store.get("a")
                return killed, claimed, record and record.state["x"]
            finally:
                await backend.close()

        killed, claimed, x = run(scenario(), 40)
    assert killed >= 1 and claimed == ["t1"] and x == 1


def test_a_small_connection_pool_is_not_starved_by_the_connections_kept_between_calls(
    open_redis: Any, redis_url: str,
) -> None:
    """``?max_connections=2`` (a URL option): bursts of reads overlap two batched sends, then
    an enqueue, a waiting claim and a cache read each need a connection; all must work, as
    they do when every connection goes back to the pool after its round trip."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_redis(f"{redis_url}?max_connections=2&timeout=3")
        store, queue = backend.state_store, backend.task_queue
        try:
            await _create(store, "a", 1)

            async def burst() -> list[Any]:
                return await asyncio.gather(*(store.get("a") for _ in range(5)))

            first = asyncio.ensure_future(burst())
            await asyncio.sleep(0)
            second = asyncio.ensure_future(burst())
            await asyncio.sleep(0)
            await asyncio.gather(first, second, burst())
            await queue.enqueue_many([Task("t1", "a", "n", "alpha", {})])
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1.0)]
            return claimed, await store.cache_get("ns", "k")
        finally:
            await backend.close()

    assert run(scenario(), 50) == (["t1"], None)


@pytest.mark.parametrize("name", ["RedisTaskQueue.wait_results", "RedisStateManager.create_leased_enqueuing"])
def test_coroutines_a_workflow_waits_in_make_no_closure_cells(name: str) -> None:
    """As tests/core/test_hot_paths.py checks for the step loop: these are suspended while a
    step's tasks run (hundreds at once), and a cell each would be kept for the GC to visit."""
    from distributed_agents.adapters.redis.state_store import RedisStateManager
    from distributed_agents.adapters.redis.task_queue import RedisTaskQueue

    owner, method = name.split(".")
    function = getattr({"RedisTaskQueue": RedisTaskQueue, "RedisStateManager": RedisStateManager}[owner], method)
    assert function.__code__.co_cellvars == (), f"{name} turns {function.__code__.co_cellvars} into cells"
