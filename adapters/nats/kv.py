"""Compare-and-set helpers over JetStream KV buckets.

A KV bucket is a stream with one subject per key (``$KV.<bucket>.<key>``); a key's
revision is the stream sequence of its last write. ``cas`` publishes with
``Nats-Expected-Last-Subject-Sequence`` (0: the key must not exist), optionally with a
per-message TTL (``Nats-TTL``, nats-server 2.11+), which nats-py's ``update`` cannot set.
``remove`` purges a key's subject so that it leaves no delete marker behind, which keeps
per-subject counts (``stream_info(subjects_filter=...)``) exact.

``get_many`` and ``get_range`` read many entries in one round trip each (per chunk) with
JetStream's batched direct get (nats-server 2.11+, buckets with ``allow_direct``): the
last message of each of a list of keys (``multi_last``), or every message of a subject
filter from a stream sequence on (``batch`` with ``next_by_subj``). The server streams
the messages to an inbox and ends with a ``204 EOB`` status (``404`` when nothing matched).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats import replies
from distributed_agents.adapters.nats.connection import ttl_header

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["Entry", "cas", "cas_answer", "cas_headers", "cas_many", "cas_request", "count", "entry_of", "get", "get_from_leader", "get_many", "get_range", "keys_matching", "put", "put_many", "remove", "scan", "start_get", "subject_counts"]

# The header of a CAS (nats-py's ``api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE``).
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
# JetStream's "wrong last sequence" error codes.
_WRONG_LAST = (10071, 10164)
# Keys per multi_last request, and messages per batch request (the server caps both).
_MULTI_CHUNK = 256
# Seconds a scan keeps asking a consumer that still counts messages pending after a pull
# answered none (see ``scan``).
_SCAN_PATIENCE = 2.0
_BATCH = 1000


@dataclass(frozen=True)
class Entry:
    """A key's current value and revision; ``written_at``: when the server stored it (seconds
    since the epoch, the server's clock), where the read returns it (``get_from_leader``), else None."""

    key: str
    value: bytes
    revision: int
    written_at: float | None = field(default=None, compare=False)  # not part of what the entry is


def _stream(kv: KeyValue) -> str:
    return kv._stream  # noqa: SLF001 - nats-py exposes no public accessor


def _subject(kv: KeyValue, key: str) -> str:
    return f"{kv._pre}{key}"  # noqa: SLF001


async def get(kv: KeyValue, key: str, *, timeout: float = 5.0) -> Entry | None:
    """The current entry of ``key``, or None if absent, deleted or expired (one direct get).

    A direct get nobody answers (``NoRespondersError``: on a cluster the replicas set up their
    direct-get responders a moment after the stream is made or moved, and a stream without
    direct gets has none) is asked of the stream's leader instead (``get_from_leader``), whose
    errors are raised.
    """
    import nats.errors

    nc = kv._js._nc  # noqa: SLF001
    try:
        msg = await replies.request(nc, f"$JS.API.DIRECT.GET.{_stream(kv)}.{_subject(kv, key)}", b"", timeout=timeout)
        return entry_of(msg, key, _stream(kv))
    except nats.errors.NoRespondersError:
        return await get_from_leader(kv._js, kv, key)  # noqa: SLF001


async def get_from_leader(js: JetStreamContext, kv: KeyValue, key: str) -> Entry | None:
    """The current entry of ``key`` as the stream's leader holds it, or None (absent, deleted).

    A STREAM.MSG.GET, answered by the leader, not a direct get: any replica answers a direct
    get, and one just restarted can answer with an older revision for a while (nats-server
    issue 4162). For a read that must see every write acknowledged before it: a check made
    after a write, against a mark another process wrote first.
    """
    import nats.js.errors

    try:
        msg = await js.get_last_msg(_stream(kv), _subject(kv, key))
    except nats.js.errors.NotFoundError:
        return None
    if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
        return None
    stored = getattr(msg, "time", None)
    written_at = stored.timestamp() if hasattr(stored, "timestamp") else None
    return Entry(key, msg.data or b"", int(msg.seq or 0), written_at)


async def start_get(kv: KeyValue, key: str, *, timeout: float = 5.0) -> replies.Started:
    """``get``'s request, sent now; its entry is ``entry_of(await started.reply())``. A direct
    get nobody answers is asked of the stream's leader then, as ``get`` does (its answer made
    a direct get's reply for ``entry_of``)."""
    nc = kv._js._nc  # noqa: SLF001
    return await replies.start(nc, f"$JS.API.DIRECT.GET.{_stream(kv)}.{_subject(kv, key)}", b"", timeout=timeout,
                               no_responders=functools.partial(_leader_reply, kv, key))


