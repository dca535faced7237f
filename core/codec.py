"""JSON on the wire: the one format that crosses process and machine boundaries.

Nothing read from a backend is unpickled or evaluated. ``encode`` produces compact UTF-8
JSON; ``decode`` turns anything that is not valid JSON into a ``PayloadDecodeError`` so
that callers can dead-letter it with a reason instead of crashing.
"""

from __future__ import annotations

import json
from typing import Any

from distributed_agents.core.errors import PayloadDecodeError

__all__ = ["decode", "encode", "ensure_json_value"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON; raises ``TypeError``/``ValueError`` if it cannot be."""
    return _encoder.encode(value).encode("utf-8")


def decode(data: bytes | str) -> Any:
    """Parse JSON bytes; raises ``PayloadDecodeError`` naming the problem if they are not JSON."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        preview = bytes(data[:60]) if isinstance(data, (bytes, bytearray)) else data[:60]
        raise PayloadDecodeError(f"payload is not valid UTF-8 JSON ({exc}); starts with {preview!r}") from exc


def ensure_json_value(value: Any, *, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` if ``value`` cannot be encoded as JSON."""
    try:
        _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable ({exc})") from exc
