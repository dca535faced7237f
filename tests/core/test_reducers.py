"""Reducers: the built-ins, resolution by name, and merge_updates (order independence, conflicts, failures)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distributed_agents.core.engine import merge_updates
from distributed_agents.core.errors import ConfigurationError, ExecutionError, ReducerConflictError
from distributed_agents.core.graph import Graph
from distributed_agents.core.messages import REMOVE_ALL_MESSAGES, RemoveMessage
from distributed_agents.core.reducers import BUILTIN_REDUCERS, add_messages, reducer_name, resolve_reducer

pytestmark = pytest.mark.timeout(60)


# -- built-ins -------------------------------------------------------------------------


def test_replace_takes_the_update() -> None:
    """replace ignores the current value."""
    replace = resolve_reducer("k", "replace")
    assert replace([1, 2], "new") == "new"
    assert replace(None, 0) == 0


def test_append_adds_an_item_or_every_item_of_a_list() -> None:
    """append adds one item, or each item of a list, to a copy of the current list."""
    append = resolve_reducer("k", "append")
    current = [1]
    assert append(current, 2) == [1, 2]
    assert append(current, [2, 3]) == [1, 2, 3]
    assert append(current, {"a": 1}) == [1, {"a": 1}]
    assert append(None, "x") == ["x"]
    assert append(None, ["x"]) == ["x"]
    assert current == [1]  # never changed in place


def test_extend_concatenates_lists_and_refuses_anything_else() -> None:
    """extend needs a list update."""
    extend = resolve_reducer("k", "extend")
    assert extend([1], [2, 3]) == [1, 2, 3]
    assert extend(None, []) == []
    with pytest.raises(TypeError, match="'extend' needs a list update, got int"):
        extend([1], 2)


def test_merge_is_a_shallow_dict_merge() -> None:
    """merge overlays the update's keys; nested dicts are replaced, not merged."""
    merge = resolve_reducer("k", "merge")
    current = {"a": 1, "nested": {"x": 1}}
    assert merge(current, {"b": 2, "nested": {"y": 2}}) == {"a": 1, "b": 2, "nested": {"y": 2}}
    assert merge(None, {"a": 1}) == {"a": 1}
    assert current == {"a": 1, "nested": {"x": 1}}
    with pytest.raises(TypeError, match="'merge' needs a dict update, got list"):
        merge({}, [("a", 1)])


def test_add_sums_numbers() -> None:
    """add adds to the current number, starting from the first update."""
    add = resolve_reducer("k", "add")
    assert add(None, 5) == 5
    assert add(5, 2.5) == 7.5
    assert add(-1, 1) == 0


@pytest.mark.parametrize(
    ("name", "current", "update", "found"),
    [
        ("append", "abc", "d", "str"),
        ("append", {"a": 1}, 1, "dict"),
        ("extend", "abc", ["d"], "str"),
        ("merge", [("a", 1)], {"b": 2}, "list"),
    ],
)
def test_collection_reducers_refuse_a_current_value_of_the_wrong_kind(
    name: str, current: Any, update: Any, found: str
) -> None:
    """A scalar or dict in state is not silently exploded into a list (list("abc")), it is a TypeError."""
    with pytest.raises(TypeError, match=rf"'{name}' needs a .* in state, found {found}"):
        resolve_reducer("k", name)(current, update)


def test_builtin_names_are_exactly_the_documented_ones() -> None:
    """The six documented built-ins, by name."""
    assert sorted(BUILTIN_REDUCERS) == ["add", "add_messages", "append", "extend", "merge", "replace"]


def test_a_callable_is_used_as_is() -> None:
    """A callable reducer resolves to itself."""

    def longest(current: Any, update: Any) -> Any:
        return update if current is None or len(update) > len(current) else current

    assert resolve_reducer("k", longest) is longest


@pytest.mark.parametrize("bad", ["concat", "", 42, None, []])
def test_unknown_reducer_is_a_configuration_error_naming_the_key(bad: Any) -> None:
    """An unknown name (or a non-callable, non-string) fails naming the key and listing the built-ins."""
    with pytest.raises(ConfigurationError) as info:
        resolve_reducer("messages", bad)
    message = str(info.value)
    assert "state key 'messages'" in message
    assert f"unknown reducer {bad!r}" in message
    assert "add, add_messages, append, extend, merge, replace" in message


