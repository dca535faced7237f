"""merge_updates: reduced values are checked like node outputs; conflict hints fit the values' type."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.engine import merge_updates as merge_from_engine
from distributed_agents.core.errors import ExecutionError, ReducerConflictError, StateNotSerializableError
from distributed_agents.core.merge import merge_updates
from distributed_agents.core.reducers import resolve_reducer

pytestmark = pytest.mark.timeout(60)


def as_set(current: Any, update: Any) -> Any:
    """A custom reducer that returns a set, which JSON cannot carry."""
    return set(current or ()) | {update}


def test_the_engine_still_exports_merge_updates() -> None:
    """``from distributed_agents.core.engine import merge_updates`` keeps working."""
    assert merge_from_engine is merge_updates


def test_a_reducer_returning_a_set_names_key_reducer_and_node() -> None:
    """Was a bare TypeError at commit; now a StateNotSerializableError naming all three."""
    with pytest.raises(StateNotSerializableError) as info:
        merge_updates({}, [("collector", {"tags": "x"})], {"tags": as_set})
    message = str(info.value)
    assert info.value.key == "tags"
    assert "'tags'" in message and "as_set" in message and "'collector'" in message


def test_the_node_named_is_the_one_whose_merge_went_wrong() -> None:
    """Two writers: the first merges fine, the second's update makes the value non-JSON."""

    def picky(current: Any, update: Any) -> Any:
        return (current or []) + [update] if update != "bad" else {"bad"}

    writes = [("ok_node", {"k": "fine"}), ("bad_node", {"k": "bad"}), ("late_node", {"k": "fine"})]
    with pytest.raises(StateNotSerializableError, match=r"update from node 'bad_node'"):
        merge_updates({}, writes, {"k": picky})


@pytest.mark.parametrize("reducer, update, name", [
    ("add", 1e308, "'add'"),                                  # overflows to inf, which JSON refuses
    (lambda c, u: object(), 1, "<lambda>"),
    (lambda c, u: float("nan"), 1, "<lambda>"),
    (lambda c, u: {"by_id": {1: "int key"}}, 1, "<lambda>"),  # JSON would turn the key into "1"
    (lambda c, u: (c, u), 1, "<lambda>"),                     # JSON would return a list
], ids=["add-overflow", "object", "nan", "int-key", "tuple"])
def test_every_non_json_reduced_value_is_refused(reducer: Any, update: Any, name: str) -> None:
    """Whatever JSON cannot carry unchanged, out of a built-in or custom reducer, is refused naming the reducer."""
    with pytest.raises(StateNotSerializableError) as info:
        merge_updates({"n": 1e308}, [("writer", {"n": update})], {"n": resolve_reducer("n", reducer)})
    assert name in str(info.value) and "'writer'" in str(info.value) and info.value.key == "n"


def test_a_non_json_reducer_fails_the_workflow_naming_the_key() -> None:
    """End to end: execute raises the named error and the workflow does not commit the set."""
    graph = Graph("sets", reducers={"tags": as_set})
    graph.add_node("tagger", lambda s: {"tags": "x"}).set_entry_point("tagger").set_finish_point("tagger").compile()
    orchestrator = Orchestrator()

    async def scenario() -> None:
        with pytest.raises(StateNotSerializableError, match=r"state key 'tags'.*node 'tagger'"):
            await orchestrator.execute(graph, {}, workflow_id="sets-1")
        record = await orchestrator.backend.state_store.get("sets-1")
        assert record is not None and "tags" not in record.state
        await orchestrator.close()

    run(scenario())


def test_a_raising_reducer_names_the_reducer_too() -> None:
    """A reducer that raises is an ExecutionError naming reducer, key and node."""
    with pytest.raises(ExecutionError, match=r"reducer 'extend' of state key 'items' failed on the update from node 'n1'"):
        merge_updates({}, [("n1", {"items": 5})], {"items": resolve_reducer("items", "extend")})


# -- conflict hints by type ---------------------------------------------------------------

HINTS = [
    (st.integers(), "'add'", "sum"),
    (st.floats(-1e300, 1e300), "'add'", "sum"),  # bounded: a sum past 1.8e308 is inf, refused
    (st.lists(st.integers(), max_size=3), "'extend'", "concatenate"),
    (st.dictionaries(st.text(max_size=3), st.integers(), max_size=3), "'merge'", "merge the dicts"),
    (st.text(max_size=5), "'append'", "collect"),
    (st.booleans(), "'append'", "collect"),
    (st.none(), "'append'", "collect"),
]


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(HINTS))
def test_the_conflict_hint_suggests_a_reducer_for_the_values_type(data: st.DataObject, hint: Any) -> None:
    """Two ints -> 'add' (was always 'append'), lists -> 'extend', dicts -> 'merge', other -> 'append'."""
    values, reducer, effect = hint
    first, second = data.draw(values), data.draw(values)
    with pytest.raises(ReducerConflictError) as info:
        merge_updates({}, [("x", {"k": first}), ("y", {"k": second})], {})
    message = str(info.value)
    assert f"reducers={{'k': {reducer}}}" in message and effect in message
    # The suggested reducer does combine the two values.
    merged = merge_updates({}, [("x", {"k": first}), ("y", {"k": second})], {"k": resolve_reducer("k", reducer[1:-1])})
    if reducer == "'add'":
        assert math.isclose(merged["k"], first + second)
    elif reducer == "'append'":
        assert merged["k"] == [first, second]


def test_mixed_types_get_the_generic_hint() -> None:
    """An int and a list: 'append' collects both as they are."""
    with pytest.raises(ReducerConflictError, match=r"reducers=\{'k': 'append'\}"):
        merge_updates({}, [("x", {"k": 1}), ("y", {"k": [2]})], {})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.text(max_size=3)),
                min_size=2, max_size=5))
def test_a_conflict_names_every_writer_and_its_hint_merges_all_their_values(values: list[Any]) -> None:
    """With 1, 2 and [3] the hint said 'add' from the first two values, and following it failed on [3]."""
    writes = [(f"n{i}", {"k": value}) for i, value in enumerate(values)]
    with pytest.raises(ReducerConflictError) as caught:
        merge_updates({}, writes, {})
    assert caught.value.nodes == tuple(f"n{i}" for i in range(len(values)))
    message = str(caught.value)
    assert all(f"'n{i}'" in message for i in range(len(values)))
    suggested = re.search(r"reducers=\{'k': '(\w+)'\}", message)
    assert suggested is not None
    merged = merge_updates({}, writes, {"k": resolve_reducer("k", suggested.group(1))})  # the hint works
    assert "k" in merged
