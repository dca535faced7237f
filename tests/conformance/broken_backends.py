"""Deliberately broken variants of the memory backend, one small subclass per contract clause.

Each variant breaks exactly one promise; ``test_broken_backends`` proves the suite
catches it and names that clause. They live in tests/, never in the shipped package.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from distributed_agents.adapters.memory.backend import _space
from distributed_agents.adapters.memory.message_bus import MemoryMessageBus, MemorySubscription
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue, _Entry
from distributed_agents.adapters.memory.worker_registry import MemoryWorkerRegistry
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError
from distributed_agents.core.ports.backend import Backend, BackendOptions
from distributed_agents.core.ports.message_bus import BusMessage, Subscription, pattern_matches
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowLease, WorkflowRecord
from distributed_agents.core.ports.task_queue import ClaimedTask, DeadLetter, QueueStats, Task, TaskResult
from distributed_agents.core.ports.worker_registry import WorkerInfo

# --- TaskQueue ------------------------------------------------------------------------


class LifoQueue(MemoryTaskQueue):
    """Newest first within a priority."""

    def _push_ready(self, entry: _Entry) -> None:
        entry.seq = -next(self._data.seq)
        super()._push_ready(entry)


class NeverExpiringLeaseQueue(MemoryTaskQueue):
    """Ignores the lease length: a dead worker's task is never delivered again."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        return await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=3600.0, wait=wait)


class AckIgnoresLeaseQueue(MemoryTaskQueue):
    """Accepts settlement from any delivery of a task that is claimed by anyone."""

    def _held(self, claim: ClaimedTask) -> _Entry:
        entry = self._data.entries.get(claim.task.id)
        if entry is None:
            return super()._held(claim)
        return entry


class NonIdempotentEnqueueQueue(MemoryTaskQueue):
    """Queues a task again whenever its id is enqueued."""

    async def enqueue(self, task: Task) -> bool:
        self._data.seen.pop(task.id, None)
        self._data.entries.pop(task.id, None)
        return await super().enqueue(task)


class BatchRepeatsQueue(MemoryTaskQueue):
    """``enqueue_many`` queues an id repeated within the batch twice (and says True twice)."""

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        flags = []
        for task in tasks:
            self._data.seen.pop(task.id, None)
            self._data.entries.pop(task.id, None)
            flags.append(await super().enqueue(task))
        return flags


class NackDoesNotCountQueue(MemoryTaskQueue):
    """A nack gives the attempt back, so nothing ever reaches max_attempts by nacks."""

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        with self._data.lock:
            entry = self._held(claim)
            entry.attempt -= 1
            return await super().nack(claim, error, delay=delay, final=final)


class NoDeadLetterQueue(MemoryTaskQueue):
    """Past max_attempts a decodable task is queued again instead of dead-lettered."""

    def _dead_letter(self, entry: _Entry, reason: str, now: float) -> None:
        try:
            Task  # noqa: B018 - decodability decided like the parent does
            from distributed_agents.core.codec import decode
            from distributed_agents.core.ports.task_queue import task_from_dict

            task_from_dict(decode(entry.raw))
        except ValueError:
            return super()._dead_letter(entry, reason, now)
        entry.attempt = 0
        self._push_ready(entry)


class UndecodableDroppedQueue(MemoryTaskQueue):
    """Silently drops bytes it cannot decode instead of dead-lettering them."""

    def _dead_letter(self, entry: _Entry, reason: str, now: float) -> None:
        if entry.task_id.startswith("raw-"):
            self._data.entries.pop(entry.task_id, None)
            return
        super()._dead_letter(entry, reason, now)


class DelayedNotCountedQueue(MemoryTaskQueue):
    """Forgets delayed tasks in the queued count."""

    async def stats(self, node_type: str) -> QueueStats:
        stats = await super().stats(node_type)
        with self._data.lock:
            delayed = sum(1 for e in self._data.entries.values() if e.node_type == node_type and e.state == "delayed")
        return replace(stats, queued=stats.queued - delayed)


class ImmortalResultQueue(MemoryTaskQueue):
    """Keeps results forever."""

    def _store_result(self, result: TaskResult) -> None:
        self._data.results[result.task_id] = (result, float("inf"))
        self._data.waiters.notify(("result", result.task_id))


class ExtendDoesNothingQueue(MemoryTaskQueue):
    """Reports a new deadline but keeps the old lease."""

    async def extend(self, claim: ClaimedTask, seconds: float | None = None) -> ClaimedTask:
        with self._data.lock:
            self._held(claim)
        return replace(claim, deadline=time.time() + (seconds or self.visibility_timeout))


