"""JSON on the wire: the one format that crosses process and machine boundaries.

Nothing read from a backend is unpickled or evaluated. ``encode`` produces compact UTF-8
JSON; ``decode`` turns anything that is not valid JSON into a ``PayloadDecodeError`` so
that callers can dead-letter it with a reason instead of crashing.

``find_non_json`` decides what workflow state may hold: exactly the values JSON returns
unchanged (``decode(encode(v))`` equal to ``v`` *and of the same types*, at every
depth). That is ``None``, ``bool``, ``int`` (up to 4300 digits), finite ``float``,
``str`` without lone surrogates, and ``list`` and ``dict`` (string keys) of those, with
exactly these types. Refused: tuples and sets, subclasses (``Counter``,
``OrderedDict``, ``IntEnum``, a ``str`` enum, ...), dict keys that are not strings,
NaN and infinities, lone surrogates, and any other object.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from distributed_agents.core.errors import PayloadDecodeError

__all__ = ["REQUIRED", "checked_object", "decode", "encode", "encode_float", "encode_text", "ensure_json_value",
           "find_non_json", "on_fresh_stack"]

T = TypeVar("T")

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _fast_encoder() -> Callable[[Any, int], Any] | None:
    """The C encoder ``_encoder.encode`` makes on every call, made once; None where there is none.

    It checks no cycles (a cycle is found as a ``RecursionError``, and ``encode`` then
    asks ``_encoder``, which names it), so it keeps no state between calls.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        made: Callable[[Any, int], Any] = make(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",",
                                              False, False, False)
    except TypeError:  # another interpreter's signature: the plain path
        return None
    return made


_fast = _fast_encoder()
def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity: JSON has no such values and encode (allow_nan=False)
    # never writes them, so bytes holding one did not come from this engine; read back,
    # a NaN would pass range checks (every comparison with it is false) and fail later,
    # when something that holds it is encoded again.
    raise ValueError(f"{name} is not a JSON value (this engine never writes NaN or infinities)")


def _finite_float(text: str) -> float:
    # A literal too large for a float (1e999) reads as an infinity without the constant.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is out of the range of a float (this engine never writes infinities)")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# The decoder's scanner (JSONDecoder.__init__ sets it; typeshed does not declare it).
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]
_OBJECT_OR_ARRAY = (b"{", b"[")
_OBJECT_OR_ARRAY_TEXT = ("{", "[")