async def _leader_reply(kv: KeyValue, key: str) -> Msg:
    """The leader's answer for ``key`` (``get_from_leader``) as a direct get's reply: its value
    with ``Nats-Sequence``, or a ``404`` status when absent, deleted or purged."""
    from nats.aio.msg import Msg

    entry = await get_from_leader(kv._js, kv, key)  # noqa: SLF001
    if entry is None:
        return Msg(kv._js._nc, headers={"Status": "404"})  # noqa: SLF001
    return Msg(kv._js._nc, data=entry.value, headers={"Nats-Sequence": str(entry.revision)})  # noqa: SLF001


def entry_of(msg: Msg, key: str, stream: str = "") -> Entry | None:
    """The entry a direct get of ``key`` answered with ``msg`` (None: absent, deleted, expired); ``get``'s errors."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        import nats.errors

        if status == "408":
            raise nats.errors.TimeoutError
        raise nats.errors.Error(f"direct get of {key!r} on stream {stream}: status {status} "
                                f"{headers.get('Description', '')}")
    if headers.get("KV-Operation") in ("DEL", "PURGE"):
        return None
    return Entry(key, msg.data or b"", int(headers["Nats-Sequence"]))


async def _direct_batch(nc: Any, stream: str, request: dict[str, Any], timeout: float) -> tuple[list[Msg], int]:
    """Messages answering one batched direct get, and the server's count of matches left."""
    import nats.errors

    messages, status = await replies.collect(nc, f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(),
                                             limit=int(request.get("batch") or 1) + 1, timeout=timeout)
    code = "" if status is None else (status.headers or {}).get("Status", "")
    if code == "503":
        # No server answers for the stream right now (a restarted server still
        # recovering it, a cluster electing its leader): an outage, retried.
        raise nats.errors.NoRespondersError(f"direct get on stream {stream}: status 503")
    if code == "408":
        raise nats.errors.TimeoutError
    if code not in ("204", "404"):
        description = "" if status is None else (status.headers or {}).get("Description", "")
        raise nats.errors.Error(f"direct get on stream {stream}: status {code or 'none'} {description}")
    pending = int((status.headers or {}).get("Nats-Num-Pending") or 0) if status is not None and code == "204" else 0
    return messages, pending


def _entry(msg: Msg, prefix_length: int) -> Entry | None:
    headers = msg.headers or {}
    if headers.get("KV-Operation") in ("DEL", "PURGE"):
        return None
    return Entry(headers["Nats-Subject"][prefix_length:], msg.data or b"", int(headers["Nats-Sequence"]))


async def get_many(kv: KeyValue, keys: Sequence[str], *, timeout: float = 5.0) -> dict[str, Entry]:
    """The current entries of those ``keys`` that exist (absent, deleted, expired: left out).

    A batched direct get nobody answers (see ``get``) is asked of the stream's leader instead,
    a key at a time (concurrently), whose errors are raised."""
    import nats.errors

    found: dict[str, Entry] = {}
    unique = list(dict.fromkeys(keys))
    prefix_length = len(_subject(kv, ""))
    nc = kv._js._nc  # noqa: SLF001
    for start in range(0, len(unique), _MULTI_CHUNK):
        chunk = unique[start:start + _MULTI_CHUNK]
        subjects = [_subject(kv, key) for key in chunk]
        try:
            messages, _ = await _direct_batch(nc, _stream(kv), {"multi_last": subjects, "batch": len(subjects)},
                                              timeout)
        except nats.errors.NoRespondersError:
            leader = await asyncio.gather(*(get_from_leader(kv._js, kv, key) for key in chunk))  # noqa: SLF001
            found.update((entry.key, entry) for entry in leader if entry is not None)
            continue
        for msg in messages:
            entry = _entry(msg, prefix_length)
            if entry is not None:
                found[entry.key] = entry
    return found


async def get_range(kv: KeyValue, pattern: str, *, start: int = 1, timeout: float = 5.0) -> list[Entry]:
    """Every stored message of the keys matching ``pattern`` from stream sequence ``start`` on,
    oldest first (a key rewritten since appears once, at its newest sequence).

    A batched direct get nobody answers (see ``get``) is asked of the stream's leader instead,
    a message at a time (``_range_from_leader``), whose errors are raised."""
    import nats.errors

    entries: list[Entry] = []
    prefix_length = len(_subject(kv, ""))
    nc = kv._js._nc  # noqa: SLF001
    seq = max(1, start)
    while True:
        request = {"batch": _BATCH, "seq": seq, "next_by_subj": _subject(kv, pattern)}
        try:
            messages, pending = await _direct_batch(nc, _stream(kv), request, timeout)
        except nats.errors.NoRespondersError:
            return entries + await _range_from_leader(kv, pattern, seq, prefix_length)
        for msg in messages:
            entry = _entry(msg, prefix_length)
            if entry is not None:
                entries.append(entry)
        if not messages or pending <= 0:
            return entries
        seq = int((messages[-1].headers or {})["Nats-Sequence"]) + 1