class VisibleWhileClaimedQueue(MemoryTaskQueue):
    """Leaves a claimed task claimable by the next claimer."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        claims = await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds, wait=wait)
        with self._data.lock:
            for claim in claims:
                entry = self._data.entries[claim.task.id]
                heapq.heappush(self._data.ready.setdefault(entry.node_type, []), (-entry.priority, entry.seq, entry.task_id))
                entry.state = "queued"
        return claims


class DelayedNackLosesTaskQueue(MemoryTaskQueue):
    """A nack with a delay throws the task away."""

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        if delay <= 0 or final:
            return await super().nack(claim, error, delay=delay, final=final)
        with self._data.lock:
            self._held(claim)
            del self._data.entries[claim.task.id]
        return True


class AckDropsOutputQueue(MemoryTaskQueue):
    """Acks remove the task but store the result without its output."""

    async def ack(self, claim: ClaimedTask, output: Mapping[str, Any] | None) -> None:
        await super().ack(claim, None)


class ReleaseCountsAttemptQueue(MemoryTaskQueue):
    """Release gives the task back but keeps the attempt counted."""

    async def release(self, claim: ClaimedTask) -> None:
        with self._data.lock:
            self._held(claim).attempt += 1
            await super().release(claim)


class RequeueKeepsAttemptsQueue(MemoryTaskQueue):
    """A re-queued dead letter starts from its old attempt count instead of a fresh one."""

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            stored = self._data.dead.get(task_id)
            done = await super().requeue_dead_letter(task_id)
            if done and stored is not None:
                self._data.entries[task_id].attempt = stored[0].attempts
            return done


class CancelTakesClaimedQueue(MemoryTaskQueue):
    """Cancel also removes a task a worker holds."""

    async def cancel(self, task_id: str) -> bool:
        with self._data.lock:
            entry = self._data.entries.get(task_id)
            if entry is not None and entry.state == "claimed":
                del self._data.entries[task_id]
                return True
        return await super().cancel(task_id)


class StringPriorityQueue(MemoryTaskQueue):
    """Compares priorities as text: right for 0..9, but 15 comes after 9 (and -1 after 0)."""

    def _push_ready(self, entry: _Entry) -> None:
        entry.state = "queued"
        key: Any = tuple(-ord(ch) for ch in str(entry.priority))
        heapq.heappush(self._data.ready.setdefault(entry.node_type, []), (key, entry.seq, entry.task_id))
        self._data.waiters.notify(("type", entry.node_type))


class FinalNackRequeuesQueue(MemoryTaskQueue):
    """Accepts ``final`` but ignores it: a final nack queues the task again."""

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        return await super().nack(claim, error, delay=delay)


class NoFinalParameterQueue(MemoryTaskQueue):
    """Written against an older port: ``nack`` has no ``final`` keyword (the core's call raises TypeError)."""

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0) -> bool:  # type: ignore[override]
        return await super().nack(claim, error, delay=delay)


class WaitIgnoresDelaysQueue(MemoryTaskQueue):
    """A waiting claim wakes on enqueues only, never when a nack delay runs out during the wait."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        claimed = await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds)
        if claimed or wait <= 0:
            return claimed
        give_up = time.monotonic() + wait
        while time.monotonic() < give_up:
            with self._data.lock:
                ready = any(e.state == "queued" and e.node_type in node_types for e in self._data.entries.values())
            if ready:
                return await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds)
            await self._data.waiters.wait([("type", t) for t in node_types], give_up - time.monotonic())
        return []


class RequeueKeepsResultQueue(MemoryTaskQueue):
    """A requeued dead letter still reads as failed while it runs again."""

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            kept = self._data.results.get(task_id)
            done = await super().requeue_dead_letter(task_id)
            if done and kept is not None:
                self._data.results[task_id] = kept
            return done


class PrefixTypeQueue(MemoryTaskQueue):
    """Matches node types by prefix (a glob ``type*``): claiming 'a' also takes tasks of 'ab'."""

    def _types(self, node_types: Collection[str]) -> list[str]:
        with self._data.lock:
            known = {e.node_type for e in self._data.entries.values()}
        return sorted({k for k in known for t in node_types if k.startswith(t)} | set(node_types))

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        return await super().claim(self._types(node_types), worker_id=worker_id, max_tasks=max_tasks,
                                   lease_seconds=lease_seconds, wait=wait)


class PrefixDeadLetterFilterQueue(MemoryTaskQueue):
    """Filters dead letters by node-type prefix: dead_letters('alpha') also lists 'alphabet'."""

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        letters = await super().dead_letters(None, limit=10_000)
        return [d for d in letters if node_type is None or d.node_type.startswith(node_type)][:limit]


class EarlyLeaseExpiryQueue(MemoryTaskQueue):
    """Ends a lease at 60% of its length (a unit slip), while reporting the full deadline."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        lease = self.visibility_timeout if lease_seconds is None else lease_seconds
        claims = await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease * 0.6, wait=wait)
        return [replace(c, deadline=c.deadline + lease * 0.4) for c in claims]


