"""The decoders of data read from a backend are total: a value, or ``PayloadDecodeError``.

``codec.decode`` (all JSON from a backend), ``decode_task`` (task bytes on a queue),
``check_payload`` (a node task's payload, on the worker) and ``stored_record`` (a
workflow record) are each the one place their kind of data is decoded. Whatever the
bytes, they return a value or raise that one error type (``ValueError`` for
``check_payload``, which the worker turns into a dead letter), never RecursionError,
TypeError, KeyError or OverflowError. Examples from issue 17's hostile-input report,
plus Hypothesis variants; ``DA_TEST_PROFILE=thorough`` runs more examples.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import stored_record
from distributed_agents.core.ports.task_queue import Task, check_attempt, decode_task, task_to_dict
from distributed_agents.core.task_payload import READABLE_VERSIONS, check_payload

THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"
EXAMPLES = 500 if THOROUGH else 80

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
PAYLOAD = {"v": 1, "graph": "g", "step": 0, "state": {"n": 1}, "retry": None, "timeout": None,
           "remaining_steps": 10}
TASK = task_to_dict(Task(id="t-1", workflow_id="wf", node="a", node_type="a", payload=PAYLOAD, max_attempts=3,
                         created_at=1.0))


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    """Lists and objects nested past any limit this engine writes, in random shapes, around a random inside."""
    # Past the recursion limit even as Hypothesis raises it while a test runs (by up to 2,000 frames).
    depth = draw(st.integers(10_000, 60_000))
    opens = draw(st.lists(st.sampled_from(["[", '{"k":']), min_size=1, max_size=4))
    inside = json.dumps(draw(JSON))
    prefix = "".join(opens[i % len(opens)] for i in range(depth))
    suffix = "".join("]" if opens[i % len(opens)] == "[" else "}" for i in reversed(range(depth)))
    return (prefix + inside + suffix).encode()


def test_the_reported_deep_body_is_a_payload_decode_error_on_every_decoder() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(PayloadDecodeError, match="nested too deeply"):
        decode(deep)
    with pytest.raises(PayloadDecodeError, match="^undecodable payload: .*nested too deeply"):
        decode_task(deep)
    with pytest.raises(PayloadDecodeError, match="record of workflow 'wf_deep' at k .*nested too deeply"):
        stored_record(deep, "k", "wf_deep")


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(deep_json())
def test_json_nested_past_the_limit_is_a_payload_decode_error(data: bytes) -> None:
    with pytest.raises(PayloadDecodeError, match="nested too deeply"):
        decode(data)


def test_as_deep_a_value_as_encode_writes_decodes() -> None:
    value: Any = 1
    for _ in range(900):
        value = [value]
    assert decode(encode(value)) == value


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | st.sampled_from([b"9" * 5000, b'{"a":' + b"9" * 5000 + b"}", b"\xef\xbb\xbf[1]", b"NaN", b"1e999"]))
def test_decode_and_decode_task_are_total(data: bytes) -> None:
    try:
        decode(data)
    except PayloadDecodeError as exc:
        assert str(exc)
    try:
        task = decode_task(data)
    except PayloadDecodeError as exc:
        assert str(exc).startswith("undecodable payload: ")
    else:
        assert isinstance(task, Task)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("priority", True, "priority"), ("priority", 2**31, "priority"), ("priority", "5", "priority"),
    ("max_attempts", 0, "max_attempts"), ("max_attempts", -3, "max_attempts"), ("max_attempts", 2.0, "max_attempts"),
    ("created_at", float("nan"), "NaN is not a JSON value"), ("created_at", "1", "created_at"), ("id", "", "'id'"),
])
def test_a_task_envelope_out_of_range_is_undecodable(field: str, value: Any, message: str) -> None:
    raw = json.dumps({**TASK, field: value}).encode()
    with pytest.raises(PayloadDecodeError, match=f"^undecodable payload: .*{message}"):
        decode_task(raw)


def test_a_task_queued_under_another_id_is_malformed() -> None:
    raw = encode({**TASK, "id": "other_id"})
    assert decode_task(raw, queued_as="other_id").id == "other_id"
    with pytest.raises(PayloadDecodeError, match="^malformed task: it names task id 'other_id' but is queued as 't-1'"):
        decode_task(raw, queued_as="t-1")


def test_a_negative_attempt_count_is_malformed() -> None:
    check_attempt(1, "q:t:x")
    with pytest.raises(PayloadDecodeError, match="^malformed task: its attempt count at q:t:x was -5"):
        check_attempt(-4, "q:t:x")


@pytest.mark.parametrize(("change", "message"), [
    ({"v": 99}, "unknown payload version 99; this worker reads version 1, 2 or 3; upgrade the worker"),
    ({"v": "1"}, "unknown payload version '1'"), ({"v": True}, "unknown payload version True"),
    ({"timeout": -5}, "'timeout' must be a number of seconds > 0"), ({"timeout": 0}, "'timeout'"),
    ({"timeout": "5"}, "'timeout'"), ({"remaining_steps": -1}, "'remaining_steps' must be an int >= 0"),
    ({"step": -1}, "'step'"), ({"step": 1.5}, "'step'"), ({"state": [1]}, "no 'state' object"),
    ({"retry": []}, "'retry'"), ({"retry": {"retry_on": "Exception"}}, "retry_on"),
    ({"message_keys": [1]}, "message_keys"), ({"resume": {}}, "'resume'"), ({"graph": 5}, "'graph'"),
    ({"state": None, "state_ref": {"step": -1, "digest": "d"}}, "state_ref"),
])
def test_a_bad_payload_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_payload({**PAYLOAD, **change})


def test_the_payload_the_engine_writes_is_read() -> None:
    check_payload(PAYLOAD)
    check_payload({**PAYLOAD, "timeout": 2.5, "retry": {"max_attempts": 2, "retry_on": ["builtins.Exception"]},
                   "resume": [1], "message_keys": ["messages"], "configurable": {"x": 1}, "trace": {"a": "b"}})
    check_payload({"state": {}})  # without a version: read as version 1
    check_payload({"state_ref": {"step": 2, "digest": "abc"}, "wrap": {"error": "x"}})
    assert 1 in READABLE_VERSIONS


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(sorted(PAYLOAD)), JSON)
def test_check_payload_accepts_or_names_a_value_error(field: str, value: Any) -> None:
    try:
        check_payload({**PAYLOAD, field: value})
    except ValueError as exc:
        assert str(exc)
