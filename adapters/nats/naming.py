"""Names of streams, buckets, consumers and subjects, all derived from the prefix.

Stream, bucket and consumer names allow only ``[A-Za-z0-9_-]``; subject tokens must not
contain ``.``, ``*``, ``>`` or whitespace. ``token`` escapes anything else (and ``_``
itself) as ``_XX`` hex so the mapping is injective: two different node types, task ids
or prefixes never share a name. A prefix that needed escaping also gets a short hash so
that, e.g., ``a.b`` and ``a_2eb`` stay apart.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

__all__ = ["Names", "priority_from_token", "priority_token", "token", "untoken"]

_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


def _escape(match: re.Match[str]) -> str:
    return "".join(f"_{b:02x}" for b in match.group().encode())


@functools.lru_cache(maxsize=65536)
def token(value: str) -> str:
    """``value`` as one subject token / name fragment using only ``[A-Za-z0-9_-]``.

    Cached: a task id is turned into a key several times per task (enqueue, claim, ack).
    """
    if not value:
        return "_"
    if value.isascii():
        return value.translate(_ASCII_TABLE)  # what the regex below makes, in one C call
    return _UNSAFE.sub(_escape, value)


# Every ASCII character ``_UNSAFE`` matches, as ``_escape`` writes it.
_ASCII_ESCAPES = {code: f"_{code:02x}" for code in range(128) if _UNSAFE.fullmatch(chr(code))}
# ``_ASCII_ESCAPES`` as a table of all 128 ASCII codes (a safe character maps to itself): a
# dict without the safe ones made ``translate`` raise and clear a KeyError per safe
# character, about 40,000 instructions for a task id (4% of a worker's CPU per task).
_ASCII_TABLE = [_ASCII_ESCAPES.get(code, chr(code)) for code in range(128)]


_ESCAPED = re.compile(r"(?:_[0-9a-f]{2})+")


def untoken(value: str) -> str | None:
    """The value ``token`` turned into ``value``; None if ``token`` never makes ``value``.

    A key token written by something other than this adapter (by hand: ``wf.bad_key``,
    ``wf.a.b``, upper-case hex) names no value: ``token`` of any string differs from it.
    """
    if value == "_":
        return ""
    try:
        text = _ESCAPED.sub(lambda m: bytes(int(m.group()[i + 1:i + 3], 16)
                                            for i in range(0, len(m.group()), 3)).decode(), value)
    except UnicodeDecodeError:
        return None
    return text if token(text) == value else None


def priority_token(priority: int) -> str:
    """``p3`` for 3, ``m2`` for -2 (subject tokens cannot hold a minus sign safely)."""
    return f"p{priority}" if priority >= 0 else f"m{-priority}"


def priority_from_token(value: str) -> int | None:
    """Inverse of ``priority_token``; None for anything else."""
    if len(value) > 1 and value[0] in "pm" and value[1:].isdigit():
        number = int(value[1:])
        return number if value[0] == "p" else -number
    return None


@dataclass(frozen=True)
class Names:
    """Every engine-side name of one deployment (one prefix)."""

    prefix: str

    @functools.cached_property
    def base(self) -> str:
        escaped = token(self.prefix)
        if escaped == self.prefix:
            return escaped
        return f"{escaped}-{hashlib.sha1(self.prefix.encode()).hexdigest()[:8]}"

    # -- task queue ------------------------------------------------------------------
    @property
    def task_stream(self) -> str:
        return f"{self.base}_TASKS"

    def task_subject(self, node_type: str, priority: int) -> str:
        return f"{self.base}.tasks.{token(node_type)}.{priority_token(priority)}"

    def task_subjects_of(self, node_type: str) -> str:
        return f"{self.base}.tasks.{token(node_type)}.*"

    def task_consumer(self, node_type: str, priority: int) -> str:
        return f"{token(node_type)}-{priority_token(priority)}"

    def wake_subject(self, node_type: str) -> str:
        return f"{self.base}.wake.{token(node_type)}"

    @property
    def done_subject(self) -> str:
        return f"{self.base}.done"

    @property
    def task_bucket(self) -> str:
        return f"{self.base}_tasks"

    @property
    def claim_bucket(self) -> str:
        return f"{self.base}_claims"

    @property
    def dead_bucket(self) -> str:
        return f"{self.base}_dead"

    # -- state, registry, bus --------------------------------------------------------
    @property
    def state_bucket(self) -> str:
        return f"{self.base}_state"

    @property
    def worker_bucket(self) -> str:
        return f"{self.base}_workers"

    def bus_subject(self, channel: str) -> str:
        return f"{self.base}.bus.{channel}"

    @property
    def bus_root(self) -> str:
        return f"{self.base}.bus."