class ZeroMaxTasksClaimsOneQueue(MemoryTaskQueue):
    """claim(max_tasks=0) still claims one task (a count clamped to at least 1)."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        return await super().claim(node_types, worker_id=worker_id, max_tasks=max(max_tasks, 1),
                                   lease_seconds=lease_seconds, wait=wait)


class FirstResultOnlyQueue(MemoryTaskQueue):
    """wait_results returns only the first stored result, even when several are stored."""

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        found = await super().wait_results(task_ids, timeout=timeout)
        for task_id in task_ids:
            if task_id in found:
                return {task_id: found[task_id]}
        return {}


class ReleaseUncountsFirstAttemptOnlyQueue(MemoryTaskQueue):
    """Release gives back the attempt only when it was the first one."""

    async def release(self, claim: ClaimedTask) -> None:
        with self._data.lock:
            entry = self._held(claim)
            if entry.attempt > 1:
                entry.attempt += 1
            await super().release(claim)


class RequeueAtPriorityZeroQueue(MemoryTaskQueue):
    """A re-queued dead letter goes back at priority 0 instead of its own."""

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            stored = self._data.dead.get(task_id)
            if stored is not None:
                self._data.dead[task_id] = (stored[0], stored[1], 0)
            return await super().requeue_dead_letter(task_id)


class DeadLettersLimitBeforeFilterQueue(MemoryTaskQueue):
    """dead_letters cuts to limit across all node types first, then filters by type."""

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        page = await super().dead_letters(None, limit=limit)
        return [d for d in page if node_type is None or d.node_type == node_type]


# --- StateStore -----------------------------------------------------------------------


class ConflictWithoutActualStore(MemoryStateStore):
    """VersionConflictError is raised with actual=None."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        try:
            return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)
        except VersionConflictError as exc:
            raise VersionConflictError(str(exc), expected=expected_version, actual=None) from None


class ReturnedUpdatedAtDiffersStore(MemoryStateStore):
    """save returns a record whose updated_at is not the stored one."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        saved = await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)
        return saved.evolve(updated_at=saved.updated_at + 0.5)


class NoCompareStore(MemoryStateStore):
    """Overwrites whatever version is stored."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        stored = self._data.workflows.get(record.workflow_id)
        if expected_version and stored is not None:
            expected_version = stored.version
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)


class RacyCompareStore(MemoryStateStore):
    """Compares, then writes later without holding the lock in between."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        stored = self._data.workflows.get(record.workflow_id)
        if expected_version and stored is not None and stored.version == expected_version:
            time.sleep(0.005)  # the window another writer slips through
            current = self._data.workflows[record.workflow_id].version
            return await super().save(record, expected_version=current, checkpoint=checkpoint, fencing_token=fencing_token)
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)


class NoFencingStore(MemoryStateStore):
    """Ignores fencing tokens."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint)


class OldestFirstCheckpointsStore(MemoryStateStore):
    """Lists checkpoints oldest first."""

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        items = await super().list_checkpoints(workflow_id, limit=limit, before=before)
        return list(reversed(items))


class NewestCheckpointStore(MemoryStateStore):
    """``get_checkpoint`` returns the newest checkpoint at or before the step, not None when the step has none."""

    async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
        found = await self.list_checkpoints(workflow_id, limit=1, before=step + 1)
        return found[0] if found else None


class StatusFilterIgnoredStore(MemoryStateStore):
    """Ignores the status filter."""

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        return await super().list_workflows(None)


class SharedLeaseStore(MemoryStateStore):
    """Grants a held lease to a second owner too (same token: no fencing violation)."""

    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        lease = await super().acquire_lease(workflow_id, owner, ttl)
        if lease is not None:
            return lease
        with self._data.lock:
            held = self._data.leases[workflow_id]
            return WorkflowLease(workflow_id, owner, held.token, held.deadline)


class CreateLeasedKeepsLeaseStore(MemoryStateStore):
    """``create_leased`` of an existing workflow keeps the lease it granted before finding the record."""

    async def create_leased(self, record: WorkflowRecord, *, owner: str, ttl: float,
                            checkpoint: Checkpoint | None = None) -> tuple[WorkflowRecord, WorkflowLease] | None:
        lease = await self.acquire_lease(record.workflow_id, owner, ttl)
        if lease is None:
            return None
        saved = await self.save(record, expected_version=0, checkpoint=checkpoint, fencing_token=lease.fencing_token)
        return saved, lease