def on_fresh_stack(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` run in a new thread, where the caller's stack depth does not count.

    JSON's C encoder and decoder (and any recursive walk) count each level of nesting
    against the recursion limit on top of the frames of whoever calls them, so how deep a
    value may be would depend on how deep in a stack it is handled (a worker's task, a
    test runner's thread). Callers use this when the plain call ran out of depth, so a
    value is accepted or refused by its own depth alone. Blocks until ``func`` returns;
    re-raises what it raised.
    """
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, func(*args)))
        except BaseException as exc:  # handed to the caller below
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="json-fresh-stack", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


def encode(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON; raises ``TypeError``/``ValueError`` if it cannot be.

    How deep ``value`` may be nested does not depend on the caller's stack (see
    ``on_fresh_stack``); ``RecursionError`` only if it is nested too deeply for JSON.
    """
    if _fast is not None:
        try:
            # What _encoder.encode returns, without making a new C encoder (and cycle map) per call.
            return "".join(_fast(value, 0)).encode("utf-8")
        except RecursionError:
            pass  # too deep, or a cycle: the checking encoder below tells which
    try:
        return _encoder.encode(value).encode("utf-8")
    except RecursionError:
        return on_fresh_stack(_encoder.encode, value).encode("utf-8")


# The escaping ``encode`` applies to a string (the C function where there is one).
_escape_text: Callable[[str], str] = json.encoder.encode_basestring


def encode_text(text: str) -> bytes:
    """``encode(text)`` for a ``str``: the same bytes (its JSON string, quotes included),
    without the encoder's dispatch, for fields written on every task's path. Raises
    ``UnicodeEncodeError`` (a ``ValueError``) for a lone surrogate, as ``encode`` does."""
    return _escape_text(text).encode("utf-8")


def encode_float(number: float) -> bytes:
    """``encode(number)`` for a ``float``: the same bytes (``float.__repr__``); ``ValueError``
    for NaN and the infinities, which JSON cannot hold (as ``encode`` raises)."""
    if not math.isfinite(number):
        raise ValueError(f"Out of range float values are not JSON compliant: {number!r}")
    return float.__repr__(number).encode()


def decode(data: bytes | bytearray | str) -> Any:
    """Parse JSON bytes; raises ``PayloadDecodeError`` naming the problem if they are not JSON.

    Total: whatever the bytes, the result is a value or ``PayloadDecodeError`` (never
    ``RecursionError``, ``ValueError`` or ``TypeError``), so every reader of data from a
    backend handles one error type. As deep a value as ``encode`` writes is read back
    wherever this is called from; a deeper one (``"[" * 100000``, which nothing here
    writes) is ``PayloadDecodeError``, found after at most about 1,000 levels.
    """
    try:
        return _decode(data)
    except RecursionError:
        pass
    try:
        return on_fresh_stack(_decode, data)
    except RecursionError:
        raise PayloadDecodeError(
            f"payload is nested too deeply to be JSON this engine wrote (more than about "
            f"{sys.getrecursionlimit()} levels of lists or objects); starts with {_preview_of(data)!r}") from None


REQUIRED: Any = object()  # a ``checked_object`` default: the field must be there and not null


def checked_object(raw: bytes | bytearray | str | Any, shape: dict[str, tuple[tuple[type, ...], Any]],
                   what: str) -> dict[str, Any]:
    """The fields of ``shape`` read from ``raw`` (JSON bytes or text, or a decoded value), checked.

    ``shape`` maps a field name to (the Python types its JSON value may have, the value to
    use when it is absent or null; ``REQUIRED``: refused then). Numbers must be finite;
    booleans are never taken for numbers. Fields not in ``shape`` are ignored. Raises
    ``PayloadDecodeError`` if ``raw`` is not JSON, ``ValueError`` naming ``what`` or the
    field otherwise (callers add where the bytes were read).
    """
    data: Any = decode(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for name, (kinds, default) in shape.items():
        value: Any = data.get(name)
        if value is None:
            if default is REQUIRED:
                raise ValueError(f"field {name!r} is missing")
            values[name] = default
            continue
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"field {name!r} is a JSON {type(value).__name__}, not {kinds[0].__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN and Infinity parse as JSON
            raise ValueError(f"field {name!r} is not a finite number")
        values[name] = value
    return values


def _decode(data: bytes | bytearray | str) -> Any:
    try:
        if isinstance(data, bytes) and data[:1] in _OBJECT_OR_ARRAY:
            # What encode wrote (UTF-8): skip json.loads' detection of UTF-16/32 byte orders.
            return _decoded_text(data.decode("utf-8", "surrogatepass"))  # as json.loads decodes bytes
        if isinstance(data, str) and data[:1] in _OBJECT_OR_ARRAY_TEXT:
            return _decoded_text(data)  # (no bytes made to be decoded back to this text)
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadDecodeError(f"payload is not valid UTF-8 JSON ({exc}); starts with {_preview_of(data)!r}") from exc
    except (ValueError, TypeError) as exc:  # an int of more than 4300 digits; not bytes or str at all
        raise PayloadDecodeError(f"payload is not JSON this engine reads ({exc}); starts with "
                                 f"{_preview_of(data)!r}") from None


def _decoded_text(text: str) -> Any:
    """``_decoder.decode(text)`` for a ``text`` starting with "{" or "[" (so with no whitespace first)."""
    try:
        # The scanner alone (what JSONDecoder.decode runs after skipping whitespace): the
        # usual compact JSON ends where its value does.
        value, end = _scan_once(text, 0)
    except StopIteration:
        value, end = None, -1
    if end == len(text):
        return value
    return _decoder.decode(text)  # trailing whitespace, or the error naming the problem


def _preview_of(data: Any) -> bytes | str:
    return bytes(data[:60]) if isinstance(data, (bytes, bytearray)) else str(data)[:60]


def ensure_json_value(value: Any, *, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` if ``value`` cannot be encoded as JSON."""
    try:
        _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable ({exc})") from exc


_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT_DIGITS = 4300  # Python's default int <-> str conversion limit, which json obeys both ways
_INT_BITS_SURELY_OK = 14_000  # below this many bits an int has fewer than 4300 digits
_BIG_INT = 1 << _INT_BITS_SURELY_OK
_CONVERT = {dict: "dict(...)", list: "list(...)", str: "a plain str (an enum's .value)",
            int: "int(value)", float: "float(value)"}


def find_non_json(value: Any) -> tuple[str, str] | None:
    """Where ``value`` holds something JSON would not return unchanged, and why; None if nowhere.

    The path is relative to ``value``: ``""`` for the value itself, ``".name"`` for a
    dict item, ``"[1]"`` for a list item, ``".<key 7>"`` for a dict key that is the
    problem, e.g. ``"[1].fetched"`` or ``".by_id.<key 7>"``. One pass over the value,
    no encoding; see the module docstring for the rule.
    """
    try:
        try:
            found = _find(value)
        except RecursionError:  # perhaps only the caller's stack was deep: the value's own depth decides
            found = on_fresh_stack(_find, value)
    except RecursionError:
        cycle = _find_cycle(value)
        if cycle is not None:
            return cycle, "it contains itself (a list or dict that holds itself, directly or deeper): JSON cannot " \
                          "carry a cycle; store a copy or a reference such as an id"
        return "", "it is nested too deeply for JSON (more than about 900 levels)"
    if found is None:
        return None
    parts, why = found
    return "".join(reversed(parts)), why


def _find_cycle(value: Any) -> str | None:
    """The path of the first list or dict in ``value`` that holds one of its own ancestors; None if none.

    Iterative (no recursion limit) and linear in the size of ``value``: the ancestors and
    the path are kept as one shared stack, entered and left as the walk goes, so a value
    nested a hundred thousand levels deep costs no more per level than a flat one.
    Called only once ``_find`` ran out of stack.
    """
    ancestors: set[int] = set()
    path: list[str] = []
    leave = object()  # marks where the walk leaves a container
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, step = stack.pop()
        if item is leave:
            ancestors.discard(int(step))
            path.pop()
            continue
        if type(item) not in (dict, list):
            continue
        if id(item) in ancestors:
            return "".join(path) + step
        ancestors.add(id(item))
        path.append(step)
        stack.append((leave, str(id(item))))
        if type(item) is dict:
            stack.extend((child, f".{key}") for key, child in reversed(list(item.items())))
        else:
            stack.extend((child, f"[{index}]") for index, child in reversed(list(enumerate(item))))
    return None


def _find(value: Any) -> tuple[list[str], str] | None:  # noqa: C901 - one dispatch on exact types, for speed
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                bad = _key_problem(key)
                if bad is not None:
                    return [f".<key {key!r}>"], bad
            # The common leaves are settled here, without a call.
            kind = type(item)
            if kind is str:
                if item.isascii():
                    continue
            elif kind is int:
                if -_BIG_INT < item < _BIG_INT:
                    continue
            elif kind is float:
                if item - item == 0.0:  # finite: inf - inf and nan - nan are nan
                    continue
            elif kind is bool or item is None:
                continue
            found = _find(item)
            if found is not None:
                found[0].append(f".{key}")
                return found
        return None
    if kind is list:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str:
                if item.isascii():
                    continue
            elif kind is int:
                if -_BIG_INT < item < _BIG_INT:
                    continue
            elif kind is float:
                if item - item == 0.0:
                    continue
            elif kind is bool or item is None:
                continue
            found = _find(item)
            if found is not None:
                found[0].append(f"[{index}]")
                return found
        return None
    if kind is str:
        if not value.isascii():
            return _surrogate_problem(value)
        return None
    if kind is bool or value is None:
        return None
    if kind is int:
        if value.bit_length() > _INT_BITS_SURELY_OK and _too_many_digits(value):
            return [], f"an int of more than {_MAX_INT_DIGITS} digits does not round-trip through JSON; store it as a str"
        return None
    if kind is float:
        if not math.isfinite(value):
            return [], f"{value!r} is not JSON (standard parsers refuse NaN and Infinity); use None or a str"
        return None
    return [], _describe_foreign(value)


def _key_problem(key: Any) -> str | None:
    if type(key) is not str:
        return (f"dict key {key!r} ({type(key).__name__}) is not a str (JSON would turn it into "
                f"{_json_key(key)}); use string keys")
    bad = _surrogate_problem(key)
    return None if bad is None else "dict key " + bad[1]


def _surrogate_problem(text: str) -> tuple[list[str], str] | None:
    match = _SURROGATE.search(text)
    if match is None:
        return None
    return [], (f"a str with a lone surrogate {match.group()!r} at index {match.start()} cannot be encoded as "
                "UTF-8 JSON (surrogates not allowed); decode the bytes it came from correctly, or replace it")


def _too_many_digits(value: int) -> bool:
    try:
        return len(str(abs(value))) > _MAX_INT_DIGITS
    except ValueError:  # str() itself refuses past the limit
        return True


def _json_key(key: Any) -> str:
    try:
        return json.dumps({key: 0})[1:-4]
    except (TypeError, ValueError):
        return "an error"


def _describe_foreign(value: Any) -> str:
    kind = type(value)
    name = kind.__name__
    if isinstance(value, tuple):
        return f"{name} {_preview(value)} (JSON would return a list); use a list"
    if isinstance(value, (set, frozenset)):
        return f"{name} {_preview(value)} is not JSON; use a list (e.g. sorted(...))"
    for base, convert in _CONVERT.items():
        if isinstance(value, base):
            return (f"{name} {_preview(value)} is a subclass of {base.__name__} (JSON would return a plain "
                    f"{base.__name__}); convert it with {convert}")
    return f"{name} {_preview(value)} is not JSON; store str, int, float, bool, None, or lists and dicts of them"


def _preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real problem
        return "(unprintable)"
    return text if len(text) <= 60 else text[:57] + "..."
