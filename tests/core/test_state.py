"""State: JSON round-trips, checkpoints, the JSON-only write rule and the mapping protocol."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents import State
from distributed_agents.core.errors import StateError, StateNotSerializableError

pytestmark = pytest.mark.timeout(60)

PROPERTY = settings(max_examples=80, deadline=None)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)
state_data = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
workflow_ids = st.one_of(st.none(), st.text(alphabet="abcdef0123456789_", min_size=1, max_size=12))


# -- round trips -----------------------------------------------------------------------


@PROPERTY
@given(state_data, workflow_ids)
def test_from_dict_of_to_dict_is_the_same_state(data: dict[str, Any], workflow_id: str | None) -> None:
    """from_dict(to_dict(s)) == s, the workflow id included, and to_dict is plain JSON."""
    state = State(data, workflow_id=workflow_id)
    dumped = state.to_dict()
    rebuilt = State.from_dict(json.loads(json.dumps(dumped)))
    assert rebuilt == state
    assert rebuilt.workflow_id == state.workflow_id
    assert dict(rebuilt) == data
    if workflow_id is not None:
        assert dumped["workflow_id"] == workflow_id


@PROPERTY
@given(state_data, state_data)
def test_checkpoint_then_restore_brings_back_exactly_the_data(data: dict[str, Any], later: dict[str, Any]) -> None:
    """Writes (and in-place mutation) after a checkpoint are undone by restoring it."""
    state = State(data, workflow_id="wf_1")
    original = copy.deepcopy(data)
    checkpoint = state.checkpoint("node_a")
    assert json.loads(json.dumps(checkpoint)) == checkpoint
    assert checkpoint["workflow_id"] == "wf_1" and checkpoint["node"] == "node_a"
    state.update(later)
    for value in state.values():  # mutate nested values in place: the checkpoint must not share them
        if isinstance(value, list):
            value.append("mutated")
        elif isinstance(value, dict):
            value["mutated"] = True
    state["extra"] = 1
    state.restore_from_checkpoint(checkpoint)
    assert dict(state) == original
    assert state.workflow_id == "wf_1"


@PROPERTY
@given(state_data.filter(bool))
def test_restored_state_and_checkpoint_share_nothing(data: dict[str, Any]) -> None:
    """After a restore, changing the checkpoint dict does not change the state, and vice versa."""
    state = State(data, workflow_id="wf_1")
    checkpoint = state.checkpoint("n")
    state.restore_from_checkpoint(checkpoint)
    key = next(iter(data))
    checkpoint["data"][key] = "changed in checkpoint"
    checkpoint["data"]["new"] = [1]
    assert dict(state) == data
    state[key] = "changed in state"
    assert checkpoint["data"][key] == "changed in checkpoint"


def test_checkpoints_have_distinct_ids_and_timestamps() -> None:
    """Each checkpoint is identified on its own and timestamped."""
    state = State({"a": 1})
    first, second = state.checkpoint("x"), state.checkpoint("x")
    assert first["checkpoint_id"] != second["checkpoint_id"]
    assert isinstance(first["timestamp"], float) and first["timestamp"] <= second["timestamp"]


def test_restore_refuses_a_checkpoint_of_another_workflow() -> None:
    """A checkpoint taken of workflow A cannot restore workflow B, and B's data is untouched."""
    source = State({"a": 1}, workflow_id="wf_a")
    target = State({"b": 2}, workflow_id="wf_b")
    with pytest.raises(StateError, match=r"checkpoint of workflow 'wf_a' cannot restore state of workflow 'wf_b'"):
        target.restore_from_checkpoint(source.checkpoint("n"))
    assert dict(target) == {"b": 2}


@pytest.mark.parametrize(
    "garbage",
    [None, 42, "data", "metadata", ["data"], {}, {"data": None}, {"data": [1, 2]}, {"workflow_id": "wf_b"}],
)
def test_restore_refuses_garbage_with_a_state_error(garbage: Any) -> None:
    """Anything but a checkpoint mapping with a 'data' mapping is a StateError, never a raw TypeError."""
    state = State({"b": 2}, workflow_id="wf_b")
    with pytest.raises(StateError, match="not a State checkpoint"):
        state.restore_from_checkpoint(garbage)
    assert dict(state) == {"b": 2}


def test_restore_refuses_a_checkpoint_carrying_a_non_json_value() -> None:
    """A hand-made checkpoint with a set in it fails naming the key, and nothing is restored."""
    state = State({"b": 2}, workflow_id="wf_b")
    with pytest.raises(StateNotSerializableError) as info:
        state.restore_from_checkpoint({"workflow_id": "wf_b", "data": {"ok": 1, "bad": {1, 2}}})
    assert info.value.key == "bad"
    assert dict(state) == {"b": 2}