class SaveReleasingKeepsLeaseStore(MemoryStateStore):
    """``save_releasing`` saves but never frees the lease."""

    async def save_releasing(self, record: WorkflowRecord, *, expected_version: int, lease: WorkflowLease,
                             checkpoint: Checkpoint | None = None) -> WorkflowRecord:
        return await self.save(record, expected_version=expected_version, checkpoint=checkpoint,
                               fencing_token=lease.fencing_token)


class StringSortedCheckpointsStore(MemoryStateStore):
    """Sorts checkpoints by their step as text: once there are more than ten, step 10 comes before 9."""

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        items = await super().list_checkpoints(workflow_id)
        items.sort(key=lambda cp: str(cp.step), reverse=True)
        items = [cp for cp in items if before is None or cp.step < before]
        return items if limit is None else items[:limit]


class FirstPageOnlyStore(MemoryStateStore):
    """Returns only the first page (ten records) of list_workflows."""

    async def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        return (await super().list_workflows(status))[:10]


class LiveLeaseFencingStore(MemoryStateStore):
    """Fences only against a live lease: once the newer lease expired, an old token commits again."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        with self._data.lock:
            lease = self._data.leases.get(record.workflow_id)
            if lease is None or lease.deadline <= time.time():
                fencing_token = None
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)


class CheckpointTtlFromWriteStore(MemoryStateStore):
    """Expires each checkpoint state_ttl after it was written, not after the record's last save."""

    def __init__(self, data: Any, *, state_ttl: float | None = None) -> None:
        super().__init__(data, state_ttl=state_ttl)
        self._written: dict[tuple[str, int], float] = {}

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        saved = await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)
        if checkpoint is not None:
            self._written[(checkpoint.workflow_id, checkpoint.step)] = time.time()
        return saved

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        items = await super().list_checkpoints(workflow_id, limit=limit, before=before)
        if self.state_ttl is None:
            return items
        now = time.time()
        return [cp for cp in items if self._written.get((workflow_id, cp.step), now) + self.state_ttl > now]


class MetadataDroppedStore(MemoryStateStore):
    """Loses the record's metadata and error when a save carries a checkpoint (a second code path)."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        if checkpoint is not None:
            record = record.evolve(metadata={}, error=None)
        return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)


class OtherDefaultsStore(MemoryStateStore):
    """Pages checkpoints ten at a time by default, and takes ``limit`` positionally."""

    async def list_checkpoints(self, workflow_id: str, limit: int | None = 10, before: int | None = None) -> list[Checkpoint]:  # type: ignore[override]
        return await super().list_checkpoints(workflow_id, limit=limit, before=before)


# --- WorkerRegistry -------------------------------------------------------------------


class ImmortalWorkerRegistry(MemoryWorkerRegistry):
    """Never expires a worker."""

    def _alive(self, info: WorkerInfo, now: float) -> bool:
        return True


class HeartbeatIgnoredRegistry(MemoryWorkerRegistry):
    """Says yes to a heartbeat but does not record it."""

    async def heartbeat(self, worker_id: str) -> bool:
        with self._data.lock:
            info = self._data.workers.get(worker_id)
            return info is not None and self._alive(info, time.time())


class DeregisterIgnoredRegistry(MemoryWorkerRegistry):
    """Deregister does nothing."""

    async def deregister(self, worker_id: str) -> None:
        return None


class NodeTypeIgnoredRegistry(MemoryWorkerRegistry):
    """Lists every worker whatever node type is asked for."""

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        return await super().list_workers(None)


class FieldsDroppedRegistry(MemoryWorkerRegistry):
    """Records only a worker's id and node types; capacity, host and pid are lost."""

    async def register(self, info: WorkerInfo) -> None:
        await super().register(WorkerInfo(info.worker_id, info.node_types))


class EdgeHeartbeatRegistry(MemoryWorkerRegistry):
    """Treats a worker as gone once three quarters of heartbeat_ttl passed: a timely heartbeat is refused."""

    def _alive(self, info: WorkerInfo, now: float) -> bool:
        return now - info.last_heartbeat < self.heartbeat_ttl * 0.75


class RequiredNodeTypeRegistry(MemoryWorkerRegistry):
    """``list_workers`` without a default for ``node_type``: the core's plain call raises TypeError."""

    async def list_workers(self, node_type: str | None) -> list[WorkerInfo]:  # type: ignore[override]
        return await super().list_workers(node_type)


