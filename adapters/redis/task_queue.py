"""TaskQueue on Redis: sorted sets and hashes moved atomically by Lua scripts.

Data layout (``{p}`` is the prefix, ``{t}`` a node type)::

    {p}:q:t:{id}        HASH   the task: raw bytes, type, score, max attempts, attempt,
                               state (queued|delayed|claimed|dead|done|cancelled), lease,
                               deadline, worker, FIFO member; kept as a tombstone with a
                               TTL of result_ttl after ack/cancel (idempotent enqueue)
    {p}:q:ready:{t}     ZSET   claimable tasks; score = -priority, member = 16-digit
                               sequence number + id, so ZPOPMIN yields the highest
                               priority first and, within a score, the oldest (Redis orders
                               equal scores by member bytes)
    {p}:q:delayed:{t}   ZSET   id -> release time (ms), for nack(delay=)
    {p}:q:leased:{t}    ZSET   id -> lease deadline (ms): the in-flight set
    {p}:q:dead:{t}      ZSET   dead letters of a type, by dead-letter sequence
    {p}:q:dead          ZSET   all dead letters, oldest first
    {p}:q:e:{id}        LIST   error history ("attempt N: ...")
    {p}:q:r:{id}        STRING result JSON, PX result_ttl
    {p}:q:seq, {p}:q:deadseq, {p}:q:types   counters and the set of node types seen

Why sorted sets and not Streams: a stream consumer group delivers in append order only,
so priorities would need a stream per priority and a client-side merge, and
``XAUTOCLAIM`` re-delivery still needs a side structure to count attempts and hold
delays. One ZSET per type gives priority-then-FIFO in a single ``ZPOPMIN``, the leased
ZSET gives both the in-flight count and expiry in ``O(log n)``, and one Lua script per
transition keeps every move atomic. (The choice was made on these grounds; Streams
were not benchmarked side by side.) Measured on loopback Redis 7.0 with redis-py 8 and
one asyncio client: enqueue -> claim -> ack one task at a time runs ~1,400 tasks/s
(three round trips of ~0.24 ms, almost all of it client-side); concurrent enqueues run
~5,000/s, and ``claim(max_tasks=50)`` with concurrent acks ~5,700 tasks/s. The ZSET
work inside the scripts is not the bottleneck; round trips are.

Atomicity: enqueue (of a whole batch, ``enqueue_many``), claim, extend, ack (result + removal), nack (re-queue, delay or dead
letter), release, cancel, requeue and dead-lettering are each one script. There is no
separate reaper: every script that reads a node type first applies time to it (due
delayed tasks become ready, overdue leases are re-queued or dead-lettered), so any
claimer, waiter or stats call moves the queue forward.

Undecodable payloads: ``claim`` returns raw bytes, Python decodes them, and a delivery
that does not decode is dead-lettered by the ``BAD_PAYLOAD`` script with the reason
(that delivery does not count as an attempt); the claim then continues for the rest.

Round trips per task, enqueue -> claim -> ack -> result, once the scripts are loaded:
**4** (one ``EVALSHA`` each for enqueue, claim, ack and the result read), and fewer
per task when ``claim(max_tasks=n)`` or ``wait_results`` batch several tasks (claim and
the result read are one round trip for the whole batch). ``tests/adapters/redis``
asserts this with ``INFO`` command counts.

Clock: the scripts read the server's ``TIME``. Workers and orchestrators on different
machines thus agree on when a lease expires, whatever their clock skew; deadlines
returned to callers (``ClaimedTask.deadline``) are server time in seconds, and waiting
durations are computed by the server and returned as relative milliseconds, so the
client's clock is never compared with the server's.

Waiting, claims: every script that makes tasks claimable pushes one wake-up token per
task on ``{p}:q:wake:{t}`` (a LIST, at most 64 waiting); a claimer with nothing to do
blocks on it with ``BLPOP``, so one new task wakes one idle worker, not every worker
(no thundering herd), and a token pushed between an empty claim and the BLPOP is still
there. The claim that empties a ready set deletes the tokens left. A claim that just
emptied the ready sets lets the next ``claim(wait=)`` block at once, without a claim
that would find nothing. The sleep also ends at the next lease/delay deadline the
script reported, or after ``poll_cap`` (1 s) as a safety net.

Waiting, results: ``wait_results`` subscribes (once per queue object; ``enqueue_many``
subscribes first) to the "done" channel, whose events carry small results inline, so a
wake-up needs no read; events of tasks this queue enqueued that arrive while nobody
waits are kept until asked for (see ``notifier``). A step of a workflow thus costs the
orchestrator one enqueue script and one result read, and each worker a claim and an
ack (plus a BLPOP when it was idle).

Retries: the client repeats a command whose connection broke (exponential backoff,
then ``BackendUnavailableError``). A repeated enqueue is idempotent; a repeated
ack/nack/release recognises its own operation id; a repeated claim may leave a task
leased to nobody until its lease expires, after which it is delivered again (at-least-
once delivery allows this).

Scripts build keys from the prefix at run time, so this adapter targets a single Redis
node (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from distributed_agents.adapters.redis import queue_scripts as lua
from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.errors import redis_errors
from distributed_agents.adapters.redis.keys import QueueKeys
from distributed_agents.adapters.redis.notifier import Notifier
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import BackendError, LeaseLostError, PayloadDecodeError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import (
    ClaimedTask,
    DeadLetter,
    QueueStats,
    Task,
    TaskQueue,
    TaskResult,
    task_from_dict,
    task_to_dict,
)

__all__ = ["RedisTaskQueue"]

# Upper bound of one sleep while waiting, in case a pub/sub message was lost.
_POLL_CAP = 1.0  # default of RedisTaskQueue.poll_cap
# Longest single BLPOP, in seconds: below the connection's socket timeout (10 s).
_BLOCK_MAX = 5.0
# Tasks per enqueue script: bounds one script's run time (Redis serves no one else meanwhile).
_ENQUEUE_BATCH = 500

_SCRIPTS = {
    "ack": lua.ACK,
    "bad_payload": lua.BAD_PAYLOAD,
    "cancel": lua.CANCEL,
    "claim": lua.CLAIM,
    "dead_letters": lua.DEAD_LETTERS,
    "enqueue": lua.ENQUEUE,
    "extend": lua.EXTEND,
    "nack": lua.NACK,
    "release": lua.RELEASE,
    "requeue": lua.REQUEUE,
    "purge": lua.PURGE,
    "results": lua.RESULTS,
    "stats": lua.STATS,
}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisTaskQueue(TaskQueue):
    """A leased, prioritised task queue on Redis; see the module docstring for the layout.

    ``RedisTaskQueue(redis_url, prefix=, result_ttl=, visibility_timeout=, max_attempts=)``
    opens its own connection on first use (``close()`` releases it); a ``RedisBackend``
    passes its shared ``connection`` instead.
    """

    # Longest sleep of a waiting claim or wait_results before it looks at Redis again
    # (a safety net: wake-ups normally end the sleep first). Seconds.
    poll_cap: float = _POLL_CAP

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        prefix: str | None = None,
        result_ttl: float | None = None,
        visibility_timeout: float | None = None,
        max_attempts: int | None = None,
        connection: RedisConnection | None = None,
    ) -> None:
        options = BackendOptions.from_url(
            redis_url,
            prefix=prefix,
            result_ttl=result_ttl,
            visibility_timeout=visibility_timeout,
            max_attempts=max_attempts,
        )
        self.prefix = options.prefix
        self.result_ttl = options.result_ttl
        self.visibility_timeout = options.visibility_timeout
        self.max_attempts = options.max_attempts
        self._owns_connection = connection is None
        self._connection = connection or RedisConnection(redis_url)
        self._keys = QueueKeys(self.prefix)
        self._notifier = Notifier(self._connection)
        self._early = _EarlyResults()
        # Node types -> (loop time, loop time of the next delayed release or lease expiry,
        # -1: none) of the last claim that emptied their ready sets.
        self._drained: dict[tuple[str, ...], tuple[float, float]] = {}
        self._notifier.listen(self._keys.done_channel, self._early.on_event, self._early.clear)

    @property
    def url(self) -> str:
        """The Redis URL (as given, password included; use ``masked_url`` in messages)."""
        return self._connection.url

    async def _run(self, name: str, args: list[Any], action: str) -> Any:
        base = [self.prefix, self.max_attempts, _ms(self.result_ttl)]
        return await self._connection.run_script(name, _SCRIPTS[name], [], base + args, action)

    # -- producing -------------------------------------------------------------------

    async def enqueue(self, task: Task) -> bool:
        """Queue ``task`` (one round trip); False if its id is known (see module docstring)."""
        [created] = await self.enqueue_many([task])
        return created

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """Queue ``tasks`` in order, ``_ENQUEUE_BATCH`` per script (one round trip each).

        One flag per task: True if queued, False if its id was known (nothing changed).
        """
        if not tasks:
            return []
        # Ids enqueued while the "done" channel is subscribed cannot miss their result
        # event, so ``wait_results`` need not read them before the first wake-up. (The
        # subscription is made once per queue object, by its first enqueue or wait.)
        done = self._keys.done_channel
        if not self._notifier.subscribed(done):
            with contextlib.suppress(BackendError):  # then results are read, as without events
                await self._notifier.ensure([done])
        # A subscription re-made while the script ran may have dropped their events.
        generation = self._notifier.generation if self._notifier.subscribed(done) else None
        created: list[bool] = []
        for start in range(0, len(tasks), _ENQUEUE_BATCH):
            batch = tasks[start:start + _ENQUEUE_BATCH]
            args: list[Any] = []
            for task in batch:
                args += [task.id, task.node_type, str(-int(task.priority)),
                         "" if task.max_attempts is None else int(task.max_attempts),
                         encode(task_to_dict(task)), task.workflow_id]
            what = f"enqueue task {batch[0].id!r}" if len(batch) == 1 else f"enqueue {len(batch)} tasks"
            reply = await self._run("enqueue", args, what)
            created += [bool(int(flag)) for flag in reply]
        watched = generation is not None and generation == self._notifier.generation and self._notifier.subscribed(done)
        for task, new in zip(tasks, created):
            if new and watched:
                self._early.expect(task.id)
            elif not new:
                self._early.forget([task.id])  # known before: its result is read, not awaited
        return created

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        """Put foreign bytes on the queue; they are dead-lettered at claim time if not a task."""
        task_id = f"raw-{uuid.uuid4().hex}"
        await self._run(
            "enqueue", [task_id, node_type, str(-int(priority)), "", bytes(data), ""], f"enqueue raw bytes for {node_type!r}"
        )

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
        """Claim up to ``max_tasks`` tasks in one round trip (more only around bad payloads)."""
        types = sorted(set(node_types))
        if not types or max_tasks < 1:
            return []
        lease_ms = _ms(self.visibility_timeout if lease_seconds is None else lease_seconds)
        loop_time = _loop_time()
        now = loop_time()
        give_up = now + wait
        wake_keys = [self._keys.wake(t) for t in types]
        key = tuple(types)
        # (loop time of the last claim that emptied these ready sets, loop time of the
        # next delayed release or lease expiry it reported, -1: none), if recent.
        drained = self._drained.pop(key, None)
        while True:
            if drained is not None and wait > 0 and drained[0] > now - self.poll_cap and not 0 <= drained[1] <= now:
                # Nothing was ready at that claim, and whatever became ready since then
                # pushed a wake-up token (only time, a delay or a lease ending, makes
                # tasks ready without one): block on the tokens without claiming first.
                next_ms = -1 if drained[1] < 0 else max(0, round((drained[1] - now) * 1000))
                if give_up - now <= 0:
                    self._drained[key] = drained
                    return []
            else:
                claimed, next_ms = await self._claim_now(types, worker_id, max_tasks, lease_ms)
                now = loop_time()
                drained = None if next_ms == -2 else (now, -1.0 if next_ms < 0 else now + next_ms / 1000.0)
                if claimed or wait <= 0 or give_up - now <= 0:
                    if drained is not None:
                        self._drained[key] = drained
                    return claimed
            # Each token wakes one idle claimer, not all of them; a token pushed after
            # the last claim is still there when BLPOP starts.
            woken = await self._await_token(wake_keys, _pause(give_up - now, next_ms, self.poll_cap))
            now = loop_time()
            if woken:
                drained = None

    async def _await_token(self, keys: list[str], pause: float) -> bool:
        """Pop one wake-up token of ``keys``, waiting up to ``pause`` s; True if one came."""
        if pause <= 0:
            return False
        # BLPOP takes seconds with a decimal (0 would block for ever), and must end
        # before the connection's read timeout.
        timeout = max(round(min(pause, _BLOCK_MAX), 3), 0.001)
        with redis_errors(self._connection.url, "wait for tasks"):
            return await self._connection.client().blpop(keys, timeout=timeout) is not None

    async def _claim_now(
        self, types: list[str], worker_id: str, max_tasks: int, lease_ms: int
    ) -> tuple[list[ClaimedTask], int]:
        claimed: list[ClaimedTask] = []
        next_ms = -1
        while len(claimed) < max_tasks:
            reply = await self._run(
                "claim",
                [worker_id, uuid.uuid4().hex, lease_ms, max_tasks - len(claimed), *types],
                f"claim tasks of {types}",
            )
            next_ms = int(reply[0])
            bad = 0
            for index in range(1, len(reply), 5):
                task_id, raw, attempt, lease_id, deadline = reply[index : index + 5]
                task_id, lease_id = _text(task_id), _text(lease_id)
                try:
                    task = task_from_dict(decode(bytes(raw)))
                except (PayloadDecodeError, ValueError) as exc:
                    bad += 1
                    await self._run(
                        "bad_payload", [task_id, lease_id, f"undecodable payload: {exc}"], "dead-letter an undecodable task"
                    )
                    continue
                claimed.append(ClaimedTask(task, lease_id, int(attempt), int(deadline) / 1000.0, worker_id))
            if not bad:  # only undecodable bytes make it worth popping again at once
                break
        return claimed, next_ms

    def _lost(self, claim: ClaimedTask) -> LeaseLostError:
        return LeaseLostError(
            f"task {claim.task.id!r} (node {claim.task.node!r}) is no longer leased to {claim.worker_id!r}: "
            "its lease expired or it was settled; another worker may be running it"
        )

    async def extend(self, claim: ClaimedTask, seconds: float | None = None) -> ClaimedTask:
        """Move the lease deadline to (server) now + ``seconds``; ``LeaseLostError`` if lost."""
        lease_ms = _ms(self.visibility_timeout if seconds is None else seconds)
        deadline = int(
            await self._run("extend", [claim.task.id, claim.lease_id, lease_ms], f"extend the lease of {claim.task.id!r}")
        )
        if deadline < 0:
            raise self._lost(claim)
        return ClaimedTask(claim.task, claim.lease_id, claim.attempt, deadline / 1000.0, claim.worker_id)

    async def ack(self, claim: ClaimedTask, output: Mapping[str, Any] | None) -> None:
        """Store the result and remove the task in one script; ``LeaseLostError`` if lost."""
        result = TaskResult(claim.task.id, "succeeded", output=output, attempts=claim.attempt, worker_id=claim.worker_id)
        raw = encode(result.to_dict())
        outcome = await self._run(
            "ack",
            [claim.task.id, claim.lease_id, uuid.uuid4().hex, raw],
            f"ack task {claim.task.id!r}",
        )
        if int(outcome) < 0:
            raise self._lost(claim)
        if self._early.expecting(claim.task.id):  # known stored now, whatever its event does
            self._early.on_event(f"{claim.task.id}\n{raw.decode('utf-8')}")

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        """Record ``error``; re-deliver (after ``delay``) or dead-letter, in one script."""
        delay_ms = max(0, round(delay * 1000))
        outcome = int(
            await self._run(
                "nack",
                [claim.task.id, claim.lease_id, uuid.uuid4().hex, str(error), delay_ms, "1" if final else "0"],
                f"nack task {claim.task.id!r}",
            )
        )
        if outcome < 0:
            raise self._lost(claim)
        if outcome == 0:
            self._early.forget([claim.task.id])  # dead-lettered: its result is read, not awaited
        return outcome == 1

    async def release(self, claim: ClaimedTask) -> None:
        """Give the task back without counting the attempt; ``LeaseLostError`` if lost."""
        outcome = await self._run(
            "release", [claim.task.id, claim.lease_id, uuid.uuid4().hex], f"release task {claim.task.id!r}"
        )
        if int(outcome) < 0:
            raise self._lost(claim)

    # -- results and dead letters ------------------------------------------------------

    async def _results(self, ids: list[str]) -> tuple[dict[str, TaskResult], int]:
        reply = await self._run("results", ids, "read task results")
        found: dict[str, TaskResult] = {}
        for task_id, raw in zip(ids, reply[1:]):
            if raw is not None:
                found[task_id] = TaskResult.from_dict(decode(raw))
        return found, int(reply[0])

    async def get_result(self, task_id: str) -> TaskResult | None:
        """The stored result, or None (one round trip)."""
        found, _ = await self._results([task_id])
        return found.get(task_id)

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        """Finished results among ``task_ids``; waits (woken by pub/sub on ack) up to ``timeout``.

        A "done" event carries a small result itself, so a wake-up costs no read. Events
        of tasks this queue enqueued that came while no one waited are kept (and so are
        its own acks). Ids this queue enqueued (new, while subscribed) are never read
        (unless ``timeout`` is 0): a result stored since the enqueue announces itself,
        so one whose event is still on the way is returned by this call's wait or the
        next call. Other ids are read first.
        """
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        found, _ = self._early.take(ids)  # an id whose event had no result is read below
        if len(found) == len(ids):
            return found
        # Ids this queue enqueued after subscribing announce their results; others are read.
        check: list[str] | None = [
            task_id for task_id in ids
            if task_id not in found and (timeout <= 0 or not self._early.expecting(task_id))
        ]
        next_ms = -1
        loop_time = _loop_time()
        give_up = loop_time() + timeout
        # The waiter is registered before anything is read, so an event that comes during
        # the read still wakes it.
        async with self._notifier.watch([self._keys.done_channel], ids) as waiter:
            first = True
            while True:
                waiter.clear()
                kept, bare = self._early.take(ids)
                found.update(kept)
                if check is not None:
                    check += bare
                # None: read every id not found; else only these. After a "done" event
                # only the tasks it named (without an inline result) are read, so waiting
                # on a large fan-out costs O(tasks) reads in all rather than O(tasks) per
                # wake-up. Only a full read knows the earliest lease deadline among them.
                unread = [t for t in ids if t not in found] if check is None else [t for t in check if t not in found]
                if unread:
                    more, deadline_ms = await self._results(unread)
                    found.update(more)
                    if check is None or first:  # every id that is read at all was read
                        next_ms = deadline_ms
                first = False
                if found:
                    self._early.forget(found)
                    return found
                remaining = give_up - loop_time()
                if remaining <= 0:
                    return {}
                woken = await waiter.wait(_pause(remaining, next_ms, self.poll_cap))
                fired = waiter.take_fired() if woken else None  # a timeout: look at everything
                if fired is None:
                    check = None
                    continue
                check = []
                for message in fired:
                    task_id, result = _done_event(message)
                    if result is not None:
                        found[task_id] = result
                    else:
                        check.append(task_id)

    async def cancel(self, task_id: str) -> bool:
        """Remove a queued or delayed task; True if removed."""
        return bool(await self._run("cancel", [task_id], f"cancel task {task_id!r}"))

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first (one round trip)."""
        reply = await self._run("dead_letters", [node_type or "", int(limit)], "list dead letters")
        letters = []
        for task_id, kind, reason, attempts, raw, dead_at, bad, errors in reply:
            reason_text = _text(reason)
            task: Task | None = None
            if _text(bad) != "1":
                try:
                    task = task_from_dict(decode(bytes(raw)))
                except (PayloadDecodeError, ValueError):
                    task = None
            history = tuple(_text(e) for e in errors) or (reason_text,)
            letters.append(
                DeadLetter(
                    task_id=_text(task_id),
                    node_type=_text(kind),
                    reason=reason_text,
                    errors=history,
                    attempts=int(attempts),
                    task=task,
                    raw=None if task is not None else bytes(raw),
                    dead_at=float(dead_at) / 1000.0,
                )
            )
        return letters

    async def requeue_dead_letter(self, task_id: str) -> bool:
        """Queue a decodable dead letter again with attempt 0; False otherwise."""
        requeued = bool(await self._run("requeue", [task_id], f"requeue dead letter {task_id!r}"))
        self._early.forget([task_id])  # its failed result is gone (other queues hear the script's event)
        return requeued

    async def purge_dead_letter(self, task_id: str) -> bool:
        """Delete a dead letter (one round trip); the id stays known as long as its result."""
        return bool(await self._run("purge", [task_id], f"purge dead letter {task_id!r}"))

    async def stats(self, node_type: str) -> QueueStats:
        """Queued (ready + delayed), in flight and dead counts (one round trip)."""
        queued, in_flight, dead = await self._run("stats", [node_type], f"read queue stats of {node_type!r}")
        return QueueStats(node_type, int(queued), int(in_flight), int(dead))

    async def close(self) -> None:
        """Stop waiting machinery; close the connection if this queue opened it. Idempotent."""
        await self._notifier.close()
        if self._owns_connection:
            await self._connection.close()

    def __repr__(self) -> str:
        return f"<RedisTaskQueue {self._connection.masked_url} prefix={self.prefix!r}>"