@pytest.mark.parametrize("garbage", [None, "data", [("data", {})], {}, {"data": 3}])
def test_from_dict_refuses_garbage(garbage: Any) -> None:
    """from_dict needs to_dict output; anything else is a StateError."""
    with pytest.raises(StateError, match="needs the output of State.to_dict"):
        State.from_dict(garbage)


# -- only JSON can be written ----------------------------------------------------------


class Opaque:
    """An object JSON cannot carry."""


BAD_VALUES = [
    pytest.param({1, 2}, id="set"),
    pytest.param(Opaque(), id="object"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param({"nested": [1, {2}]}, id="nested-set"),
]


def write_item(state: State, key: str, value: Any) -> None:
    """state[key] = value."""
    state[key] = value


WRITES: list[Any] = [
    pytest.param(write_item, id="setitem"),
    pytest.param(lambda s, k, v: s.update({"fine": 1, k: v}), id="update-mapping"),
    pytest.param(lambda s, k, v: s.update(**{k: v}), id="update-kwargs"),
    pytest.param(lambda s, k, v: State({"fine": 1, k: v}), id="constructor"),
    pytest.param(lambda s, k, v: s.setdefault(k, v), id="setdefault"),
]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("write", WRITES)
def test_non_json_value_fails_when_written_naming_the_key(value: Any, write: Callable[[State, str, Any], Any]) -> None:
    """A value JSON cannot carry raises StateNotSerializableError naming the key; nothing is written."""
    state = State({"kept": True})
    with pytest.raises(StateNotSerializableError) as info:
        write(state, "bad_key", value)
    assert info.value.key == "bad_key"
    assert "'bad_key'" in str(info.value)
    assert dict(state) == {"kept": True}


@pytest.mark.parametrize("write", WRITES[:2] + WRITES[3:4])
def test_non_string_keys_are_refused(write: Callable[[State, Any, Any], Any]) -> None:
    """A key that is not a string would change on the first JSON round trip: refused, naming it."""
    state = State()
    with pytest.raises(StateNotSerializableError, match="state keys must be strings") as info:
        write(state, 7, "value")
    assert info.value.key == "7"
    assert len(state) == 0


# -- mapping protocol ------------------------------------------------------------------


def test_mapping_protocol() -> None:
    """get (with default), in, len, iteration order, item access, del and equality behave like a dict."""
    state = State({"a": 1, "b": [1, 2]}, workflow_id="wf_m")
    assert state.get("a") == 1
    assert state.get("missing") is None
    assert state.get("missing", "fallback") == "fallback"
    assert "a" in state and "missing" not in state and 1 not in state
    assert len(state) == 2
    assert list(state) == ["a", "b"]
    assert list(state.items()) == [("a", 1), ("b", [1, 2])]
    state["c"] = {"x": None}
    assert state["c"] == {"x": None} and len(state) == 3
    del state["a"]
    assert "a" not in state and list(state) == ["b", "c"]
    with pytest.raises(KeyError):
        state["a"]
    with pytest.raises(KeyError):
        del state["a"]
    assert state.pop("b") == [1, 2]
    assert state == {"c": {"x": None}}
    assert state == State({"c": {"x": None}}, workflow_id="wf_m")
    assert state != State({"c": {"x": None}}, workflow_id="wf_other")


def test_update_accepts_a_mapping_and_keywords() -> None:
    """update merges a mapping and keyword arguments, keywords last."""
    state = State({"a": 1})
    state.update({"a": 2, "b": 3}, b=4, c=5)
    assert dict(state) == {"a": 2, "b": 4, "c": 5}


def test_copy_is_deep_and_keeps_the_workflow_id() -> None:
    """copy() shares no nested value with the original."""
    state = State({"list": [1]}, workflow_id="wf_c")
    duplicate = state.copy()
    duplicate["list"].append(2)
    assert state["list"] == [1]
    assert duplicate.workflow_id == "wf_c"


def test_each_new_state_gets_its_own_workflow_id() -> None:
    """Without a workflow_id a State gets a fresh 'wf_' id."""
    first, second = State(), State()
    assert first.workflow_id.startswith("wf_") and first.workflow_id != second.workflow_id


# -- exactly what JSON returns unchanged ---------------------------------------------------

import enum  # noqa: E402
from collections import Counter, OrderedDict, defaultdict  # noqa: E402

from distributed_agents.core.codec import decode, encode, find_non_json  # noqa: E402


class Colour(enum.IntEnum):
    RED = 1


class Tag(str, enum.Enum):
    NEW = "new"


CHANGED_BY_JSON = [
    pytest.param({"by_id": {7: "seven"}}, "by_id.<key 7>", id="int-key"),
    pytest.param({"deep": [{"x": {None: 1}}]}, "deep[0].x.<key None>", id="none-key-nested"),
    pytest.param({"pair": (1, 2)}, "pair", id="tuple"),
    pytest.param({"findings": [{}, {"fetched": (2024, 1)}]}, "findings[1].fetched", id="nested-tuple"),
    pytest.param({"tally": Counter(a=2)}, "tally", id="counter"),
    pytest.param({"ordered": OrderedDict(a=1)}, "ordered", id="ordered-dict"),
    pytest.param({"d": defaultdict(list)}, "d", id="defaultdict"),
    pytest.param({"colour": Colour.RED}, "colour", id="int-enum"),
    pytest.param({"tags": [Tag.NEW]}, "tags[0]", id="str-enum"),
    pytest.param({"x": [1.0, float("-inf")]}, "x[1]", id="infinity"),
    pytest.param({"text": "ok \ud83d"}, "text", id="lone-surrogate"),
    pytest.param({"k": {"\udc00": 1}}, "k.<key '\\udc00'>", id="surrogate-key"),
    pytest.param({"n": 10 ** 4400}, "n", id="huge-int"),
]


@pytest.mark.parametrize(("values", "path"), CHANGED_BY_JSON)
def test_values_json_would_change_are_refused_naming_the_nested_path(values: dict[str, Any], path: str) -> None:
    """Each of these would come back different (or not at all) from JSON: refused at write, with its path."""
    key = next(iter(values))
    with pytest.raises(StateNotSerializableError) as info:
        State(values)
    assert info.value.key == key
    assert f"at {path}:" in str(info.value)
    state = State({"kept": 1})
    with pytest.raises(StateNotSerializableError):
        state[key] = values[key]
    with pytest.raises(StateNotSerializableError):
        state.update(values)
    assert dict(state) == {"kept": 1}


def same(a: Any, b: Any) -> bool:
    """Equal and of identical types at every depth (1 == 1.0 == True in Python, not in JSON)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is float and a != a:
        return b != b
    return bool(a == b)


anything_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(alphabet=st.characters(), max_size=6),
    st.sampled_from([Colour.RED, Tag.NEW]),
)
anything = st.recursive(
    anything_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(alphabet=st.characters(), max_size=4), st.integers(), st.booleans(),
                                  st.none(), st.floats(allow_nan=False)), inner, max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(Counter),
        st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(value=anything)
def test_a_value_is_accepted_exactly_when_json_returns_it_unchanged(value: Any) -> None:
    """The write rule is precisely "JSON gives it back unchanged": no false refusals, no silent changes."""
    try:
        round_tripped = decode(encode(value))
        unchanged = same(value, round_tripped)
    except (TypeError, ValueError):
        unchanged = False
    accepted = find_non_json(value) is None
    assert accepted == unchanged, (value, find_non_json(value))
    if accepted:
        assert same(State({"v": value}).values_copy()["v"], value)


# -- a State is a dict (code written for LangGraph's dict state works on it) ---------------------


def test_a_state_is_a_dict_that_json_dumps_and_keeps_its_workflow_id() -> None:
    state = State({"a": 1, "b": [1, {"c": None}]}, workflow_id="wf-d")
    assert isinstance(state, dict)
    assert json.loads(json.dumps(state)) == {"a": 1, "b": [1, {"c": None}]}
    assert {**state, "x": 2} == {"a": 1, "b": [1, {"c": None}], "x": 2}
    assert state.workflow_id == "wf-d" and state.get("missing", 5) == 5
    assert state == State({"a": 1, "b": [1, {"c": None}]}, workflow_id="wf-d")
    assert state != State({"a": 1, "b": [1, {"c": None}]}, workflow_id="other")
    assert not (state != {"a": 1, "b": [1, {"c": None}]})
    again = copy.deepcopy(state)
    assert type(again) is State and again == state and again.workflow_id == "wf-d"
    assert again["b"] is not state["b"]


@pytest.mark.parametrize("write", [
    lambda s: s.__setitem__("k", (1, 2)),
    lambda s: s.update({"k": {1, 2}}),
    lambda s: s.update(k=(1,)),
    lambda s: s.setdefault("k", object()),
    lambda s: s.__ior__({"k": float("nan")}),
], ids=["setitem", "update", "update-kwargs", "setdefault", "ior"])
def test_every_dict_write_to_a_state_is_checked(write: Callable[[State], Any]) -> None:
    """The dict API's writes go through the JSON check; the refused value is not stored."""
    state = State({"a": 1})
    with pytest.raises(StateNotSerializableError, match="'k'"):
        write(state)
    assert state == {"a": 1}


@given(state_data)
@PROPERTY
def test_json_dumps_of_a_state_equals_that_of_its_data(data: dict[str, Any]) -> None:
    assert json.dumps(State(data)) == json.dumps(data)