class HeartbeatResetsStartedAtRegistry(MemoryWorkerRegistry):
    """A heartbeat also overwrites started_at with the heartbeat's time."""

    async def heartbeat(self, worker_id: str) -> bool:
        ok = await super().heartbeat(worker_id)
        if ok:
            with self._data.lock:
                info = self._data.workers[worker_id]
                self._data.workers[worker_id] = replace(info, started_at=info.last_heartbeat)
        return ok


# --- MessageBus -----------------------------------------------------------------------


class KeepsBufferSubscription(MemorySubscription):
    """close() stops new deliveries but get() still returns what was buffered."""

    async def close(self) -> None:
        with self._data.lock:
            if self in self._data.subscriptions:
                self._data.subscriptions.remove(self)
        self._closed = True
        self._data.waiters.notify(id(self))


class CloseKeepsBufferBus(MemoryMessageBus):
    """Subscriptions whose close() leaves their buffer readable."""

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = KeepsBufferSubscription(self._data, pattern)
        with self._data.lock:
            self._data.subscriptions.append(subscription)
        self._own.append(subscription)
        return subscription


class SharedDictBus(MemoryMessageBus):
    """publish hands subscribers the publisher's own dict (validated, not copied)."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        encode(dict(data))
        message = BusMessage(channel, data)
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if pattern_matches(s.pattern, channel)]
        for subscription in targets:
            subscription._deliver(message)


class FirstSubscriberOnlyBus(MemoryMessageBus):
    """Delivers each message to the first matching subscriber only."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if pattern_matches(s.pattern, channel)]
        if targets:
            targets[0]._deliver(BusMessage(channel, dict(data)))


class ReorderingSubscription(MemorySubscription):
    """Hands out the newest message first."""

    def _deliver(self, message: BusMessage) -> None:
        self._buffer.appendleft(message)
        self._data.waiters.notify(id(self))


class ReorderingBus(MemoryMessageBus):
    """Subscriptions deliver in reverse order."""

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = ReorderingSubscription(self._data, pattern)
        with self._data.lock:
            self._data.subscriptions.append(subscription)
        return subscription


class BlockingBus(MemoryMessageBus):
    """Waits for every subscriber to have room: one sleeping reader stalls everybody."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if pattern_matches(s.pattern, channel)]
        while any(len(s._buffer) >= 100 for s in targets):
            await asyncio.sleep(0.01)
        await super().publish(channel, data)


class ExactMatchBus(MemoryMessageBus):
    """Treats patterns as plain channel names."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if s.pattern == channel]
        for subscription in targets:
            subscription._deliver(BusMessage(channel, dict(data)))


class StickySubscription(MemorySubscription):
    """Close forgets to detach from the bus."""

    async def close(self) -> None:
        return None


class StickyBus(MemoryMessageBus):
    """Unsubscribing does not stop delivery."""

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = StickySubscription(self._data, pattern)
        with self._data.lock:
            self._data.subscriptions.append(subscription)
        return subscription


class GroupedPublishManyBus(MemoryMessageBus):
    """Batches publish_many per channel: a subscriber of several channels gets them out of order."""

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for channel, data in sorted(messages, key=lambda item: item[0]):
            await self.publish(channel, data)


class OneCopyBus(MemoryMessageBus):
    """Delivers a message once per bus object, to the first of its matching subscriptions only."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        with self._data.lock:
            targets = [s for s in self._data.subscriptions if pattern_matches(s.pattern, channel)]
        owners: set[int] = set()
        for subscription in targets:
            owner = getattr(subscription, "owner", 0)
            if owner in owners:
                continue
            owners.add(owner)
            subscription._deliver(BusMessage(channel, dict(data)))

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = await super().subscribe(pattern)
        subscription.owner = id(self)  # type: ignore[attr-defined]
        return subscription


class BoundedSubscription(MemorySubscription):
    """Keeps at most 4096 messages and drops the rest (a fixed-size client buffer)."""

    def _deliver(self, message: BusMessage) -> None:
        if len(self._buffer) < 4096:
            super()._deliver(message)


class BoundedBufferBus(MemoryMessageBus):
    """Subscriptions with a bounded buffer: a burst larger than it loses messages."""

    async def subscribe(self, pattern: str) -> Subscription:
        subscription = BoundedSubscription(self._data, pattern)
        with self._data.lock:
            self._data.subscriptions.append(subscription)
        return subscription


class VarargsPublishManyBus(MemoryMessageBus):
    """``publish_many(*messages)``: the core's ``publish_many(list_of_pairs)`` publishes one bogus message."""

    async def publish_many(self, *messages: tuple[str, Mapping[str, Any]]) -> None:  # type: ignore[override]
        for channel, data in messages:
            await self.publish(channel, data)


