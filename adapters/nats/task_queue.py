"""TaskQueue on NATS JetStream: a work-queue stream plus a KV record per task.

Layout (``<p>`` is the sanitised prefix):

* Stream ``<p>_TASKS`` (work-queue retention, file storage) with one subject per node
  type and priority, ``<p>.tasks.<type>.<p3|m2>``, and one durable pull consumer per
  subject (``<type>-<p3>``), shared by every worker of that type. The stream takes
  exactly ``<p>.tasks.*.*`` (a publish of another depth is refused by the server); a
  message on a subject of a served type whose priority token is none of these is
  dead-lettered by the next look (``_sweep_off_layout``). ``AckWait`` is the
  visibility timeout. A claim asks the stream which priority subjects hold messages
  (``stream_info(subjects_filter=...)``: the look), then pulls highest priority first with
  ``no_wait``; within a priority, messages of several node types are merged by stream
  sequence, so order is FIFO by enqueue across types too. Between looks (at most one per
  ``poll_interval``) a claim reads its types' levels keys instead (below): when they list
  one priority, it pulls there, and for one type the pull goes out with the key's read.
* KV ``<p>_tasks``: one control record per task id: state (queued, claimed, delayed,
  done, dead, cancelled), the stream sequence of the message that carries it (0, none
  bound, until the first claim binds one), a digest of the task's message (an enqueue's
  record: it tells the id's messages of an earlier task from this one's), the
  attempt count, the error history (its newest errors, about 16 KiB: ``error_history``,
  so a result of ``max_payload_bytes`` still fits beside it), the current lease (delivery)
  and, once settled, the ``TaskResult``. It is the source of truth for ownership; every transition is a
  compare-and-set on the record's KV revision.
* KV ``<p>_claims``: a mark per message given back with a NAK (``<type>.nak.<stream
  seq>``), removed when it is delivered again. ``stats`` counts in flight the messages
  delivered and not acked (the consumers' ``num_ack_pending``) minus these marks (JetStream
  counts a NAKed message as unacked until its next delivery), so the hot path of a task
  (claim, ack) writes nothing for ``stats``.
* KV ``<p>_claims`` also holds a mark per message of a task cancelled before any claim
  bound it (``<type>.gone.<task>``): such a message cannot be deleted by sequence, and
  stays until a claim acks it away (removing the mark); ``stats`` does not count it queued.
* KV ``<p>_claims`` also holds ``<type>.levels``: the priorities tasks of that type were
  ever queued at (a JSON list, never shrinking). Every enqueue path adds its level there
  before its first message at that level goes out, so a claim that reads the key after an
  enqueue returned knows that level: with one level listed, pulling there is priority
  order, and no look is needed. A claim that pulled at the level it last saw and then
  reads a second level in the key gives those messages back (a NAK, marked, uncounted)
  and looks. Messages a foreign producer published at a level no enqueue listed are found
  by the next look (within ``poll_interval``); a key that is not such a list means look.
* KV ``<p>_dead``: dead letters (``<type>.<task>``), kept until requeued.
* Core subjects ``<p>.wake.<type>`` (a task became ready: claimers waiting stop polling)
  and ``<p>.done`` (a result was stored: ``wait_results`` wakes).

Leases. A lease id is the delivery's ack reply subject, which names the stream sequence
and the server's delivery count. JetStream itself would accept an ack from a stale
holder, so ownership is checked on the record: claiming CASes the record to the new
lease; ``ack``/``nack``/``extend``/``release`` CAS it away from their own lease and raise
``LeaseLostError`` if the record names another lease, the deadline passed, or the CAS
loses. A per-claim keeper (a timer, then a task if the claim outlives its first
interval) in the claiming process sends ``in_progress()`` so leases
longer than AckWait hold, and at the deadline expires the lease itself (records the
error, naks or dead-letters), so leases shorter than AckWait end on time too. If the
holder process dies, AckWait bounds the lease and the next claimer sees the record still
naming the old lease: it records "lease expired" and counts the attempt.

Sizes. Every dead letter and dead record fits the server's ``max_payload``, whatever the
errors: a record keeps at most 16 KiB of errors (``error_history``), its ``reason`` and
failed result's ``error`` at most 8 KiB of JSON each (``error_history.shortened``),
and a letter holds its task beside those. So ``enqueue``, ``enqueue_many`` and
``requeue_dead_letter`` refuse (``PayloadTooLargeError``, nothing written) a task whose
letter could be over ``max_payload``: its JSON plus its id and node type again plus
``LETTER_RESERVE_BYTES`` (32 KiB), or whose message could be, with the headers that name
its id (a very long id). The core never makes such a task (a task carries no
state, and its payload is within ``max_payload_bytes``: ``core.limits.task_bytes_limit``). A claim dead-letters, as oversized and keeping
their first ``DEAD_RAW_KEPT`` bytes, bytes over ``max_task_bytes`` (unread) and a task
over that bound (written by something other than ``enqueue``; not run); a letter that would still not
fit (a raw task that re-encodes longer) keeps its task's first bytes as ``raw`` instead.

Attempts and dead letters. MaxDeliver is left unlimited: the adapter counts attempts in
the record (``release`` gives one back, which the server's delivery count cannot do, and
a message that hit MaxDeliver would sit in the stream for ever). A nack on the last
attempt, or a lease expiry on it, CASes the record to ``dead`` with a failed result,
writes the dead letter and acks the message away. Undecodable bytes are dead-lettered
at claim time with the reason.

Idempotent enqueue. The record is created first (``create`` semantics: it holds for as long
as the record lives; done records live ``result_ttl``, dead ones until requeued), then the
message is published with ``Nats-Msg-Id`` = the id's carried form (``_carried_id``: the id
itself, or "=" and its token for an id a header cannot carry exactly, so distinct ids never
share a message id), "@" and the revision the record was created at
(``_enqueue_message_id``), and the id it is queued under (``_id_headers``: ``Da-Task-Id`` =
the id itself where a header carries it exactly, else ``Da-Task-Token`` = its token). An
enqueue that finds the record as an enqueue created it (queued, no message bound, written by
no one since) and older than ``_UNPUBLISHED_GRACE`` (5 s; it waits till then) sends the
message again under the same message id (its producer may have died, or lost the server,
between the two writes): the dedup window drops the copy if the first went out within it;
past it (120 s), the first claimed runs and the other is acked away unrun, and ``stats``
counts both as queued until then. As the port requires, a finished id is new
again once its result expired (``_id_is_free``: a record of its own, so a message id of its
own), while a dead letter keeps its id until it is requeued or purged. A message of the id's
earlier task (another message: its ``digest``) is never claimed under the new record
(``_of_this_record``). A message with no record (a foreign producer's, or an older version's
whose producer died between its message and its record) is claimed with a record the claim
creates; one published after its record (``_written_after_its_record``) whose record is gone
is stale and acked away unrun.

First claims without a read. The revision in an enqueue's message id names the record that
enqueue created: a first delivery is claimed by a CAS against that revision, built from the
task the message carries (``_trusted_revision``); any later write of the record moves its
revision on, so the CAS loses and the claim reads the record (``_take``).

Replicas. A direct get may be answered by a replica behind the stream's leader (nats-server
issue 4162: one just restarted answers with records as they were). A write after a read is
a CAS on the revision read, so a stale read only makes it lose; reads that decide without
such a write, or retry after a lost one, go to the leader (``_read_from_leader``): a claim
about to ack a message away (a stale duplicate, a settled task), a claim's retry after its
CAS lost, settling a lease this process does not remember, ``cancel``,
``requeue_dead_letter``, the purge mark, and the levels key's registration after a lost CAS.

Waiting. Claimers wait on wake-up subjects subscribed once per queue (``wakeups``); a
claim that took every task it saw waits for a wake-up before looking again. Results come
in done events, which carry small results (``done_events``): a queue never reads the
result of a task it enqueued unless an event may have been lost; other results are read
in one batched direct get.

Round trips per task: enqueue 2 (create record, publish), pipelined across the tasks of
``enqueue_many``, each message sent from the client's reader as soon as its record is
stored (``replies.js_publish_chain``: the producer wakes once); claim 1 (the record's
CAS, against the revision the message names) plus the levels key's read and a pull (sent
together; a look instead once per poll interval), shared by the tasks of one claim (a
redelivery's record is read, one batched read for those of one claim); ack 1 to 2
(CAS with the result, then the ``+ACK``, sent from the reader once the CAS is stored: one
wait; the acks made in one event-loop pass go out together behind one waiter, and only
the last ``+ACK`` of each consumer there asks for the server's answer, which a consumer
gives once it took every ack before it: ``_send_acks``), and the done event, one message
for the acks whose CASes one read of the reader found stored (``done_events.DoneBatch``). The result is durable (a stored KV write) before the
message is acked; a crash in between leaves the message to be redelivered, and its
claimer sees the record ``done`` and just acks it. Requests go out through one shared
reply subscription per client (``replies``), not nats-py's per-call machinery, and are
queued by ``replies.send`` rather than nats-py's ``publish``.
``tests/adapters/nats/test_round_trips.py`` counts them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats import kv, replies
from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.delivery import delivery_count, pull_pending, pull_ready, send_ack, stream_sequence
from distributed_agents.adapters.nats.done_events import DoneBatch, DoneEvents, done_payload, done_payload_raw
from distributed_agents.adapters.nats.wakeups import Wakeups
from distributed_agents.adapters.nats.error_history import ERRORS_KEPT_BYTES, REASON_KEPT_BYTES, shortened, with_error
from distributed_agents.adapters.nats.errors import mask_url, nats_errors
from distributed_agents.adapters.nats.naming import priority_from_token, token, untoken
from distributed_agents.adapters.nats.naming import priority_token as written_priority_token
from distributed_agents.core.codec import decode, encode, encode_float, encode_text
from distributed_agents.core.errors import ConfigurationError, LeaseLostError, PayloadDecodeError, PayloadTooLargeError
from distributed_agents.core.limits import (
    DEAD_RAW_KEPT,
    DEFAULT_MAX_PAYLOAD_BYTES,
    oversized_task_reason,
    task_bytes_limit,
)
from distributed_agents.core.ports.task_queue import (
    ClaimedTask,
    DeadLetter,
    QueueStats,
    Task,
    TaskQueue,
    TaskResult,
    check_attempt,
    decode_task,
    lease_expired_reason,
    malformed_result,
    task_from_dict,
    task_to_dict,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["NatsTaskQueue"]

log = logging.getLogger("distributed_agents.adapters.nats")

_TERMINAL = ("done", "dead", "cancelled")
# ``_take`` moved a delayed task whose delay passed to the end of its priority.
_MOVED = object()
# How often a waiting claim or wait_results looks again when no wake-up came (delayed
# re-deliveries and AckWait expiries publish no wake-up).
_POLL = 0.2
# Longest wait_results sleeps between reads, in case a done event was lost (reconnect).
_RESULT_POLL = 1.0
# The middle token of a given-back mark's key (``<type>.nak.<stream seq>``).
_GIVEN_BACK = "nak"
# The middle token of a withdrawn message's mark (``<type>.gone.<task token>``).
_WITHDRAWN = "gone"
# Seconds after which an enqueue's record with no message bound is taken for that of a producer
# that died (or lost the server) before publishing (``_enqueue_known``): a producer still running
# publishes within its request timeout (5 s).
_UNPUBLISHED_GRACE = 5.0
# Tasks whose messages (then records) enqueue_many has in flight at once.
_ENQUEUE_CHUNK = 256
# The first chunk of a wide enqueue_many, doubled chunk by chunk up to _ENQUEUE_CHUNK: its
# wake-up reaches the waiting workers after a few tasks' writes, not 256 tasks' (they run
# the first tasks while the rest are written).
_FIRST_ENQUEUE_CHUNK = 32


@dataclass
class _Held:
    """What the claiming process remembers about one of its leases."""

    record: dict[str, Any]
    revision: int
    ack_wait: float
    keeper: asyncio.Task[None] | None = None
    # ``record``'s JSON as the claim stored it (None when not kept): the ack edits it (``_done_bytes``).
    raw: bytes | None = None
    # Until the first interval passed, a timer stands in for the keeper (see ``_arm``; one
    # shared by the leases claimed together, ``_arm_together``).
    timer: asyncio.TimerHandle | _SharedTimer | None = None


class _SharedTimer:
    """The one timer of leases claimed together (``_arm_together``): ``cancel`` is each lease's
    (forgotten: settled, extended or closed), and the timer itself is cancelled once every
    lease it arms has been."""

    __slots__ = ("handle", "left")

    def __init__(self, left: int) -> None:
        self.left = left
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.left -= 1
        if self.left <= 0 and self.handle is not None:
            self.handle.cancel()


class _Shared(asyncio.Future[None]):
    """A future several callers await: one caller's cancellation does not cancel it for the
    others (that caller's CancelledError comes once it completes: asyncio's Task.cancel
    does so for a waiter that refuses to be cancelled)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class _Acks:
    """Chained acks of one event-loop pass: their CAS requests, what each does once its CAS is
    stored, and the leases their ``+ACK``s settle, sent together by ``_send_acks``; ``waiter``
    completes when every one is answered and their consumers confirmed them."""

    __slots__ = ("_answers", "batch", "committed", "leases", "requests", "unconfirmed", "waiter")

    def __init__(self, waiter: asyncio.Future[None]) -> None:
        self.waiter = waiter
        self.requests: list[tuple[str, bytes, bytes]] = []
        self.committed: list[Callable[[], None]] = []
        self.leases: list[str] = []
        self.batch: Any = None
        # Items whose plain +ACK its consumer did not confirm (the confirming request failed): why.
        self.unconfirmed: dict[int, Exception] = {}
        self._answers: list[tuple[Any, Any]] | None = None

    def answers(self) -> list[tuple[Any, Any]]:
        """Per request, in order: ``js_publish_chain``'s answers (read once, tokens closed); an
        item sent plain whose consumer's confirmation failed has that failure as its second."""
        if self._answers is None:
            self._answers = [(first, self.unconfirmed.get(index, second)) for index, (first, second) in
                             enumerate(replies.chain_answers(self.batch))]
        return self._answers


@dataclass
class _Found:
    record: dict[str, Any] | None
    revision: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # ``record``'s JSON as read (None when not kept): a claim edits it (``_claimed_bytes``).
    raw: bytes | None = None
    # When the server stored the record (seconds since the epoch), from a leader read; else None.
    written_at: float | None = None
    # For a record an enqueue created, as a first delivery of its message trusts it to be
    # (``_trusted_revision``; not read): its JSON up to its seq's value (``_new_record_head``).
    head: bytes | None = None


LETTER_RESERVE_BYTES = 32 * 1024
"""Room a dead letter keeps beside its task, its id and its node type: its reason
(``REASON_KEPT_BYTES``, 8 KiB), its errors (``ERRORS_KEPT_BYTES``, 16 KiB) and its other
fields (under 1 KB). A task the core makes (its payload within ``max_payload_bytes``, the
server's ``max_payload`` minus 64 KiB at most) is always under the limit this leaves."""

assert REASON_KEPT_BYTES + ERRORS_KEPT_BYTES + 1024 <= LETTER_RESERVE_BYTES


def letter_bytes(task_bytes: int, task_id: str, node_type: str) -> int:
    """The most bytes the dead letter of a task takes whose JSON has ``task_bytes`` bytes."""
    return task_bytes + len(encode(task_id)) + len(encode(node_type)) + LETTER_RESERVE_BYTES


