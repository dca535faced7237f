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
claimer, waiter or stats call moves the queue forward. (Settling a task, by ack, nack,
extend or release, applies it only once that task's own deadline has passed: before, it
could not change that task, and the claims and waits that follow apply it for the rest.)

Undecodable payloads: ``claim`` returns raw bytes, Python decodes them, and a delivery
that does not decode is dead-lettered by the ``BAD_PAYLOAD`` script with the reason
(that delivery does not count as an attempt); the claim then continues for the rest.
The reason names the task hash and its field ``raw``.

Hand-edited task hashes: a claim checks each task's hash before it leases it. A key that
is missing or no hash, a ``type`` other than the queue's, a ``score`` or ``max`` that is
no number, a ``member`` other than the one it was queued under, ``raw`` missing, or an
``attempt`` that is no integer: the task is dead-lettered (its bytes kept, ``bad`` so it
cannot be requeued as it is) with a reason naming the key and field, and the claim goes
on; so do the scripts that queue a task again (nack, release, lease expiry) when a field
was edited while it ran. A task whose bytes name another node type than the queue it sat
in is dead-lettered the same way by the claimer, never run (see ``_delivered``). A worker
thus never stops on such a task, and none disappears without a dead letter.

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
blocks on it with ``BLMPOP`` (taking at most as many tokens as it may take tasks), so one
new task wakes one idle worker, not every worker (no thundering herd), and a token
pushed between an empty claim and the BLMPOP is still
there. The claim that empties a ready set deletes the tokens left. A claim that just
emptied the ready sets lets the next ``claim(wait=)`` block at once, without a claim
that would find nothing. The sleep also ends at the next lease/delay deadline the
script reported, or after ``poll_cap`` (1 s) as a safety net. Redis ends a blocked
command at its timeout only on a tick of its event loop (``hz``: 10 a second by
default), so a sleep that such a deadline bounds (or that ends less than a tick before
it) is ended by the claimer itself: a timer on its event loop pushes an empty entry on
the claimer's own hand-over list (below) at that time, and the claim that follows takes
the released task within milliseconds of its release time rather than up to 0.1 s after
it. The timer exists only during such a sleep and wakes no other claimer; the push is
the one round trip it adds. An empty entry is never a hand-over: every reader of the
list skips it.

Hand-over to parked claimers: a ``claim(wait=)`` that finds nothing also parks: its
claim script registers it (``{p}:q:park:{c}``: worker, lease length, room = max tasks,
until when; listed on ``{p}:q:idle:{t}`` of each of its types) and it blocks on its own
list ``{p}:q:h:{c}`` as well as on the tokens. An enqueue script then leases the new
tasks of those types straight to the oldest live registration (priority, then FIFO, as
its claim would have taken them; attempt 1) and pushes them as one message on that
list, so the idle worker's BLMPOP returns its tasks (every message that piled up on the
list, in one reply): wake-up and claim are one round
trip, and the enqueue pushes no token for them. A registration keeps its room left
(it stays parked) and lasts ``min(poll_cap, 5 s)`` (plus 0.2 s); the next claim of the same types,
worker and lease length reuses it and blocks at once. The ack of a task of the same
worker id gives its live registration the task's slot back (room + 1, never past the max
tasks of the claim using it: a worker counts a settling task's slot free before its ack,
``core.worker`` "Slots", and its claim asked for that slot already) and, when less than
half of it is left, makes it last that long after the claimer's last claim call (now, if
one is waiting): under steady traffic a worker registers once, instead of again after
every ``max_tasks`` tasks and every second (a claim script, and a second wait, in the path
of the task that came then). Tasks handed over after a claim
stopped waiting are returned by the next claim with that registration (ahead of the
ready ones), or put back at their place (the attempt not counted) by ``close()``. A
worker that dies while parked (SIGKILL) may be handed tasks until its registration
runs out (at most ``min(poll_cap, 5 s)`` plus 0.2 s after its last claim call): those are delivered again when their lease
expires, as for a worker that dies holding tasks.