# --- assembling a broken backend ------------------------------------------------------

Ports = dict[str, type]



# --- Variants of issue 11's second round: each passed the suite before ---------------------


class PurgeForgetsIdQueue(MemoryTaskQueue):
    """purge_dead_letter also deletes the failed result and forgets the id."""

    async def purge_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            if self._data.dead.pop(task_id, None) is None:
                return False
            self._data.results.pop(task_id, None)
            self._data.seen.pop(task_id, None)
            return True


class SoftPurgeQueue(MemoryTaskQueue):
    """Purge only hides the letter from dead_letters(): still counted and requeueable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._purged: set[str] = set()

    async def purge_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            if task_id not in self._data.dead or task_id in self._purged:
                return False
            self._purged.add(task_id)
            return True

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        letters = await super().dead_letters(node_type, limit=10**9)
        return [d for d in letters if d.task_id not in self._purged][:limit]


class RacyRequeueQueue(MemoryTaskQueue):
    """Requeue reads the letter, then (after an await, as a networked backend's next round
    trip) requeues what it read, even if a purge took the letter meanwhile: both answer True."""

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            stored = self._data.dead.get(task_id)
        await asyncio.sleep(0)
        if stored is None or stored[0].task is None:
            return False
        with self._data.lock:
            self._data.dead[task_id] = stored
        return await super().requeue_dead_letter(task_id)


class SleepyClaimQueue(MemoryTaskQueue):
    """claim(wait=w) sleeps the whole wait, then tries once."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        got = await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds)
        if got or wait <= 0:
            return got
        await asyncio.sleep(wait)
        return await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds)


class WaitIgnoresLeasesQueue(MemoryTaskQueue):
    """A waiting claim wakes for delays but not when a lease runs out."""

    def _claim_now(self, types: list[str], worker_id: str, max_tasks: int,
                   lease_seconds: float | None) -> tuple[list[ClaimedTask], float | None]:
        claimed, _ = super()._claim_now(types, worker_id, max_tasks, lease_seconds)
        with self._data.lock:
            wake = self._data.delayed[0][0] if self._data.delayed else None
        return claimed, wake


class SleepyWaitResultsQueue(MemoryTaskQueue):
    """wait_results sleeps the full timeout, then reads once."""

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        found = {t: r for t in task_ids if (r := await self.get_result(t)) is not None}
        if found or timeout <= 0:
            return found
        await asyncio.sleep(timeout)
        return {t: r for t in task_ids if (r := await self.get_result(t)) is not None}


class ForgetfulFieldsQueue(MemoryTaskQueue):
    """A claimed task's created_at is reset to claim time; results lose their worker id."""

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        got = await super().claim(node_types, worker_id=worker_id, max_tasks=max_tasks, lease_seconds=lease_seconds, wait=wait)
        return [replace(c, task=replace(c.task, created_at=time.time())) for c in got]

    def _store_result(self, result: TaskResult) -> None:
        super()._store_result(replace(result, worker_id=""))


class RequeueAtFrontQueue(MemoryTaskQueue):
    """A requeued dead letter goes to the front of its priority."""

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            if not await super().requeue_dead_letter(task_id):
                return False
            entry = self._data.entries[task_id]
            entry.seq = -next(self._data.seq)
            self._push_ready(entry)
            return True


class RawPriorityIgnoredQueue(MemoryTaskQueue):
    """enqueue_raw drops its priority."""

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        await super().enqueue_raw(node_type, data)


class NackKeepsPlaceQueue(MemoryTaskQueue):
    """A nacked task keeps its old place, so a task that keeps failing starves its peers."""

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        with self._data.lock:
            entry = self._data.entries.get(claim.task.id)
            old = entry.seq if entry is not None else None
            again = await super().nack(claim, error, delay=delay, final=final)
            if again and delay <= 0 and entry is not None and old is not None:
                entry.seq = old
                self._push_ready(entry)
            return again


class CasefoldTypesQueue(MemoryTaskQueue):
    """Node types compared case-insensitively."""

    def _add(self, task_id: str, node_type: str, raw: bytes, priority: int, max_attempts: int | None) -> None:
        super()._add(task_id, node_type.casefold(), raw, priority, max_attempts)

    async def claim(self, node_types: Collection[str], *, worker_id: str, max_tasks: int = 1,
                    lease_seconds: float | None = None, wait: float = 0.0) -> list[ClaimedTask]:
        return await super().claim([t.casefold() for t in node_types], worker_id=worker_id, max_tasks=max_tasks,
                                   lease_seconds=lease_seconds, wait=wait)

    async def stats(self, node_type: str) -> QueueStats:
        return replace(await super().stats(node_type.casefold()), node_type=node_type)

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        return await super().dead_letters(None if node_type is None else node_type.casefold(), limit=limit)


