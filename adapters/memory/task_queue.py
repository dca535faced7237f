"""In-process TaskQueue: the reference behaviour of the port, standard library only.

Tasks are stored encoded (JSON bytes), exactly as a networked backend would hold them,
so payloads are isolated from the caller's objects and undecodable bytes behave as they
would on Redis or NATS. Lease expiry and delayed re-delivery are applied lazily, on
every operation, from heaps ordered by time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import LeaseLostError, PayloadDecodeError
from distributed_agents.core.ports.task_queue import (
    ClaimedTask,
    DeadLetter,
    QueueStats,
    Task,
    TaskQueue,
    TaskResult,
    decode_task,
    lease_expired_reason,
    task_to_dict,
)
from distributed_agents.adapters.memory.waiters import WaiterSet

__all__ = ["MemoryTaskQueue", "QueueData"]


@dataclass
class _Entry:
    task_id: str
    node_type: str
    raw: bytes
    priority: int
    max_attempts: int | None
    seq: int
    attempt: int = 0
    errors: list[str] = field(default_factory=list)
    state: str = "queued"  # queued | delayed | claimed
    ready_at: float = 0.0
    lease_id: str = ""
    deadline: float = 0.0
    worker_id: str = ""


class QueueData:
    """All queue state of one prefix; shared by every ``MemoryTaskQueue`` on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.entries: dict[str, _Entry] = {}
        # Task id -> when enqueue may accept it again: None while queued, claimed or dead,
        # the result's expiry once it finished (the port's idempotency window).
        self.seen: dict[str, float | None] = {}
        self.ready: dict[str, list[tuple[int, int, str]]] = {}
        self.delayed: list[tuple[float, int, str]] = []
        self.leases: list[tuple[float, str, str]] = []
        self.results: dict[str, tuple[TaskResult, float]] = {}
        self.dead: dict[str, tuple[DeadLetter, int | None, int]] = {}
        self.seq = itertools.count()
        self.waiters = WaiterSet()