Waiting, results: ``wait_results`` subscribes (once per queue object; ``enqueue_many``
subscribes first) to the "done" channel, whose events carry small results inline, so a
wake-up needs no read; events of tasks this queue enqueued that arrive while nobody
waits are kept until asked for (see ``notifier``). A step of a workflow thus costs the
orchestrator one enqueue script (no result read), and each worker a claim and an ack,
or, when it was idle and parked, the BLMPOP that returns its tasks and an ack.

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
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from distributed_agents.adapters.redis import queue_scripts as lua
from distributed_agents.adapters.redis.connection import RedisConnection
from distributed_agents.adapters.redis.keys import QueueKeys
from distributed_agents.adapters.redis.notifier import Notifier
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import BackendError, LeaseLostError, PayloadDecodeError
from distributed_agents.core.limits import DEFAULT_MAX_PAYLOAD_BYTES, oversized_task_reason, task_bytes_limit
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.random_ids import random_hex
from distributed_agents.core.ports.task_queue import (
    ClaimedTask,
    DeadLetter,
    QueueStats,
    Task,
    TaskQueue,
    TaskResult,
    check_attempt,
    decode_task,
    malformed_result,
    task_to_dict,
)

__all__ = ["RedisTaskQueue"]

log = logging.getLogger(__name__)