class DeleteKeepsCheckpointsStore(MemoryStateStore):
    """delete leaves the checkpoint history; a workflow re-created under the id inherits it."""

    _orphans: dict[str, list[bytes]] = {}

    async def delete(self, workflow_id: str) -> bool:
        with self._data.lock:
            stored = self._data.workflows.get(workflow_id)
            if stored is not None and stored.checkpoints:
                self._orphans[f"{id(self._data)}/{workflow_id}"] = list(stored.checkpoints)
            return await super().delete(workflow_id)

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        with self._data.lock:
            orphans = self._orphans.get(f"{id(self._data)}/{workflow_id}")
            stored = self._data.workflows.get(workflow_id)
            if orphans:
                if stored is None:
                    return [Checkpoint.from_dict(decode(raw)) for raw in reversed(orphans)]
                if not any(raw in stored.checkpoints for raw in orphans):
                    stored.checkpoints[:0] = orphans
        return await super().list_checkpoints(workflow_id, limit=limit, before=before)


class DeleteKeepsLeaseStore(MemoryStateStore):
    """delete leaves the lease in place."""

    async def delete(self, workflow_id: str) -> bool:
        with self._data.lock:
            lease = self._data.leases.get(workflow_id)
            existed = await super().delete(workflow_id)
            if lease is not None:
                self._data.leases[workflow_id] = lease
            return existed


class ReacquireKeepsDeadlineStore(MemoryStateStore):
    """Re-acquiring one's own live lease keeps the token but not the new deadline."""

    async def acquire_lease(self, workflow_id: str, owner: str, ttl: float) -> WorkflowLease | None:
        with self._data.lock:
            self._live(workflow_id)
            lease = self._data.leases.get(workflow_id)
            if lease is not None and lease.deadline > time.time() and lease.owner == owner:
                return WorkflowLease(workflow_id, owner, lease.token, lease.deadline)
        return await super().acquire_lease(workflow_id, owner, ttl)


class FencedCheckpointLeaksStore(MemoryStateStore):
    """A save refused for a stale fencing token still appends its checkpoint."""

    async def save(self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None = None,
                   fencing_token: int | None = None) -> WorkflowRecord:
        try:
            return await super().save(record, expected_version=expected_version, checkpoint=checkpoint, fencing_token=fencing_token)
        except FencingTokenRejectedError:
            if checkpoint is not None:
                with self._data.lock:
                    stored = self._live(record.workflow_id)
                    if stored is not None:
                        stored.checkpoints.append(encode(checkpoint.to_dict()))
            raise


class LimitZeroMeansAllStore(MemoryStateStore):
    """list_checkpoints(limit=0) returns everything."""

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        return await super().list_checkpoints(workflow_id, limit=limit or None, before=before)


class CheckpointsFirstPageStore(MemoryStateStore):
    """list_checkpoints returns at most 100."""

    async def list_checkpoints(self, workflow_id: str, *, limit: int | None = None, before: int | None = None) -> list[Checkpoint]:
        return await super().list_checkpoints(workflow_id, limit=100 if limit is None else min(limit, 100), before=before)


class FirstSetWinsCacheStore(MemoryStateStore):
    """cache_set keeps an existing entry (set-if-absent) instead of replacing it."""

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        if await self.cache_get(namespace, key) is None:
            await super().cache_set(namespace, key, value, ttl)


class JoinedKeyCacheStore(MemoryStateStore):
    """Keys the cache by ``namespace + ":" + key`` in one namespace: ("a", "b:c") and ("a:b", "c") collide."""

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        return await super().cache_get("all", f"{namespace}:{key}")

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        await super().cache_set("all", f"{namespace}:{key}", value, ttl)

    async def cache_clear(self, namespace: str) -> None:
        with self._data.lock:
            entries = self._data.cache.get("all", {})
            for joined in [k for k in entries if k.startswith(f"{namespace}:")]:
                del entries[joined]


class PrefixClearCacheStore(MemoryStateStore):
    """cache_clear("a") also clears every namespace starting with "a" (a ``SCAN a*`` without a separator)."""

    async def cache_clear(self, namespace: str) -> None:
        with self._data.lock:
            for name in [n for n in self._data.cache if n.startswith(namespace)]:
                del self._data.cache[name]