class _EarlyResults:
    """"Done" events of tasks this queue enqueued, kept until ``wait_results`` asks for them.

    Holds at most ``limit`` ids (the oldest are dropped: those are then read, as any id
    this queue did not enqueue is). ``clear()`` when events may have been missed.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, str | None] = OrderedDict()  # id -> event, None: none yet

    def expect(self, task_id: str) -> None:
        self._entries[task_id] = None
        self._entries.move_to_end(task_id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def expecting(self, task_id: str) -> bool:
        return task_id in self._entries

    def on_event(self, message: str) -> None:
        task_id = message.split("\n", 1)[0]
        if task_id in self._entries:
            self._entries[task_id] = message

    def take(self, ids: Collection[str]) -> tuple[dict[str, TaskResult], list[str]]:
        """Results whose events came, and ids whose event came without the result (to read)."""
        found: dict[str, TaskResult] = {}
        bare: list[str] = []
        for task_id in ids:
            message = self._entries.get(task_id)
            if message is None:
                continue
            del self._entries[task_id]
            _, result = _done_event(message)
            if result is None:
                bare.append(task_id)
            else:
                found[task_id] = result
        return found, bare

    def forget(self, ids: Collection[str]) -> None:
        for task_id in ids:
            self._entries.pop(task_id, None)

    def clear(self) -> None:
        self._entries.clear()


def _done_event(message: str) -> tuple[str, TaskResult | None]:
    """``(task id, result or None)`` from a "done" event ``id`` or ``id\\nresult JSON``."""
    task_id, _, body = message.partition("\n")
    if not body:
        return task_id, None
    try:
        return task_id, TaskResult.from_dict(decode(body.encode("utf-8")))
    except (PayloadDecodeError, ValueError, KeyError, TypeError):
        return task_id, None  # read it from its key instead


def _pause(remaining: float, next_ms: int, cap: float = _POLL_CAP) -> float:
    pause = min(remaining, cap)
    if next_ms >= 0:
        pause = min(pause, next_ms / 1000.0 + 0.001)
    return max(pause, 0.0)


def _loop_time() -> Callable[[], float]:
    return asyncio.get_running_loop().time


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