async def _range_from_leader(kv: KeyValue, pattern: str, seq: int, prefix_length: int) -> list[Entry]:
    """``get_range`` from sequence ``seq`` on, read from the stream's leader (STREAM.MSG.GET,
    the next message of the pattern's subjects at or after a sequence, until none is left)."""
    import nats.js.errors

    entries: list[Entry] = []
    subject = _subject(kv, pattern)
    while True:
        try:
            msg = await kv._js.get_msg(_stream(kv), seq=seq, subject=subject, next=True)  # noqa: SLF001
        except nats.js.errors.NotFoundError:
            return entries
        if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
            entries.append(Entry((msg.subject or "")[prefix_length:], msg.data or b"", int(msg.seq or 0)))
        seq = int(msg.seq or 0) + 1


async def cas(
    js: JetStreamContext, kv: KeyValue, key: str, value: bytes, *, last: int, ttl: float | None = None
) -> int | None:
    """Write ``value`` if ``key``'s revision is ``last`` (0: absent); new revision or None."""
    try:
        ack = await replies.js_publish(js._nc, _subject(kv, key), value, headers=cas_headers(last, ttl))  # noqa: SLF001
    except Exception as exc:
        if _lost(exc):
            return None
        raise
    return ack.seq


def _lost(error: BaseException) -> bool:
    """Whether ``error`` is JetStream's answer to a CAS whose expected revision was not the key's."""
    import nats.js.errors

    return isinstance(error, nats.js.errors.APIError) and error.err_code in _WRONG_LAST


def cas_request(kv: KeyValue, key: str, value: bytes, *, last: int, ttl: float | None = None) -> tuple[str, bytes, bytes]:
    """``cas``'s publish as (subject, payload, headers), for ``replies.js_publish_chain``; its
    answer reads with ``cas_answer``."""
    return _subject(kv, key), value, cas_headers(last, ttl)


_CAS_START = b"NATS/1.0\r\n" + _EXPECTED_LAST.encode() + b": "


def cas_headers(last: int, ttl: float | None = None) -> bytes:
    """The header block of a write expecting revision ``last`` (with ``ttl``, ``ttl_header``'s
    TTL): ``replies.header_block({_EXPECTED_LAST: str(last), **ttl_header(ttl)})``, built
    without the dict (two of them on every task's path)."""
    return b"%s%d\r\n%s\r\n" % (_CAS_START, last, _ttl_line(ttl))


@functools.lru_cache(maxsize=64)
def _ttl_line(ttl: float | None) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in ttl_header(ttl).items())


def cas_answer(answer: Any) -> int | None:
    """What ``cas`` returns for the answer to ``cas_request``'s publish (a ``PubAck``, a reply
    message, or an exception): the new revision, None if the CAS lost; raises other errors."""
    if not isinstance(answer, (replies.PubAck, Exception)):
        answer = replies.pub_ack_of(answer)
    if isinstance(answer, Exception):
        if _lost(answer):
            return None
        raise answer
    seq: int = answer.seq
    return seq


async def cas_many(
    js: JetStreamContext, kv: KeyValue, items: Sequence[tuple[str, bytes, int, float | None]]
) -> list[int | None]:
    """``cas`` of each (key, value, last, ttl), all sent before any answer is awaited (one
    round-trip latency, no task per write): the new revisions, None where the CAS lost.
    Raises the first other error (as gathering ``cas`` calls would; the other writes were
    still made or refused)."""
    answers = await replies.js_publish_many(js._nc, [  # noqa: SLF001
        (_subject(kv, key), value, cas_headers(last, ttl)) for key, value, last, ttl in items])
    out: list[int | None] = []
    for answer in answers:
        if isinstance(answer, Exception):
            if not _lost(answer):
                raise answer
            out.append(None)
        else:
            out.append(answer.seq)
    return out