class TtlIgnoredCacheStore(MemoryStateStore):
    """cache_set ignores ttl: entries never expire."""

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        await super().cache_set(namespace, key, value, None)


class MetadataDroppedRegistry(MemoryWorkerRegistry):
    """register drops metadata and resets started_at."""

    async def register(self, info: WorkerInfo) -> None:
        await super().register(replace(info, metadata={}, started_at=time.time()))


class ClientClockRegistry(MemoryWorkerRegistry):
    """register stores the caller's last_heartbeat instead of now."""

    async def register(self, info: WorkerInfo) -> None:
        with self._data.lock:
            self._data.workers[info.worker_id] = info


class CasefoldSortRegistry(MemoryWorkerRegistry):
    """list_workers sorts ids case-insensitively."""

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        return sorted(await super().list_workers(node_type), key=lambda w: w.worker_id.casefold())


class FirstPageRegistry(MemoryWorkerRegistry):
    """list_workers returns only the first 100."""

    async def list_workers(self, node_type: str | None = None) -> list[WorkerInfo]:
        return (await super().list_workers(node_type))[:100]


class NoNoneBus(MemoryMessageBus):
    """publish drops keys whose value is None."""

    async def publish(self, channel: str, data: Mapping[str, Any]) -> None:
        await super().publish(channel, {k: v for k, v in data.items() if v is not None})

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for channel, data in messages:
            await self.publish(channel, data)


class PollBlindSubscription(MemorySubscription):
    """get(timeout=0) returns None without looking at the buffer."""

    async def get(self, timeout: float | None = None) -> BusMessage | None:
        if timeout is not None and timeout <= 0:
            return None
        return await super().get(timeout)


class LullEndsSubscription(MemorySubscription):
    """async for ends after a second of silence."""

    async def _iterate(self) -> AsyncIterator[BusMessage]:
        while (message := await self.get(timeout=1.0)) is not None:
            yield message


def _bus_of(subscription_type: type[MemorySubscription]) -> type[MemoryMessageBus]:
    class Bus(MemoryMessageBus):
        async def subscribe(self, pattern: str) -> Subscription:
            subscription = subscription_type(self._data, pattern)
            with self._data.lock:
                self._data.subscriptions.append(subscription)
            self._own.append(subscription)
            return subscription

    Bus.__name__ = f"{subscription_type.__name__}Bus"
    return Bus


PollBlindBus = _bus_of(PollBlindSubscription)
LullEndsBus = _bus_of(LullEndsSubscription)


def broken_opener(*, leak_prefix: str = "", nested_prefix_leak: str = "", separator_prefix_leak: str = "",
                  ignore_state_ttl: bool = False, **ports: type) -> Callable[..., Backend]:
    """An ``opener(url, **options)`` like ``open_backend`` but with ``ports`` swapped in.

    ``leak_prefix`` names one port that ignores the prefix (all prefixes share its data);
    ``nested_prefix_leak`` one that matches prefixes as text prefixes, so ``app-12`` lands
    in the data of an ``app-1`` opened before it (a ``KEYS app-1*`` style scan);
    ``separator_prefix_leak`` one whose keys are ``prefix:id`` scanned by ``prefix:*``,
    so ``app:eu`` lands in the data of ``app``.
    """
    opened: list[str] = []

    def opener(url: str, **options: Any) -> Backend:
        parsed = BackendOptions.from_url(url, **options)
        own, shared = _space(url, parsed.prefix), _space(url, "shared")
        shorter = next((p for p in opened if parsed.prefix.startswith(p)), parsed.prefix)
        parent = next((p for p in opened if parsed.prefix.startswith(p + ":")), parsed.prefix)
        opened.append(parsed.prefix)

        def space(port: str) -> Any:
            if port == nested_prefix_leak:
                return _space(url, shorter)
            if port == separator_prefix_leak:
                return _space(url, parent)
            return shared if port == leak_prefix else own

        return Backend(
            url=url,
            options=parsed,
            task_queue=ports.get("task_queue", MemoryTaskQueue)(
                space("task_queue").queue, visibility_timeout=parsed.visibility_timeout, max_attempts=parsed.max_attempts,
                result_ttl=parsed.result_ttl),
            state_store=ports.get("state_store", MemoryStateStore)(
                space("state_store").state, state_ttl=None if ignore_state_ttl else parsed.state_ttl),
            worker_registry=ports.get("worker_registry", MemoryWorkerRegistry)(space("worker_registry").registry, heartbeat_ttl=parsed.heartbeat_ttl),
            message_bus=ports.get("message_bus", MemoryMessageBus)(space("message_bus").bus),
        )

    return opener
