"""``codec.encode`` writes what ``json.JSONEncoder`` with the same options writes, and fails as it does.

``encode`` calls one C encoder made once instead of the one ``JSONEncoder.encode``
makes per call; these tests pin that the bytes and the errors did not change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents.core import codec
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError

_REFERENCE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_encode_writes_the_bytes_json_writes(value: Any) -> None:
    assert encode(value) == _REFERENCE.encode(value).encode("utf-8")


def test_the_encoder_made_once_is_in_use_here() -> None:
    # Where the interpreter has json's C encoder (CPython does), encode uses it.
    assert json.encoder.c_make_encoder is None or codec._fast is not None


def test_a_cycle_is_still_named_a_cycle() -> None:
    looped: list[Any] = []
    looped.append({"again": looped})
    with pytest.raises(ValueError, match="Circular reference"):
        encode(looped)


@pytest.mark.parametrize("value, error", [
    ({"x": float("nan")}, ValueError), ({"x": float("inf")}, ValueError),
    ({"x": object()}, TypeError), ({"x": {1, 2}}, TypeError),
])
def test_values_json_refuses_raise_what_json_raises(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(value)
    with pytest.raises(error):
        _REFERENCE.encode(value)


def test_a_value_deeper_than_the_stack_is_encoded_on_a_fresh_stack() -> None:
    # 600 levels: more than fit below a deep caller, fewer than the recursion limit.
    value: Any = 0
    for _ in range(600):
        value = [value]

    def deep(levels: int) -> bytes:
        return encode(value) if levels == 0 else deep(levels - 1)

    assert deep(500) == b"[" * 600 + b"0" + b"]" * 600


@pytest.mark.parametrize("raw", [b'{"timeout": NaN}', b"[Infinity]", b"-Infinity", b'{"a": 1e999}', b"[-1e400]", "NaN"])
def test_nan_and_infinities_are_not_read(raw: bytes | str) -> None:
    """Python's json reads NaN, Infinity and out-of-range literals, which encode never writes;
    decode refuses them (a NaN passes every range check, then fails when it is written again)."""
    with pytest.raises(PayloadDecodeError, match="NaN|Infinity|out of the range"):
        decode(raw)


def test_finite_floats_at_the_edges_still_round_trip() -> None:
    value = {"big": 1.7976931348623157e308, "small": 5e-324, "neg": -2.5, "ints": [0, -1, 10**30]}
    assert decode(encode(value)) == value


@pytest.mark.parametrize("raw", [b'{"a":1} ', b'{"a":1}\n', b'[1, 2]\t\r\n', b'{"a":[1,{"b":null}]}'])
def test_decode_reads_what_json_loads_reads(raw: bytes) -> None:
    # The scanner alone reads compact JSON to its end; anything after it (whitespace) goes
    # through the full decoder, as json.loads would. Bytes and text alike.
    assert decode(raw) == json.loads(raw)
    assert decode(raw.decode()) == json.loads(raw.decode())


@pytest.mark.parametrize("raw", [b'{"a":1}x', b'{"a":1}{}', b'[1]]', b'{', b'[', b'{"a"', b'[1,]'])
def test_decode_refuses_what_json_loads_refuses_with_its_reason(raw: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    for given_as in (raw, raw.decode()):
        with pytest.raises(PayloadDecodeError) as caught:
            decode(given_as)
        assert expected.value.msg in str(caught.value)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20))
@settings(max_examples=200)
def test_decode_of_encode_with_trailing_bytes_matches_json(value: Any) -> None:
    raw = encode([value])
    assert decode(raw) == json.loads(raw)
    assert decode(raw + b" ") == json.loads(raw + b" ")
    with pytest.raises(PayloadDecodeError):
        decode(raw + b"0")
