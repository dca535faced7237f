"""Typed state: Graph(state_schema=...) from a TypedDict, a dataclass or a Pydantic model.

Reducers from Annotated, defaults, input/output filtering, validation errors naming the
key, node and graph, conflicts with reducers=, the spec/fingerprint, and the untyped
dict state unchanged. All on the memory backend through the real engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run
from typing_extensions import NotRequired, Required  # in typing from Python 3.11

from distributed_agents import Graph, MessagesState, Orchestrator, State, add_messages
from distributed_agents.core.errors import ConfigurationError, ExecutionError, StateValidationError
from distributed_agents.core.schema import StateSchema

pytestmark = pytest.mark.timeout(30)


def fan_out(graph: Graph, first: Any, *parallel: Any) -> Graph:
    """first -> every parallel node -> END."""
    graph.add_node("first", first).set_entry_point("first")
    for i, func in enumerate(parallel):
        graph.add_node(f"p{i}", func).add_edge("first", f"p{i}").set_finish_point(f"p{i}")
    return graph.compile()


def single(graph: Graph, func: Any, name: str = "node") -> Graph:
    return graph.add_node(name, func).set_entry_point(name).set_finish_point(name).compile()


# -- schemas of every kind ----------------------------------------------------------------


class Items(TypedDict):
    items: Annotated[list[str], operator.add]
    title: str


def test_typeddict_annotated_reducer_merges_parallel_writes_from_its_empty_start() -> None:
    """operator.add on a list key starts from [] (as LangGraph), so parallel writes concatenate."""
    graph = fan_out(Graph("typed_td", state_schema=Items), lambda s: {"items": ["a"]},
                    lambda s: {"items": ["b"]}, lambda s: {"items": ["c"], "title": "t"})
    result = run(Orchestrator().execute(graph, {}))
    assert dict(result) == {"items": ["a", "b", "c"], "title": "t"}


@dataclasses.dataclass
class Counter:
    total: Annotated[int, operator.add]
    notes: Annotated[list[str], "append"] = dataclasses.field(default_factory=list)
    mode: Literal["fast", "slow"] = "fast"
    ratio: float = 0.5
    label: Optional[str] = None


def test_dataclass_defaults_fill_unwritten_keys_and_builtin_reducer_names_work() -> None:
    graph = fan_out(Graph("typed_dc", state_schema=Counter), lambda s: {"total": 1},
                    lambda s: {"total": 2, "notes": "x"}, lambda s: {"total": 3, "notes": ["y", "z"]})
    result = run(Orchestrator().execute(graph, {"mode": "slow"}))
    assert dict(result) == {"mode": "slow", "total": 6, "notes": ["x", "y", "z"], "ratio": 0.5, "label": None}


def test_default_factories_give_each_workflow_a_fresh_value() -> None:
    graph = single(Graph("fresh", state_schema=Counter), lambda s: {"notes": ["one"]})
    first = run(Orchestrator().execute(graph, {}))
    second = run(Orchestrator().execute(graph, {}))
    assert first["notes"] == second["notes"] == ["one"]


def test_pydantic_model_defaults_reducers_and_validation() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Profile(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str

    class Chat(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        messages: Annotated[list[dict[str, Any]], add_messages] = []
        turns: int = 0
        topic: str
        profile: Optional[Profile] = None  # a local class: Pydantic resolved it, and so do we

    graph = single(Graph("typed_pd", state_schema=Chat),
                   lambda s: {"messages": {"role": "assistant", "content": "hi"}, "turns": s["turns"] + 1})
    result = run(Orchestrator().execute(graph, {"topic": "x", "messages": ["hello"], "profile": {"name": "ann"}}))
    assert result["profile"] == {"name": "ann"}  # validated through Profile, stored as written
    with pytest.raises(StateValidationError, match="'profile'"):
        run(Orchestrator().execute(graph, {"topic": "x", "profile": {"nom": "ann"}}))
    assert [m["content"] for m in result["messages"]] == ["hello", "hi"]
    assert result["turns"] == 1 and result["topic"] == "x"

    bad = single(Graph("typed_pd_bad", state_schema=Chat), lambda s: {"turns": "many"}, name="counter")
    with pytest.raises(StateValidationError) as info:
        run(Orchestrator().execute(bad, {"topic": "x"}))
    message = str(info.value)
    assert "'turns'" in message and "'counter'" in message and "'typed_pd_bad'" in message
    assert "Chat refuses it" in message and "integer" in message
    assert (info.value.key, info.value.node, info.value.graph) == ("turns", "counter", "typed_pd_bad")


def test_messages_state_is_a_schema_with_add_messages() -> None:
    graph = single(Graph("chat", state_schema=MessagesState),
                   lambda s: {"messages": [{"role": "assistant", "content": f"{len(s['messages'])} so far"}]})
    result = run(Orchestrator().execute(graph, {"messages": [{"role": "user", "content": "hi"}]}))
    assert [(m["role"], m["content"]) for m in result["messages"]] == [("user", "hi"), ("assistant", "1 so far")]
    assert len({m["id"] for m in result["messages"]}) == 2  # the input message got an id too


# -- validation ---------------------------------------------------------------------------


def test_a_node_writing_an_undeclared_key_fails_naming_key_node_and_graph() -> None:
    graph = single(Graph("strict", state_schema=Items), lambda s: {"titel": "typo"}, name="writer")

    async def scenario() -> Any:
        orchestrator = Orchestrator()
        with pytest.raises(StateValidationError) as info:
            await orchestrator.execute(graph, {}, workflow_id="wf-strict")
        return info.value, await orchestrator.get_workflow_status("wf-strict")

    error, status = run(scenario())
    assert "'titel'" in str(error) and "'writer'" in str(error) and "'strict'" in str(error)
    assert "Items" in str(error) and "'items', 'title'" in str(error)
    assert status.status == "failed"
    assert status.error is not None and status.error["key"] == "titel" and status.error["node"] == "writer"


@pytest.mark.parametrize(("value", "ok"), [
    (1, True), (1.5, True), (True, False), ("1", False), (None, False), ([1], False),
])
def test_float_keys_take_ints_but_not_bools_or_strings(value: Any, ok: bool) -> None:
    graph = single(Graph("floats", state_schema=Counter), lambda s: {"ratio": value}, name="setter")
    if ok:
        assert run(Orchestrator().execute(graph, {}))["ratio"] == value
    else:
        with pytest.raises(StateValidationError, match=r"node 'setter' wrote .* state key 'ratio'.*float"):
            run(Orchestrator().execute(graph, {}))


@pytest.mark.parametrize(("key", "value"), [("mode", "medium"), ("label", 3), ("label", ["x"])])
def test_wrong_types_fail_naming_the_declared_type(key: str, value: Any) -> None:
    graph = single(Graph("types", state_schema=Counter), lambda s: {key: value}, name="setter")
    with pytest.raises(StateValidationError) as info:
        run(Orchestrator().execute(graph, {}))
    assert info.value.key == key and info.value.node == "setter" and f"Counter declares as" in str(info.value)


def to_text(current: Any, update: Any) -> Any:
    return f"{current}{update}"


@dataclasses.dataclass
class Reduced:
    count: Annotated[int, to_text] = 0


def test_a_reduced_value_is_checked_after_the_merge() -> None:
    """A reducer's result must have the key's type; the error names the reducer and the writers."""
    graph = single(Graph("reduced", state_schema=Reduced), lambda s: {"count": 1}, name="adder")
    with pytest.raises(StateValidationError, match=r"merging the update\(s\) of node\(s\) 'adder' through reducer"):
        run(Orchestrator().execute(graph, {}))


def test_an_update_the_annotated_reducer_cannot_take_fails_naming_key_and_node() -> None:
    graph = single(Graph("reducer_fails", state_schema=Counter), lambda s: {"total": "3"}, name="setter")
    with pytest.raises(ExecutionError, match=r"reducer .* of state key 'total' failed on the update from node 'setter'"):
        run(Orchestrator().execute(graph, {}))


def test_input_with_an_undeclared_key_or_wrong_type_stores_nothing() -> None:
    graph = single(Graph("inputs", state_schema=Items), lambda s: {})

    async def scenario() -> list[str]:
        orchestrator = Orchestrator()
        with pytest.raises(StateValidationError, match=r"the input state has state key 'nope'"):
            await orchestrator.execute(graph, {"nope": 1})
        with pytest.raises(StateValidationError, match=r"the input state gives 5 for state key 'title'") as info:
            await orchestrator.execute(graph, {"title": 5})
        assert info.value.node is None
        return [w.workflow_id for w in await orchestrator.list_workflows()]

    assert run(scenario()) == []


def test_the_untyped_dict_state_is_unchanged() -> None:
    graph = single(Graph("untyped", reducers={"log": "append"}), lambda s: {"log": 1, "anything": {"goes": True}})
    result = run(Orchestrator().execute(graph, {"free": "form"}))
    assert dict(result) == {"free": "form", "log": [1], "anything": {"goes": True}}
    assert graph.schema is None and "state_schema" not in graph.spec()


# -- input and output schemas -----------------------------------------------------------


class Question(TypedDict):
    question: str


class Answer(TypedDict):
    answer: str


class Overall(TypedDict):
    question: str
    answer: str
    scratch: Annotated[list[str], operator.add]


def test_input_schema_filters_the_input_and_output_schema_filters_every_result() -> None:
    graph = Graph("io", state_schema=Overall, input_schema=Question, output_schema=Answer)
    graph.add_node("think", lambda s: {"scratch": [f"about {s['question']}"]})
    graph.add_node("reply", lambda s: {"answer": f"{s['question']}? {len(s['scratch'])} thought"})
    graph.add_edge("think", "reply").set_entry_point("think").set_finish_point("reply").compile()

    async def scenario() -> tuple[State, State, State, dict[str, Any]]:
        orchestrator = Orchestrator()
        # "answer" is a declared key but not an input key: filtered out, as LangGraph does.
        returned = await orchestrator.execute(graph, {"question": "why", "answer": "early"}, workflow_id="wf-io")
        elsewhere = Orchestrator()  # another orchestrator, without the graph, gets the same result
        got = await elsewhere.get_result("wf-io")
        waited = await elsewhere.wait("wf-io")
        record = await orchestrator.backend.state_store.get("wf-io")
        assert record is not None
        return returned, got, waited, dict(record.state)

    returned, got, waited, stored = run(scenario())
    assert dict(returned) == dict(got) == dict(waited) == {"answer": "why? 1 thought"}
    assert stored == {"question": "why", "scratch": ["about why"], "answer": "why? 1 thought"}


def test_input_and_output_schemas_may_declare_keys_of_their_own() -> None:
    class Private(TypedDict):
        secret: int

    class Out(TypedDict):
        summary: str

    graph = Graph("own_keys", state_schema=Private, input_schema=Question, output_schema=Out)
    single(graph, lambda s: {"secret": 7, "summary": f"{s['question']}:{s.get('secret', 0)}"})
    assert dict(run(Orchestrator().execute(graph, {"question": "q"}))) == {"summary": "q:0"}


def test_state_schema_without_output_schema_returns_the_state_schema_keys() -> None:
    graph = single(Graph("out_default", state_schema=Items, input_schema=Question), lambda s: {"title": "t"})
    assert dict(run(Orchestrator().execute(graph, {"question": "q"}))) == {"items": [], "title": "t"}


# -- configuration errors ---------------------------------------------------------------


def test_reducers_given_twice_must_agree_naming_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"state key 'items' has reducer 'operator.add' .* 'extend'"):
        Graph("clash", state_schema=Items, reducers={"items": "extend"})
    graph = Graph("same", state_schema=Items, reducers={"items": operator.add})  # the same reducer: fine
    assert graph.reducers["items"] is operator.add
    with pytest.raises(ConfigurationError, match=r"state key 'items' has reducer"):
        Graph("clash_later", state_schema=Items).add_reducer("items", "append")
    with pytest.raises(ConfigurationError, match=r"'nope', which state schema Items does not declare"):
        Graph("undeclared", state_schema=Items, reducers={"nope": "append"})
    graph = Graph("plain_key", state_schema=Items, reducers={"title": lambda a, b: f"{a}{b}"})
    assert "title" in graph.reducers


def test_schemas_must_be_schema_classes_with_json_defaults_and_known_reducers() -> None:
    with pytest.raises(ConfigurationError, match="not a TypedDict, a dataclass or a Pydantic model"):
        Graph("plain", state_schema=dict)
    with pytest.raises(ConfigurationError, match="is not a class"):
        Graph("instance", state_schema={"a": int})  # type: ignore[arg-type]

    @dataclasses.dataclass
    class BadDefault:
        tags: set[str] = dataclasses.field(default_factory=set)

    with pytest.raises(ConfigurationError, match=r"BadDefault.*default of key 'tags'"):
        Graph("bad_default", state_schema=BadDefault)

    class BadReducer(TypedDict):
        items: Annotated[list[str], "concat"]

    with pytest.raises(ConfigurationError, match=r"key 'items': unknown reducer 'concat'"):
        Graph("bad_reducer", state_schema=BadReducer)

    class OneArgument(TypedDict):
        items: Annotated[list[str], len]

    with pytest.raises(ConfigurationError, match=r"must take two arguments"):
        Graph("one_arg", state_schema=OneArgument)
    with pytest.raises(ConfigurationError, match="need a state_schema"):
        Graph("io_only", input_schema=Question)


def test_the_spec_names_the_schema_and_its_reducers_so_the_fingerprint_changes_with_them() -> None:
    class Appending(TypedDict):
        items: Annotated[list[str], "append"]
        title: str

    def build(schema: type) -> Graph:
        return single(Graph("fp", state_schema=schema), lambda s: {})

    spec = build(Items).spec()
    assert spec["reducers"] == {"items": "operator.add"}
    # Names without module paths: "__main__" in one process is "app" in another.
    assert spec["state_schema"]["state"] == "Items"
    assert spec["state_schema"]["input"] is None and spec["state_schema"]["output"] is None
    nested = build(Overall).spec()["state_schema"]
    assert nested["keys"]["scratch"]["type"] == "list[str]"
    moved = TypedDict("Items", {"items": Annotated[list[str], operator.add], "title": str})  # type: ignore[operator]
    moved.__module__ = "elsewhere"
    assert build(moved).fingerprint() == build(Items).fingerprint()
    assert spec["state_schema"]["keys"]["items"] == {"type": "list[str]", "reducer": "operator.add", "default": True}
    assert build(Items).fingerprint() == build(Items).fingerprint()
    assert build(Items).fingerprint() != build(Appending).fingerprint()


# -- properties ------------------------------------------------------------------------


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=5))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=6)

CHECKED: list[tuple[Any, Any]] = [
    (str, lambda v: type(v) is str),
    (int, lambda v: type(v) is int),
    (bool, lambda v: type(v) is bool),
    (float, lambda v: type(v) in (int, float)),
    (list[int], lambda v: type(v) is list),
    (dict[str, Any], lambda v: type(v) is dict),
    (Optional[str], lambda v: v is None or type(v) is str),
    (Literal["a", 1], lambda v: (type(v) is str and v == "a") or (type(v) is int and v == 1)),
    (Any, lambda v: True),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(CHECKED))), JSON_VALUES)
def test_input_type_checks_accept_exactly_the_values_of_the_declared_type(which: int, value: Any) -> None:
    annotation, accepts = CHECKED[which]
    schema = StateSchema("prop", TypedDict("Prop", {"key": annotation}))  # type: ignore[operator]
    try:
        schema.prepare_input({"key": value})
        accepted = True
    except StateValidationError as exc:
        assert exc.key == "key" and "'prop'" in str(exc)
        accepted = False
    assert accepted == accepts(value)


# -- takeover ----------------------------------------------------------------------------


def test_a_taken_over_typed_workflow_keeps_its_reducers_and_output_filter() -> None:
    """Orchestrator A stops mid-workflow; B, which registered the same typed graph, takes it
    over: the schema's operator.add reducer keeps merging and B returns the output schema's keys."""

    def typed_graph(gate: Any) -> Graph:
        graph = Graph("typed_takeover", state_schema=Overall, output_schema=Answer)
        graph.add_node("think", lambda s: {"scratch": ["one"]}).add_node("gate", gate)
        graph.add_node("reply", lambda s: {"answer": ",".join(s["scratch"]), "scratch": ["three"]})
        return graph.set_entry_point("think").add_edge("think", "gate").add_edge("gate", "reply") \
            .set_finish_point("reply").compile()

    async def scenario() -> tuple[list[str], State, dict[str, Any]]:
        started = asyncio.Event()

        async def blocked_gate(state: State) -> dict[str, Any]:
            started.set()
            await asyncio.Event().wait()  # never returns: A stops while this step runs
            return {}

        a = Orchestrator()
        running = asyncio.ensure_future(a.execute(typed_graph(blocked_gate), {"question": "q"}, workflow_id="wf-tk"))
        await started.wait()
        await a.close()  # stops driving; the workflow stays running and resumable
        with pytest.raises(asyncio.CancelledError):
            await running
        b = Orchestrator()
        b.register_graph(typed_graph(lambda s: {"scratch": ["two"]}))
        taken = await b.recover_workflows()
        result = await b.wait("wf-tk", timeout=20)
        record = await b.backend.state_store.get("wf-tk")
        assert record is not None
        await b.close()
        return taken, result, dict(record.state)

    taken, result, stored = run(scenario())
    assert taken == ["wf-tk"]
    assert dict(result) == {"answer": "one,two"}
    assert stored["scratch"] == ["one", "two", "three"]


def test_a_workflow_migrated_to_another_graph_version_returns_that_versions_output_keys() -> None:
    class Outline(TypedDict):
        question: str
        answer: str
        scratch: Annotated[list[str], operator.add]
        outline: str

    def broken(state: State) -> dict[str, Any]:
        raise RuntimeError("not yet")

    old = single(Graph("migrating", state_schema=Overall, output_schema=Answer), broken, name="reply")
    new = single(Graph("migrating", state_schema=Outline), lambda s: {"answer": "a", "outline": "o"}, name="reply")

    async def scenario() -> State:
        orchestrator = Orchestrator()
        with pytest.raises(Exception, match="not yet"):
            await orchestrator.execute(old, {"question": "q"}, workflow_id="wf-migrate")
        return await Orchestrator().resume("wf-migrate", new, allow_graph_change=True)

    assert dict(run(scenario())) == {"question": "q", "answer": "a", "scratch": [], "outline": "o"}


def test_pydantic_input_and_output_schemas_and_input_validation() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Ask(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        question: str

    class Reply(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        answer: str = ""

    class Everything(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        question: str
        answer: str = ""
        tries: Annotated[int, operator.add] = 0
        notes: list[str] = pydantic.Field(default_factory=list)

    graph = single(Graph("pd_io", state_schema=Everything, input_schema=Ask, output_schema=Reply),
                   lambda s: {"answer": s["question"].upper(), "tries": 1, "notes": ["done"]})

    async def scenario() -> tuple[State, dict[str, Any]]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(graph, {"question": "hi", "tries": 5}, workflow_id="wf-pd")
        record = await orchestrator.backend.state_store.get("wf-pd")
        assert record is not None
        with pytest.raises(StateValidationError, match=r"the input state gives \['not', 'text'\] for state key 'question'"):
            await orchestrator.execute(graph, {"question": ["not", "text"]})
        return result, dict(record.state)

    result, stored = run(scenario())
    assert dict(result) == {"answer": "HI"}
    # "tries" is declared but not an input key: filtered out, so it starts from its default.
    assert stored == {"question": "hi", "answer": "HI", "tries": 1, "notes": ["done"]}


class Partial(TypedDict, total=False):
    tags: NotRequired[Annotated[list[str], operator.add]]
    count: Required[int]


def test_typeddict_required_and_not_required_wrap_the_type_and_reducer() -> None:
    graph = single(Graph("partial", state_schema=Partial), lambda s: {"tags": ["t"], "count": s["count"] + 1})
    assert dict(run(Orchestrator().execute(graph, {"count": 1}))) == {"count": 2, "tags": ["t"]}
    assert graph.spec()["state_schema"]["keys"]["tags"]["type"] == "list[str]"
    with pytest.raises(StateValidationError, match="Partial declares as int"):
        run(Orchestrator().execute(graph, {"count": "1"}))


def test_update_state_merges_through_the_schema_and_is_checked_like_a_node() -> None:
    graph = single(Graph("typed_update", state_schema=Overall, output_schema=Answer),
                   lambda s: {"scratch": ["node"], "answer": "a"}, name="reply")

    async def scenario() -> tuple[list[str], StateValidationError, State]:
        orchestrator = Orchestrator()
        await orchestrator.execute(graph, {"question": "q"}, workflow_id="wf-update")
        await orchestrator.update_state("wf-update", {"scratch": ["edit"]}, as_node="reply")
        snapshot = await orchestrator.get_state("wf-update")  # the whole state, as LangGraph's get_state
        with pytest.raises(StateValidationError) as info:
            await orchestrator.update_state("wf-update", {"answr": "typo"}, as_node="reply")
        return list(snapshot.values["scratch"]), info.value, await orchestrator.get_result("wf-update")

    scratch, error, result = run(scenario())
    assert scratch == ["node", "edit"]  # merged through operator.add
    assert (error.key, error.node, error.graph) == ("answr", "reply", "typed_update")
    assert dict(result) == {"answer": "a"}


# -- what is stored: TypedDict and dataclass values are checked, Pydantic's converted -------------


class CountDict(TypedDict):
    count: int
    scores: Annotated[list[float], operator.add]


@dataclasses.dataclass
class CountData:
    count: int = 0
    scores: Annotated[list[float], operator.add] = dataclasses.field(default_factory=list)


def count_model() -> Any:
    pydantic = pytest.importorskip("pydantic")

    class CountModel(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        count: int = 0
        scores: Annotated[list[float], operator.add] = []
        day: Optional[__import__("datetime").date] = None  # type: ignore[valid-type]

    return CountModel


@pytest.mark.parametrize("kind", ["typeddict", "dataclass", "pydantic"])
@pytest.mark.parametrize("where", ["node", "input"])
def test_a_numeric_string_for_an_int_is_refused_by_plain_schemas_and_converted_by_pydantic(kind: str,
                                                                                            where: str) -> None:
    schema = {"typeddict": CountDict, "dataclass": CountData}.get(kind) or count_model()
    write = {"count": "3"}
    graph = (Graph(f"count_{kind}_{where}", state_schema=schema)
             .add_node("parse", lambda s: write if where == "node" else {})
             .add_node("inc", lambda s: {"count": s["count"] + 1})
             .set_entry_point("parse").add_edge("parse", "inc").set_finish_point("inc").compile())
    given = write if where == "input" else {"count": 0}
    if kind == "pydantic":
        result = run(Orchestrator().execute(graph, given))
        assert result["count"] == 4 and type(result["count"]) is int  # stored as Pydantic made it: 3
    else:
        with pytest.raises(StateValidationError, match=r"'3' (to|for) state key 'count'.*got str"):
            run(Orchestrator().execute(graph, given))


def test_pydantic_conversions_are_stored_in_their_json_form_through_reducers_too() -> None:
    model = count_model()
    graph = (Graph("pd_convert", state_schema=model)
             .add_node("a", lambda s: {"scores": ["1.5"], "day": "2024-01-02"})
             .add_node("b", lambda s: {"scores": [2], "count": 2.0})
             .set_entry_point("a").set_entry_point("b").set_finish_point("a").set_finish_point("b").compile())

    async def scenario() -> tuple[State, dict[str, Any]]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(graph, {"scores": ["0.5"]}, workflow_id="wf-pd-convert")
        record = await orchestrator.backend.state_store.get("wf-pd-convert")
        assert record is not None
        return result, dict(record.state)

    result, stored = run(scenario())
    for values in (result, stored):
        assert sorted(values["scores"]) == [0.5, 1.5, 2.0] and values["count"] == 2 and type(values["count"]) is int
        assert values["day"] == "2024-01-02"  # a date in its JSON form: state is JSON
    with pytest.raises(StateValidationError, match="refuses it"):
        run(Orchestrator().execute(single(Graph("pd_refuse", state_schema=model), lambda s: {"count": "3.5"}), {}))


def test_a_typing_extensions_typeddict_is_a_state_schema_too() -> None:
    """``typing_extensions.TypedDict`` (LangGraph's own examples use it) is read as ``typing``'s:
    its keys, types and ``Annotated`` reducers."""
    typing_extensions = pytest.importorskip("typing_extensions")

    class Extended(typing_extensions.TypedDict, total=False):
        x: int
        log: Annotated[list[str], operator.add]

    from distributed_agents import END, START, StateGraph

    builder = StateGraph(Extended)
    builder.add_node("a", lambda s: {"x": 1, "log": ["a"]}).add_edge(START, "a").add_edge("a", END)
    assert builder.compile().invoke({"log": ["in"]}) == {"x": 1, "log": ["in", "a"]}