class NatsTaskQueue(TaskQueue):
    """TaskQueue over JetStream; see the module docstring for the mapping."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        visibility_timeout: float = 30.0,
        max_attempts: int = 3,
        result_ttl: float = 3600.0,
        max_payload_bytes: int | None = None,
    ) -> None:
        self._conn = conn
        # Messages longer than this are dead-lettered at claim time without being decoded
        # (core.limits.task_bytes_limit); the server's max_payload bounds what arrives at all.
        self.max_task_bytes = task_bytes_limit(max_payload_bytes or DEFAULT_MAX_PAYLOAD_BYTES)
        self.visibility_timeout = visibility_timeout
        self.max_attempts = max_attempts
        self.result_ttl = result_ttl
        self._held: dict[str, _Held] = {}
        # The chained acks of this event-loop pass, sent together at its end (see ``_ack_chained``).
        self._acks: _Acks | None = None
        self._ack_waits: dict[tuple[str, int], float] = {}
        self._levels_known: set[tuple[str, int]] = set()  # levels this queue registered (_ensure_level)
        self._done = DoneEvents(conn)
        # The done events of the chained acks, published together per reply read (``_ack_chained``).
        self._done_batch: DoneBatch | None = None
        # Longest waits between looks when no wake-up / done event came (see the constants).
        self.poll_interval = _POLL
        self.result_poll = _RESULT_POLL
        self._wakeups = Wakeups(conn)
        # Per set of node types: the wake-up events taken before a claim that took every
        # task it saw (see ``claim``).
        self._drained: dict[tuple[str, ...], list[asyncio.Event]] = {}
        # Per set of node types: when a claim last looked at the stream (time.monotonic()).
        self._looked: dict[tuple[str, ...], float] = {}
        # The node types the last claim checked against the consumer name limit (``_check_consumer_name``).
        self._long_types_checked: list[str] = []
        # Per node type: the one priority level its levels key listed at its last claim.
        self._level: dict[str, int] = {}

    # -- helpers -----------------------------------------------------------------------
    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return nats_errors(self._conn.url, action)

    @property
    def _tasks(self) -> Any:
        return self._conn.bucket(self._conn.names.task_bucket)

    @property
    def _claims(self) -> Any:
        return self._conn.bucket(self._conn.names.claim_bucket)

    @property
    def _dead(self) -> Any:
        return self._conn.bucket(self._conn.names.dead_bucket)

    def _limit(self, record: Mapping[str, Any]) -> int:
        value = record.get("max_attempts")
        return int(value) if value is not None else self.max_attempts

    @property
    def _max_payload(self) -> int:
        """The server's max_payload (bytes): no message, KV value or dead letter may be longer."""
        return int(getattr(self._conn.nc, "max_payload", 0) or 1024 * 1024)

    def _check_letter_fits(self, task: Task, raw: bytes) -> None:
        """Raise ``PayloadTooLargeError`` if ``task`` (encoded as ``raw``) could not be dead-lettered,
        or its id is too long for the keys it is kept under (``_keyable``)."""
        if not _keyable(task.id, task.node_type):
            raise PayloadTooLargeError(
                f"task id {task.id[:80]!r}... ({len(task.id)} characters, node type {task.node_type[:80]!r}) is too long "
                f"for the NATS queue at {mask_url(self._conn.url)}: id and node type are kept as key tokens of at "
                f"most {_MAX_KEY_BYTES} bytes together (their record and dead letter are named in subjects, which "
                f"nats-server limits to its 4 KiB control line); nothing was written. Use a shorter id (a hash of a "
                f"long one, say)", size=len(token(task.id)) + len(token(task.node_type)), limit=_MAX_KEY_BYTES,
                node=task.node_type)
        limit = self._max_payload
        # (A header names the id twice, each at most 12 bytes a character as a token.)
        if len(raw) + LETTER_RESERVE_BYTES + 6 * len(task.node_type) + 30 * len(task.id) + 4 <= limit:
            return  # the common case, without encoding the id and type (see ``_unlettered_reason``)
        size = letter_bytes(len(raw), task.id, task.node_type)
        headers = len(_task_headers(task.id)) + _MSG_ID_SUFFIX_BYTES
        if size > limit or len(raw) + headers > limit:
            largest = limit - max(size - len(raw), headers)
            raise PayloadTooLargeError(
                f"task {task.id!r} (node type {task.node_type!r}) is too large for the NATS queue at "
                f"{mask_url(self._conn.url)}: it encodes to {len(raw)} bytes of JSON, and a task with this id and "
                f"node type may take at most {largest} bytes so that its dead letter (the task, its id and node type "
                f"and up to {LETTER_RESERVE_BYTES} bytes of errors and reason) fits the server's max_payload of "
                f"{limit} bytes, and so does its message with the {headers} bytes of headers naming it; nothing was "
                f"written. Keep large data outside the task (store it elsewhere and pass "
                f"a reference), or raise max_payload in the nats-server configuration",
                size=len(raw), limit=largest, node=task.node_type)

    def _unlettered_reason(self, size: int, task: Task) -> str | None:
        """The dead-letter reason for a delivered task of ``size`` bytes whose letter could be
        over the server's max_payload (bytes ``enqueue`` refuses, written by something else), or None."""
        if size + LETTER_RESERVE_BYTES + 6 * (len(task.id) + len(task.node_type)) + 4 <= self._max_payload:
            return None  # the common case (a JSON string takes at most 6 bytes a character, plus quotes)
        limit = self._max_payload - (letter_bytes(size, task.id, task.node_type) - size)
        if size <= limit:
            return None
        return (f"oversized task: {size} bytes, over the limit of {limit} bytes for its id and node type (its dead "
                f"letter must fit the server's max_payload of {self._max_payload} bytes with {LETTER_RESERVE_BYTES} "
                f"bytes for errors and reason); it was not run. Whatever wrote it bypassed enqueue, which refuses "
                f"such a task. The dead letter keeps its first {DEAD_RAW_KEPT} bytes")

    async def _read(self, task_id: str) -> _Found:
        """The task's control record; ``PayloadDecodeError`` if what is stored there is not one (``_control_record``)."""
        return self._found(await kv.get(self._tasks, token(task_id)))

    def _found(self, entry: kv.Entry | None) -> _Found:
        """``entry`` of the task bucket (or None) as a ``_Found``."""
        if entry is None:
            return _Found(None)
        return _Found(_control_record(entry.value, f"{self._conn.names.task_bucket} {entry.key}"), entry.revision,
                      raw=entry.value, written_at=entry.written_at)

    async def _ensure_level(self, node_type: str, priority: int) -> None:
        """Before a message of ``node_type`` goes out at ``priority``: its consumer name is
        checked and the level is in the type's levels key (see ``_known_levels``). Once per
        queue and level.

        An enqueue does not make the consumer: the work-queue stream keeps a message no
        consumer has seen, and the first claimer makes it with its own visibility timeout
        (``_ensure_consumer``), so the workers' ``visibility_timeout`` is the AckWait of their
        tasks whatever the orchestrator that enqueued first was given.
        """
        key = (node_type, priority)
        if key in self._levels_known:
            return
        _check_consumer_name(node_type, self._conn.names.task_consumer(node_type, priority))
        await self._register_level(node_type, priority)
        self._levels_known.add(key)

    async def _ensure_consumer(self, node_type: str, priority: int) -> float:
        """The AckWait (seconds) of the consumer of ``node_type``'s tasks at ``priority``, for a
        claim: made if missing, with this queue's ``visibility_timeout``.

        Only claimers make consumers (an enqueue does not, ``_ensure_level``), so the first
        worker to claim a level sets its AckWait; no process changes one that exists (every
        holder must know the AckWait the server applies: a worker lowering it under another's
        feet had that one's running tasks redelivered to it, run twice). A claimer whose
        visibility timeout differs from the consumer's logs it once and keeps its leases alive
        by the consumer's AckWait: give every worker of a deployment one visibility timeout.
        """
        key = (node_type, priority)
        known = self._ack_waits.get(key)
        if known is not None:
            return known
        import nats.js.errors
        from nats.js import api

        await self._ensure_level(node_type, priority)
        names = self._conn.names
        config = api.ConsumerConfig(
            durable_name=names.task_consumer(node_type, priority),
            filter_subject=names.task_subject(node_type, priority),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.visibility_timeout,
            max_deliver=-1,
            max_ack_pending=100_000,
        )
        try:
            info = await self._conn.js.consumer_info(names.task_stream, config.durable_name or "")
        except nats.js.errors.NotFoundError:
            try:
                info = await self._conn.js.add_consumer(names.task_stream, config)
            except nats.js.errors.BadRequestError:  # made meanwhile by another process: as it is
                info = await self._conn.js.consumer_info(names.task_stream, config.durable_name or "")
        ack_wait = float(info.config.ack_wait or self.visibility_timeout)
        if abs(ack_wait - float(self.visibility_timeout)) > 1e-3:
            log.warning("NATS %s: the consumer of node type %r (priority %d) redelivers after %gs (its AckWait, "
                        "set by the worker that made it), not this queue's visibility timeout of %gs: a dead "
                        "worker's tasks come back after %gs; give every worker of the deployment one "
                        "visibility timeout (--visibility-timeout or ?visibility_timeout=). To change the "
                        "consumer's: stop every worker serving %r, delete consumer %r of stream %r (nats consumer "
                        "rm %s %s); the next worker to claim makes it anew with its own visibility timeout, and "
                        "the queued tasks stay in the stream", mask_url(self._conn.url),
                        node_type, priority, ack_wait, self.visibility_timeout, ack_wait, node_type,
                        config.durable_name, names.task_stream, names.task_stream, config.durable_name)
        self._ack_waits[key] = ack_wait
        return ack_wait

    async def _register_level(self, node_type: str, priority: int) -> None:
        """Add ``priority`` to the levels key of ``node_type`` (``<type>.levels`` in the claims
        bucket: the priorities tasks of that type were ever queued at, never shrinking). A
        key that is not such a list (written by hand) is left as it is: claims of that type
        then always look at the stream."""
        key = _levels_key(node_type)
        for attempt in range(20):
            # After a lost CAS, from the leader: a lagging replica would answer the same old revision every time.
            entry = await (kv.get(self._claims, key) if attempt == 0 else kv.get_from_leader(self._conn.js, self._claims, key))
            levels = _levels_of(entry)
            if entry is not None and (levels is None or priority in levels):
                return
            new = encode(sorted({*(levels or ()), priority}))
            if await kv.cas(self._conn.js, self._claims, key, new, last=0 if entry is None else entry.revision):
                return
        raise RuntimeError(f"the priority levels key {key!r} of node type {node_type!r} kept changing "
                           "(20 writers in a row won): retry the enqueue")

    async def _pull_at_known_level(self, types: list[str], max_tasks: int) -> tuple[dict[int, list[str]] | None, dict[str, list[Msg]]]:
        """``_known_levels``, and for one type whose last claim found one level, its pull there
        sent together with the read of its levels key (one round-trip latency): the level and
        the messages pulled, or (None, {}) when a look must decide (the pulled messages then
        given back, uncounted: a level was added meanwhile, or the key cannot be read)."""
        if len(types) != 1 or self._level.get(types[0]) is None:
            levels = await self._known_levels(types)
            if levels is not None and len(types) == 1:
                self._level[types[0]] = next(iter(levels))
            return levels, {}
        node_type = types[0]
        level = self._level[node_type]
        reading = await kv.start_get(self._claims, _levels_key(node_type))
        try:
            ready = await pull_ready(self._conn.nc, self._conn.names.task_stream,
                                     self._conn.names.task_consumer(node_type, level), max_tasks)
        except BaseException:
            reading.drop()
            raise
        listed: list[int] | None
        try:
            listed = _levels_of(kv.entry_of(await reading.reply(), _levels_key(node_type)))
        except Exception:
            listed = None  # the look decides (and raises what is wrong with the server)
        if listed == [level]:
            return {level: [node_type]}, {node_type: ready}
        self._level.pop(node_type, None)
        for msg in ready:
            await self._give_back_unneeded(node_type, msg)
        return None, {}

    async def _known_levels(self, types: list[str]) -> dict[int, list[str]] | None:
        """The one priority level tasks of ``types`` were ever queued at, with the types queued
        there, read from their levels keys (one read) - None when that does not prove where
        to pull: a key absent or damaged, or more than one level (then the look counts them).

        Enough instead of a look: every enqueue adds its level to the key before its
        message is published (``_ensure_level``), so a claim reading the key after an
        enqueue returned knows its level; with one level, pulling there is priority order.
        """
        keys = [_levels_key(t) for t in types]
        if len(keys) == 1:
            entry = await kv.get(self._claims, keys[0])
            entries = {} if entry is None else {keys[0]: entry}
        else:
            entries = await kv.get_many(self._claims, keys)
        found: dict[int, list[str]] = {}
        for node_type, key in zip(types, keys):
            levels = _levels_of(entries.get(key))
            if levels is None:
                return None
            for level in levels:
                found.setdefault(level, []).append(node_type)
        return found if len(found) == 1 else None

    async def _wake(self, node_type: str) -> None:
        # Core NATS, no round trip: a lost wake-up only costs a waiting claimer one poll.
        replies.send(self._conn.nc, self._conn.names.wake_subject(node_type))

    async def _notify_done(self, task_id: str, result: TaskResult | None = None) -> None:
        # After the result is stored (the commit): the event may carry it, see done_events.
        self._done.record(task_id, result)
        replies.send(self._conn.nc, self._conn.names.done_subject, done_payload(task_id, result))

    async def _give_back(self, node_type: str, lease_id: str, *, delay: float = 0.0) -> None:
        """NAK a delivery (JetStream delivers it again, after ``delay``), marked first as
        given back: the server counts a NAKed message as pending an ack until it is
        delivered again, and ``stats`` takes the marked ones out of its in-flight count.
        The NAK is confirmed: a claim that looks or pulls next (this process's, or a test's)
        finds the message ready again, not still held."""
        await kv.put(self._conn.js, self._claims, _given_back_key(node_type, stream_sequence(lease_id)), b"1")
        await send_ack(self._conn.nc, lease_id, "nak", delay=delay, confirmed=True)

    async def _taken_back(self, node_type: str, lease_id: str) -> None:
        """A delivery came again: drop the mark ``_give_back`` may have left on its message."""
        if delivery_count(lease_id) > 1:
            await kv.remove(self._conn.js, self._claims, _given_back_key(node_type, stream_sequence(lease_id)))

    # -- producing ---------------------------------------------------------------------
    async def enqueue(self, task: Task) -> bool:
        raw = encode(task_to_dict(task))
        self._check_letter_fits(task, raw)
        with self._errors(f"enqueue task {task.id!r}"):
            await self._done.ensure()
            # Expected before it can run: its done event is kept for wait_results.
            self._done.expect(task.id)
            created = await self._enqueue(task, raw)
            if not created:
                self._done.forget([task.id])  # someone else's task: wait_results reads it
            return created

    async def _enqueue(self, task: Task, raw: bytes) -> bool:
        with self._errors(f"enqueue task {task.id!r}"):
            await self._ensure_level(task.node_type, task.priority)
            fresh = _fresh_record_bytes(task, raw)
            revision = await kv.cas(self._conn.js, self._tasks, token(task.id), fresh, last=0)
            if revision is None:
                return await self._enqueue_known(task, raw, fresh)
            await self._publish_task(task, raw, _enqueue_message_id(task.id, revision))
            await self._wake(task.node_type)
            return True

    async def _enqueue_known(self, task: Task, raw: bytes, fresh: bytes) -> bool:
        """``enqueue`` of ``task`` (its JSON ``raw``; ``fresh``, the record a first enqueue
        creates) whose record could not be created: one exists. True if the task was queued
        anew (its id was free: ``_id_is_free``).

        A record an enqueue created and no one wrote since (``_untouched``: queued, no message
        bound) under the same node type and priority gets its message sent again, once the
        record is ``_UNPUBLISHED_GRACE`` seconds old (waiting till then, while it stays so): its
        producer may have died or lost the server between the two writes, and one still
        running has published within that time. The message goes out under the message id
        that producer used (the record's revision), so the dedup window drops it if the first
        went out within the window (and the first's task runs); past the window, the first of
        the two messages claimed runs and the other is acked away unrun, and ``stats`` counts
        both as queued until then."""
        for _ in range(5):
            found = await self._read_from_leader(task.id)
            record = found.record
            if record is None:  # gone since (expired): created anew
                revision = await kv.cas(self._conn.js, self._tasks, token(task.id), fresh, last=0)
            elif (record.get("state") == "queued" and not record.get("seq") and record.get("id") == task.id
                  and record.get("node_type") == task.node_type and record.get("priority") == task.priority):
                if not _untouched(record, found.raw):
                    return False  # a requeue's or a retry's, which sends its own message
                age = math.inf if found.written_at is None else time.time() - found.written_at
                if age < _UNPUBLISHED_GRACE:
                    await asyncio.sleep(_UNPUBLISHED_GRACE - age)
                    continue  # read again: claimed, cancelled or still unbound
                max_attempts = record.get("max_attempts")
                if max_attempts != task.max_attempts:  # as the record has it: its claim keeps the limit
                    task = dataclasses.replace(task, max_attempts=max_attempts)
                    raw = encode(task_to_dict(task))
                await self._publish_task(task, raw, _enqueue_message_id(task.id, found.revision))
                await self._wake(task.node_type)
                return False
            elif await self._id_is_free(task.id, record):
                # A finished task whose result expired (its record awaits the server's TTL).
                revision = await kv.cas(self._conn.js, self._tasks, token(task.id), fresh, last=found.revision)
            else:
                return False
            if revision is not None:
                await self._publish_task(task, raw, _enqueue_message_id(task.id, revision))
                await self._wake(task.node_type)
                return True
        return False

    async def _publish_task(self, task: Task, raw: bytes, message_id: str) -> None:
        """Publish ``task``'s message (its JSON ``raw``) under ``message_id``, after its record."""
        subject = self._conn.names.task_subject(task.node_type, task.priority)
        await replies.js_publish(self._conn.nc, subject, raw, headers=_message_headers(task.id, message_id))

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        """``enqueue`` each task, pipelined: the records of up to ``_ENQUEUE_CHUNK`` tasks are
        created together, each message published from the client's reader as soon as its
        record is stored (two round-trip latencies per chunk, not two per task, and one
        wake of this task), then one wake-up per node type. A record that exists takes
        ``enqueue``'s path for that task. The same guarantees as ``enqueue``: record before
        message."""
        first: dict[str, int] = {}
        for index, task in enumerate(tasks):
            first.setdefault(task.id, index)
        unique = [tasks[index] for index in first.values()]
        # Each task encoded once: checked here (all before any is written), published below.
        raws = [encode(task_to_dict(task)) for task in unique]
        for task, raw in zip(unique, raws):
            self._check_letter_fits(task, raw)
        created: dict[str, bool] = {}
        with self._errors(f"enqueue {len(unique)} tasks"):
            await self._done.ensure()
            for task in unique:
                self._done.expect(task.id)
            for node_type, priority in dict.fromkeys((t.node_type, t.priority) for t in unique):
                await self._ensure_level(node_type, priority)
            start, size = 0, _FIRST_ENQUEUE_CHUNK
            while start < len(unique):
                chunk = unique[start:start + size]
                flags = await self._enqueue_chunk(chunk, raws[start:start + size])
                created.update(zip((t.id for t in chunk), flags))
                start, size = start + size, min(size * 2, _ENQUEUE_CHUNK)
            self._done.forget([task_id for task_id, flag in created.items() if not flag])
        return [first[task.id] == index and created[task.id] for index, task in enumerate(tasks)]

    async def _enqueue_chunk(self, chunk: Sequence[Task], raws: Sequence[bytes]) -> list[bool]:
        """``enqueue_many``'s writes for ``chunk``, whose tasks' JSON is ``raws``; per task, whether it was created."""
        names, bucket = self._conn.names, self._tasks
        fresh = [_fresh_record_bytes(task, raw) for task, raw in zip(chunk, raws)]

        def publish_message(index: int, ack: replies.PubAck) -> tuple[str, bytes, bytes]:
            # The record is stored: its message goes out at once, from the client's reader,
            # under a message id naming the record's revision (``_trusted_revision``).
            task = chunk[index]
            return (names.task_subject(task.node_type, task.priority), raws[index],
                    _message_headers(task.id, _enqueue_message_id(task.id, int(ack.seq))))

        answers = await replies.js_publish_chain(self._conn.nc, [
            kv.cas_request(bucket, token(task.id), record, last=0) for task, record in zip(chunk, fresh)],
            publish_message)
        flags = [False] * len(chunk)
        known: list[int] = []
        woken: set[str] = set()
        first_error: Exception | None = None
        for index, (created, published) in enumerate(answers):
            try:
                revision = kv.cas_answer(created)
                if revision is None:
                    known.append(index)  # ``enqueue``'s path, below
                    continue
                answer = published if isinstance(published, Exception) else replies.pub_ack_of(published)
                if isinstance(answer, Exception):
                    # Its record is queued with no message: enqueuing it again sends the message.
                    raise answer
            except Exception as error:  # raised once every answer is read (as cas_many did)
                first_error = first_error or error
                continue
            flags[index] = True
            woken.add(chunk[index].node_type)
        if first_error is not None:
            raise first_error
        for index in known:
            flags[index] = await self._enqueue_known(chunk[index], raws[index], fresh[index])
        for node_type in woken:
            await self._wake(node_type)
        return flags

    async def _id_is_free(self, task_id: str, record: Mapping[str, Any]) -> bool:
        """Whether a known task id (its ``record``) may be enqueued again: its task finished
        (acked, cancelled, or dead-lettered and since purged) and its result expired (``result_ttl``)."""
        if record.get("state") not in _TERMINAL or not 0 < float(record.get("expires_at") or 0) <= time.time():
            return False
        # A dead letter keeps its id until it is requeued or purged.
        return not await kv.scan(self._conn.js, self._dead, f"*.{token(task_id)}")

    async def enqueue_raw(self, node_type: str, data: bytes, *, priority: int = 0) -> None:
        with self._errors(f"enqueue raw bytes for node type {node_type!r}"):
            await self._ensure_level(node_type, priority)
            subject = self._conn.names.task_subject(node_type, priority)
            await replies.js_publish(self._conn.nc, subject, bytes(data), headers={"Da-Task-Id": f"raw-{uuid.uuid4().hex}"})
            await self._wake(node_type)

    # -- claiming ----------------------------------------------------------------------
    async def claim(
        self,
        node_types: Collection[str],
        *,
        worker_id: str,
        max_tasks: int = 1,
        lease_seconds: float | None = None,
        wait: float = 0.0,
    ) -> list[ClaimedTask]:
        types = list(dict.fromkeys(node_types))
        if not types or max_tasks < 1:
            return []
        if self._long_types_checked != types:  # (a worker claims the same types each time: checked once)
            for node_type in types:  # one no task of which could be enqueued: said, not waited on for ever
                _check_consumer_name(node_type, self._conn.names.task_consumer(node_type, 0))
            self._long_types_checked = types
        lease = self.visibility_timeout if lease_seconds is None else lease_seconds
        give_up = time.monotonic() + max(wait, 0.0)
        key = tuple(types)
        with self._errors(f"claim tasks of {types!r}"):
            if wait > 0:
                await self._wakeups.ensure(types)
                drained = self._drained.pop(key, None)
                if drained is not None:
                    # The last claim took every task it saw: only a wake-up since (or a
                    # redelivery, which the poll finds) can have made one claimable.
                    await self._wakeups.wait(drained, min(wait, self.poll_interval))
            while True:
                # Taken before looking: a wake-up that comes meanwhile ends the wait below at once.
                events = self._wakeups.events(types)
                claimed = await self._claim_now(types, worker_id, max_tasks, lease)
                remaining = give_up - time.monotonic()
                if claimed and len(claimed) < max_tasks:
                    self._drained[key] = events
                if claimed or remaining <= 0:
                    return claimed
                await self._wakeups.wait(events, min(remaining, self.poll_interval))

    async def _claim_now(self, types: list[str], worker_id: str, max_tasks: int, lease: float, passes: int = 3) -> list[ClaimedTask]:
        names = self._conn.names
        key = tuple(types)
        now = time.monotonic()
        # The levels keys stand in for the look, except once per poll interval: a message a
        # foreign producer published at a level no enqueue registered is found then, as a
        # redelivery without a wake-up is found by the poll.
        levels: dict[int, list[str]] | None = None
        pulled: dict[str, list[Msg]] = {}
        if now - self._looked.get(key, -math.inf) < self.poll_interval:
            levels, pulled = await self._pull_at_known_level(types, max_tasks)
        if levels is None:
            self._looked[key] = now
            levels = await self._look(types)
        claimed: list[ClaimedTask] = []
        moved = False
        for priority in sorted(levels, reverse=True):
            need = max_tasks - len(claimed)
            if need <= 0:
                break
            batch: list[tuple[int, str, Msg, float]] = []
            for node_type in levels[priority]:
                ack_wait = await self._ensure_consumer(node_type, priority)
                consumer = names.task_consumer(node_type, priority)
                # The stream counted messages here (``_look``), or the levels key says tasks were
                # queued here: an empty answer is checked (the levels key's pull went out with its read).
                ready = await pull_pending(self._conn.nc, names.task_stream, consumer, need,
                                           first=pulled.pop(node_type, None))
                for msg in ready:
                    batch.append((stream_sequence(msg.reply or ""), node_type, msg, ack_wait))
            if not batch:
                continue
            batch.sort(key=lambda item: item[0])
            # The first ``need`` together: their records in one batched read, their
            # claims concurrently (gather keeps the order).
            first, rest = batch[:need], batch[need:]
            records, decoded = await self._prefetch([msg for _, _, msg, _ in first])
            quick = await self._take_queued(first, records, decoded, worker_id, lease)
            # The others (and those whose CAS lost: re-read) one by one, concurrently.
            slow = iter(await asyncio.gather(*(
                self._take(msg, node_type, worker_id, lease, ack_wait,
                           None if id(msg) in quick else records.get(id(msg)), decoded.get(id(msg)))
                for _, node_type, msg, ack_wait in first if quick.get(id(msg)) is None)))
            outcomes = [quick.get(id(msg)) or next(slow) for _, _, msg, _ in first]
            for _, node_type, msg, ack_wait in rest:
                if len(claimed) + sum(isinstance(o, ClaimedTask) for o in outcomes) >= max_tasks:
                    # Pulled from a second node type but not needed: give it straight back.
                    await self._give_back_unneeded(node_type, msg)
                    continue
                outcomes.append(await self._take(msg, node_type, worker_id, lease, ack_wait))
            for taken in outcomes:
                if taken is _MOVED or taken is None:
                    moved = True
                elif isinstance(taken, ClaimedTask):
                    claimed.append(taken)
        if moved and len(claimed) < max_tasks and passes > 0:
            # A delayed task moved to the end of its priority: it (or a peer) is claimable now.
            # Or a delivery was not claimed (acked away: a cancelled task's, a stale duplicate;
            # dead-lettered): the tasks queued behind it are pulled now, not after a wait.
            claimed += await self._claim_now(types, worker_id, max_tasks - len(claimed), lease, passes - 1)
        return claimed

    async def _look(self, types: list[str]) -> dict[int, list[str]]:
        """The priority levels holding messages of ``types`` that this queue does not hold,
        with the types there (the stream's per-subject counts: one stream info)."""
        names = self._conn.names
        wanted = {token(t): t for t in types}
        subject_filter = names.task_subjects_of(types[0]) if len(types) == 1 else f"{names.base}.tasks.*.*"
        counts = await kv.subject_counts(self._conn.nc, names.task_stream, subject_filter)
        levels: dict[int, list[str]] = {}
        # Messages this queue holds leases on are in the stream too, but not claimable.
        held = Counter(lease_id.split(".")[3] for lease_id in self._held if lease_id.count(".") >= 5)
        for subject, count in counts.items():
            _, _, type_token, priority_token = subject.rsplit(".", 3)
            priority = priority_from_token(priority_token)
            if priority is not None and priority_token != written_priority_token(priority):
                priority = None  # "p00", "m0": read as a level, but no consumer filters on that spelling
            if type_token in wanted and priority is None and count:
                await self._sweep_off_layout(wanted[type_token], subject)
            elif type_token in wanted and priority is not None:
                if count > held[names.task_consumer(wanted[type_token], priority)]:
                    levels.setdefault(priority, []).append(wanted[type_token])
        return levels

    async def _sweep_off_layout(self, node_type: str, subject: str) -> None:
        """Dead-letter the messages on ``subject``, a subject of ``node_type``'s tasks whose
        priority token is none this queue writes (``<base>.tasks.<type>.zzz``, published by
        hand or by a foreign producer): no consumer serves it, so they would sit in the
        stream unseen for ever. Each becomes a dead letter (its bytes kept, the reason
        naming the subject and the layout) and is logged. Through an ephemeral consumer on
        that subject alone; when another claimer sweeps it already (the work-queue stream
        allows one consumer per subject), this one leaves it to that one.
        """
        import nats.js.errors
        from nats.js import api

        names = self._conn.names
        config = api.ConsumerConfig(
            filter_subject=subject, ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=max(self.visibility_timeout, 5.0), max_deliver=-1, inactive_threshold=30.0,
            mem_storage=True, num_replicas=1,
        )
        try:
            info = await self._conn.js.add_consumer(names.task_stream, config)
        except nats.js.errors.BadRequestError:  # another claimer's sweep holds the subject
            return
        reason = (f"malformed task: published on subject {subject!r}, outside this queue's layout "
                  f"({names.base}.tasks.<node type>.p<N> or .m<N>, N the priority): no consumer serves it")
        try:
            for _ in range(1000):  # bounded: the rest waits for the next look
                messages = await pull_ready(self._conn.nc, names.task_stream, info.name, 100)
                if not messages:
                    break
                for msg in messages:
                    await self._dead_letter_raw(msg, node_type, reason)  # (logged there)
        finally:
            with contextlib.suppress(Exception):  # it expires by itself (inactive_threshold)
                await self._conn.js.delete_consumer(names.task_stream, info.name)

    async def _prefetch(self, messages: list[Msg]) -> tuple[dict[int, _Found], dict[int, Task]]:
        """The records of the tasks ``messages`` carry, by ``id(msg)``, and the tasks decoded on
        the way, for ``_take`` (messages that do not decode are left out of both: ``_take``
        dead-letters them). A first delivery of an enqueue's message is given the record that
        enqueue created, at the revision its message id names (``_trusted_revision``: if the
        record changed since, the claim's CAS loses and ``_take`` reads it); the others' records
        come in one batched read (none for a single one: ``_take``'s own read costs the same)."""
        keys: dict[int, str] = {}
        decoded: dict[int, Task] = {}
        found: dict[int, _Found] = {}
        # The longest task decoded here: not over max_task_bytes, and its letter surely fits.
        longest = min(self.max_task_bytes, self._max_payload - LETTER_RESERVE_BYTES)
        for msg in messages:
            if len(msg.data) > longest:
                continue  # perhaps oversized: _take checks it exactly
            try:
                task = _decode_delivered(msg)
            except PayloadDecodeError:
                continue
            if self._unlettered_reason(len(msg.data), task) is not None:
                continue  # its letter may not fit (a long id): _take checks it exactly and dead-letters it
            decoded[id(msg)] = task
            revision = _trusted_revision(msg, task.id) if delivery_count(msg.reply or "") == 1 else None
            if revision is not None:
                digest = _digest(msg.data)
                head = _new_record_head(task.id, task.node_type, task.priority, task.max_attempts, digest)
                # (No ``raw``: its claim is written from ``head``, ``_first_claim_bytes``.)
                found[id(msg)] = _Found(_new_record(task.id, task.node_type, task.priority, task.max_attempts, seq=0,
                                                    digest=digest), revision, head=head)
            else:
                keys[id(msg)] = token(task.id)
        if len(keys) < 2:
            return found, decoded  # one record (or none) to read: _take's own read costs the same
        entries = await kv.get_many(self._tasks, list(keys.values()))
        for ident, key in keys.items():
            entry = entries.get(key)
            try:
                where = f"{self._conn.names.task_bucket} {key}"
                found[ident] = _Found(None) if entry is None else _Found(
                    _control_record(entry.value, where), entry.revision, raw=entry.value)
            except PayloadDecodeError:
                continue  # _take reads it again and dead-letters the task
        return found, decoded

    async def _take_queued(
        self, batch: list[tuple[int, str, Msg, float]], records: dict[int, _Found], decoded: dict[int, Task],
        worker_id: str, lease: float,
    ) -> dict[int, ClaimedTask | None]:
        """Claim the first deliveries of waiting tasks among ``batch`` together: for those
        whose prefetched record is ``queued`` (the common case), the claims' CASes are
        sent at once and awaited together, without a task each. Returns, by ``id(msg)``,
        the claim, or None where the CAS lost (the record changed since it was read:
        ``_take`` reads it again); deliveries left out take ``_take``'s path."""
        chosen: list[tuple[Msg, Task, dict[str, Any], int, float]] = []
        raws: list[bytes] = []
        worker = encode(worker_id)
        for seq, node_type, msg, ack_wait in batch:
            found, task, lease_id = records.get(id(msg)), decoded.get(id(msg)), msg.reply or ""
            record = None if found is None else found.record
            if found is not None and found.head is not None and record is not None and task is not None \
                    and task.node_type == node_type:
                # A first delivery of an enqueue's message, its record as that enqueue created it
                # (``_prefetch``): every check below holds by construction, and the claimed record's
                # JSON is its head and the claim's members (exactly ``encode(new)``).
                deadline = time.time() + lease
                new = {**record, "seq": seq, "state": "claimed", "attempt": 1, "errors": [], "lease": lease_id,
                       "worker": worker_id, "deadline": deadline}
                chosen.append((msg, task, new, found.revision, ack_wait))
                raws.append(_first_claim_bytes(found.head, seq, lease_id, worker, deadline))
                continue
            if (found is None or record is None or task is None
                    or task.node_type != node_type  # another type than its subject's: _take dead-letters it
                    or record.get("id") != task.id  # another task's record: _take dead-letters it
                    or record.get("state") != "queued" or delivery_count(lease_id) != 1
                    or record.get("seq") not in (0, seq) or not _of_this_record(record, found.revision, msg, task.id)):
                continue
            attempt = int(record["attempt"]) + 1
            if attempt < 1:  # (the where, an f-string, made only then)
                try:
                    check_attempt(attempt, f"{self._conn.names.task_bucket} {token(task.id)}")
                except PayloadDecodeError:
                    continue  # _take dead-letters it
            deadline = time.time() + lease
            new = {**record, "seq": seq, "state": "claimed", "attempt": attempt,
                   "errors": list(record.get("errors", [])), "lease": lease_id, "worker": worker_id,
                   "deadline": deadline}
            chosen.append((msg, task, new, found.revision, ack_wait))
            raws.append(_claimed_bytes(found.raw, record, seq, lease_id, worker, deadline) or encode(new))
        if not chosen:
            return {}
        revisions = await kv.cas_many(self._conn.js, self._tasks, [
            (token(task.id), raw, last, None) for (_, task, _, last, _), raw in zip(chosen, raws)])
        out: dict[int, ClaimedTask | None] = {}
        armed: dict[float, list[tuple[str, _Held]]] = {}
        for (msg, task, new, _, ack_wait), raw, revision in zip(chosen, raws, revisions):
            if revision is None:
                out[id(msg)] = None
                continue
            lease_id = msg.reply or ""
            held = _Held(new, revision, ack_wait, raw=raw)
            self._held[lease_id] = held
            armed.setdefault(ack_wait, []).append((lease_id, held))
            out[id(msg)] = ClaimedTask(task, lease_id, new["attempt"], new["deadline"], worker_id)
        for leases in armed.values():
            self._arm_together(leases)
        return out

    async def _give_back_unneeded(self, node_type: str, msg: Msg) -> None:
        """``_give_back`` a delivery the claim pulled but does not need; a failure (the mark not
        stored, say) leaves it unacked, delivered again after AckWait, and the claim goes on."""
        try:
            await self._give_back(node_type, msg.reply or "")
        except Exception as exc:
            log.warning("NATS %s: the task message %s (subject %s) the claim did not need could not be given back "
                        "(%s: %s); it is delivered again after AckWait", mask_url(self._conn.url),
                        _queued_as(msg) or "without a task id", msg.subject, type(exc).__name__, exc)

    async def _take(
        self, msg: Msg, node_type: str, worker_id: str, lease: float, ack_wait: float, prefetched: _Found | None = None,
        decoded: Task | None = None,
    ) -> ClaimedTask | object | None:
        """``_take_message``, confined to its delivery: an error on the way (a dead letter the
        server refuses to store, say) is logged and leaves that message unacked, so the server
        delivers it again after AckWait; the claim's other deliveries are claimed as usual."""
        try:
            return await self._take_message(msg, node_type, worker_id, lease, ack_wait, prefetched, decoded)
        except Exception as exc:
            log.warning("NATS %s: the task message %s (subject %s, stream sequence %d) could not be claimed or "
                        "dead-lettered (%s: %s); it stays unacked and is delivered again after %gs, the claim's "
                        "other tasks go ahead", mask_url(self._conn.url), _queued_as(msg) or "without a task id",
                        msg.subject, stream_sequence(msg.reply or ""), type(exc).__name__, exc, ack_wait)
            return None

    async def _take_message(
        self, msg: Msg, node_type: str, worker_id: str, lease: float, ack_wait: float, prefetched: _Found | None = None,
        decoded: Task | None = None,
    ) -> ClaimedTask | object | None:
        """Claim the delivery ``msg``; ``prefetched``/``decoded``: its record and task, if ``_prefetch`` read them."""
        lease_id = msg.reply or ""
        seq = stream_sequence(lease_id)
        await self._taken_back(node_type, lease_id)
        if len(msg.data) > self.max_task_bytes:
            await self._dead_letter_raw(msg, node_type, oversized_task_reason(len(msg.data), self.max_task_bytes))
            return None
        try:
            # Its id must be the one it was published under (Da-Task-Id): its record is kept by that id.
            # ... and its node type the one of the subject it was published on (decode_task's queued_in).
            task = decoded if decoded is not None and decoded.node_type == node_type else _decode_delivered(
                msg, node_type)
        except PayloadDecodeError as exc:
            await self._dead_letter_raw(msg, node_type, str(exc))
            return None
        unlettered = self._unlettered_reason(len(msg.data), task)
        if unlettered is not None:
            await self._dead_letter_raw(msg, node_type, unlettered)
            return None
        # Whether the next read goes to the stream's leader: a direct get (``_read``, and the
        # prefetch's batched one) may be answered by a replica behind it (nats-server issue
        # 4162), so a record read so is confirmed there before its message is acked away,
        # and read there again after a CAS it made lose (a lagging local replica would
        # otherwise answer every retry the same and leave the task until AckWait).
        from_leader = False
        for _ in range(5):
            try:
                if from_leader:
                    found = await self._read_from_leader(task.id)
                else:
                    found, prefetched = prefetched or await self._read(task.id), None
            except PayloadDecodeError as exc:  # its control record is damaged: the task cannot be tracked
                await self._dead_letter_raw(msg, node_type, str(exc))
                return None
            if found.record is not None and found.record["id"] != task.id:
                # Another task's record under this one's key (copied or edited there): read as
                # this task's, its seq or state would have the message acked away unrun, unseen.
                await self._dead_letter_raw(msg, node_type, (
                    f"malformed task: its record at {self._conn.names.task_bucket} {token(task.id)} is the record "
                    f"of another task ({str(found.record['id'])[:80]!r}), copied or edited there, so this task "
                    "cannot be tracked; it was not run"))
                return None
            if found.record is None and _written_after_its_record(msg, task.id):
                # A requeue's (or a delayed task's) message: its record was written before it,
                # so with none left the record expired or was ended (the task purged, cancelled
                # or finished and its result gone): stale, never run. (Confirmed on the leader.)
                if not from_leader:
                    from_leader = True
                    continue
                # Logged: were the record deleted by hand, this is where the task would vanish.
                log.warning("NATS %s: the message of task %r at stream sequence %d was queued after its record, "
                            "which is gone from %s (expired, purged, or deleted by hand): it is not run",
                            mask_url(self._conn.url), task.id, seq, self._conn.names.task_bucket)
                await send_ack(self._conn.nc, lease_id, "ack")
                # (A cancelled task's record expired before its message was claimed: its mark goes too.)
                await kv.remove(self._conn.js, self._claims, _withdrawn_key(task.node_type, task.id))
                return None
            if found.record is not None and not _of_this_record(found.record, found.revision, msg, task.id):
                # A message of the id's earlier task (enqueued again once its record expired):
                # the record's own message is another one, and this one is stale. (Confirmed on the leader.)
                if not from_leader:
                    from_leader = True
                    continue
                await send_ack(self._conn.nc, lease_id, "ack")
                # (That earlier task, cancelled before a claim, was withdrawn from ``stats`` till now.)
                await kv.remove(self._conn.js, self._claims, _withdrawn_key(task.node_type, task.id))
                return None
            record = found.record or _new_record(task.id, task.node_type, task.priority, task.max_attempts, seq=seq)
            if (record.get("seq") not in (0, seq) or record["state"] in _TERMINAL) and not from_leader:
                # About to ack the message away: a stale record (another message's, or settled
                # before the task was queued again) would lose the task.
                from_leader = True
                continue
            from_leader = False
            if record.get("seq") not in (0, seq):
                await send_ack(self._conn.nc, lease_id, "ack")  # a stale duplicate of the task
                return None
            if record["state"] in _TERMINAL:
                if record["state"] == "dead":
                    await self._write_dead_letter_unless_purged(record, task)
                await send_ack(self._conn.nc, lease_id, "ack")  # settled; only the ack was lost
                if record["state"] == "cancelled" and not record.get("seq"):
                    # Cancelled before any claim bound its message: withdrawn from ``stats`` till now.
                    await kv.remove(self._conn.js, self._claims, _withdrawn_key(task.node_type, task.id))
                return None
            if record["state"] == "delayed" and record.get("seq") == seq:
                # The nack delay passed: the task joins the end of its priority now.
                queued = {**record, "state": "queued", "seq": 0}
                revision = await kv.cas(self._conn.js, self._tasks, token(task.id), encode(queued), last=found.revision)
                if revision is None:
                    from_leader = True
                    continue
                await self._republish(task, queued, revision, lease_id)
                return _MOVED
            errors = list(record.get("errors", []))
            if record["state"] == "claimed":
                if delivery_count(record["lease"]) >= delivery_count(lease_id):
                    return None  # a newer delivery holds it; ours is stale
                # The previous holder vanished and AckWait handed the task to us.
                errors = with_error(errors, f"attempt {record['attempt']}: lease expired (worker {record.get('worker', '')!r})")
                limit = self._limit(record)
                if record["attempt"] >= limit:
                    reason = lease_expired_reason(record["attempt"], limit, str(record.get("worker", "")))
                    if await self._dead_letter(record, found.revision, task, reason, errors, lease_id):
                        return None
                    from_leader = True
                    continue
            attempt = int(record.get("attempt", 0)) + 1
            try:
                check_attempt(attempt, f"{self._conn.names.task_bucket} {token(task.id)}")
            except PayloadDecodeError as exc:
                if await self._dead_letter(record, found.revision, task, str(exc), errors, lease_id):
                    return None
                from_leader = True
                continue
            deadline = time.time() + lease
            new = {**record, "seq": seq, "state": "claimed", "attempt": attempt, "errors": errors,
                   "lease": lease_id, "worker": worker_id, "deadline": deadline}
            revision = await kv.cas(self._conn.js, self._tasks, token(task.id), encode(new), last=found.revision)
            if revision is None:
                from_leader = True
                continue
            held = _Held(new, revision, ack_wait)
            self._held[lease_id] = held
            self._arm(lease_id, held)
            return ClaimedTask(task, lease_id, attempt, deadline, worker_id)
        return None

    # -- leases ------------------------------------------------------------------------
    def _arm(self, lease_id: str, held: _Held) -> None:
        """Keep ``held``: a timer for the first interval, then (a task outliving it) the
        keeper. Most tasks are settled within it, and a timer costs a fraction of a task."""
        delay = max(0.0, min(held.record["deadline"] - time.time(), held.ack_wait / 3))
        held.timer = asyncio.get_running_loop().call_later(delay, self._start_keeper, lease_id, held)

    def _arm_together(self, leases: list[tuple[str, _Held]]) -> None:
        """``_arm`` for leases claimed together with one AckWait: one timer for all of them, due
        at the first one's time (the earliest deadline, or a third of AckWait), instead of a
        timer each (made, pushed on the loop's heap and cancelled per task). A lease settled
        meanwhile is skipped when it fires; once all are, it is cancelled (``_SharedTimer``)."""
        if len(leases) == 1:
            self._arm(*leases[0])
            return
        earliest = min(held.record["deadline"] for _, held in leases)
        delay = max(0.0, min(earliest - time.time(), leases[0][1].ack_wait / 3))
        shared = _SharedTimer(len(leases))
        for _, held in leases:
            held.timer = shared
        shared.handle = asyncio.get_running_loop().call_later(
            delay, self._start_keepers, shared, [lease_id for lease_id, _ in leases])

    def _start_keepers(self, shared: _SharedTimer, lease_ids: list[str]) -> None:
        for lease_id in lease_ids:
            held = self._held.get(lease_id)
            if held is not None and held.timer is shared:
                self._start_keeper(lease_id, held)

    def _start_keeper(self, lease_id: str, held: _Held) -> None:
        held.timer = None
        if self._held.get(lease_id) is held:
            held.keeper = asyncio.ensure_future(self._keep(lease_id, slept=True))

    async def _keep(self, lease_id: str, *, slept: bool = False) -> None:
        """Hold the lease with in_progress() until its deadline, then expire it
        (``slept``: the first interval already passed)."""
        try:
            while True:
                held = self._held.get(lease_id)
                if held is None:
                    return
                if not slept:
                    remaining = held.record["deadline"] - time.time()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, held.ack_wait / 3))
                elif time.time() >= held.record["deadline"]:
                    break
                slept = False
                if lease_id in self._held and time.time() < held.record["deadline"]:
                    await send_ack(self._conn.nc, lease_id, "progress")
            await self._expire(lease_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server's AckWait still bounds the lease
            log.warning("lease keeper for %s failed: %s", lease_id, exc)

    async def _expire(self, lease_id: str) -> None:
        held = self._held.pop(lease_id, None)
        if held is None:
            return
        record = held.record
        errors = with_error(record.get("errors", []),
                            f"attempt {record['attempt']}: lease expired (worker {record.get('worker', '')!r})")
        limit = self._limit(record)
        task = await self._task_of(record)
        if record["attempt"] >= limit:
            reason = lease_expired_reason(record["attempt"], limit, str(record.get("worker", "")))
            await self._dead_letter(record, held.revision, task, reason, errors, lease_id)
            return
        new = {**record, "state": "queued", "errors": errors, "lease": ""}
        if await kv.cas(self._conn.js, self._tasks, token(record["id"]), encode(new), last=held.revision) is None:
            return
        await self._give_back(record["node_type"], lease_id)
        await self._wake(record["node_type"])

    async def _held_record(self, claim: ClaimedTask) -> tuple[dict[str, Any], int]:
        held = self._held.get(claim.lease_id)
        if held is not None:
            record, revision = held.record, held.revision
        else:
            # A lease this queue does not remember (settled from another process, or after a
            # CAS of ours lost): read from the leader, as a direct get may be answered by a
            # replica behind it (nats-server issue 4162), whose older record would make the
            # holder's ack a LeaseLostError and its CAS lose again.
            found = await self._read_from_leader(claim.task.id)
            record, revision = found.record or {}, found.revision
        if (
            record.get("state") != "claimed"
            or record.get("lease") != claim.lease_id
            or float(record.get("deadline", 0)) <= time.time()
        ):
            raise self._lost(claim)
        return record, revision

    def _lost(self, claim: ClaimedTask) -> LeaseLostError:
        return LeaseLostError(
            f"task {claim.task.id!r} (node {claim.task.node!r}) is no longer leased to {claim.worker_id!r}: "
            "its lease expired or it was settled; another worker may be running it"
        )

    async def _commit(self, claim: ClaimedTask, change: dict[str, Any], *, ttl: float | None = None) -> tuple[dict[str, Any], int]:
        """CAS the record from our lease to ``record | change``; LeaseLostError if it is not ours."""
        for _ in range(5):
            record, revision = await self._held_record(claim)
            new = {**record, **change}
            new_revision = await kv.cas(self._conn.js, self._tasks, token(claim.task.id), encode(new), last=revision, ttl=ttl)
            if new_revision is not None:
                return new, new_revision
            self._held.pop(claim.lease_id, None)  # our cached revision is stale: re-read
        raise self._lost(claim)

    def _forget(self, lease_id: str) -> None:
        held = self._held.pop(lease_id, None)
        if held is not None and held.timer is not None:
            held.timer.cancel()
        if held is not None and held.keeper is not None and held.keeper is not asyncio.current_task():
            held.keeper.cancel()

    async def extend(self, claim: ClaimedTask, seconds: float | None = None) -> ClaimedTask:
        with self._errors(f"extend the lease of task {claim.task.id!r}"):
            deadline = time.time() + (self.visibility_timeout if seconds is None else seconds)
            held = self._held.get(claim.lease_id)
            record, revision = await self._commit(claim, {"deadline": deadline})
            await send_ack(self._conn.nc, claim.lease_id, "progress")
            ack_wait = held.ack_wait if held is not None else self.visibility_timeout
            self._forget(claim.lease_id)
            new_held = _Held(record, revision, ack_wait)
            self._held[claim.lease_id] = new_held
            self._arm(claim.lease_id, new_held)
            return ClaimedTask(claim.task, claim.lease_id, claim.attempt, deadline, claim.worker_id)

    async def ack(self, claim: ClaimedTask, output: Mapping[str, Any] | None) -> None:
        result = TaskResult(claim.task.id, "succeeded", output=output, attempts=claim.attempt, worker_id=claim.worker_id,
                            started_at=claim.started_at)
        raw_result = encode(result.to_dict())  # fails before touching the engine if not JSON
        with self._errors(f"ack task {claim.task.id!r}"):
            expires_at = time.time() + self.result_ttl
            change = {"state": "done", "lease": "", "expires_at": expires_at}
            held = self._held.get(claim.lease_id)
            if held is not None and _holds(held.record, claim.lease_id) and await self._ack_chained(
                    claim, held, expires_at, raw_result):
                return
            stored = decode(raw_result)
            await self._commit(claim, {**change, "result": stored}, ttl=self.result_ttl)
            self._forget(claim.lease_id)
            # Committed: announce it first, then ack the message.
            await self._notify_done(claim.task.id, TaskResult.from_dict(stored))
            try:
                await send_ack(self._conn.nc, claim.lease_id, "ack")
            except Exception as acked:  # the result is stored: a redelivery will just be acked
                log.warning("ack of task %r not confirmed (%s); it will be cleaned up on redelivery", claim.task.id, acked)

    async def _ack_chained(self, claim: ClaimedTask, held: _Held, expires_at: float, raw_result: bytes) -> bool:
        """``ack``'s commit against the remembered revision of our lease, its ``+ACK`` sent from
        the client's reader as soon as the commit is stored (one wait, two round trips), and
        its done event queued there too (``DoneBatch``: published once that read is over, with
        those of the other acks it found stored). The acks of one event-loop pass go out
        together (``_send_acks``): only the last ``+ACK`` of each consumer there is confirmed.
        False if the CAS lost (nothing written: ``ack``'s full path re-reads)."""
        task_id, nc, lease_id = claim.task.id, self._conn.nc, claim.lease_id
        raw = _done_bytes(held, lease_id, expires_at, raw_result)
        if raw is None:
            fields = {**held.record, "state": "done", "lease": "", "expires_at": expires_at}
            fields.pop("result", None)
            # The result's JSON spliced in as it is: encoded once, for the record and the done event.
            raw = encode(fields)[:-1] + b',"result":' + raw_result + b"}"
        done = done_payload_raw(task_id, raw_result)

        announce = self._done_batch
        if announce is None or announce.nc is not nc:
            announce = self._done_batch = DoneBatch(nc, self._conn.names.done_subject)

        def committed() -> None:
            # Committed: the lease is settled, and the result announced with those of the
            # other acks this read stored (one event: ``DoneBatch``); the message is acked next.
            self._forget(lease_id)
            announce.add(done)

        request = kv.cas_request(self._tasks, token(task_id), raw, last=held.revision, ttl=self.result_ttl)
        acks, loop = self._acks, asyncio.get_running_loop()
        if acks is None or acks.waiter.get_loop() is not loop:
            if replies.chain_ready(nc):
                # The first ack of this loop pass: the others that come in it (tasks claimed
                # together finish together) join it, and all go out together once the pass
                # ends, behind one waiter (no future, batch or coroutine each). (A batch of
                # another event loop, stopped before it was sent, is left to that loop.)
                acks = self._acks = _Acks(_Shared(loop=loop))
                loop.call_soon(self._send_acks, acks)
            else:
                acks = None
        if acks is None:
            def committed_then_acked(_: int, __: replies.PubAck) -> tuple[str, bytes, None]:
                committed()
                return lease_id, b"+ACK", None  # confirmed

            [(stored, acked)] = await replies.js_publish_chain(nc, [request], committed_then_acked)
        else:
            index = len(acks.requests)
            acks.requests.append(request)
            acks.committed.append(committed)
            acks.leases.append(lease_id)
            await acks.waiter
            stored, acked = acks.answers()[index]
        if kv.cas_answer(stored) is None:
            self._held.pop(claim.lease_id, None)  # our remembered revision is stale
            return False
        if self._done.wants(task_id):
            self._done.record(task_id, TaskResult.from_dict(decode(raw_result)))
        if isinstance(acked, Exception):  # the result is stored: a redelivery will just be acked
            log.warning("ack of task %r not confirmed (%s); it will be cleaned up on redelivery", task_id, acked)
        return True

    def _send_acks(self, acks: _Acks) -> None:
        """Send the chained acks gathered in one loop pass (``_ack_chained``); their callers
        wake once all are answered (each item is bounded by its own timeout).

        Each ``+ACK`` leaves as soon as its CAS is stored. Per consumer, only the last of the
        pass asks for the server's answer: a consumer takes its acks in the order they come
        (one queue per consumer; nats-server answers an ack's request once it took it, a
        repeated one too), so that answer means every ``+ACK`` of the pass before it was
        taken as well, and once the callers wake no other process counts those messages
        in flight (``stats``). One answer per consumer and pass instead of one per task
        (a worker's acks are about a third of the replies it reads). When the last CAS of
        a consumer in the pass did not store (lost, or not answered), the newest ``+ACK``
        it did send is sent again, confirmed (``_confirm_acks``). If a consumer's confirmation
        fails (no answer in time, no responders, an error sending), every caller whose
        ``+ACK`` to it went plain in the pass gets that failure as its ack's answer (logged:
        the result is stored, a redelivery is acked away)."""
        if self._acks is acks:
            self._acks = None
        nc, loop = self._conn.nc, acks.waiter.get_loop()
        committed, leases = acks.committed, acks.leases
        consumers = [_consumer_of(lease) for lease in leases]
        left = Counter(consumers)
        plain: dict[str, list[int]] = {}  # consumer -> the items whose +ACK went out plain
        confirming: dict[str, int] = {}  # consumer -> the item whose +ACK asks for the answer

        def follow(index: int, _: replies.PubAck) -> tuple[str, bytes, None] | None:
            committed[index]()
            lease, consumer = leases[index], consumers[index]
            left[consumer] -= 1
            if not left[consumer]:  # its last in this pass: confirmed, after every one before it
                confirming[consumer] = index
                return lease, b"+ACK", None
            replies.send(nc, lease, b"+ACK")  # (an error sending is this item's second answer)
            plain.setdefault(consumer, []).append(index)
            return None

        stored: asyncio.Future[None] = loop.create_future()
        try:
            acks.batch = replies.chain_now(nc, acks.requests, follow, stored)
            if acks.batch is None:  # the reply inbox went away (cannot happen once made): as a send error
                raise RuntimeError("the NATS client's reply inbox is not set up")
        except Exception as error:
            if not acks.waiter.done():
                acks.waiter.set_exception(error)
                acks.waiter.exception()  # retrieved here too: its callers may all have been cancelled
            return
        stored.add_done_callback(lambda _: self._confirm_acks(nc, acks, plain, confirming))

    @staticmethod
    def _confirm_acks(nc: Any, acks: _Acks, plain: Mapping[str, list[int]], confirming: Mapping[str, int]) -> None:
        """Once every CAS of the pass is answered: note the consumers whose confirming ``+ACK``
        failed (its answer an error), send the newest plain ``+ACK`` again, confirmed, to each
        consumer that got plain ones and no confirming one (its last CAS did not store), and
        complete ``acks.waiter`` when those are answered too. The answers are read (and their
        reply tokens closed) here, whether or not a caller still waits."""
        waiter = acks.waiter
        if waiter.done():
            acks.answers()  # (tokens closed)
            return
        failed: dict[str, Exception] = {}
        slots = acks.batch.slots
        for consumer, index in confirming.items():
            answer = slots[index].second if index < len(slots) else None
            if isinstance(answer, Exception):
                failed[consumer] = answer
        again = {consumer: acks.leases[items[-1]] for consumer, items in plain.items() if consumer not in confirming}

        def settle(answers: Mapping[str, Any]) -> None:
            failed.update((consumer, answer) for consumer, answer in answers.items() if isinstance(answer, Exception))
            acks.unconfirmed = {index: failed[consumer] for consumer, items in plain.items() if consumer in failed
                                for index in items}
            acks.answers()  # (tokens closed, whoever still waits)
            if not waiter.done():
                waiter.set_result(None)

        if not again:
            settle({})
            return
        confirm = asyncio.gather(*(replies.request(nc, lease, b"+ACK") for lease in again.values()),
                                 return_exceptions=True)
        confirm.add_done_callback(lambda done: settle({} if done.cancelled() else dict(zip(again, done.result()))))

    async def nack(self, claim: ClaimedTask, error: str, *, delay: float = 0.0, final: bool = False) -> bool:
        with self._errors(f"nack task {claim.task.id!r}"):
            record, revision = await self._held_record(claim)
            errors = with_error(record.get("errors", []), f"attempt {record['attempt']}: {error}")
            # ``final``: the node's retry policy gave up (or the workflow was cancelled);
            # dead-letter now rather than re-deliver the remaining attempts.
            if final or record["attempt"] >= self._limit(record):
                if await self._dead_letter(record, revision, claim.task, error, errors, claim.lease_id):
                    self._forget(claim.lease_id)
                    return False
                raise self._lost(claim)
            if delay > 0:
                # Redelivered by JetStream after the delay; the claimer that gets it then
                # moves it to the end of its priority (see ``_take``).
                await self._commit(claim, {"state": "delayed", "errors": errors, "lease": ""})
                self._forget(claim.lease_id)
                await self._give_back(claim.task.node_type, claim.lease_id, delay=delay)
                return True
            # A nacked task goes to the end of its priority: a new message, not a NAK
            # (JetStream redelivers a NAKed message ahead of the ones waiting).
            new, revision = await self._commit(claim, {"state": "queued", "errors": errors, "lease": "", "seq": 0})
            self._forget(claim.lease_id)
            await self._republish(claim.task, new, revision, claim.lease_id)
            await self._wake(claim.task.node_type)
            return True

    async def _republish(self, task: Task, record: dict[str, Any], revision: int, old_reply: str) -> None:
        """Put ``task`` (its record already queued with seq 0) at the end of its priority.

        The record says seq 0 until the new message's sequence is recorded, so a
        claimer that gets the new message first adopts it; then the old delivery is
        acked (if it came back meanwhile and was adopted, the new message is stale).
        """
        priority = int(record.get("priority", task.priority))
        await self._ensure_level(task.node_type, priority)
        ack = await replies.js_publish(self._conn.nc, 
            self._conn.names.task_subject(task.node_type, priority),
            encode(task_to_dict(task)),
            headers=_id_headers(task.id, f"{_carried_id(task.id)}/again/{uuid.uuid4().hex}"),
        )
        # Fails harmlessly if a claimer adopted the new message first.
        await kv.cas(self._conn.js, self._tasks, token(task.id), encode({**record, "seq": int(ack.seq)}), last=revision)
        with contextlib.suppress(Exception):
            await send_ack(self._conn.nc, old_reply, "ack")

    async def release(self, claim: ClaimedTask) -> None:
        with self._errors(f"release task {claim.task.id!r}"):
            record, _ = await self._held_record(claim)
            await self._commit(claim, {"state": "queued", "attempt": int(record["attempt"]) - 1, "lease": ""})
            self._forget(claim.lease_id)
            await self._give_back(claim.task.node_type, claim.lease_id)
            await self._wake(claim.task.node_type)

    # -- dead letters ------------------------------------------------------------------
    async def _task_of(self, record: Mapping[str, Any]) -> Task | None:
        seq = int(record.get("seq") or 0)
        if not seq:
            return None
        import nats.js.errors

        try:
            raw = await self._conn.js.get_msg(self._conn.names.task_stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        try:
            return decode_task(raw.data or b"")
        except PayloadDecodeError:
            return None

    async def _dead_letter(
        self, record: dict[str, Any], revision: int, task: Task | None, reason: str, errors: list[str], lease_id: str
    ) -> bool:
        """CAS the record to dead (the commit point), write the dead letter, ack the message."""
        reason = shortened(reason)  # kept twice in the record and once in the letter: bounded like an error
        result = TaskResult(record["id"], "failed", error=reason, attempts=int(record["attempt"]))
        new = {**record, "state": "dead", "errors": errors, "reason": reason, "lease": "",
               "result": result.to_dict(), "dead_at": time.time(), "expires_at": time.time() + self.result_ttl}
        # No TTL: the record keeps the id while the dead letter exists (``expires_at`` still
        # ends the failed result after result_ttl, and a purged letter frees the id then).
        if await kv.cas(self._conn.js, self._tasks, token(record["id"]), encode(new), last=revision) is None:
            return False
        await self._write_dead_letter_unless_purged(new, task)
        with contextlib.suppress(Exception):
            await send_ack(self._conn.nc, lease_id, "ack")
        await self._notify_done(record["id"], result)
        return True

    async def _write_dead_letter(self, record: Mapping[str, Any], task: Task | None, raw: bytes | None) -> None:
        letter = {
            "task_id": record["id"],
            "node_type": record["node_type"],
            "reason": record.get("reason", ""),
            "errors": list(record.get("errors") or [record.get("reason", "")]),
            "attempts": int(record.get("attempt", 0)),
            "task": None if task is None else task_to_dict(task),
            # The first bytes only: a letter must fit the server's max_payload (base64 adds a third).
            "raw": None if raw is None else base64.b64encode(raw[:DEAD_RAW_KEPT]).decode(),
            "dead_at": float(record.get("dead_at", time.time())),
            "priority": int(record.get("priority", 0)),
            "max_attempts": record.get("max_attempts"),
        }
        key = f"{token(record['node_type'])}.{token(record['id'])}"
        value = encode(letter)
        if len(value) > self._max_payload:
            # Only bytes enqueue did not write get here (a raw task that re-encodes longer, a
            # foreign record's errors): keep the task's first bytes, and the newest error.
            note = (f"; the dead letter keeps the task's first {DEAD_RAW_KEPT} bytes as raw: the whole task "
                    f"did not fit the server's max_payload of {self._max_payload} bytes")
            task_raw = raw if task is None else encode(task_to_dict(task))
            errors = letter["errors"]
            letter.update(task=None, reason=shortened(str(letter["reason"])) + note,
                          errors=with_error([], str(errors[-1]) if errors else ""),
                          raw=base64.b64encode((task_raw or b"")[:DEAD_RAW_KEPT]).decode())
            value = encode(letter)
        await kv.put(self._conn.js, self._dead, key, value)

    async def _write_dead_letter_unless_purged(self, record: Mapping[str, Any], task: Task | None) -> None:
        """Write ``record``'s dead letter, unless it was purged since the record went dead.

        The record turns dead (the commit point: ``get_result`` reports the failure) before
        its letter is written, so a purge can come in between (the engine purges the
        letter of a failure an error handler took), or before a claimer repairs a letter
        whose writer died. The purge marks the record first, then deletes letters; this
        writes, then reads the mark (from the stream's leader, which has every acknowledged
        write): whichever comes second sees the other, so a purged letter never comes back. A record already purged gets its letter deleted instead: a
        writer that wrote after the purge's delete but died (or met an outage) before
        reading the mark left one, and the redelivery of its unacked message ends here.
        """
        key = f"{token(record['node_type'])}.{token(record['id'])}"
        if record.get("purged"):
            await kv.remove(self._conn.js, self._dead, key)
            return
        await self._write_dead_letter(record, task, None)
        # Read from the leader: a replica just restarted may not have the mark yet (kv.get_from_leader).
        current = (await self._read_from_leader(str(record["id"]))).record
        if current is not None and current.get("purged"):
            await kv.remove(self._conn.js, self._dead, key)

    async def _read_from_leader(self, task_id: str) -> _Found:
        """``_read`` from the stream's leader (``kv.get_from_leader``): every acknowledged write seen."""
        return self._found(await kv.get_from_leader(self._conn.js, self._tasks, token(task_id)))

    async def _mark_purged(self, task_id: str) -> tuple[str | None, str]:
        """Mark a dead task's record purged (see ``_write_dead_letter_unless_purged``); its node
        type and what this call found: "marked" (it was dead, or left by a requeue that died
        before publishing (``_requeue_died``), and this call marked it), "purged" (marked
        already), "absent" (no record), "unbound" (queued with no message bound yet: a requeue
        under way) or "live" (queued, claimed or finished again: a requeue took the letter first).

        Read from the leader: a replica just restarted can answer a direct get with the record
        from before it went dead, and a mark skipped for that would let a letter written just
        after stay (nats-server issue 4162)."""
        for _ in range(5):
            found = await self._read_from_leader(task_id)
            node_type = None if found.record is None else str(found.record.get("node_type") or "") or None
            if found.record is None:
                return node_type, "absent"
            if found.record.get("purged"):
                return node_type, "purged"
            if found.record.get("state") == "queued" and not found.record.get("seq"):
                if not _requeue_died(found.record, found.written_at):
                    return node_type, "unbound"  # a requeue under way
                # Its requeue died before publishing: the letter is purged as the task's death it
                # is (another requeue would finish it; a CAS decides which of the two does).
                dead = await self._died_requeue_as_dead(task_id, found.record)
                if dead is None:
                    return node_type, "unbound"
            elif found.record.get("state") != "dead":
                return node_type, "live"
            else:
                dead = found.record
            marked = {**dead, "purged": True}
            # No letter holds the id any more: it is remembered as long as the failed result, like a finished task's.
            ttl = max(1.0, float(marked.get("expires_at") or 0) - time.time())
            if await kv.cas(self._conn.js, self._tasks, token(task_id), encode(marked), last=found.revision,
                            ttl=ttl) is not None:
                return node_type, "marked"
        return None, "absent"

    async def _died_requeue_as_dead(self, task_id: str, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """The dead record ``task_id`` had before a requeue that died before publishing replaced it
        with ``record`` (queued, no message), rebuilt from the letter that requeue left (its
        reason, errors and attempts, a failed result until ``result_ttl`` from now); None if no
        letter is left (nothing to purge)."""
        matches = await kv.scan(self._conn.js, self._dead, f"*.{token(task_id)}")
        if not matches:
            return None
        # A damaged letter (``stored`` empty) is purged as well: its reason says what is wrong with it.
        letter, _ = _letter_from(f"{self._conn.names.dead_bucket} {matches[-1].key}", matches[-1].value)
        now = time.time()
        dead_at = letter.dead_at or now
        result = TaskResult(task_id, "failed", error=letter.reason, attempts=letter.attempts, finished_at=dead_at)
        return {**record, "state": "dead", "reason": letter.reason, "errors": list(letter.errors),
                "attempt": letter.attempts, "lease": "", "result": result.to_dict(), "dead_at": dead_at,
                "expires_at": now + self.result_ttl}

    async def _dead_letter_raw(self, msg: Msg, node_type: str, reason: str) -> None:
        seq = stream_sequence(msg.reply or "")
        task_id = _queued_as(msg)
        if task_id is not None and msg.headers and "Da-Task-Token" not in msg.headers:
            # An older producer's Da-Task-Id may be a form of the id (" a" arrives as "a"):
            # the task the bytes carry names it, if they decode (an oversized task, say).
            carried = _task_id_of(msg.data)  # None if undecodable: the header is all there is
            if carried is not None and carried != task_id and task_id in _older_header_forms(carried):
                task_id = carried
        if task_id is not None and not await self._record_is_of(task_id, seq):
            task_id = None  # its header names a task whose record is another message's: not this one's to end
        task_id = task_id or f"raw-{seq}"
        reason = shortened(reason)
        # Said where the worker's operator looks, not only in the dead letter: it was not run.
        log.error("NATS %s: task %r (node type %r, stream sequence %d) is malformed and was dead-lettered unrun: %s; "
                  "'distributed-agents dead-letters show %s' shows it", mask_url(self._conn.url), task_id, node_type,
                  seq, reason, task_id)
        now = time.time()
        result = TaskResult(task_id, "failed", error=reason, attempts=0, finished_at=now)
        # Bound to this message: a redelivery of it (its ack lost) is lettered under the same id.
        record = {**_new_record(task_id, node_type, 0, None, seq=seq), "state": "dead", "reason": reason,
                  "errors": [reason], "dead_at": now, "expires_at": now + self.result_ttl,
                  "result": result.to_dict()}
        await kv.put(self._conn.js, self._tasks, token(task_id), encode(record), ttl=self.result_ttl)
        await self._write_dead_letter(record, None, bytes(msg.data))
        await send_ack(self._conn.nc, msg.reply or "", "ack")
        await self._notify_done(task_id, result)

    async def _record_is_of(self, task_id: str, seq: int) -> bool:
        """Whether the message at stream sequence ``seq`` may end ``task_id``'s record: there is
        none, or it is bound to that message. (Not one bound to none yet, seq 0: a requeue's
        before its bind, whose own message always decodes, so it is never lettered here.)"""
        try:
            record = (await self._read_from_leader(task_id)).record
        except PayloadDecodeError:
            return True  # a damaged record: the message's letter takes its place, as before
        # Another task's record under this one's key is damaged too.
        return record is None or record["id"] != task_id or int(record.get("seq") or 0) == seq

    async def dead_letters(self, node_type: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        with self._errors("list dead letters"):
            pattern = ">" if node_type is None else f"{token(node_type)}.*"
            entries = await kv.scan(self._conn.js, self._dead, pattern)
        letters = [_letter_from(f"{self._conn.names.dead_bucket} {e.key}", e.value)[0] for e in entries]
        letters.sort(key=lambda letter: letter.dead_at)
        return letters[:limit]

    async def requeue_dead_letter(self, task_id: str) -> bool:
        if not _keyable(task_id):
            return False  # no task with such an id was enqueued (see get_result)
        with self._errors(f"requeue dead letter {task_id!r}"):
            matches = await kv.scan(self._conn.js, self._dead, f"*.{token(task_id)}")
            if not matches:
                return False
            dead, letter = _letter_from(f"{self._conn.names.dead_bucket} {matches[-1].key}", matches[-1].value)
            if dead.task is None:  # raw bytes, or a damaged letter: nothing to run
                return False
            task = dead.task
            self._check_letter_fits(task, encode(task_to_dict(task)))
            found = await self._read_from_leader(task_id)  # not a lagging replica's record from before it went dead
            if found.record is not None and not (found.record["state"] == "dead"
                                                 or _requeue_died(found.record, found.written_at)):
                return False
            if found.record is not None and found.record.get("purged"):
                return False  # a purge came first (the letter this scan saw is being removed)
            priority = letter.get("priority", task.priority)
            priority = priority if type(priority) is int else task.priority
            max_attempts = letter.get("max_attempts")
            max_attempts = max_attempts if type(max_attempts) is int and max_attempts >= 1 else task.max_attempts
            record = {**_new_record(task_id, task.node_type, priority, max_attempts, seq=0), "requeued_at": time.time()}
            revision = await kv.cas(self._conn.js, self._tasks, token(task_id), encode(record), last=found.revision)
            if revision is None:
                return False
            await self._ensure_level(task.node_type, priority)
            # seq 0 in the record until the CAS below: a claimer of the new message adopts it.
            ack = await replies.js_publish(self._conn.nc, 
                self._conn.names.task_subject(task.node_type, priority),
                encode(task_to_dict(task)),
                headers=_id_headers(task_id, f"{_carried_id(task_id)}/requeue/{uuid.uuid4().hex}"),
            )
            # Fails if a claimer adopted the message, or the task was cancelled first: then a
            # message no record names is deleted (once a cancelled record expired, a claim of
            # it would find no record, make one, and run the cancelled task).
            seq = int(ack.seq)
            if await kv.cas(self._conn.js, self._tasks, token(task_id), encode({**record, "seq": seq}), last=revision) is None:
                current = (await self._read_from_leader(task_id)).record
                if current is None or int(current.get("seq") or 0) != seq:
                    with contextlib.suppress(Exception):
                        await self._conn.js.delete_msg(self._conn.names.task_stream, seq)
                    if current is not None and current.get("state") == "cancelled":
                        # The cancel marked this message withdrawn (``stats``); deleted, it needs no mark.
                        await kv.remove(self._conn.js, self._claims, _withdrawn_key(task.node_type, task_id))
                    # A cancel took the queued record meanwhile: the requeue came first (True, as
                    # the cancel's). A purge or a requeue taking over one paused past
                    # _REQUEUE_TAKEOVER_SECONDS took it for a dead one: that call answered True and
                    # settled the letter; this requeue requeued nothing.
                    if (current is None or current.get("state") != "cancelled"
                            or current.get("requeued_at") != record["requeued_at"]):
                        return False  # (a cancelled record another requeue wrote is that one's)
            # Only the letter read above: the requeued task, claimed and failed for good meanwhile,
            # may have written a new one under the same key.
            await kv.remove_through(self._conn.js, self._dead, matches[-1].key, matches[-1].revision)
            self._done.forget([task_id])  # its failed result is gone
            await self._wake(task.node_type)
            return True

    async def purge_dead_letter(self, task_id: str) -> bool:
        if not _keyable(task_id):
            return False  # no task with such an id was enqueued (see get_result)
        # The task record (state "dead") keeps the id known until its TTL, the result's.
        with self._errors(f"purge dead letter {task_id!r}"):
            node_type, found = await self._mark_purged(task_id)
            if found == "unbound":
                # A requeue is under way (it removes the letter): nothing is purged. (One that died
                # before publishing is purged once it must have died: ``_mark_purged``.)
                return False
            matches = await kv.scan(self._conn.js, self._dead, f"*.{token(task_id)}")
            keys = [entry.key for entry in matches]
            if found == "live":
                # A requeue won the record (the task is queued or ran again): this purge purged
                # nothing (of a racing requeue and purge exactly one is True). The letters the
                # scan saw are removed (what the requeue does, or one a requeue that died left)
                # only if the record is still live after the scan: a letter is written after its
                # record turns dead, so none of them is of a death since the requeue.
                again = await self._read_from_leader(task_id)
                if again.record is not None and again.record.get("state") != "dead":
                    for key in keys:
                        await kv.remove(self._conn.js, self._dead, key)
                return False
            # The record names the letter's key: removed whatever the scan saw (its consumer may
            # read a replica that has not stored a letter written just before).
            known = None if node_type is None else f"{token(node_type)}.{token(task_id)}"
            if known is not None and known not in keys:
                keys.append(known)
            for key in keys:
                await kv.remove(self._conn.js, self._dead, key)
            # True once per death: for the call that marked the record (a letter another purge
            # marked first, or whose writer died after that purge, is removed, answering False),
            # or for letters with no record left.
            return found == "marked" or (found == "absent" and bool(matches))

    # -- results -----------------------------------------------------------------------
    async def get_result(self, task_id: str) -> TaskResult | None:
        if not _keyable(task_id):
            return None  # no task with such an id was enqueued (and its key would end the connection)
        with self._errors(f"read the result of task {task_id!r}"):
            entry = await kv.get(self._tasks, token(task_id))
        return None if entry is None else self._stored_result(task_id, entry)

    async def _results(self, ids: Collection[str]) -> dict[str, TaskResult]:
        """Stored results of ``ids`` (one batched read per 256 ids)."""
        keys = {token(task_id): task_id for task_id in ids}
        entries = await kv.get_many(self._tasks, list(keys))
        found = {}
        for key, entry in entries.items():
            result = self._stored_result(keys[key], entry) if key in keys else None
            if result is not None:
                found[keys[key]] = result
        return found

    def _stored_result(self, task_id: str, entry: kv.Entry) -> TaskResult | None:
        """The result ``task_id``'s record ``entry`` holds (None: not settled, or expired); a failed
        result naming the bucket and key if the record is not one this queue writes for that task.

        Something other than this engine wrote there (bytes that are not a record, a settled
        record without a result, the record or result of another task copied in): the task's
        outcome is unknown, so the workflow's step fails with an error saying where and what
        to do, instead of a decoding error naming nothing, or a wait that never ends (as the
        Redis queue does for its result keys).
        """
        where = f"{self._conn.names.task_bucket} {entry.key}"
        try:
            record = _control_record(entry.value, where)
            if record["id"] != task_id:
                raise ValueError(f"it is the record of task {record['id'][:80]!r}")
            if record["state"] in ("done", "dead") and not record.get("result"):
                raise ValueError(f"it is {record['state']!r} but holds no result")
            result = _result_of(record)
            if result is not None and result.task_id != task_id:
                raise ValueError(f"it holds the result of task {result.task_id[:80]!r}")
            return result
        except ValueError as exc:  # PayloadDecodeError too
            log.error("the record of task %r in NATS KV %s is malformed: %s", task_id, where, exc)
            return malformed_result(task_id, "the record", f"NATS KV bucket {self._conn.names.task_bucket!r} key "
                                    f"{entry.key!r}", exc, "nats kv del BUCKET KEY")

    async def wait_results(self, task_ids: Collection[str], *, timeout: float) -> dict[str, TaskResult]:
        """Finished results among ``task_ids``; waits (woken by done events) up to ``timeout``.

        Ids this queue enqueued are not read (unless ``timeout`` is 0): their done events,
        kept since the enqueue, carry the result (see ``done_events``). Other ids are read,
        in one batched read. A wait that no event ends within ``_RESULT_POLL`` reads every
        id, in case an event was lost. So waiting on a fan-out costs O(tasks) reads at most
        in all, and usually none.
        """
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        with self._errors("wait for task results"):
            await self._done.ensure()
            found, bare = self._done.take(ids)
            if len(found) == len(ids):
                return found
            check: list[str] | None = [t for t in ids if t not in found and (timeout <= 0 or not self._done.expecting(t))]
            check += bare
            give_up = time.monotonic() + timeout
            # Registered before reading, so an event that comes during the read still wakes it.
            async with self._done.watch(ids) as waiter:
                while True:
                    kept, bare = self._done.take(ids)
                    found.update(kept)
                    if check is not None:
                        check += bare
                    unread = [t for t in (ids if check is None else check) if t not in found]
                    if unread:
                        found.update(await self._results(unread))
                    if found:
                        self._done.forget(found)
                        return found
                    remaining = give_up - time.monotonic()
                    if remaining <= 0:
                        return {}
                    if not await waiter.wait(min(remaining, self.result_poll)):
                        check = None  # nothing came: read everything once
                        continue
                    check = []
                    for task_id, result in waiter.take_fired():
                        if result is not None:
                            found[task_id] = result
                        else:
                            check.append(task_id)

    async def cancel(self, task_id: str) -> bool:
        if not _keyable(task_id):
            return False  # no task with such an id was enqueued (see get_result)
        with self._errors(f"cancel task {task_id!r}"):
            # From the leader: a replica behind it could answer the record from before the
            # task was queued (or queued again), and cancel would report a queued task uncancellable.
            found = await self._read_from_leader(task_id)
            record = found.record
            if record is None or record["state"] not in ("queued", "delayed"):
                return False
            new = {**record, "state": "cancelled", "expires_at": time.time() + self.result_ttl}
            withdrawn = None if record.get("seq") else _withdrawn_key(str(record["node_type"]), task_id)
            if withdrawn is not None:
                # No message bound: it cannot be deleted, and stays in the stream until a claim
                # acks it away; marked first (a claim may find the record cancelled at once), so
                # ``stats`` does not count it queued meanwhile (however long that takes).
                await kv.put(self._conn.js, self._claims, withdrawn, b"1")
            if await kv.cas(self._conn.js, self._tasks, token(task_id), encode(new), last=found.revision, ttl=self.result_ttl) is None:
                if withdrawn is not None:
                    await kv.remove(self._conn.js, self._claims, withdrawn)
                return False
            if record.get("seq"):
                with contextlib.suppress(Exception):
                    await self._conn.js.delete_msg(self._conn.names.task_stream, int(record["seq"]))
                # If its message was given back (released, delayed), it is no longer unacked: drop the mark too.
                await kv.remove(self._conn.js, self._claims, _given_back_key(record["node_type"], int(record["seq"])))
            elif record["state"] == "queued":
                # A requeue's record before its message is bound (the requeue under way, or dead):
                # that requeue now requeues nothing (its bind fails; its message is deleted or, a
                # requeue's message with no live record, acked away unrun), so the dead letter it
                # would have removed goes with the cancel.
                for entry in await kv.scan(self._conn.js, self._dead, f"*.{token(task_id)}"):
                    await kv.remove(self._conn.js, self._dead, entry.key)
            return True

    # -- observability -----------------------------------------------------------------
    async def stats(self, node_type: str) -> QueueStats:
        import nats.js.errors

        names = self._conn.names
        with self._errors(f"read queue stats of {node_type!r}"):
            info = await self._conn.js.stream_info(names.task_stream, subjects_filter=names.task_subjects_of(node_type))
            stored = unacked = 0
            for subject, count in (info.state.subjects or {}).items():
                priority = priority_from_token(subject.rsplit(".", 1)[-1])
                if not count or priority is None:
                    continue
                stored += int(count)
                try:
                    consumer = await self._conn.js.consumer_info(names.task_stream, names.task_consumer(node_type, priority))
                except nats.js.errors.NotFoundError:
                    continue
                unacked += int(consumer.num_ack_pending or 0)
            # The given-back and withdrawn marks of this type, in one read (``<type>.<mark>.<what>``).
            marks = Counter(key.split(".")[1] for key in await kv.keys_matching(
                self._conn.nc, self._claims, f"{token(node_type)}.*.*"))
            dead = await kv.count(self._conn.js, self._dead, f"{token(node_type)}.*")
        # Every message in the stream is waiting, delayed or delivered and not acked (acked
        # ones are gone); of the delivered ones, those given back (NAKed) wait again; of the
        # waiting ones, those of tasks cancelled before a claim bound them are withdrawn.
        in_flight = max(unacked - marks[_GIVEN_BACK], 0)
        return QueueStats(node_type, max(stored - in_flight - marks[_WITHDRAWN], 0), in_flight, dead)

    async def close(self) -> None:
        await self._done.close()
        await self._wakeups.close()
        keepers = [held.keeper for held in self._held.values() if held.keeper is not None]
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        for keeper in keepers:
            keeper.cancel()
        for keeper in keepers:
            with contextlib.suppress(BaseException):
                await keeper


def _result_of(record: Mapping[str, Any] | None) -> TaskResult | None:
    """The result a task record holds, or None (pending, cancelled, expired)."""
    if record is None or record.get("state") not in ("done", "dead") or not record.get("result"):
        return None
    # The server's per-message TTL has whole-second resolution; expire exactly here.
    if float(record.get("expires_at") or 0) and float(record["expires_at"]) <= time.time():
        return None
    return TaskResult.from_dict(record["result"])


#: The longest name JetStream takes for a consumer (nats-server's ``JSMaxNameLen``).
MAX_CONSUMER_NAME = 255


def _check_consumer_name(node_type: str, name: str) -> None:
    """``ConfigurationError`` if ``node_type``'s consumer ``name`` is longer than JetStream allows.

    The name is the node type as a subject token (``naming.token``: a character outside
    ``[A-Za-z0-9-]`` takes 3 bytes per UTF-8 byte) and its priority; the server's own refusal
    reads as "consumer not found", naming neither the node type nor the cause.
    """
    if len(name) > MAX_CONSUMER_NAME:
        raise ConfigurationError(
            f"node type {node_type[:60]!r}{'...' if len(node_type) > 60 else ''} ({len(node_type)} characters) is too "
            f"long for NATS: its JetStream consumer name, the type escaped for subjects (characters other than "
            f"A-Z, a-z, 0-9 and '-' take 3 per UTF-8 byte) and its priority, is {len(name)} characters, over the "
            f"{MAX_CONSUMER_NAME} NATS allows; use a shorter node type (ASCII letters, digits and '-' cost 1 each)")


def _consumer_of(lease_id: str) -> str:
    """The consumer a delivery's reply subject (``$JS.ACK.<stream>.<consumer>.…``) names."""
    return lease_id.split(".", 4)[3] if lease_id.count(".") >= 4 else lease_id


def _holds(record: Mapping[str, Any], lease_id: str) -> bool:
    """Whether ``record`` names ``lease_id`` as its live claim (``_held_record``'s check)."""
    return (record.get("state") == "claimed" and record.get("lease") == lease_id
            and float(record.get("deadline", 0)) > time.time())


def _levels_key(node_type: str) -> str:
    """The claims-bucket key listing the priorities tasks of ``node_type`` were queued at."""
    return f"{token(node_type)}.levels"


def _levels_of(entry: kv.Entry | None) -> list[int] | None:
    """The priorities a levels key lists; None if absent or not a list of ints (written by hand)."""
    if entry is None:
        return None
    try:
        levels = decode(entry.value)
    except PayloadDecodeError:
        return None
    if not isinstance(levels, list) or not all(type(level) is int for level in levels):
        return None
    return levels


def _withdrawn_key(node_type: str, task_id: str) -> str:
    """The claims-bucket key marking the message of ``task_id``, cancelled before a claim bound
    its message to its record, as withdrawn (``cancel``, ``stats``)."""
    return f"{token(node_type)}.{_WITHDRAWN}.{token(task_id)}"


def _given_back_key(node_type: str, seq: int) -> str:
    """The claims-bucket key marking the message at stream sequence ``seq`` as given back."""
    return f"{token(node_type)}.{_GIVEN_BACK}.{seq}"


_CLAIMED = b'"state":"claimed"'


def _done_bytes(held: _Held, lease_id: str, expires_at: float, raw_result: bytes) -> bytes | None:
    """The JSON of ``{**held.record, "state": "done", "lease": "", "expires_at": expires_at,
    "result": <raw_result>}``, an ack's record, made by editing the bytes the claim stored
    (``held.raw``) instead of encoding the record again (its errors, lease and floats:
    about a tenth of a worker's CPU per task is JSON encoding). None when that does not
    apply: no bytes kept, a record that already has ``expires_at`` or ``result``, or
    ``state``/``lease`` not found exactly once as members (then the caller encodes). A
    string value cannot hold them: JSON escapes its quotes."""
    claimed, record = held.raw, held.record
    if claimed is None or "expires_at" in record or "result" in record or type(expires_at) is not float:
        return None
    lease = b'"lease":' + encode_text(lease_id)
    if claimed.count(_CLAIMED) != 1 or claimed.count(lease) != 1 or not claimed.endswith(b"}"):
        return None
    edited = claimed.replace(_CLAIMED, b'"state":"done"').replace(lease, b'"lease":""')
    return b"%s,\"expires_at\":%s,\"result\":%s}" % (edited[:-1], encode_float(expires_at), raw_result)


# Seconds after which a record a requeue wrote (queued, no message bound yet) is taken for that
# of a requeue that died before publishing, which another requeue may finish: a requeue under
# way publishes and binds within its request timeouts (5 s each), so one still running is never
# taken over, and requeues racing for one letter answer True once.
_REQUEUE_TAKEOVER_SECONDS = 30.0


def _requeue_died(record: Mapping[str, Any], written_at: float | None) -> bool:
    """Whether ``record`` is what a requeue that died before binding its message left (see
    ``_REQUEUE_TAKEOVER_SECONDS``), aged by its ``requeued_at``; a record an older version's
    requeue wrote has none, and is aged by when the server stored it (``written_at``, from a
    leader read; None: unknown, taken for a requeue under way)."""
    if record.get("state") != "queued" or record.get("seq"):
        return False
    since = record.get("requeued_at", written_at)
    return since is not None and time.time() - float(since) > _REQUEUE_TAKEOVER_SECONDS


# The longest task id this queue keeps, as a key token (``token``: up to 12 bytes a character),
# with its node type's: the keys go into subjects (a record's ``$KV.<bucket>.<key>``, a dead
# letter's ``<type>.<id>``), and nats-server closes the connection on a control line over 4 KiB
# (``max_control_line``), dropping every request on it; half of that leaves room for the
# bucket, API prefix and reply subject.
_MAX_KEY_BYTES = 2048


def _keyable(task_id: str, node_type: str = "") -> bool:
    """Whether ``task_id`` (of ``node_type``) fits the keys this queue keeps (``_MAX_KEY_BYTES``)."""
    return (len(task_id) + len(node_type) <= _MAX_KEY_BYTES // 12
            or len(token(task_id)) + len(token(node_type)) <= _MAX_KEY_BYTES)


# Room for what a republished task's Nats-Msg-Id adds to its carried id ("/requeue/" and 32 hex digits).
_MSG_ID_SUFFIX_BYTES = 48


def _task_id_of(data: bytes) -> str | None:
    """The id of the task the message bytes ``data`` carry; None if they are not a task."""
    try:
        return decode_task(data).id
    except PayloadDecodeError:
        return None


def _header_carries(task_id: str) -> bool:
    """Whether a header value carries ``task_id`` exactly: a header strips its value and makes
    line breaks spaces, so " a" arrived as "a" (and was taken for another task)."""
    return bool(task_id) and task_id.strip() == task_id and "\r" not in task_id and "\n" not in task_id


def _carried_id(task_id: str) -> str:
    """What the ``Nats-Msg-Id`` header of ``task_id``'s messages starts with: the id itself when a
    header carries it exactly (``_header_carries``) and it does not start with "=", else "=" and
    its ``token``. Distinct ids so never share a message id: " a" and "a" shared one (the dedup
    window took the second enqueue for a duplicate of the first). ``token`` is injective and
    never starts with "=", and no id carried as itself does."""
    if task_id[:1] != "=" and _header_carries(task_id):
        return task_id
    return "=" + token(task_id)


def _id_headers(task_id: str, message_id: str) -> dict[str, str]:
    """The headers of a message of task ``task_id``: ``Nats-Msg-Id`` = ``message_id`` and the id it
    is queued under, ``Da-Task-Id`` = the id itself where a header carries it exactly (as every
    version of this adapter wrote it, so claimers of any version check it alike), else
    ``Da-Task-Token`` = its ``token`` (older claimers, which know only ``Da-Task-Id``, take the
    message as one without a header and run it; they dead-lettered such ids as queued under
    another). Read back by ``_queued_as``."""
    if _header_carries(task_id):
        return {"Nats-Msg-Id": message_id, "Da-Task-Id": task_id}
    return {"Nats-Msg-Id": message_id, "Da-Task-Token": token(task_id)}


def _task_headers(task_id: str) -> bytes:
    """``_message_headers`` of ``task_id`` under its carried id alone (``_carried_id``): the
    shortest header block of its messages (``_MSG_ID_SUFFIX_BYTES`` more covers any)."""
    return _message_headers(task_id, _carried_id(task_id))


def _message_headers(task_id: str, message_id: str) -> bytes:
    """``replies.header_block(_id_headers(task_id, message_id))``, the header block of a task's
    message, written directly (one string per task of ``enqueue_many`` instead of the builder's
    loop over a dict), the same bytes."""
    if _header_carries(task_id):
        return f"NATS/1.0\r\nNats-Msg-Id: {message_id}\r\nDa-Task-Id: {task_id}\r\n\r\n".encode()
    return f"NATS/1.0\r\nNats-Msg-Id: {message_id}\r\nDa-Task-Token: {token(task_id)}\r\n\r\n".encode()


def _enqueue_message_id(task_id: str, revision: int) -> str:
    """The ``Nats-Msg-Id`` of the message an enqueue publishes after creating ``task_id``'s record at
    ``revision``: its carried id (``_carried_id``), "@" and the revision. Distinct per record (a
    reused id's new record has a revision of its own, so the dedup window never takes its message
    for the earlier one's), the same for every producer of one record (the window drops a second
    copy), and distinct across ids (the revision has no "@": the last "@" splits it off)."""
    return f"{_carried_id(task_id)}@{revision}"


def _digest(data: bytes) -> str:
    """What an enqueue's record keeps of its task's message ``data``: 16 hex digits of its BLAKE2b."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _fresh_record_bytes(task: Task, raw: bytes) -> bytes:
    """The record an enqueue of ``task`` (its message ``raw``) creates, as bytes."""
    return _new_record_bytes(_new_record_head(task.id, task.node_type, task.priority, task.max_attempts, _digest(raw)), 0)


def _untouched(record: Mapping[str, Any], raw: bytes | None) -> bool:
    """Whether ``raw`` (``record``'s bytes) are those an enqueue created, written by no one since
    (then the revision they were read at is the one the enqueue's message names)."""
    digest, priority, max_attempts = record.get("digest"), record.get("priority"), record.get("max_attempts")
    if raw is None or type(digest) is not str or type(priority) is not int or not (
            max_attempts is None or type(max_attempts) is int):
        return False
    try:
        head = _new_record_head(str(record["id"]), str(record["node_type"]), priority, max_attempts, digest)
    except (TypeError, ValueError):
        return False
    return raw == _new_record_bytes(head, 0)


def _of_this_record(record: Mapping[str, Any], revision: int, msg: Msg, task_id: str) -> bool:
    """Whether the delivered ``msg`` may be claimed under ``record`` (read at ``revision``): not
    when the record is one an enqueue wrote for another task of the same id (queued, no
    message bound, another ``digest``: the id enqueued again once its earlier record expired,
    with another task, whose message this is not). A message whose id names this revision
    (``_trusted_revision``) was published for this very record: by its enqueue, or sent again
    by a later enqueue of the id (``_enqueue_known``), whose task's bytes may differ (its
    ``created_at``). A message with the same bytes is the same task. A record that names no
    ``digest`` (older versions', a requeue's) takes any message of its id, as before, and so
    does one claimed before (``attempt`` over 0: queued again for a retry or a delay, whose
    message is the claimed task sent again)."""
    if record.get("state") != "queued" or record.get("seq") or record.get("attempt") or "digest" not in record:
        return True
    if _trusted_revision(msg, task_id) == revision:
        return True
    return bool(record["digest"] == _digest(msg.data))


def _trusted_revision(msg: Msg, task_id: str) -> int | None:
    """The record revision ``msg``'s ``Nats-Msg-Id`` names (``_enqueue_message_id``), if it names one.

    Only an enqueue writes such an id, right after creating the task's record at that revision
    (``_new_record`` with seq 0, ``fresh`` in ``_enqueue``). Any later write of the record moves
    its revision on (revisions are stream sequences and never come back), so a first claim may
    write its claim against this revision without reading the record: if the record is still
    the one the enqueue created, the claim is right; if anything changed it, the claim's
    compare-and-set loses and the claim reads the record (``_take``)."""
    message_id = (msg.headers or {}).get("Nats-Msg-Id") or ""
    head = _carried_id(task_id) + "@"
    if not message_id.startswith(head):
        return None
    revision = message_id[len(head):]
    if not (0 < len(revision) <= 20 and revision.isascii() and revision.isdigit()):
        return None
    return int(revision) or None


def _claimed_bytes(queued: bytes | None, record: Mapping[str, Any], seq: int, lease_id: str, worker: bytes,
                   deadline: float) -> bytes | None:
    """The JSON of a first claim of ``record`` (``{**record, "seq": seq, "state": "claimed", "attempt": 1,
    "errors": [], "lease": lease_id, "worker": <worker>, "deadline": deadline}``, ``worker`` already
    encoded), made by editing the bytes it was read as (``queued``) instead of encoding the record
    again, when they end as ``_new_record`` writes a record (``"seq":<its seq>`` and
    ``_NEW_RECORD_TAIL``): the members before ``seq`` are kept as they are, those from ``seq`` on
    written anew; it decodes to that record (and is its ``encode`` for a record this adapter
    wrote). None when the bytes end otherwise (the caller encodes). The tail cannot be inside a
    string value: JSON escapes a string's quotes."""
    stored_seq = record.get("seq")
    if queued is None or type(stored_seq) is not int:
        return None
    tail = b"%d%s" % (stored_seq, _NEW_RECORD_TAIL)
    cut = len(queued) - len(tail)
    if not queued.endswith(tail) or not queued.endswith(b',"seq":', 0, cut):
        return None
    return b'%s%d,"state":"claimed","attempt":1,"errors":[],"lease":%s,"worker":%s,"deadline":%s}' % (
        queued[:cut], seq, encode_text(lease_id), worker, encode_float(deadline))


def _first_claim_bytes(head: bytes, seq: int, lease_id: str, worker: bytes, deadline: float) -> bytes:
    """The JSON of a first claim of the record an enqueue created, from its ``_new_record_head``:
    ``encode({**record, "seq": seq, "state": "claimed", "attempt": 1, "errors": [], "lease": lease_id,
    "worker": <worker>, "deadline": deadline})``, ``worker`` already encoded; the same bytes."""
    return b'%s%d,"state":"claimed","attempt":1,"errors":[],"lease":%s,"worker":%s,"deadline":%s}' % (
        head, seq, encode_text(lease_id), worker, encode_float(deadline))


def _new_record(task_id: str, node_type: str, priority: int, max_attempts: int | None, *, seq: int,
                digest: str | None = None) -> dict[str, Any]:
    """A task's control record as first written: by an enqueue (queued, seq 0, and the
    ``_digest`` of the task's message, which tells its messages from those of an earlier task
    of the id: ``_of_this_record``), or by a claim of a message that has none (a foreign
    producer's)."""
    head: dict[str, Any] = {"id": task_id, "node_type": node_type, "priority": priority, "max_attempts": max_attempts}
    if digest is not None:
        head["digest"] = digest
    return {
        **head,
        "seq": seq,
        "state": "queued",
        "attempt": 0,
        "errors": [],
        "lease": "",
        "worker": "",
        "deadline": 0.0,
    }


# ``_new_record``'s members after ``seq``, as ``encode`` writes them.
_NEW_RECORD_TAIL = b',"state":"queued","attempt":0,"errors":[],"lease":"","worker":"","deadline":0.0}'


def _new_record_head(task_id: str, node_type: str, priority: int, max_attempts: int | None, digest: str) -> bytes:
    """The JSON of the record an enqueue creates (``_new_record`` with the ``digest`` of the
    task's message) up to its ``seq``'s value; ``_new_record_bytes`` completes it. Raises
    ``TypeError``/``ValueError`` as ``encode`` does."""
    if type(priority) is int and (max_attempts is None or type(max_attempts) is int):
        # The members written one by one: encoding the dict costs about three times as much.
        attempts = b"null" if max_attempts is None else b"%d" % max_attempts
        return b'{"id":%s,"node_type":%s,"priority":%d,"max_attempts":%s,"digest":%s,"seq":' % (
            encode_text(task_id), encode_text(node_type), priority, attempts, encode_text(digest))
    head = encode({"id": task_id, "node_type": node_type, "priority": priority, "max_attempts": max_attempts,
                   "digest": digest})
    return head[:-1] + b',"seq":'


def _new_record_bytes(head: bytes, seq: int) -> bytes:
    """``encode(_new_record(..., seq=seq))`` from its ``_new_record_head``: the bytes, made without
    the record's dict (the reader writes one per task of ``enqueue_many`` as its message is stored)."""
    return b"%s%d%s" % (head, seq, _NEW_RECORD_TAIL)


_STATES = ("queued", "claimed", "delayed", *_TERMINAL)


def _control_record(value: bytes | None, where: str) -> dict[str, Any]:
    """A task's control record as stored at ``where`` (bucket and key), checked: the one reader of them.

    Checks the fields claims and settling rely on (``id``, ``node_type``, ``state``,
    ``attempt``, ``seq``, ``lease``, ``errors``); raises ``PayloadDecodeError`` (the
    dead-letter reason, ``malformed task: ...``) for bytes that are not such a record,
    so a damaged record dead-letters its task instead of failing every claim of it.
    """
    try:
        record = decode(value or b"")
    except PayloadDecodeError as exc:
        raise PayloadDecodeError(f"malformed task: its record at {where} is damaged ({exc})") from None
    if (not isinstance(record, dict) or record.get("state") not in _STATES or type(record.get("attempt")) is not int
            or not isinstance(record.get("id"), str) or not isinstance(record.get("node_type"), str)
            or type(record.get("seq", 0)) is not int or not isinstance(record.get("lease", ""), str)
            or not isinstance(record.get("errors", []), list)):
        raise PayloadDecodeError(
            f"malformed task: its record at {where} is damaged (not the object this queue writes: {value!r:.120})")
    return record


def _decode_delivered(msg: Msg, queued_in: str | None = None) -> Task:
    """The task ``msg`` carries (``decode_task``), checked against the id it was published under:
    its ``Da-Task-Token`` must name the task's id, or its ``Da-Task-Id`` must be the id or what
    an older version wrote for it (``_older_header_forms``); a message with neither header is
    not checked. ``PayloadDecodeError`` (the dead-letter reason) otherwise, or if the bytes are
    not a task of node type ``queued_in`` (when given)."""
    headers = msg.headers
    task = decode_task(msg.data)
    # (Checked in decode_task's order, so a task wrong in both ways gets the same reason.)
    if headers:
        tokened, named = headers.get("Da-Task-Token"), headers.get("Da-Task-Id")
        if tokened is not None:
            queued_as = untoken(tokened)
            if queued_as != task.id:
                decode_task(msg.data, queued_as=queued_as if queued_as is not None else
                            f"Da-Task-Token {tokened!r}, which names no id")  # raises
        elif named is not None and named != task.id and named not in _older_header_forms(task.id):
            decode_task(msg.data, queued_as=named)  # raises: queued as another task
    if queued_in is not None and task.node_type != queued_in:
        decode_task(msg.data, queued_in=queued_in)  # raises: in another type's queue
    return task


_RECORD_FIRST_KINDS = ("/requeue/", "/again/")


def _written_after_its_record(msg: Msg, task_id: str) -> bool:
    """Whether ``msg`` (of task ``task_id``) was published after its record was written: a requeue's
    or a delayed task's move to the end of its priority (``requeue_dead_letter``, ``_republish``),
    told by its ``Nats-Msg-Id``: the id's carried form (or, from older versions, the id itself or
    ``_older_header_forms``), ``/requeue/`` or ``/again/`` and 32 hex digits; or an enqueue's,
    which names its record's revision (``_trusted_revision``). Older versions published an
    enqueue's message before its record, under the carried form (or it and ``/`` and 32 hex
    digits), which never reads as either."""
    if _trusted_revision(msg, task_id) is not None:
        return True  # an enqueue's message, published once its record was created
    message_id = (msg.headers or {}).get("Nats-Msg-Id") or ""
    # An older version's id in the header as a header delivers it (" a" as "a"), or its "=" form.
    for prefix in dict.fromkeys(p for p in (_carried_id(task_id), task_id, *_older_header_forms(task_id)) if p):
        for kind in _RECORD_FIRST_KINDS:
            head = prefix + kind
            if message_id.startswith(head):
                rest = message_id[len(head):]
                return len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)
    return False


def _older_header_forms(task_id: str) -> tuple[str, str]:
    """What older versions' ``Da-Task-Id`` held for ``task_id``, each naming that task: the id as
    a header delivers it (stripped, line breaks made spaces: versions before 2d4c58a wrote the
    id itself, which a header cannot carry exactly for ids like " a"), and ``_carried_id``
    (versions from 2d4c58a to f892713: "=" and the token for such ids and for "=" starts)."""
    delivered = replies.header_lines(replies.header_block({"Da-Task-Id": task_id})[len(b"NATS/1.0\r\n"):])
    return delivered.get("Da-Task-Id", ""), _carried_id(task_id)


def _queued_as(msg: Msg) -> str | None:
    """The task id a message was published under (``_id_headers``): its ``Da-Task-Token`` read
    back, or its ``Da-Task-Id``; None without either (or with a token ``token`` never makes)."""
    headers = msg.headers
    if not headers:
        return None
    value = headers.get("Da-Task-Token")
    if value is not None:
        return untoken(value)
    return headers.get("Da-Task-Id") or None


def _letter_from(where: str, value: bytes | None) -> tuple[DeadLetter, Mapping[str, Any]]:
    """The dead letter stored at ``where`` (bucket and key) and its stored fields: the one reader of letters.

    Total: an entry that is not a letter this adapter wrote (not JSON, a field of the
    wrong type, a task that does not decode) is still listed, with no task, its first
    bytes as ``raw`` and the damage as its reason, so listings show it and it can be
    purged; it is never requeued.
    """
    try:
        data = decode(value or b"")
        if not isinstance(data, dict):
            raise ValueError(f"a dead letter must be a JSON object, got {type(data).__name__}")
        raw, task, errors = data.get("raw"), data.get("task"), data.get("errors") or ()
        if not isinstance(data.get("task_id"), str) or not isinstance(data.get("node_type"), str):
            raise ValueError("fields 'task_id' and 'node_type' must be strings")
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise ValueError("field 'errors' must be a list of strings")
        letter = DeadLetter(
            task_id=data["task_id"],
            node_type=data["node_type"],
            reason=str(data.get("reason", "")),
            errors=tuple(errors),
            attempts=int(data.get("attempts", 0)),
            task=None if task is None else task_from_dict(task),
            raw=None if raw is None else base64.b64decode(raw, validate=True),
            dead_at=float(data.get("dead_at", 0.0)),
        )
        if not math.isfinite(letter.dead_at):
            raise ValueError("field 'dead_at' is not a finite number")
        return letter, data
    except (ValueError, TypeError, OverflowError) as exc:  # PayloadDecodeError and binascii.Error included
        reason = f"damaged dead letter at {where}: {exc}; purge it"
        key = where.rsplit(" ", 1)[-1]
        node_type, _, task_id = key.partition(".")
        return DeadLetter(task_id=task_id or key, node_type=node_type, reason=reason, errors=(reason,), attempts=0,
                          task=None, raw=(value or b"")[:DEAD_RAW_KEPT], dead_at=0.0), {}
