"""The error history a NATS task record keeps: its newest errors, in a bounded number of bytes.

A task's control record holds the errors of its failed attempts (``errors``, shown by its
dead letter) beside its result once it succeeds, in one KV value that must fit the server's
``max_payload``. A result may take ``max_payload_bytes`` (the server's ``max_payload`` minus
``core.limits.ENVELOPE_BYTES``, 64 KiB), so the rest of the record has to fit in that
envelope whatever the attempts raised: a traceback can be tens of KB, and a task may fail
``max_attempts - 1`` times before its last attempt succeeds.

So ``with_error`` keeps the errors' JSON within ``ERRORS_KEPT_BYTES`` (16 KiB):
* each entry longer than ``ENTRY_KEPT_CHARS`` keeps its start and its end (a traceback's
  last lines name the exception) with the number of characters cut between them;
* the oldest entries go first, replaced by one leading entry that counts them
  (``"3 earlier errors not kept ..."``); the newest entry is always kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from distributed_agents.core.codec import encode

__all__ = ["ENTRY_KEPT_BYTES", "ENTRY_KEPT_CHARS", "ERRORS_KEPT_BYTES", "REASON_KEPT_BYTES", "shortened", "with_error"]

ERRORS_KEPT_BYTES = 16 * 1024
"""Most bytes of JSON the kept errors take in a task record (a quarter of the envelope)."""

ENTRY_KEPT_CHARS = 6 * 1024
"""Most characters one kept error has: its first 2 KiB and last 4 KiB, with a note between."""

ENTRY_KEPT_BYTES = 15 * 1024
"""Most bytes of JSON one kept error takes (fewer characters are kept of one that escapes long)."""

REASON_KEPT_BYTES = 8 * 1024
"""Most bytes of JSON a record's or letter's ``reason`` (and failed result's ``error``) takes."""

_DROPPED = re.compile(r"^(\d+) earlier errors? not kept \(a NATS task record keeps about")


def _cut(entry: str, chars: int) -> str:
    head = chars // 3
    tail = chars - head
    return f"{entry[:head]}\n... [{len(entry) - chars:,} characters not kept] ...\n{entry[-tail:]}"


def _shortened(entry: Any, max_bytes: int = ENTRY_KEPT_BYTES) -> Any:
    if not isinstance(entry, str):
        return entry
    if len(entry) <= ENTRY_KEPT_CHARS and (6 * len(entry) + 2 <= max_bytes or len(encode(entry)) <= max_bytes):
        return entry
    chars = min(ENTRY_KEPT_CHARS, len(entry) - 1)
    kept = _cut(entry, chars)
    # Characters JSON escapes (control characters: 6 bytes each) or long UTF-8 ones take more
    # bytes than ASCII: keep fewer of them, so the entry's JSON stays within ``max_bytes``.
    while chars > 1 and len(encode(kept)) > max_bytes:
        chars //= 2
        kept = _cut(entry, chars)
    return kept


def shortened(text: str, max_bytes: int = REASON_KEPT_BYTES) -> str:
    """``text`` cut as an error entry is (its start and end kept), its JSON within ``max_bytes``.

    For the other error texts a record and its dead letter keep (``reason``, the failed
    result's ``error``): at most ``ENTRY_KEPT_CHARS`` characters and ``REASON_KEPT_BYTES``
    bytes of JSON (``max_bytes`` at least 512)."""
    return str(_shortened(text, max_bytes))


def _dropped_note(count: int) -> str:
    return (f"{count} earlier error{'s' if count != 1 else ''} not kept (a NATS task record keeps about "
            f"{ERRORS_KEPT_BYTES // 1024} KiB of its newest errors)")


def with_error(errors: Sequence[Any], entry: str) -> list[Any]:
    """``errors`` (a record's ``errors`` list) with ``entry`` appended, within ``ERRORS_KEPT_BYTES``.

    Returns a new list; ``errors`` is not changed. Its JSON takes at most
    ``ERRORS_KEPT_BYTES`` (each entry at most ``ENTRY_KEPT_CHARS`` characters and
    ``ENTRY_KEPT_BYTES`` bytes of JSON, so the newest one and the note always fit). Entries that are not strings (a damaged or
    foreign record) are kept as they are, and count as one entry each when dropped.
    """
    entries = [_shortened(e) for e in errors]
    dropped = 0
    if entries and isinstance(entries[0], str):
        earlier = _DROPPED.match(entries[0])
        if earlier is not None:
            dropped = int(earlier.group(1))
            del entries[0]
    entries.append(_shortened(entry))
    sizes = [len(encode(e)) + 1 for e in entries]  # (+1: the comma between them)
    total = sum(sizes)
    note_size = len(encode(_dropped_note(10 ** 9))) + 1  # room for the note, whatever its count
    first = 0
    while first < len(entries) - 1 and total + (note_size if dropped or first else 0) > ERRORS_KEPT_BYTES:
        total -= sizes[first]
        first += 1
        dropped += 1
    kept = entries[first:]
    return [_dropped_note(dropped), *kept] if dropped else kept
