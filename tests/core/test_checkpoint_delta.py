"""Checkpoint deltas: any sequence of states rebuilds exactly from snapshots and deltas."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents.core import checkpoint_delta
from distributed_agents.core.checkpoint_delta import ChainTip, delta_snap, diff, next_entry, rebuild, same
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import Checkpoint

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, -2.5]),
                     st.text(max_size=4))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from("abc"), inner, max_size=3)), max_leaves=8)
_keys = st.sampled_from(["k", "m", "n"])


@st.composite
def _state_sequences(draw: Any) -> list[dict[str, Any]]:
    """States where each step sets, appends to, removes or retypes a few keys (or nothing)."""
    # A value large enough that most steps are stored as deltas (small states are stored whole).
    state: dict[str, Any] = {"big": "x" * 1500}
    states = [dict(state)]
    for _ in range(draw(st.integers(0, 20))):
        state = dict(state)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(_keys)
            action = draw(st.sampled_from(["set", "append", "del", "retype", "nested"]))
            if action == "set":
                state[key] = draw(_values)
            elif action == "append":
                current = state.get(key)
                base = current if type(current) is list else []
                state[key] = base + draw(st.lists(_values, max_size=3))
            elif action == "del":
                state.pop(key, None)
            elif action == "retype" and key in state and type(state[key]) in (int, bool, float):
                value = state[key]
                state[key] = float(value) if type(value) is int else (int(value) if type(value) is float else 1)
            elif action == "nested":
                state[key] = {"inner": draw(_values), "list": [draw(_values)]}
        states.append(state)
    return states


def _store(states: list[dict[str, Any]]) -> list[bytes]:
    entries: list[bytes] = []
    tip: ChainTip | None = None
    for step, state in enumerate(states):
        entry, tip = next_entry(Checkpoint("wf", step, state, writes={"n": step}), tip, index=len(entries))
        entries.append(entry)
    return entries


@settings(max_examples=50, deadline=None)
@given(_state_sequences(), st.one_of(st.none(), st.integers(0, 5)), st.one_of(st.none(), st.integers(0, 30)))
def test_rebuild_returns_every_state_exactly(states: list[dict[str, Any]], limit: int | None,
                                              before: int | None) -> None:
    entries = _store(states)
    expected = [cp for cp in reversed(range(len(states))) if before is None or cp < before]
    expected = expected if limit is None else expected[:limit]
    rebuilt = rebuild(entries, 0, limit=limit, before=before)
    assert [cp.step for cp in rebuilt] == expected
    for cp in rebuilt:
        assert same(dict(cp.state), decode(encode(states[cp.step])))
        assert cp.writes == {"n": cp.step}
    # Any tail that starts at a chain's snapshot rebuilds the same checkpoints.
    if rebuilt:
        first = len(entries) - 1
        snap = delta_snap(entries[first])
        start = first if snap is None else snap
        assert [cp.state for cp in rebuild(entries[start:], start, limit=1)] == [rebuilt[0].state] \
            if limit != 0 and before is None else True


def test_unchanged_large_value_is_stored_once_per_chain() -> None:
    states = [{"doc": "x" * 100_000, "n": step} for step in range(300)]
    entries = _store(states)
    assert sum(map(len, entries)) < 100_000 + 300 * 400
    assert [cp.state for cp in rebuild(entries, 0, limit=2)] == [states[299], states[298]]


def test_append_reducer_history_grows_linearly() -> None:
    messages = [{"role": "user", "content": f"message {i} " + "y" * 80} for i in range(400)]
    states = [{"messages": messages[:n]} for n in range(1, 401)]
    entries = _store(states)
    total = sum(map(len, entries))
    # Snapshots grow geometrically (each is paid for by the deltas since the last): linear in total.
    assert total < 4 * len(encode(states[-1])) + 400 * 400
    assert rebuild(entries, 0, limit=1)[0].state == states[-1]


def test_types_are_compared_as_json() -> None:
    assert diff({"a": 1}, {"a": 1.0})["set"] == {"a": 1.0}
    assert diff({"a": True}, {"a": 1})["set"] == {"a": 1}
    assert diff({"a": [1]}, {"a": [1, 2]})["append"] == {"a": [2]}
    assert diff({"a": [1]}, {"a": [True, 2]})["set"] == {"a": [True, 2]}
    assert diff({"a": 1, "b": 2}, {"a": 1})["del"] == ["b"]


def test_returned_states_are_independent() -> None:
    entries = _store([{"h": ["a" * 50] * 40}, {"h": ["a" * 50] * 41}, {"h": ["a" * 50] * 42}])
    rebuilt = rebuild(entries, 0)
    rebuilt[1].state["h"].append("changed")
    assert [len(cp.state["h"]) for cp in rebuild(entries, 0)] == [42, 41, 40]
    assert len(rebuilt[0].state["h"]) == 42


def test_a_delta_on_the_wrong_base_is_refused() -> None:
    states = [{"h": ["a" * 50] * n} for n in range(30, 34)]
    entries = _store(states)
    assert delta_snap(entries[2]) == 0
    with pytest.raises(PayloadDecodeError, match="damaged"):
        rebuild([entries[0], entries[2]], 0)
    with pytest.raises(PayloadDecodeError, match="snapshot"):
        rebuild(entries[2:], 2)


def test_a_tip_at_another_index_writes_a_snapshot() -> None:
    entry, tip = next_entry(Checkpoint("wf", 0, {"h": "a" * 2000}), None, index=0)
    again, _ = next_entry(Checkpoint("wf", 1, {"h": "a" * 2000}), tip, index=5)
    assert delta_snap(again) is None and b'"state"' in again
    chained, _ = next_entry(Checkpoint("wf", 1, {"h": "a" * 2000}), tip, index=1)
    assert delta_snap(chained) == 0 and b'"state"' not in chained


def test_small_states_are_stored_whole() -> None:
    entries = _store([{"n": n} for n in range(5)])
    assert [delta_snap(e) for e in entries] == [None] * 5


def test_chains_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_delta, "MAX_CHAIN", 3)
    entries = _store([{"doc": "z" * 2000, "n": n} for n in range(9)])
    assert [delta_snap(e) for e in entries] == [None, 0, 0, 0, None, 4, 4, 4, None]


@pytest.mark.parametrize("created", [None, "absent"])
def test_an_entry_whose_created_at_is_null_or_absent_rebuilds_with_time_zero(created: Any) -> None:
    # checked_entry accepts a null created_at (as an absent one); rebuilding it raised TypeError
    # (float(None)), an exception no reader of damaged checkpoints expects.
    entry = {"workflow_id": "wf", "step": 0, "state": {"a": 1}, "frontier": {}, "writes": {}, "metadata": {},
             "id": "e0"}
    if created is None:
        entry["created_at"] = None
    [checkpoint] = rebuild([encode(entry)], 0, workflow_id="wf", where="the test's list")
    assert checkpoint.state == {"a": 1} and checkpoint.created_at == 0.0
    assert Checkpoint.from_dict({"workflow_id": "wf", "step": 1, "created_at": None}).created_at == 0.0
