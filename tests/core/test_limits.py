"""The size checks of ``core.limits``: exact sizes, the boundary, and messages that say what to do."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents.core.codec import encode
from distributed_agents.core.errors import BackendConfigError, PayloadTooLargeError
from distributed_agents.core.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ENVELOPE_BYTES,
    check_commit_size,
    check_result_size,
    limit_below,
)
from distributed_agents.core.ports.backend import BackendOptions

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
updates = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(updates, st.integers(min_value=1, max_value=2_000))
def test_a_result_is_refused_exactly_when_its_json_is_over_the_limit(values: dict[str, Any], limit: int) -> None:
    size = len(encode(values))
    if size > limit:
        with pytest.raises(PayloadTooLargeError) as caught:
            check_result_size(values, limit, node="n", workflow_id="wf")
        assert (caught.value.size, caught.value.limit, caught.value.node) == (size, limit, "n")
    else:
        assert check_result_size(values, limit, node="n", workflow_id="wf") == size


def test_the_commit_check_counts_the_state_plus_the_writes_it_does_not_hold() -> None:
    # 'writer' wrote a value the state does not hold as such (a reducer's input): it counts;
    # 'other' set 'b' to what the state holds: the checkpoint stores it once, in the state.
    state = {"a": "x" * 600, "b": "y" * 100}
    writes = {"writer": {"a": "z" * 600}, "other": {"b": "y" * 100}}
    size = len(encode(state)) + len(encode({"writer": {"a": "z" * 600}, "other": {}}))
    assert check_commit_size("wf", 3, state, {"frontier": {}}, writes, size) == size
    with pytest.raises(PayloadTooLargeError) as caught:
        check_commit_size("wf", 3, state, {"frontier": {}}, writes, size - 1)
    message = str(caught.value)
    assert caught.value.node == "writer" and caught.value.size == size
    assert "workflow 'wf' cannot commit step 3" in message and "'a' (602 bytes)" in message
    assert "node 'writer' wrote the most this step (608 bytes)" in message and "max_payload_bytes" in message
    assert "the step's writes come to 716 bytes, of which 630 bytes are stored besides the state" in message


def test_a_value_a_node_set_is_counted_once_not_in_the_state_and_again_in_the_writes() -> None:
    """Ops finding: a node output of half the limit failed the commit (state + writes, each holding it)."""
    limit = 10_000
    big = "v" * int(limit * 0.6)
    state = {"big": big, "n": 1}
    writes = {"maker": {"big": big}}
    size = check_commit_size("wf", 1, state, {"frontier": {}}, writes, limit)
    assert size < limit and size < len(encode(state)) + len(big)


def test_no_limit_means_no_check() -> None:
    assert check_result_size({"a": "x" * 10}, None, node="n", workflow_id="wf") == len(b"{\"a\":\"xxxxxxxxxx\"}") == 18
    check_commit_size("wf", 1, {"a": "x" * 10}, {}, None, None)


def test_the_default_fits_natss_default_max_payload_with_the_envelope() -> None:
    assert DEFAULT_MAX_PAYLOAD_BYTES == limit_below(1024 * 1024) == 1024 * 1024 - ENVELOPE_BYTES


def test_the_option_comes_from_keywords_or_the_url_and_is_validated() -> None:
    assert BackendOptions.from_url("memory://?max_payload_bytes=5000").max_payload_bytes == 5000
    assert BackendOptions.from_url("memory://", max_payload_bytes=7).max_payload_bytes == 7
    assert BackendOptions.from_url("memory://").max_payload_bytes is None
    with pytest.raises(BackendConfigError, match="max_payload_bytes"):
        BackendOptions.from_url("memory://?max_payload_bytes=0")
    with pytest.raises(BackendConfigError, match="not a whole number"):
        BackendOptions.from_url("memory://?max_payload_bytes=big")