# Upper bound of one sleep while waiting, in case a pub/sub message was lost.
_POLL_CAP = 1.0  # default of RedisTaskQueue.poll_cap
# Longest single BLMPOP, in seconds: below the connection's socket timeout (10 s).
_BLOCK_MAX = 5.0
# Tasks per enqueue script: bounds one script's run time (Redis serves no one else meanwhile).
_ENQUEUE_BATCH = 500
ENQUEUE_BATCH = _ENQUEUE_BATCH  # most tasks enqueue_along takes

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
    "unpark": lua.UNPARK,
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
        max_payload_bytes: int | None = None,
    ) -> None:
        options = BackendOptions.from_url(
            redis_url,
            prefix=prefix,
            result_ttl=result_ttl,
            visibility_timeout=visibility_timeout,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
        )
        self.prefix = options.prefix
        # Bytes on the queue longer than this are dead-lettered by the claim, inside the
        # server: a worker never reads them (core.limits.task_bytes_limit).
        self.max_task_bytes = task_bytes_limit(options.max_payload_bytes or DEFAULT_MAX_PAYLOAD_BYTES)
        self._oversized = oversized_task_reason("{size}", self.max_task_bytes)
        self.result_ttl = options.result_ttl
        self.visibility_timeout = options.visibility_timeout
        self.max_attempts = options.max_attempts
        self._owns_connection = connection is None
        self._connection = connection or RedisConnection(redis_url)
        self._keys = QueueKeys(self._connection.key_prefix(self.prefix))  # {prefix} on a cluster
        self._notifier = Notifier(self._connection)
        self._early = _EarlyResults()
        # Parked claimer registrations not in use, by (node types, worker id, lease ms): a
        # claim reuses one (and, while it lasts, blocks without claiming first).
        self._parks: dict[tuple[tuple[str, ...], str, int], list[_Park]] = {}
        # The registration each worker id last waited with: its acks give it their slots back.
        self._park_of: dict[str, _Park] = {}
        # Wake-up pushes under way (``_wake``): close() lets them finish before it unparks.
        self._wakes: set[asyncio.Future[Any]] = set()
        # Counts close() calls: a claim waiting when the queue closes stops instead of
        # claiming again, which would open a new client that nobody closes.
        self._closes = 0
        self._notifier.listen(self._keys.done_channel, self._early.on_event, self._early.clear)

    @property
    def url(self) -> str:
        """The Redis URL (as given, password included; use ``masked_url`` in messages)."""
        return self._connection.url

    def _new_id(self) -> str:
        """A lease or operation id no other call uses: 32 random hex digits, as a uuid4's, from
        ``core.random_ids``'s pool (fresh in a forked child; no urandom read per call)."""
        return random_hex(16)

    def _run(self, name: str, args: list[Any], action: str, now: bool = False) -> Awaitable[Any]:
        base = [self._keys.prefix, self.max_attempts, _ms(self.result_ttl)]
        # KEYS names one key of the prefix's slot: on a cluster it routes the script there. The
        # connection's coroutine is returned for the caller to await: no coroutine layer of its own.
        # ``now``: a settling call (ack, nack, release) of one task, ordered with nothing else
        # of its tick, is written at once when the connection is idle (``RedisConnection.run_script``).
        return self._connection.run_script(name, _SCRIPTS[name], [self._keys.route], base + args, action, now=now)

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
        generation = await self._expect(tasks)
        created: list[bool] = []
        for start in range(0, len(tasks), _ENQUEUE_BATCH):
            batch = tasks[start:start + _ENQUEUE_BATCH]
            what = f"enqueue task {batch[0].id!r}" if len(batch) == 1 else f"enqueue {len(batch)} tasks"
            try:
                reply = await self._run("enqueue", self._enqueue_args(batch), what)
            except BaseException:
                self._early.forget([task.id for task in tasks[start:]])  # not enqueued (or unknown): read them
                raise
            created += [bool(int(flag)) for flag in reply]
        self._expected(tasks, created, generation)
        return created

    async def enqueue_along(self, tasks: Sequence[Task], run: Callable[[list[str], list[Any]], Awaitable[Any]]) -> Any:
        """Queue ``tasks`` (at most ``ENQUEUE_BATCH``) inside another script; what ``run`` returns.

        ``run(keys, args)`` runs a script that embeds the enqueue script (``queue_scripts.ENQUEUE``)
        with these KEYS and ARGV along with its own work, and returns ``(its result, the
        enqueue script's reply, or None when it did not enqueue)``. The "done" events of
        the tasks are watched as ``enqueue_many`` watches them.
        """
        generation = await self._expect(tasks)
        try:
            result, reply = await run([self._keys.route], [self._keys.prefix, self.max_attempts,
                                                           _ms(self.result_ttl), *self._enqueue_args(tasks)])
        except BaseException:
            self._early.forget([task.id for task in tasks])
            raise
        if reply is None:
            self._early.forget([task.id for task in tasks])
        else:
            self._expected(tasks, [bool(int(flag)) for flag in reply], generation)
        return result

    async def _expect(self, tasks: Sequence[Task]) -> int | None:
        """Watch the "done" events of ``tasks`` before they are queued; the subscription's generation (None: not watched)."""
        # Ids enqueued while the "done" channel is subscribed cannot miss their result
        # event, so ``wait_results`` need not read them before the first wake-up. (The
        # subscription is made once per queue object, by its first enqueue or wait.)
        done = self._keys.done_channel
        if not self._notifier.subscribed(done):
            with contextlib.suppress(BackendError):  # then results are read, as without events
                await self._notifier.ensure([done])
        # A subscription re-made while the script ran may have dropped their events.
        generation = self._notifier.generation if self._notifier.subscribed(done) else None
        if generation is not None:
            # Expected before the script runs: a parked worker may be handed a task, run it
            # and announce its result before this call sees the script's reply.
            for task in tasks:
                self._early.expect(task.id)
        return generation

    def _expected(self, tasks: Sequence[Task], created: Sequence[bool], generation: int | None) -> None:
        """Stop expecting events of ``tasks`` that were known before or whose event may be lost."""
        done = self._keys.done_channel
        watched = generation is not None and generation == self._notifier.generation and self._notifier.subscribed(done)
        for task, new in zip(tasks, created):
            if not new or not watched:
                # Known before (its result is read, not awaited), or its event may be lost.
                self._early.forget([task.id])

    def _enqueue_args(self, batch: Sequence[Task]) -> list[Any]:
        """The enqueue script's ARGV from its fourth on, for ``batch``."""
        args: list[Any] = []
        for task in batch:
            args += [task.id, task.node_type, str(-int(task.priority)),
                     "" if task.max_attempts is None else int(task.max_attempts),
                     encode(task_to_dict(task)), task.workflow_id]
        args += [self.max_task_bytes, self._oversized]
        return args

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        """Put foreign bytes on the queue; they are dead-lettered at claim time if not a task."""
        task_id = f"raw-{uuid.uuid4().hex}"
        await self._run(
            "enqueue", [task_id, node_type, str(-int(priority)), "", bytes(data), "", self.max_task_bytes,
                        self._oversized], f"enqueue raw bytes for {node_type!r}"
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
        """Claim up to ``max_tasks`` tasks in one round trip (more only around bad payloads).

        A claim that waits and finds nothing parks (see ``queue_scripts``): an enqueue then
        hands it the new tasks, already leased, through the BLMPOP it blocks in, so an idle
        worker's wake-up and claim are one round trip. The registration outlives the call
        by up to ``park`` seconds and is reused by the next claim of the same types, worker
        and lease length, which then blocks at once; tasks handed over after a call stopped
        waiting are returned by the next call (or given back by ``close``).
        """
        types = sorted(set(node_types))
        if not types or max_tasks < 1:
            return []
        lease_ms = _ms(self.visibility_timeout if lease_seconds is None else lease_seconds)
        loop_time = _loop_time()
        now = loop_time()
        give_up = now + wait
        wake_keys = [self._keys.wake(t) for t in types]
        key = (tuple(types), worker_id, lease_ms)
        spare = self._parks.get(key)
        park = spare.pop() if spare else (_Park(uuid.uuid4().hex) if wait > 0 else None)
        if park is not None:
            park.claiming = True
            park.cap = max_tasks
            self._park_of[worker_id] = park
        park_ms = _ms(self._park_seconds())
        closes = self._closes
        try:
            # A registration with room for more tasks than this call takes is renewed (more
            # would be handed over than it may return); one with less room is kept.
            force = park is None or not park.live(now) or park.room > max_tasks
            while True:
                if closes != self._closes:
                    return []
                if force:
                    sent = loop_time()
                    if park is not None:
                        park.generation += 1  # acks of the registration it replaces no longer count
                    claimed, next_ms = await self._claim_now(
                        types, worker_id, max_tasks, lease_ms, "" if park is None else park.id,
                        park_ms if wait > 0 else 0)
                    now = loop_time()
                    if park is not None:
                        parked = not claimed and wait > 0
                        park.until = sent + park_ms / 1000 - _PARK_MARGIN if parked else 0.0
                        park.room = max_tasks
                        park.next_at = -1.0 if next_ms < 0 else now + next_ms / 1000.0
                    if claimed or wait <= 0 or give_up - now <= 0:
                        return claimed
                assert park is not None  # waiting (wait > 0) always has a registration
                force = False
                next_ms = -1 if park.next_at < 0 else max(0, round((park.next_at - now) * 1000))
                pause = min(_pause(give_up - now, next_ms, self.poll_cap), park.until - now)
                # A release or lease deadline within this sleep, or within the server tick that may
                # end it late, ends it from here at that time (see _wake).
                wake_at = park.next_at + 0.001 if 0 <= park.next_at < now + pause + _SERVER_TICK else -1.0
                popped = await self._await_token([self._keys.handoff(park.id), *wake_keys], pause, max_tasks, wake_at)
                now = loop_time()
                if popped is not None and _text(popped[0]) == self._keys.handoff(park.id):
                    items = [item for message in popped[1] for item in _unframe(bytes(message))]
                    # The registration stays while it has room (the enqueue took what it handed over).
                    park.room -= len(items) // 6
                    if park.room <= 0:
                        park.until = 0.0
                    claimed = await self._delivered(items, worker_id)
                    for extra in claimed[max_tasks:]:  # a registration made for more tasks than this call takes
                        with contextlib.suppress(LeaseLostError):
                            await self.release(extra)
                    if claimed:
                        return claimed[:max_tasks]
                    force = True  # only wake-ups or undecodable bytes came: claim as usual
                elif popped is not None:
                    force = True  # a token: a task became ready without a hand-over
                elif not park.live(now) or 0 <= park.next_at <= now:
                    force = True
                if give_up - now <= 0 and not force:
                    return []
        finally:
            if park is not None:
                park.claiming = False
                park.claimed_at = loop_time()
                if closes == self._closes:
                    self._parks.setdefault(key, []).append(park)

    def _park_seconds(self) -> float:
        """How long a registration lasts after its claimer's last claim: as long as one sleep
        may (every sleep ends by then and claims), and a margin."""
        return min(self.poll_cap, _BLOCK_MAX) + _PARK_SLACK

    async def _await_token(self, keys: list[str], pause: float, count: int, wake_at: float = -1.0) -> Any:
        """Pop up to ``count`` entries of the first of ``keys`` that has some (hand-overs, or
        wake-up tokens), waiting up to ``pause`` s; ``keys[0]`` is the claimer's hand-over list.

        ``(key, [value, ...])``, or None if none came. Hand-over messages that piled up
        while this worker was busy come back together (one round trip, not one each); at
        most ``count`` tokens are taken, one per task this claimer may take, so the others
        still wake other idle claimers. ``wake_at`` (loop time; -1: none): a timer then
        ends the wait at that time with an empty entry on the hand-over list (``_wake``).
        """
        if pause <= 0:
            return None
        # BLMPOP takes seconds with a decimal (0 would block for ever), and must end
        # before the connection's read timeout.
        timeout = max(round(min(pause, _BLOCK_MAX), 3), 0.001)
        command = ["BLMPOP", timeout, len(keys), *keys, "LEFT", "COUNT", max(1, count)]
        if wake_at < 0:
            reply = await self._connection.run_blocking(command, "wait for tasks")
        else:
            timer = asyncio.get_running_loop().call_at(wake_at, self._wake, keys[0])
            try:
                reply = await self._connection.run_blocking(command, "wait for tasks")
            finally:
                timer.cancel()
        return None if not reply else (reply[0], list(reply[1]))

    def _wake(self, handoff: str) -> None:
        """End a parked claim's BLMPOP now: push an empty entry on its own hand-over list.

        Redis ends a blocked command at its timeout only on a tick of its event loop (``hz``,
        10 a second by default), so a sleep bounded by a release time would end up to 0.1 s
        late; a push ends it at once, and wakes that claimer alone. A hand-over message is
        never empty, so every reader of the list (this claim loop, the claim and unpark
        scripts) takes an empty entry for what it is and skips it; one pushed after the
        wait ended for another reason is taken by the next wait or claim of the
        registration, or expires with the list (60 s, unless a hand-over set its TTL).
        """
        wake = asyncio.ensure_future(self._connection.run_commands(
            [["RPUSH", handoff, ""], ["PEXPIRE", handoff, _WAKE_TTL_MS, "NX"]], "wake a parked claim"))
        self._wakes.add(wake)
        wake.add_done_callback(self._woken)

    def _woken(self, wake: asyncio.Future[Any]) -> None:
        """A wake-up push ended. One that failed is let go: the BLMPOP's own timeout ends that
        wait (late), and the claim that follows reports the broken connection."""
        self._wakes.discard(wake)
        if not wake.cancelled():
            wake.exception()

    async def _claim_now(
        self, types: list[str], worker_id: str, max_tasks: int, lease_ms: int, park_id: str = "", park_ms: int = 0
    ) -> tuple[list[ClaimedTask], int]:
        claimed: list[ClaimedTask] = []
        next_ms = -1
        while len(claimed) < max_tasks:
            reply = await self._run(
                "claim",
                [worker_id, self._new_id(), lease_ms, max_tasks - len(claimed), park_id, park_ms,
                 self.max_task_bytes, self._oversized, *types],
                f"claim tasks of {types}",
            )
            next_ms = int(reply[0])
            items = list(reply[1:])
            good = await self._delivered(items, worker_id)
            claimed += good
            if len(good) * 6 == len(items):  # only undecodable bytes make it worth popping again at once
                break
            park_ms = 0  # this call is not waiting yet
        return claimed, next_ms

    async def _delivered(self, items: Sequence[Any], worker_id: str) -> list[ClaimedTask]:
        """Claimed tasks from ``id, raw, attempt, lease id, deadline ms, node type`` groups.

        Undecodable ones are dead-lettered, the reason naming the task hash and field. So
        is a task whose bytes name another node type than the queue it sat in (written by
        hand, or copied): it is not run, by this worker or any other (see ``decode_task``).
        Its dead letter keeps its bytes; enqueue it again as a task of the node type it means.
        """
        claimed: list[ClaimedTask] = []
        for index in range(0, len(items), 6):
            task_id, raw, attempt, lease_id, deadline, queue_type = items[index : index + 6]
            task_id, lease_id, queue_type = _text(task_id), _text(lease_id), _text(queue_type)
            try:
                if len(raw) > self.max_task_bytes:  # handed over by an enqueuer with a larger limit
                    raise _Oversized(oversized_task_reason(len(raw), self.max_task_bytes))
                try:
                    # Its id must be the one it is stored under: acks and nacks find it by that id.
                    task = decode_task(raw if isinstance(raw, bytes) else bytes(raw), queued_as=task_id,
                                       queued_in=queue_type)
                except PayloadDecodeError as exc:
                    raise PayloadDecodeError(f"{exc} (in task hash {self._keys.task(task_id)}, field 'raw')") from None
                check_attempt(int(attempt), self._keys.task(task_id))
            except ValueError as exc:  # _Oversized, PayloadDecodeError: the message is the reason
                await self._run("bad_payload", [task_id, lease_id, str(exc)], "dead-letter an undecodable task")
                # Said where the worker's operator looks, not only in the dead letter: it was not run.
                log.error("task %r (node type %r) is malformed and was dead-lettered unrun: %s; "
                          "'distributed-agents dead-letters show %s' shows it", task_id, queue_type, exc, task_id)
                continue
            claimed.append(ClaimedTask(task, lease_id, int(attempt), int(deadline) / 1000.0, worker_id))
        return claimed

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
        """Store the result and remove the task in one script; ``LeaseLostError`` if lost.

        The same script gives the worker's parked registration, while live, the task's slot
        back and keeps it live (see the module docstring): no re-registration under traffic.
        """
        result = TaskResult(claim.task.id, "succeeded", output=output, attempts=claim.attempt, worker_id=claim.worker_id,
                            started_at=claim.started_at)
        raw = encode(result.to_dict())
        args: list[Any] = [claim.task.id, claim.lease_id, self._new_id(), raw]
        park = self._park_of.get(claim.worker_id)
        sent = age = 0.0
        generation = -1
        if park is not None:
            sent = _loop_time()()
            if park.live(sent):
                generation, age = park.generation, 0.0 if park.claiming else max(0.0, sent - park.claimed_at)
                args += [park.id, round(age * 1000), _ms(self._park_seconds()), park.cap]
            else:
                park = None
        outcome = int(await self._run("ack", args, f"ack task {claim.task.id!r}", now=True))
        if outcome < 0:
            raise self._lost(claim)
        if outcome > 1 and park is not None and park.generation == generation:
            if outcome in (2, 3):
                park.room += 1
            if outcome in (3, 4):
                park.until = max(park.until, sent - age + self._park_seconds() - _PARK_MARGIN)
        if self._early.expecting(claim.task.id):  # known stored now, whatever its event does
            self._early.on_event(f"{claim.task.id}\n{raw.decode('utf-8')}")

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        """Record ``error``; re-deliver (after ``delay``) or dead-letter, in one script."""
        delay_ms = max(0, round(delay * 1000))
        outcome = int(
            await self._run(
                "nack",
                [claim.task.id, claim.lease_id, self._new_id(), str(error), delay_ms, "1" if final else "0"],
                f"nack task {claim.task.id!r}",
                now=True,
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
            "release", [claim.task.id, claim.lease_id, self._new_id()], f"release task {claim.task.id!r}", now=True
        )
        if int(outcome) < 0:
            raise self._lost(claim)

    # -- results and dead letters ------------------------------------------------------

    async def _results(self, ids: list[str]) -> tuple[dict[str, TaskResult], int]:
        reply = await self._run("results", ids, "read task results")
        found: dict[str, TaskResult] = {}
        for task_id, raw in zip(ids, reply[1:]):
            if raw is not None:
                found[task_id] = self._stored_result(task_id, raw)
        return found, int(reply[0])

    def _stored_result(self, task_id: str, raw: bytes) -> TaskResult:
        """The result stored for ``task_id``; a failed one naming its key if the bytes are not a result of it.

        Something other than this engine wrote there (or a result of another task was
        copied in): the task's outcome is unknown, so the workflow's step fails with an
        error saying where and what to do, instead of a decoding error with no key.
        """
        key = self._keys.result(task_id)
        try:
            if raw.startswith(b"\0"):
                raise ValueError(f"a Redis {raw[1:].decode(errors='replace')}, not a string")
            if raw.startswith(b"\2"):
                return _gone(task_id, key, raw[1:].decode(errors="replace"))
            result = TaskResult.from_dict(decode(raw))
            if result.task_id != task_id:
                raise ValueError(f"it is the result of task {result.task_id[:80]!r}")
            return result
        except ValueError as exc:  # PayloadDecodeError too
            log.error("the result of task %r at Redis key %r is malformed: %s", task_id, key, exc)
            return malformed_result(task_id, "the result", f"Redis key {key!r}", exc, "DEL")

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
        # (Loops, not comprehensions reading locals: those make cells kept while this waits.)
        check: list[str] | None = []
        for task_id in ids:
            if task_id not in found and (timeout <= 0 or not self._early.expecting(task_id)):
                check.append(task_id)
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
                unread = _not_in(ids if check is None else check, found)
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
        """Dead letters, oldest first (one round trip).

        Tasks dead-lettered because their hash was malformed (a field missing or of the
        wrong kind, written by hand) are listed with their raw bytes, what is left of
        them, and a reason naming the hash key and field.
        """
        reply = await self._run("dead_letters", [node_type or "", int(limit)], "list dead letters")
        letters = []
        for task_id, kind, reason, attempts, raw, dead_at, bad, errors in reply:
            reason_text = _text(reason)
            task: Task | None = None
            if _text(bad) != "1":
                try:
                    task = decode_task(bytes(raw))
                except PayloadDecodeError:
                    task = None
            history = tuple(_text(e) for e in errors) or (reason_text,)
            letters.append(
                DeadLetter(
                    task_id=_text(task_id),
                    node_type=_text(kind),
                    reason=reason_text,
                    errors=history,
                    # A dead letter's hash edited by hand still lists (the numbers as 0).
                    attempts=_number(attempts, int),
                    task=task,
                    raw=None if task is not None else bytes(raw),
                    dead_at=_number(dead_at, float) / 1000.0,
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

    async def stop_claiming(self, worker_id: str) -> None:
        """End the parked registrations of ``worker_id`` (one round trip when it has any): tasks
        handed to them that no claim took go back to their place at once (not counted)."""
        parks: list[str] = []
        for key in [key for key in self._parks if key[1] == worker_id]:
            parks += [park.id for park in self._parks.pop(key)]
        self._park_of.pop(worker_id, None)
        if parks:
            await self._run("unpark", parks, f"end the parked claims of worker {worker_id!r}")

    async def close(self) -> None:
        """Stop waiting machinery; close the connection if this queue opened it. Idempotent.

        Parked registrations end first, and tasks handed to them that no claim took are
        given back at once (not counted as an attempt), instead of waiting out their lease.
        """
        self._closes += 1
        if self._wakes:  # a push landing after the unpark would leave its list behind
            await asyncio.wait(set(self._wakes))
        parks = [park.id for spare in self._parks.values() for park in spare]
        self._parks.clear()
        self._park_of.clear()
        if parks:
            with contextlib.suppress(Exception):  # best effort: their leases run out otherwise
                await self._run("unpark", parks, "end parked claims")
        await self._notifier.close()
        if self._owns_connection:
            await self._connection.close()

    def __repr__(self) -> str:
        return f"<RedisTaskQueue {self._connection.masked_url} prefix={self.prefix!r}>"



# Seconds a parked registration outlives the longest sleep, and how much earlier than
# the server's end of it this side stops counting on it (requests take time to arrive).
_PARK_SLACK = 0.2
_PARK_MARGIN = 0.1
# Lifetime of a hand-over list made by a wake-up push alone (a hand-over sets its own).
_WAKE_TTL_MS = 60_000
# Time between two ticks of a Redis server's event loop (``hz`` 10, the default), on which it
# ends blocked commands whose timeout passed: a BLMPOP may end this much after its timeout.
_SERVER_TICK = 0.1


class _Oversized(ValueError):
    """A delivered task longer than the queue's ``max_task_bytes``: dead-lettered unread."""


class _Park:
    """One parked claimer registration: its id and until when (loop time) it is live."""

    __slots__ = ("id", "until", "next_at", "room", "cap", "claiming", "claimed_at", "generation")

    def __init__(self, park_id: str) -> None:
        self.id = park_id
        self.until = 0.0  # loop time; 0: not registered
        self.room = 0  # tasks it may still be handed
        # The most tasks the claim call using it (or that used it last) takes: an ack gives
        # the registration a slot back only up to that (the caller may count a task's slot
        # free before its ack: core.worker "Slots").
        self.cap = 0
        self.next_at = -1.0  # loop time of the next delayed release or lease expiry it was told; -1: none
        self.claiming = False  # a claim call is using it now
        self.claimed_at = 0.0  # loop time the last claim call using it returned
        self.generation = 0  # claim scripts sent with it: an ack's top-up counts for the registration it saw

    def live(self, now: float) -> bool:
        return self.until > now and not 0 <= self.next_at <= now


def _unframe(data: bytes) -> list[bytes]:
    """The fields of a length-prefixed hand-over message (``3:abc1:x``)."""
    parts: list[bytes] = []
    index = 0
    while index < len(data):
        colon = data.index(b":", index)
        size = int(data[index:colon])
        parts.append(data[colon + 1 : colon + 1 + size])
        index = colon + 1 + size
    return parts


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


def _gone(task_id: str, key: str, state: str) -> TaskResult:
    """The failed result of a task settled (``state``) whose result key is gone: logged, never waited on."""
    log.error("the result of task %r is gone from Redis key %r though the task is %s", task_id, key, state)
    return TaskResult(task_id, "failed", error=(
        f"the result of task {task_id!r} is gone from Redis key {key!r} though the task is {state} (evicted by the "
        "server's maxmemory policy, or deleted), so its outcome is unknown; resume the workflow to run the task "
        "again, and give the server maxmemory-policy noeviction (a volatile-* policy evicts results)"))


def _done_event(message: str) -> tuple[str, TaskResult | None]:
    """``(task id, result or None)`` from a "done" event ``id`` or ``id\\nresult JSON``."""
    task_id, _, body = message.partition("\n")
    if not body:
        return task_id, None
    try:
        result = TaskResult.from_dict(decode(body.encode("utf-8")))
    except (PayloadDecodeError, ValueError, KeyError, TypeError):
        return task_id, None  # read it from its key instead
    # An event naming one task with another's result was not published by an ack: read the key.
    return task_id, (result if result.task_id == task_id else None)


def _not_in(ids: Sequence[str], found: Mapping[str, Any]) -> list[str]:
    return [task_id for task_id in ids if task_id not in found]


def _pause(remaining: float, next_ms: int, cap: float = _POLL_CAP) -> float:
    pause = min(remaining, cap)
    if next_ms >= 0:
        pause = min(pause, next_ms / 1000.0 + 0.001)
    return max(pause, 0.0)


def _loop_time() -> Callable[[], float]:
    return asyncio.get_running_loop().time


def _number(value: Any, kind: Callable[[str], Any]) -> Any:
    """``kind(value)`` of a number read from a task hash, 0 when it is none (written by hand)."""
    try:
        number = kind(_text(value))
    except ValueError:
        return kind("0")
    return number if number == number and abs(number) != float("inf") else kind("0")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