def test_graph_rejects_an_unknown_reducer_when_declared() -> None:
    """Graph(reducers=...) and add_reducer fail at once, naming the key."""
    with pytest.raises(ConfigurationError, match="state key 'log'"):
        Graph("g", reducers={"log": "appendd"})
    with pytest.raises(ConfigurationError, match="state key 'total'"):
        Graph("g").add_reducer("total", "sum")


# -- merge_updates ---------------------------------------------------------------------

REDUCED = {"log": "append", "items": "extend", "meta": "merge", "total": "add"}


@st.composite
def step_writes(draw: st.DrawFn) -> tuple[Graph, list[tuple[str, dict[str, Any]]]]:
    """A compiled graph whose N nodes are declared in a random order, and one write per node.

    Each node may write any reduced key, plus one reducer-less key only it writes.
    """
    count = draw(st.integers(1, 7))
    declared = draw(st.permutations([f"node{i}" for i in range(count)]))
    graph = Graph("writes", reducers=REDUCED)
    for name in declared:
        graph.add_node(name)
    graph.set_entry_point(declared[0])
    for a, b in zip(declared, declared[1:]):
        graph.add_edge(a, b)
    graph.set_finish_point(declared[-1]).compile()
    writes = []
    for name in declared:
        updates: dict[str, Any] = {}
        if draw(st.booleans()):
            updates["log"] = draw(st.one_of(st.integers(0, 9), st.lists(st.integers(0, 9), max_size=3)))
        if draw(st.booleans()):
            updates["items"] = draw(st.lists(st.text(max_size=2), max_size=3))
        if draw(st.booleans()):
            updates["meta"] = draw(st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2))
        if draw(st.booleans()):
            updates["total"] = draw(st.integers(-5, 5))
        if draw(st.booleans()):
            updates[f"own_{name}"] = draw(st.integers())
        writes.append((name, updates))
    return graph, writes


