"""Compare-and-set helpers over JetStream KV buckets.

A KV bucket is a stream with one subject per key (``$KV.<bucket>.<key>``); a key's
revision is the stream sequence of its last write. ``cas`` publishes with
``Nats-Expected-Last-Subject-Sequence`` (0: the key must not exist), optionally with a
per-message TTL (``Nats-TTL``, nats-server 2.11+), which nats-py's ``update`` cannot set.
``remove`` purges a key's subject so that it leaves no delete marker behind, which keeps
per-subject counts (``stream_info(subjects_filter=...)``) exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed_agents.adapters.nats.connection import ttl_header

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["Entry", "cas", "count", "get", "remove", "scan"]

# JetStream's "wrong last sequence" error codes.
_WRONG_LAST = (10071, 10164)


@dataclass(frozen=True)
class Entry:
    """A key's current value and revision."""

    key: str
    value: bytes
    revision: int


def _stream(kv: KeyValue) -> str:
    return kv._stream  # noqa: SLF001 - nats-py exposes no public accessor


def _subject(kv: KeyValue, key: str) -> str:
    return f"{kv._pre}{key}"  # noqa: SLF001


async def get(kv: KeyValue, key: str) -> Entry | None:
    """The current entry of ``key``, or None if absent, deleted or expired."""
    import nats.js.errors

    try:
        entry = await kv.get(key, validate_keys=False)
    except nats.js.errors.KeyNotFoundError:
        return None
    return Entry(key, entry.value or b"", int(entry.revision or 0))


async def cas(
    js: JetStreamContext, kv: KeyValue, key: str, value: bytes, *, last: int, ttl: float | None = None
) -> int | None:
    """Write ``value`` if ``key``'s revision is ``last`` (0: absent); new revision or None."""
    import nats.js.errors
    from nats.js import api

    headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last), **ttl_header(ttl)}
    try:
        ack = await js.publish(_subject(kv, key), value, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code in _WRONG_LAST:
            return None
        raise
    return int(ack.seq)


async def put(js: JetStreamContext, kv: KeyValue, key: str, value: bytes, *, ttl: float | None = None) -> int:
    """Write ``value`` unconditionally; returns the new revision."""
    ack = await js.publish(_subject(kv, key), value, headers=ttl_header(ttl) or None)
    return int(ack.seq)


async def remove(js: JetStreamContext, kv: KeyValue, key: str) -> None:
    """Purge every message of ``key`` (no delete marker remains)."""
    await js.purge_stream(_stream(kv), subject=_subject(kv, key))


async def count(js: JetStreamContext, kv: KeyValue, pattern: str) -> int:
    """How many keys matching ``pattern`` (``*``/``>`` wildcards) exist."""
    info = await js.stream_info(_stream(kv), subjects_filter=_subject(kv, pattern))
    return len(info.state.subjects or {})


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
    entries: list[Entry] = []
    prefix_length = len(_subject(kv, ""))
    try:
        while True:
            batch = await pull_ready(js._nc, stream, name, 256)  # noqa: SLF001
            for msg in batch:
                if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
                    continue
                entries.append(Entry(msg.subject[prefix_length:], msg.data or b"", int(msg.metadata.sequence.stream)))
            if len(batch) < 256:
                break
    finally:
        try:
            await js.delete_consumer(stream, name)
        except Exception:  # it also goes away by itself after inactive_threshold
            pass
    entries.sort(key=lambda e: e.revision)
    return entries