async def put(js: JetStreamContext, kv: KeyValue, key: str, value: bytes, *, ttl: float | None = None) -> int:
    """Write ``value`` unconditionally; returns the new revision."""
    ack = await replies.js_publish(js._nc, _subject(kv, key), value, headers=ttl_header(ttl) or None)  # noqa: SLF001
    return ack.seq


async def put_many(
    js: JetStreamContext, kv: KeyValue, items: Sequence[tuple[str, bytes]], *, ttl: float | None = None
) -> list[int]:
    """``put`` of each (key, value), all sent before any answer is awaited (one round-trip
    latency); the new revisions, in order (the server stores them in that order). Raises the
    first error once every answer is in (the other writes were still made or refused)."""
    answers = await replies.js_publish_many(js._nc, [  # noqa: SLF001
        (_subject(kv, key), value, ttl_header(ttl) or None) for key, value in items])
    out: list[int] = []
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
        out.append(answer.seq)
    return out


async def remove(js: JetStreamContext, kv: KeyValue, key: str) -> None:
    """Purge every message of ``key`` (no delete marker remains)."""
    await js.purge_stream(_stream(kv), subject=_subject(kv, key))


async def remove_through(js: JetStreamContext, kv: KeyValue, key: str, revision: int) -> None:
    """Purge the messages of ``key`` up to and including ``revision``: a value written after it
    (a later revision of the key) stays."""
    await js.purge_stream(_stream(kv), subject=_subject(kv, key), seq=revision + 1)


async def count(js: JetStreamContext, kv: KeyValue, pattern: str) -> int:
    """How many keys matching ``pattern`` (``*``/``>`` wildcards) exist."""
    info = await js.stream_info(_stream(kv), subjects_filter=_subject(kv, pattern))
    return len(info.state.subjects or {})


async def keys_matching(nc: Any, kv: KeyValue, pattern: str) -> list[str]:
    """The keys matching ``pattern`` (``*``/``>`` wildcards) that hold a value, without reading
    any value (one stream info; ``count`` is its length)."""
    prefix = len(_subject(kv, ""))
    return [subject[prefix:] for subject in await subject_counts(nc, _stream(kv), _subject(kv, pattern))]


async def subject_counts(nc: Any, stream: str, subjects_filter: str, *, timeout: float = 5.0) -> dict[str, int]:
    """Messages per subject of ``stream`` matching ``subjects_filter`` (subjects without any
    left out): ``stream_info``'s figures, read and decoded without its full model."""
    import nats.js.errors

    msg = await replies.request(nc, f"$JS.API.STREAM.INFO.{stream}",
                                json.dumps({"subjects_filter": subjects_filter}).encode(), timeout=timeout)
    body = json.loads(msg.data)
    if "error" in body:
        raise nats.js.errors.APIError.from_error(body["error"])
    return {subject: int(n) for subject, n in ((body.get("state") or {}).get("subjects") or {}).items() if n}


async def scan(js: JetStreamContext, kv: KeyValue, pattern: str = ">") -> list[Entry]:
    """Current entries of the keys matching ``pattern``, in revision order.

    Reads through a short-lived consumer (last message per subject, no acks) with
    ``no_wait`` pulls until the server has nothing more: deterministic, unlike nats-py's
    watcher, whose end-of-initial-data marker can come before the data.
    """
    from nats.js import api

    from distributed_agents.adapters.nats.delivery import pull_ready

    stream = _stream(kv)
    config = api.ConsumerConfig(
        filter_subject=_subject(kv, pattern),
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config)
    name = info.name
    # How many messages the new consumer has to deliver: a no_wait pull that answers "no
    # messages" before that many came is asked again while the consumer still counts some
    # pending (seen under load: a scan right after a write came back empty).
    expected = int(info.num_pending or 0)
    received = 0
    entries: list[Entry] = []
    prefix_length = len(_subject(kv, ""))
    give_up = time.monotonic() + _SCAN_PATIENCE
    try:
        while True:
            batch = await pull_ready(js._nc, stream, name, 256)  # noqa: SLF001
            received += len(batch)
            for msg in batch:
                if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
                    continue
                entries.append(Entry(msg.subject[prefix_length:], msg.data or b"", int(msg.metadata.sequence.stream)))
            if len(batch) < 256:
                if received >= expected or time.monotonic() >= give_up:
                    break
                pending = (await js.consumer_info(stream, name)).num_pending or 0
                if not pending:
                    break  # removed meanwhile: the answer was right
                await asyncio.sleep(0.005)
    finally:
        try:
            await js.delete_consumer(stream, name)
        except Exception:  # it also goes away by itself after inactive_threshold
            pass
    entries.sort(key=lambda e: e.revision)
    return entries
