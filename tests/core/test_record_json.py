"""core.record_json: the JSON a store writes for a record, reusing the engine's encoding only while it is exact."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.ports.state_store import WorkflowRecord, stored_record
from distributed_agents.core.record_json import encode_rest, kept, record_json, remember

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)
states = st.dictionaries(st.text(max_size=4), json_values, max_size=3)


def record(state: dict[str, Any], **changes: Any) -> WorkflowRecord:
    base = WorkflowRecord("wf-1", "g", "running", state, step=3, version=7, frontier={"next": ["a"], "joins": {}},
                          metadata={"run": 0}, created_at=1.5, updated_at=2.25)
    return base.evolve(**changes) if changes else base


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states, version=st.integers(min_value=0, max_value=10**6),
       updated_at=st.floats(min_value=0, max_value=1e10) | st.integers(min_value=0, max_value=10**6))
def test_the_stored_json_is_the_records_dict_with_or_without_a_kept_encoding(
        state: dict[str, Any], version: int, updated_at: float) -> None:
    plain = record(state, version=version, updated_at=updated_at)
    raw, state_json = record_json(plain)
    assert decode(raw) == decode(encode(plain.to_dict())) and state_json == encode(state)
    assert stored_record(raw, "test") == plain

    remember(plain, encode(state), encode_rest(plain))
    raw_again, _ = record_json(plain)
    assert decode(raw_again) == decode(raw)


def test_a_kept_encoding_is_reused_across_a_new_version_and_dropped_when_anything_else_changes() -> None:
    first = record({"n": 1})
    state_json, rest_json = encode({"n": 1}), encode_rest(first)
    remember(first, state_json, rest_json)
    saved = first.evolve(version=8, updated_at=9.5)  # what a store's save makes of it
    assert kept(saved) == (state_json, rest_json)
    assert record_json(saved)[1] is state_json
    assert decode(record_json(saved)[0])["version"] == 8

    for changes in ({"state": {"n": 2}}, {"frontier": {"next": ["b"], "joins": {}}}, {"step": 4},
                    {"status": "completed"}, {"metadata": {"run": 1}}, {"error": {"kind": "X"}},
                    {"graph": {"name": "g"}}, {"step": True}, {"workflow_id": "wf-2"}, {"graph_name": "h"},
                    {"created_at": 1.75}):
        changed = saved.evolve(**changes)
        assert kept(changed) is None, changes
        assert decode(record_json(changed)[0]) == decode(encode(changed.to_dict()))
    assert kept(record({"n": 1})) is None  # a record nobody kept an encoding for
    whole = record({"n": 1}, created_at=2)  # an int time encodes otherwise than the equal float
    remember(whole, state_json, encode_rest(whole))
    assert kept(whole) is not None and kept(whole.evolve(created_at=2.0)) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states, step=st.integers(min_value=0, max_value=10**6), status=st.sampled_from(["running", "completed"]),
       created_at=st.floats(min_value=0, max_value=1e10) | st.integers(min_value=0, max_value=10**6),
       metadata=st.dictionaries(st.text(max_size=4), json_values, max_size=3))
def test_the_kept_tail_of_encode_rest_gives_the_same_bytes_as_encoding_it_whole(
        state: dict[str, Any], step: int, status: str, created_at: float, metadata: dict[str, Any]) -> None:
    first = record(state, graph={"name": "g", "sha256": "ab"}, created_at=created_at)
    assert encode_rest(first, keep=True) == encode_rest(first)
    # Evolved as the step loop does: the tail (graph, metadata, created_at) is reused while
    # it holds the same objects, encoded again when one of them is another object or value.
    later = first.evolve(step=step, status=status, frontier={"next": [], "joins": {}})
    assert encode_rest(later, keep=True) == encode_rest(later)
    changed = later.evolve(metadata=metadata)
    assert encode_rest(changed, keep=True) == encode_rest(changed)
    other_time = changed.evolve(created_at=float(created_at) + 1.0)
    assert encode_rest(other_time, keep=True) == encode_rest(other_time)
    assert decode(encode_rest(other_time, keep=True)) == {
        k: v for k, v in decode(encode(other_time.to_dict())).items() if k not in ("state", "version", "updated_at")}