def model_merge(state: dict[str, Any], writes: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A reference fold of ``writes`` in the given order, written out by hand."""
    result = dict(state)
    for _, updates in writes:
        for key, value in updates.items():
            if key == "log":
                result["log"] = result.get("log", []) + (value if isinstance(value, list) else [value])
            elif key == "items":
                result["items"] = result.get("items", []) + value
            elif key == "meta":
                result["meta"] = {**result.get("meta", {}), **value}
            elif key == "total":
                result["total"] = result.get("total", 0) + value
            else:
                result[key] = value
    return result


@settings(max_examples=100, deadline=None)
@given(step_writes(), st.randoms(use_true_random=False))
def test_merge_is_independent_of_branch_completion_order(
    case: tuple[Graph, list[tuple[str, dict[str, Any]]]], rnd: Any
) -> None:
    """Writes gathered in any completion order, re-sorted by declaration, merge to one result."""
    graph, writes = case
    initial = {"log": ["start"], "total": 10, "untouched": True}
    completed = list(writes)
    rnd.shuffle(completed)
    position = {name: i for i, name in enumerate(graph.order(name for name, _ in completed))}
    resorted = sorted(completed, key=lambda write: position[write[0]])
    assert [name for name, _ in resorted] == list(graph.nodes)
    result = merge_updates(initial, resorted, graph.reducers)
    assert result == merge_updates(initial, writes, graph.reducers)
    assert result == model_merge(initial, writes)
    assert initial == {"log": ["start"], "total": 10, "untouched": True}  # the input is not changed


def test_two_writers_of_a_key_without_reducer_conflict_naming_both() -> None:
    """Two nodes writing one reducer-less key in a step raise ReducerConflictError naming both and the key."""
    writes = [("planner", {"plan": "a", "log": [1]}), ("critic", {"log": [2]}), ("writer", {"plan": "b"})]
    with pytest.raises(ReducerConflictError) as info:
        merge_updates({}, writes, {"log": resolve_reducer("log", "append")})
    assert info.value.key == "plan"
    assert info.value.nodes == ("planner", "writer")
    message = str(info.value)
    assert "'planner'" in message and "'writer'" in message and "'plan'" in message


def test_one_writer_per_key_without_reducer_replaces() -> None:
    """Distinct writers of distinct reducer-less keys simply replace; same writes with a reducer combine."""
    assert merge_updates({"a": 0}, [("x", {"a": 1}), ("y", {"b": 2})], {}) == {"a": 1, "b": 2}
    add = resolve_reducer("n", "add")
    assert merge_updates({"n": 1}, [("x", {"n": 2}), ("y", {"n": 3})], {"n": add}) == {"n": 6}


def test_a_failing_reducer_is_an_execution_error_naming_key_and_node() -> None:
    """An exception from a reducer becomes an ExecutionError naming the key and the writing node."""

    def picky(current: Any, update: Any) -> Any:
        if update < 0:
            raise ValueError("negative")
        return update

    writes = [("ok_node", {"score": 1}), ("bad_node", {"score": -1})]
    with pytest.raises(ExecutionError) as info:
        merge_updates({}, writes, {"score": picky})
    message = str(info.value)
    assert "state key 'score'" in message and "node 'bad_node'" in message and "ValueError: negative" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_a_builtin_reducer_type_error_names_key_and_node() -> None:
    """extend given a non-list through merge_updates names the key and node."""
    with pytest.raises(ExecutionError, match=r"state key 'items' failed on the update from node 'n1': TypeError"):
        merge_updates({}, [("n1", {"items": 5})], {"items": resolve_reducer("items", "extend")})


# -- add_messages ------------------------------------------------------------------------


def user(content: str, id: str | None = None) -> dict[str, Any]:
    return {"role": "user", "content": content, **({"id": id} if id is not None else {})}


def test_add_messages_is_importable_everywhere_and_usable_by_name() -> None:
    import distributed_agents
    from distributed_agents.core import reducers

    assert distributed_agents.add_messages is reducers.add_messages is resolve_reducer("m", "add_messages")
    assert reducer_name(add_messages) == "add_messages"


def test_add_messages_appends_and_gives_messages_without_id_a_uuid4_hex() -> None:
    merged = add_messages([user("a", "1")], [user("b"), {"role": "assistant", "content": "c", "tool_calls": []}])
    assert [m["content"] for m in merged] == ["a", "b", "c"]
    generated = merged[1]["id"]
    assert len(generated) == 32 and uuid.UUID(hex=generated).version == 4
    assert merged[2]["tool_calls"] == [] and merged[2]["role"] == "assistant"  # other keys kept as they are
    assert json.loads(json.dumps(merged)) == merged


def test_add_messages_changes_nothing_it_is_given() -> None:
    history = [user("a", "1")]
    update = {"role": "user", "content": "no id yet"}
    merged = add_messages(history, [update, RemoveMessage("1")])
    assert update == {"role": "user", "content": "no id yet"}  # the id went on a copy
    assert history == [user("a", "1")] and merged == [{**update, "id": merged[0]["id"]}]


def test_add_messages_takes_a_single_message_a_string_or_none_as_history() -> None:
    assert add_messages(None, user("a", "1")) == [user("a", "1")]
    (message,) = add_messages([], "hello")
    assert message["role"] == "user" and message["content"] == "hello" and message["id"]


def test_add_messages_replaces_by_id_in_place() -> None:
    history = [user("a", "1"), user("b", "2"), user("c", "3")]
    merged = add_messages(history, {"role": "user", "content": "B!", "id": "2"})
    assert [(m["id"], m["content"]) for m in merged] == [("1", "a"), ("2", "B!"), ("3", "c")]
    assert history[1]["content"] == "b"  # nothing changed in place


def test_add_messages_removes_by_marker_and_refuses_an_unknown_id() -> None:
    history = [user("a", "1"), user("b", "2"), user("c", "3")]
    assert RemoveMessage("2") == {"type": "remove", "id": "2"}
    assert [m["id"] for m in add_messages(history, [RemoveMessage("1"), RemoveMessage("3")])] == ["2"]
    with pytest.raises(ValueError, match="cannot remove message 'nope'"):
        add_messages(history, RemoveMessage("nope"))
    # Removed and written again in one update: kept with the new content, as LangGraph does.
    again = add_messages(history, [RemoveMessage("2"), user("B again", "2")])
    assert [(m["id"], m["content"]) for m in again] == [("1", "a"), ("2", "B again"), ("3", "c")]


def test_add_messages_remove_all_keeps_only_what_follows_the_marker() -> None:
    history = [user("a", "1"), user("b", "2")]
    merged = add_messages(history, [user("x", "9"), RemoveMessage(REMOVE_ALL_MESSAGES), user("fresh", "10")])
    assert merged == [user("fresh", "10")]


@pytest.mark.parametrize("bad", [5, ["ok", 3], {"type": "remove"}, {"role": "user", "content": "x", "id": 7}])
def test_add_messages_refuses_what_is_not_a_message(bad: Any) -> None:
    with pytest.raises(TypeError, match="add_messages"):
        add_messages([], bad)


# An operation on the history: ("append", content) adds a message without id, ("write", i,
# content) writes a message with the id of the i-th message ever added (a replacement if
# it is still there, else an append), ("remove", i) removes the i-th if it is still there.
OPERATION = st.one_of(
    st.tuples(st.just("append"), st.text(max_size=3)),
    st.tuples(st.just("write"), st.integers(0, 20), st.text(max_size=3)),
    st.tuples(st.just("remove"), st.integers(0, 20)),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(OPERATION, max_size=6), max_size=8))
@example([[("append", ""), ("append", "")], [("remove", 0), ("write", 0, "")]])  # removed, rewritten: in place
def test_add_messages_keeps_ids_unique_and_order_of_first_appearance(updates: list[list[Any]]) -> None:
    """After any sequence of appends, replacements and removals (several per update),
    ids are unique and the history equals a model: an ordered mapping id -> content."""
    history: list[dict[str, Any]] = []
    model: dict[str, str] = {}  # id -> content, in order of first appearance (dict order)
    ever: list[str] = []  # ids of every message added, for later writes and removals
    for operations in updates:
        batch: list[Any] = []
        expected = dict(model)
        removed: set[str] = set()  # removals apply at the end of the update, as in LangGraph
        for op in operations:
            if op[0] == "append":
                batch.append({"role": "user", "content": op[1]})
                expected[f"new{len(batch)}"] = op[1]  # placeholder: the reducer picks the id
            elif op[0] == "write" and op[1] < len(ever):
                batch.append({"role": "user", "content": op[2], "id": ever[op[1]]})
                expected[ever[op[1]]] = op[2]  # in place if present (also if removed earlier in the update)
                removed.discard(ever[op[1]])
            elif op[0] == "remove" and op[1] < len(ever) and ever[op[1]] in expected:
                batch.append(RemoveMessage(ever[op[1]]))
                removed.add(ever[op[1]])
        expected = {key: content for key, content in expected.items() if key not in removed}
        history = add_messages(history, batch)
        ids = [m["id"] for m in history]
        assert len(ids) == len(set(ids))
        # Generated ids replace the placeholders, in the order the appends came.
        fresh = iter(i for i in ids if i not in model and i not in ever)
        model = {(next(fresh) if key.startswith("new") and key not in ever else key): content
                 for key, content in expected.items()}
        for i in ids:
            if i not in ever:
                ever.append(i)
        assert [(m["id"], m["content"]) for m in history] == list(model.items())
        assert json.loads(json.dumps(history)) == history


def test_add_messages_by_name_on_an_untyped_graph() -> None:
    from support.aio import run

    from distributed_agents import Orchestrator

    graph = Graph("untyped_chat", reducers={"messages": "add_messages"})
    graph.add_node("a", lambda s: {"messages": "from a"}).add_node("b", lambda s: {"messages": ["from b"]})
    graph.set_entry_point("a").set_entry_point("b").set_finish_point("a").set_finish_point("b").compile()
    assert graph.spec()["reducers"] == {"messages": "add_messages"}
    result = run(Orchestrator().execute(graph, {}))
    assert [m["content"] for m in result["messages"]] == ["from a", "from b"]


def test_add_messages_takes_langgraphs_role_content_tuples() -> None:
    """("user", "hi") / ("human", ...) / ("ai", ...) as in LangGraph; human/ai become OpenAI's user/assistant."""
    merged = add_messages([("system", "be brief")], [("human", "hi"), ("ai", "hello"), "plain", ("tool", "42")])
    assert [(m["role"], m["content"]) for m in merged] == [
        ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "plain"), ("tool", "42")]
    assert len({m["id"] for m in merged}) == 5
    assert [(m["role"], m["content"]) for m in add_messages(None, ("assistant", "one"))] == [("assistant", "one")]


@pytest.mark.parametrize("bad", [("narrator", "x"), ("user", "x", "extra"), (1, "x")])
def test_add_messages_refuses_a_tuple_that_is_not_a_role_and_content(bad: Any) -> None:
    with pytest.raises(TypeError, match="add_messages"):
        add_messages([], [bad])
