"""NATS-specific state store, registry and bus behaviour."""

from __future__ import annotations

import asyncio

from support.aio import run

from distributed_agents.core.errors import VersionConflictError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.ports.worker_registry import WorkerInfo

from .conftest import open_nats


def test_losing_writer_leaves_no_checkpoint(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        store = backend.state_store
        try:
            record = WorkflowRecord("w", "g", "running", {})
            await store.save(record, expected_version=0, checkpoint=Checkpoint("w", 0, {"s": 0}))
            await store.save(record, expected_version=1, checkpoint=Checkpoint("w", 1, {"s": "winner"}))
            try:
                await store.save(record, expected_version=1, checkpoint=Checkpoint("w", 1, {"s": "loser"}))
            except VersionConflictError:
                pass
            assert [c.state for c in await store.list_checkpoints("w")] == [{"s": "winner"}, {"s": 0}]
            assert [c.step for c in await store.list_checkpoints("w", before=1)] == [0]
        finally:
            await backend.close()

    run(scenario())


def test_registry_expires_silent_workers(nats_url: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url, heartbeat_ttl=0.5)
        registry = backend.worker_registry
        try:
            await registry.register(WorkerInfo("w1", frozenset({"a"})))
            await registry.register(WorkerInfo("w2", frozenset({"b"})))
            assert [w.worker_id for w in await registry.list_workers("a")] == ["w1"]
            await asyncio.sleep(0.7)
            assert await registry.list_workers() == []
            assert not await registry.heartbeat("w1")
        finally:
            await backend.close()

    run(scenario())


def test_bus_patterns_order_and_unsubscribe(nats_url: str) -> None:
    async def scenario() -> None:
        publisher = await open_nats(nats_url)
        listener = await open_nats(nats_url, prefix=publisher.options.prefix)
        try:
            everything = await listener.message_bus.subscribe("events.wf1.>")
            one_token = await listener.message_bus.subscribe("events.*.done")
            slow = await listener.message_bus.subscribe("events.>")  # never read until the end
            for index in range(50):
                await publisher.message_bus.publish(f"events.wf1.n{index}", {"i": index})
            await publisher.message_bus.publish("events.wf2.done", {"i": -1})
            got = [await everything.get(timeout=5) for _ in range(50)]
            assert [m.data["i"] for m in got if m] == list(range(50))
            done = await one_token.get(timeout=5)
            assert done is not None and done.channel == "events.wf2.done"
            await everything.close()
            await publisher.message_bus.publish("events.wf1.late", {"i": 99})
            assert await everything.get(timeout=0.3) is None
            count = 0
            while await slow.get(timeout=1) is not None:
                count += 1
            assert count == 52
        finally:
            await listener.close()
            await publisher.close()

    run(scenario())


def test_a_purged_dead_letter_is_not_written_back_by_a_late_or_repairing_writer(nats_url: str) -> None:
    """The record turns dead before its letter is written: a purge in between (the engine purges
    the letter of a failure an on_error handler took) must stay a purge, as must one before a
    claimer repairs the letter of a dead-lettering whose process died."""
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            task = Task("t-purge", "wf", "n", "n", {"state": {}})
            await queue.enqueue(task)
            (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
            assert not await queue.nack(claim, "boom", final=True)
            before = (await queue._read(task.id)).record  # type: ignore[attr-defined]
            assert before is not None and before["state"] == "dead"
            assert await queue.purge_dead_letter(task.id)
            # A writer that read the record before the purge (late, or repairing) writes the letter now.
            await queue._write_dead_letter_unless_purged(before, task)  # type: ignore[attr-defined]
            assert await queue.dead_letters() == [] and (await queue.stats("n")).dead == 0
            result = await queue.get_result(task.id)
            assert result is not None and result.status == "failed"  # the failure itself is still recorded
        finally:
            await backend.close()

    run(scenario())


def test_a_letter_written_after_the_purge_by_a_writer_that_died_is_deleted_on_redelivery(nats_url: str) -> None:
    """A dead-lettering writer whose letter lands after the purge deleted letters, and that dies
    (or meets an outage) before it reads the purge mark, leaves a letter and an unacked
    message: the claimer that gets the redelivery finds the record dead and purged, and must
    delete that letter, not just skip writing it."""
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            task = Task("t-late", "wf", "n", "n", {"state": {}})
            await queue.enqueue(task)
            (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
            assert not await queue.nack(claim, "boom", final=True)
            before = (await queue._read(task.id)).record  # type: ignore[attr-defined]
            assert before is not None
            assert await queue.purge_dead_letter(task.id)
            # The late writer's letter lands now; it dies before reading the mark.
            await queue._write_dead_letter(before, task, None)  # type: ignore[attr-defined]
            assert [letter.task_id for letter in await queue.dead_letters()] == [task.id]
            # The redelivery: the claimer reads the record (dead, purged) and settles it.
            purged = (await queue._read(task.id)).record  # type: ignore[attr-defined]
            assert purged is not None and purged.get("purged")
            await queue._write_dead_letter_unless_purged(purged, task)  # type: ignore[attr-defined]
            assert await queue.dead_letters() == [] and (await queue.stats("n")).dead == 0
            result = await queue.get_result(task.id)
            assert result is not None and result.status == "failed"
        finally:
            await backend.close()

    run(scenario())


def test_a_writer_whose_direct_reads_lag_still_sees_the_purge_mark(nats_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A direct get may be answered by a replica just restarted, with the record as it was
    before the purge marked it (nats-server issue 4162): the writer's check after its write
    reads the leader, so the purged letter still does not stay. The lagging replica is
    played here by direct gets answering the record's pre-purge bytes."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            task = Task("t-lag", "wf", "n", "n", {"state": {}})
            await queue.enqueue(task)
            (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
            assert not await queue.nack(claim, "boom", final=True)
            found = await queue._read(task.id)  # type: ignore[attr-defined]
            before, revision = found.record, found.revision
            assert before is not None and before["state"] == "dead"
            assert await queue.purge_dead_letter(task.id)
            direct_get = kv.get

            async def lagging(bucket, key, **kwargs):  # type: ignore[no-untyped-def]
                if key == token(task.id):
                    return kv.Entry(key, encode(before), revision)
                return await direct_get(bucket, key, **kwargs)

            monkeypatch.setattr(kv, "get", lagging)
            await queue._write_dead_letter_unless_purged(before, task)  # type: ignore[attr-defined]
            monkeypatch.setattr(kv, "get", direct_get)
            assert await queue.dead_letters() == [] and (await queue.stats("n")).dead == 0
        finally:
            await backend.close()

    run(scenario())


def test_a_purge_whose_direct_reads_lag_still_marks_the_record(nats_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The other side of the purge-mark order: a purge that arrives after the record went dead
    but before its letter is written, while direct gets still answer the record as it was
    before (a replica just restarted, nats-server issue 4162), still marks it, so the letter
    written just after does not stay."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.naming import token
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            task = Task("t-lag-purge", "wf", "n", "n", {"state": {}})
            await queue.enqueue(task)
            (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
            running = await queue._read(task.id)  # type: ignore[attr-defined]
            assert not await queue.nack(claim, "boom", final=True)
            dead = (await queue._read(task.id)).record  # type: ignore[attr-defined]
            assert dead is not None and dead["state"] == "dead"
            # As if the letter were not written yet when the purge comes.
            await kv.remove(queue._conn.js, queue._dead, f"{token('n')}.{token(task.id)}")  # type: ignore[attr-defined]
            direct_get = kv.get

            async def lagging(bucket, key, **kwargs):  # type: ignore[no-untyped-def]
                if key == token(task.id):
                    return kv.Entry(key, encode(running.record), running.revision)
                return await direct_get(bucket, key, **kwargs)

            monkeypatch.setattr(kv, "get", lagging)
            await queue.purge_dead_letter(task.id)
            monkeypatch.setattr(kv, "get", direct_get)
            await queue._write_dead_letter_unless_purged(dead, task)  # type: ignore[attr-defined]
            assert await queue.dead_letters() == [] and (await queue.stats("n")).dead == 0
        finally:
            await backend.close()

    run(scenario())


def test_purging_a_letter_removes_it_even_where_the_scan_does_not_see_it(nats_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The record names the letter's key, so a purge removes the letter even when its scan
    (a consumer that may read a replica behind the leader) comes back without it."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.core.ports.task_queue import Task

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            task = Task("t-scan-behind", "wf", "n", "n", {"state": {}})
            await queue.enqueue(task)
            (claim,) = await queue.claim(["n"], worker_id="w", wait=5)
            assert not await queue.nack(claim, "boom", final=True)
            assert [letter.task_id for letter in await queue.dead_letters()] == [task.id]
            scan = kv.scan

            async def behind(js, bucket, pattern=">"):  # type: ignore[no-untyped-def]
                if bucket is queue._dead:  # type: ignore[attr-defined]
                    return []
                return await scan(js, bucket, pattern)

            monkeypatch.setattr(kv, "scan", behind)
            # True: the record was dead (a dead letter), whatever the scan saw.
            assert await queue.purge_dead_letter(task.id) is True
            assert await queue.purge_dead_letter(task.id) is False  # purged already
            monkeypatch.setattr(kv, "scan", scan)
            assert await queue.dead_letters() == [] and (await queue.stats("n")).dead == 0
        finally:
            await backend.close()

    run(scenario())