class MemoryTaskQueue(TaskQueue):
    """TaskQueue over ``QueueData``; see the port's docstring for the contract."""

    def __init__(
        self,
        data: QueueData,
        *,
        visibility_timeout: float = 30.0,
        max_attempts: int = 3,
        result_ttl: float = 3600.0,
    ) -> None:
        self._data = data
        self.visibility_timeout = visibility_timeout
        self.max_attempts = max_attempts
        self.result_ttl = result_ttl

    # -- producing -------------------------------------------------------------------

    async def enqueue(self, task: Task) -> bool:
        raw = encode(task_to_dict(task))
        with self._data.lock:
            if task.id in self._data.seen:
                until = self._data.seen[task.id]
                if until is None or until > time.time():
                    return False
                self._data.results.pop(task.id, None)
            self._add(task.id, task.node_type, raw, task.priority, task.max_attempts)
        return True

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        with self._data.lock:
            self._add(f"raw-{uuid.uuid4().hex}", node_type, bytes(data), priority, None)

    def _add(self, task_id: str, node_type: str, raw: bytes, priority: int, max_attempts: int | None) -> None:
        entry = _Entry(task_id, node_type, raw, priority, max_attempts, next(self._data.seq))
        self._data.seen[task_id] = None
        self._data.entries[task_id] = entry
        self._push_ready(entry)

    def _push_ready(self, entry: _Entry) -> None:
        entry.state = "queued"
        heapq.heappush(self._data.ready.setdefault(entry.node_type, []), (-entry.priority, entry.seq, entry.task_id))
        self._data.waiters.notify(("type", entry.node_type))

    # -- consuming -------------------------------------------------------------------

    async def claim(
        self,
        node_types: Collection[str],
        *,
        worker_id: str,
        max_tasks: int = 1,
        lease_seconds: float | None = None,
        wait: float = 0.0,
    ) -> list[ClaimedTask]:
        types = list(node_types)
        keys = [("type", t) for t in types]
        give_up = time.monotonic() + max(wait, 0.0)
        while True:
            claimed, next_event = self._claim_now(types, worker_id, max_tasks, lease_seconds)
            remaining = give_up - time.monotonic()
            if claimed or remaining <= 0:
                return claimed
            pause = remaining if next_event is None else min(remaining, max(next_event - time.time(), 0.001))
            await self._data.waiters.wait(keys, pause)

    def _claim_now(
        self, types: list[str], worker_id: str, max_tasks: int, lease_seconds: float | None
    ) -> tuple[list[ClaimedTask], float | None]:
        lease = self.visibility_timeout if lease_seconds is None else lease_seconds
        claimed: list[ClaimedTask] = []
        with self._data.lock:
            now = time.time()
            self._apply_time(now)
            while len(claimed) < max_tasks:
                best: tuple[int, int, str] | None = None
                for node_type in types:
                    heap = self._data.ready.get(node_type)
                    while heap and not self._is_ready(heap[0][2], heap[0][1]):
                        heapq.heappop(heap)
                    if heap and (best is None or heap[0] < best):
                        best = heap[0]
                if best is None:
                    break
                entry = self._data.entries[best[2]]
                heapq.heappop(self._data.ready[entry.node_type])
                try:
                    task = decode_task(entry.raw, queued_as=entry.task_id, queued_in=entry.node_type)
                except PayloadDecodeError as exc:
                    self._dead_letter(entry, str(exc), now)
                    continue
                entry.attempt += 1
                entry.state = "claimed"
                entry.lease_id = uuid.uuid4().hex
                entry.deadline = now + lease
                entry.worker_id = worker_id
                heapq.heappush(self._data.leases, (entry.deadline, entry.task_id, entry.lease_id))
                claimed.append(ClaimedTask(task, entry.lease_id, entry.attempt, entry.deadline, worker_id))
            next_event = min(
                [t for t in (self._data.delayed[0][0] if self._data.delayed else None,
                             self._data.leases[0][0] if self._data.leases else None) if t is not None],
                default=None,
            )
        return claimed, next_event

    def _is_ready(self, task_id: str, seq: int) -> bool:
        entry = self._data.entries.get(task_id)
        return entry is not None and entry.state == "queued" and entry.seq == seq

    def _apply_time(self, now: float) -> None:
        """Release delayed tasks whose time came and expire leases whose deadline passed."""
        delayed = self._data.delayed
        while delayed and delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(delayed)
            entry = self._data.entries.get(task_id)
            if entry is not None and entry.state == "delayed" and entry.seq == seq:
                self._push_ready(entry)
        leases = self._data.leases
        while leases and leases[0][0] <= now:
            _, task_id, lease_id = heapq.heappop(leases)
            entry = self._data.entries.get(task_id)
            if entry is None or entry.state != "claimed" or entry.lease_id != lease_id or entry.deadline > now:
                continue
            entry.errors.append(f"attempt {entry.attempt}: lease expired (worker {entry.worker_id!r})")
            entry.lease_id = ""
            if entry.attempt >= self._limit(entry):
                self._dead_letter(entry, lease_expired_reason(entry.attempt, self._limit(entry), entry.worker_id), now)
            else:
                self._push_ready(entry)

    def _limit(self, entry: _Entry) -> int:
        return entry.max_attempts if entry.max_attempts is not None else self.max_attempts

    def _held(self, claim: ClaimedTask) -> _Entry:
        self._apply_time(time.time())
        entry = self._data.entries.get(claim.task.id)
        if entry is None or entry.state != "claimed" or entry.lease_id != claim.lease_id:
            raise LeaseLostError(
                f"task {claim.task.id!r} (node {claim.task.node!r}) is no longer leased to {claim.worker_id!r}: "
                "its lease expired or it was settled; another worker may be running it"
            )
        return entry

    async def extend(self, claim: ClaimedTask, seconds: float | None = None) -> ClaimedTask:
        with self._data.lock:
            entry = self._held(claim)
            entry.deadline = time.time() + (self.visibility_timeout if seconds is None else seconds)
            heapq.heappush(self._data.leases, (entry.deadline, entry.task_id, entry.lease_id))
            return ClaimedTask(claim.task, claim.lease_id, claim.attempt, entry.deadline, claim.worker_id)

    async def ack(self, claim: ClaimedTask, output: Mapping[str, Any] | None) -> None:
        result = TaskResult(claim.task.id, "succeeded", output=output, attempts=claim.attempt, worker_id=claim.worker_id,
                            started_at=claim.started_at)
        # Round-trip through JSON so the stored result is isolated and JSON-clean.
        stored = TaskResult.from_dict(decode(encode(result.to_dict())))
        with self._data.lock:
            entry = self._held(claim)
            del self._data.entries[entry.task_id]
            self._store_result(stored)
            self._data.seen[entry.task_id] = time.time() + self.result_ttl

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        with self._data.lock:
            entry = self._held(claim)
            entry.errors.append(f"attempt {entry.attempt}: {error}")
            entry.lease_id = ""
            now = time.time()
            if final or entry.attempt >= self._limit(entry):
                self._dead_letter(entry, error, now)
                return False
            entry.seq = next(self._data.seq)
            if delay > 0:
                entry.state = "delayed"
                entry.ready_at = now + delay
                heapq.heappush(self._data.delayed, (entry.ready_at, entry.seq, entry.task_id))
                self._data.waiters.notify(("type", entry.node_type))
            else:
                self._push_ready(entry)
            return True

    async def release(self, claim: ClaimedTask) -> None:
        with self._data.lock:
            entry = self._held(claim)
            entry.attempt -= 1
            entry.lease_id = ""
            self._push_ready(entry)

    # -- results and dead letters ------------------------------------------------------

    def _store_result(self, result: TaskResult) -> None:
        self._data.results[result.task_id] = (result, time.time() + self.result_ttl)
        self._data.waiters.notify(("result", result.task_id))

    def _dead_letter(self, entry: _Entry, reason: str, now: float) -> None:
        task: Task | None
        try:
            task = decode_task(entry.raw)
        except PayloadDecodeError:
            task = None
        letter = DeadLetter(
            task_id=entry.task_id,
            node_type=entry.node_type,
            reason=reason,
            errors=tuple(entry.errors) if entry.errors else (reason,),
            attempts=entry.attempt,
            task=task,
            raw=None if task is not None else entry.raw,
            dead_at=now,
        )
        self._data.entries.pop(entry.task_id, None)
        self._data.dead[entry.task_id] = (letter, entry.max_attempts, entry.priority)
        self._store_result(TaskResult(entry.task_id, "failed", error=reason, attempts=entry.attempt, finished_at=now))

    async def get_result(self, task_id: str) -> TaskResult | None:
        with self._data.lock:
            self._apply_time(time.time())  # a lease that just expired may have dead-lettered it
            stored = self._data.results.get(task_id)
            if stored is None:
                return None
            if stored[1] <= time.time():
                del self._data.results[task_id]
                return None
            return stored[0]

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        ids = list(task_ids)
        keys = [("result", task_id) for task_id in ids]
        give_up = time.monotonic() + timeout
        while True:
            found = {}
            for task_id in ids:
                result = await self.get_result(task_id)
                if result is not None:
                    found[task_id] = result
            remaining = give_up - time.monotonic()
            if found or remaining <= 0:
                return found
            with self._data.lock:
                self._apply_time(time.time())  # an expired lease may dead-letter a task we wait on
                next_lease = self._data.leases[0][0] if self._data.leases else None
            pause = remaining if next_lease is None else min(remaining, max(next_lease - time.time(), 0.001))
            await self._data.waiters.wait(keys, pause)

    async def cancel(self, task_id: str) -> bool:
        with self._data.lock:
            entry = self._data.entries.get(task_id)
            if entry is None or entry.state == "claimed":
                return False
            del self._data.entries[task_id]
            self._data.seen[task_id] = time.time() + self.result_ttl
            return True

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        with self._data.lock:
            self._apply_time(time.time())
            letters = [d for d, _, _ in self._data.dead.values() if node_type is None or d.node_type == node_type]
        return letters[:limit]

    async def requeue_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            stored = self._data.dead.get(task_id)
            if stored is None or stored[0].task is None:
                return False
            letter, max_attempts, priority = stored
            del self._data.dead[task_id]
            self._data.results.pop(task_id, None)
            assert letter.task is not None
            self._add(task_id, letter.node_type, encode(task_to_dict(letter.task)), priority, max_attempts)
            return True

    async def purge_dead_letter(self, task_id: str) -> bool:
        with self._data.lock:
            if self._data.dead.pop(task_id, None) is None:
                return False
            # Like a finished task: the id is remembered as long as its (failed) result.
            stored = self._data.results.get(task_id)
            self._data.seen[task_id] = stored[1] if stored is not None else time.time()
            return True

    async def stats(self, node_type: str) -> QueueStats:
        with self._data.lock:
            self._apply_time(time.time())
            queued = in_flight = 0
            for entry in self._data.entries.values():
                if entry.node_type == node_type:
                    if entry.state == "claimed":
                        in_flight += 1
                    else:
                        queued += 1
            dead = sum(1 for d, _, _ in self._data.dead.values() if d.node_type == node_type)
        return QueueStats(node_type, queued, in_flight, dead)
