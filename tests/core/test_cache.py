"""``add_node(..., cache_policy=CachePolicy(key_func=, ttl=))``: the node cache, on memory.

A node whose input's key is cached is not run: its cached output is used (``node.completed``
with ``cached=True``, no ``node.started``). The cache lives in the backend's state store,
so every orchestrator on the backend shares it. Expiry is driven by the memory store's
clock (``MemoryStateStore.clock``), moved on by the tests instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, CachePolicy, Command, Graph, Orchestrator, Send, State, interrupt, open_backend
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.core.cache import NodeCache, cache_namespace, cacheable_output, default_cache_key
from distributed_agents.core.errors import (
    BackendError,
    ConfigurationError,
    ExecutionError,
    GraphValidationError,
    NodeExecutionError,
)
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.state_store import StateStore, WorkflowStatus, implements_cache

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A clock the memory store's cache expiry reads; ``now`` moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fresh_backend(clock: Clock | None = None) -> Backend:
    backend = open_backend(f"memory://cache-{uuid.uuid4().hex[:8]}")
    if clock is not None:
        assert isinstance(backend.state_store, MemoryStateStore)
        backend.state_store.clock = clock
    return backend


def counting_graph(name: str, calls: Counter[str], *, policy: CachePolicy | None = None) -> Graph:
    """double (cached) -> END: doubles ``x``, counting its runs by input."""

    # The tally is a default argument, not part of the closure: its contents change as the
    # node runs, and what a closure holds counts by content in the cache's namespace.
    def double(state: State, tally: Counter[str] = calls) -> dict[str, Any]:
        tally[f"{name}:{state['x']}"] += 1
        return {"y": state["x"] * 2}

    return (Graph(name).add_node("double", double, cache_policy=policy or CachePolicy())
            .set_entry_point("double").set_finish_point("double").compile())


async def events_of(orchestrator: Orchestrator, graph: Graph, state: dict[str, Any], workflow_id: str) -> tuple[State, list[dict[str, Any]]]:
    """Execute and collect the workflow's events up to its completion."""
    subscription = await orchestrator.backend.message_bus.subscribe(f"events.{workflow_id}.>")
    try:
        result = await orchestrator.execute(graph, state, workflow_id=workflow_id)
        events: list[dict[str, Any]] = []
        while (message := await subscription.get(timeout=10)) is not None:
            events.append(dict(message.data))
            if events[-1]["type"] in ("workflow.completed", "workflow.failed", "workflow.interrupted"):
                break
        return result, events
    finally:
        await subscription.close()


def test_a_second_workflow_with_the_same_input_uses_the_cached_output() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("cached_double", calls)

    async def scenario() -> Any:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            first = await events_of(orchestrator, graph, {"x": 3}, "wf-first")
            second = await events_of(orchestrator, graph, {"x": 3}, "wf-second")
            other = await events_of(orchestrator, graph, {"x": 4}, "wf-other")
            return first, second, other

    (first, first_events), (second, second_events), (other, _) = run(scenario())
    assert first["y"] == second["y"] == 6 and other["y"] == 8
    assert calls == Counter({"cached_double:3": 1, "cached_double:4": 1})
    [completed] = [e for e in first_events if e["type"] == "node.completed"]
    assert "cached" not in completed and completed["attempts"] == 1
    [completed] = [e for e in second_events if e["type"] == "node.completed"]
    assert completed["cached"] is True and completed["node"] == "double" and completed["attempts"] == 0
    assert not [e for e in second_events if e["type"] == "node.started"]  # the node did not start


def test_entries_expire_after_ttl_on_the_store_clock() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("ttl_double", calls, policy=CachePolicy(ttl=10))
    clock = Clock()

    async def scenario() -> None:
        async with Orchestrator(backend=fresh_backend(clock)) as orchestrator:
            await orchestrator.execute(graph, {"x": 1})
            clock.now += 9.99
            await orchestrator.execute(graph, {"x": 1})
            assert calls["ttl_double:1"] == 1  # still cached just before ttl
            clock.now += 0.01
            await orchestrator.execute(graph, {"x": 1})
            assert calls["ttl_double:1"] == 2  # expired at ttl: ran and was stored again
            clock.now += 5
            await orchestrator.execute(graph, {"x": 1})
            assert calls["ttl_double:1"] == 2

    run(scenario())


def test_ttl_none_never_expires() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("forever_double", calls, policy=CachePolicy(ttl=None))
    clock = Clock()

    async def scenario() -> None:
        async with Orchestrator(backend=fresh_backend(clock)) as orchestrator:
            await orchestrator.execute(graph, {"x": 1})
            clock.now += 10 ** 9
            await orchestrator.execute(graph, {"x": 1})

    run(scenario())
    assert calls["forever_double:1"] == 1


def test_key_func_decides_what_counts_as_the_same_input() -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []

    def by_question(value: dict[str, Any]) -> str:
        seen.append(value)
        return str(value["question"]).strip().lower()

    def answer(state: State) -> dict[str, Any]:
        calls[state["question"]] += 1
        return {"answer": f"answer to {state['question'].strip().lower()}"}

    graph = (Graph("faq").add_node("answer", answer, cache_policy=CachePolicy(key_func=by_question))
             .set_entry_point("answer").set_finish_point("answer").compile())

    async def scenario() -> list[State]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [await orchestrator.execute(graph, state) for state in (
                {"question": "Why?", "user": "ann"}, {"question": "  why? ", "user": "bob"}, {"question": "How?"})]

    results = run(scenario())
    assert [r["answer"] for r in results] == ["answer to why?", "answer to why?", "answer to how?"]
    assert sum(calls.values()) == 2
    assert seen[0] == {"question": "Why?", "user": "ann"} and type(seen[0]) is dict  # a plain copy of the input


def test_key_func_may_return_bytes_and_str_and_bytes_of_one_text_are_one_key() -> None:
    calls: Counter[str] = Counter()
    graph = (Graph("bytes_key")
             .add_node("n", lambda s: calls.update(["n"]) or {"out": 1},
                       cache_policy=CachePolicy(key_func=lambda v: b"k" if v.get("as_bytes") else "k"))
             .set_entry_point("n").set_finish_point("n").compile())

    async def scenario() -> None:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            await orchestrator.execute(graph, {"as_bytes": True})
            await orchestrator.execute(graph, {"as_bytes": False})

    run(scenario())
    assert calls["n"] == 1


def test_the_default_key_ignores_key_order_but_not_values() -> None:
    assert default_cache_key({"a": 1, "b": [1, {"c": 2, "d": 3}]}) == default_cache_key({"b": [1, {"d": 3, "c": 2}], "a": 1})
    assert default_cache_key({"a": 1}) != default_cache_key({"a": 2})
    assert default_cache_key({"a": "é"}) != default_cache_key({"a": "e"})


def test_graphs_and_nodes_never_share_entries() -> None:
    calls: Counter[str] = Counter()
    one, two = counting_graph("graph_one", calls), counting_graph("graph_two", calls)

    def tag(label: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            calls[label] += 1
            return {label: state["x"]}
        return node

    # Two nodes of one graph with the same input each keep their own entry.
    pair = (Graph("pair").add_node("left", tag("left"), cache_policy=CachePolicy())
            .add_node("right", tag("right"), cache_policy=CachePolicy())
            .set_entry_point("left").add_edge("left", "right").set_finish_point("right").compile())

    async def scenario() -> list[State]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [await orchestrator.execute(g, {"x": 5}) for g in (one, two, one, two, pair, pair)]

    results = run(scenario())
    assert calls == Counter({"graph_one:5": 1, "graph_two:5": 1, "left": 1, "right": 1})
    assert results[-1]["left"] == results[-1]["right"] == 5
    # Names that would collide if joined naively stay apart.
    assert cache_namespace("a/b", "c") != cache_namespace("a", "b/c")
    assert cache_namespace("a%2Fb", "c") != cache_namespace("a/b", "c")


def same_name_graph(func: Any, name: str = "State") -> Graph:
    """A graph named ``name`` with one cached node ``agent`` run by ``func`` (LangGraph's ``StateGraph(State)``)."""
    return (Graph(name).add_node("agent", func, cache_policy=CachePolicy())
            .set_entry_point("agent").set_finish_point("agent").compile())


def prefixer(prefix: str) -> Any:
    return lambda state: {"a": prefix + state["q"]}


def test_graphs_of_one_name_and_shape_with_different_node_code_never_share_entries() -> None:
    # Two lambdas of one module (one qualname), closures of one factory over different values,
    # and different functions behind one wrapper: each graph keeps its own entries.
    translator = same_name_graph(lambda s: {"a": "translated:" + s["q"]})
    summariser = same_name_graph(lambda s: {"a": "summary:" + s["q"]})
    shouter, whisperer = same_name_graph(prefixer("!")), same_name_graph(prefixer("..."))
    assert translator.fingerprint() == summariser.fingerprint()  # same structure, same name

    async def scenario() -> list[str]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [(await orchestrator.execute(g, {"q": "hi"}))["a"]
                    for g in (translator, summariser, shouter, whisperer, translator)]

    assert run(scenario()) == ["translated:hi", "summary:hi", "!hi", "...hi", "translated:hi"]


class _Client:
    def __init__(self, model: str, options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.options = options or {}

    def call(self, text: str) -> str:
        return f"{self.model}:{text}"


def _closure_over(held: Any) -> Any:
    def llm(state: State) -> dict[str, Any]:
        client = held["client"] if isinstance(held, dict) and "client" in held else held
        if isinstance(client, _Client):
            return {"a": client.call(state["q"])}
        if callable(client):
            return {"a": client(state["q"])}
        return {"a": f"{client!r}:{state['q']}"}
    return llm


def test_closures_over_different_objects_dicts_lists_and_bound_methods_never_share_entries() -> None:
    # The factory pattern make(client) -> node: what the closure holds decides the output,
    # so it must decide the cache namespace too, objects and containers included.
    variants = [_Client("gpt-a"), _Client("gpt-b"), _Client("gpt-a", {"temperature": 1}),
                {"client": _Client("gpt-c")}, {"client": _Client("gpt-d")}, ["gpt-e"], ["gpt-f"],
                _Client("gpt-g").call, _Client("gpt-h").call]
    graphs = [same_name_graph(_closure_over(held)) for held in variants]
    assert len({NodeCache.namespace(g, "agent") for g in graphs}) == len(variants)
    # The same object content built again is the same namespace (shared across processes).
    assert NodeCache.namespace(same_name_graph(_closure_over(_Client("gpt-a"))), "agent") == \
        NodeCache.namespace(graphs[0], "agent")

    async def scenario() -> list[str]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [(await orchestrator.execute(g, {"q": "hi"}))["a"] for g in graphs[:2] + graphs[7:]]

    assert run(scenario()) == ["gpt-a:hi", "gpt-b:hi", "gpt-g:hi", "gpt-h:hi"]


def test_the_same_graph_built_again_shares_entries() -> None:
    calls: Counter[str] = Counter()
    one, again = counting_graph("rebuilt", calls), counting_graph("rebuilt", calls)
    assert one is not again

    async def scenario() -> None:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            for graph in (one, again, again):
                assert (await orchestrator.execute(graph, {"x": 4}))["y"] == 8

    run(scenario())
    assert calls == Counter({"rebuilt:4": 1})


def test_a_change_of_structure_or_node_type_is_another_namespace() -> None:
    def node(state: State) -> dict[str, Any]:
        return {}

    base = NodeCache.namespace(same_name_graph(node), "agent")
    assert NodeCache.namespace(same_name_graph(node), "agent") == base
    assert NodeCache.namespace(same_name_graph(node, "Other"), "agent") != base
    typed = (Graph("State").add_node("agent", node, node_type="llm", cache_policy=CachePolicy())
             .set_entry_point("agent").set_finish_point("agent").compile())
    longer = (Graph("State").add_node("agent", node, cache_policy=CachePolicy()).add_node("b", node)
              .set_entry_point("agent").add_edge("agent", "b").set_finish_point("b").compile())
    assert len({base, NodeCache.namespace(typed, "agent"), NodeCache.namespace(longer, "agent")}) == 3


IDENTITY_SCRIPT = """
from distributed_agents import CachePolicy, Graph
from distributed_agents.core.cache import NodeCache
KINDS = frozenset({"alpha", "beta", "gamma", "delta"})
class Client:
    def __init__(self, model):
        self.model, self.tags = model, {"a", "b", "c"}
def pick(state):
    return {"a": state["q"] in KINDS and state["q"] in {"x", "y", "z"}}
def wrap(f, client=Client("m")):
    return lambda s: f(s) if client else None
g = (Graph("State").add_node("agent", wrap(pick), cache_policy=CachePolicy())
     .set_entry_point("agent").set_finish_point("agent").compile())
print(NodeCache.namespace(g, "agent"))
"""


def test_the_namespace_is_the_same_in_another_process_whatever_its_hash_seed() -> None:
    import os
    import subprocess
    import sys

    seen = set()
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", IDENTITY_SCRIPT], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        seen.add(out.stdout.strip())
    assert len(seen) == 1 and seen.pop().startswith("State/agent/")


def test_a_command_output_is_cached_with_its_routing() -> None:
    calls: Counter[str] = Counter()

    def decide(state: State) -> Command[Any]:
        calls["decide"] += 1
        return Command(update={"route": "yes"}, goto="yes" if state["x"] > 0 else "no")

    graph = (Graph("cached_command", reducers={"log": "append"})
             .add_node("decide", decide, destinations=("yes", "no"), cache_policy=CachePolicy())
             .add_node("yes", lambda s: {"log": ["yes"]}).add_node("no", lambda s: {"log": ["no"]})
             .set_entry_point("decide").set_finish_point("yes").set_finish_point("no").compile())

    async def scenario() -> list[State]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [await orchestrator.execute(graph, {"x": 1, "log": []}) for _ in range(2)]

    first, second = run(scenario())
    assert calls["decide"] == 1
    assert first["log"] == second["log"] == ["yes"] and second["route"] == "yes"


def test_sends_are_cached_per_argument() -> None:
    calls: Counter[int] = Counter()

    def square(state: State) -> dict[str, Any]:
        calls[state["n"]] += 1
        return {"squares": [state["n"] ** 2]}

    graph = (Graph("cached_map", reducers={"squares": "append"})
             .add_node("fan", lambda s: None)
             .add_node("square", square, cache_policy=CachePolicy())
             .set_entry_point("fan")
             .add_conditional_edge("fan", lambda s: [Send("square", {"n": n}) for n in s["items"]], ["square"])
             .add_edge("square", END).compile())

    async def scenario() -> list[State]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            first = await orchestrator.execute(graph, {"items": [1, 2, 3], "squares": []})
            second = await orchestrator.execute(graph, {"items": [3, 2, 4], "squares": []})
            return [first, second]

    first, second = run(scenario())
    assert first["squares"] == [1, 4, 9] and second["squares"] == [9, 4, 16]  # Send order kept, hits included
    assert calls == Counter({1: 1, 2: 1, 3: 1, 4: 1})


def test_failures_are_not_cached() -> None:
    attempts: Counter[str] = Counter()

    def flaky(state: State) -> dict[str, Any]:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise RuntimeError("first call fails")
        return {"ok": True}

    graph = (Graph("cached_flaky").add_node("flaky", flaky, cache_policy=CachePolicy())
             .set_entry_point("flaky").set_finish_point("flaky").compile())

    async def scenario() -> State:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            with pytest.raises(NodeExecutionError, match="first call fails"):
                await orchestrator.execute(graph, {"x": 1})
            await orchestrator.execute(graph, {"x": 1})  # ran again: the failure was not cached
            return await orchestrator.execute(graph, {"x": 1})  # now cached

    assert run(scenario())["ok"] is True
    assert attempts["flaky"] == 2


def test_interrupts_and_resumed_runs_are_not_cached() -> None:
    calls: Counter[str] = Counter()

    def review(state: State) -> dict[str, Any]:
        calls["review"] += 1
        return {"verdict": interrupt({"doc": state["doc"]})}

    graph = (Graph("cached_review").add_node("review", review, cache_policy=CachePolicy())
             .set_entry_point("review").set_finish_point("review").compile())

    async def scenario() -> tuple[State, State, str]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            await orchestrator.execute(graph, {"doc": "d"}, workflow_id="wf-a")
            done = await orchestrator.resume("wf-a", Command(resume="approved"))
            # The same input again: the pause was not cached, nor was the answered run.
            paused = await orchestrator.execute(graph, {"doc": "d"}, workflow_id="wf-b")
            status = (await orchestrator.get_workflow_status("wf-b")).status
            return done, paused, status

    done, paused, status = run(scenario())
    assert done["verdict"] == "approved"
    assert status == WorkflowStatus.INTERRUPTED and "verdict" not in paused
    assert calls["review"] == 3


def test_clear_cache_removes_the_entries_of_the_named_nodes_only() -> None:
    calls: Counter[str] = Counter()

    def count(label: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            calls[label] += 1
            return {label: True}
        return node

    graph = (Graph("clearable").add_node("a", count("a"), cache_policy=CachePolicy())
             .add_node("b", count("b"), cache_policy=CachePolicy())
             .set_entry_point("a").add_edge("a", "b").set_finish_point("b").compile())
    other = counting_graph("clearable_other", calls)

    async def scenario() -> None:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            await orchestrator.execute(graph, {})
            await orchestrator.execute(other, {"x": 1})
            await orchestrator.clear_cache(graph, nodes=["a"])
            await orchestrator.execute(graph, {})
            assert (calls["a"], calls["b"]) == (2, 1)
            await orchestrator.clear_cache(graph)
            await orchestrator.execute(graph, {})
            assert (calls["a"], calls["b"]) == (3, 2)
            await orchestrator.execute(other, {"x": 1})  # another graph's entries stay
            assert calls["clearable_other:1"] == 1
            with pytest.raises(ConfigurationError, match=r"graph 'clearable' has no node\(s\) 'c'; its nodes are 'a', 'b'"):
                await orchestrator.clear_cache(graph, nodes=["c"])

    run(scenario())


def test_a_second_orchestrator_on_the_backend_shares_the_cache() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("shared_double", calls)
    url = f"memory://cache-shared-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with Orchestrator(backend=url) as first, Orchestrator(backend=url) as second:
            await first.execute(graph, {"x": 2})
            assert (await second.execute(graph, {"x": 2}))["y"] == 4

    run(scenario())
    assert calls["shared_double:2"] == 1


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, True, "5"])
def test_a_bad_ttl_is_refused(ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"CachePolicy\(ttl=.*ttl must be a finite number of seconds > 0, or None"):
        CachePolicy(ttl=ttl)


def test_bad_policies_are_refused_naming_graph_and_node() -> None:
    with pytest.raises(ConfigurationError, match="key_func must be a function"):
        CachePolicy(key_func="input")  # type: ignore[arg-type]
    with pytest.raises(GraphValidationError, match=r"graph 'g': node 'n': cache_policy must be a CachePolicy"):
        Graph("g").add_node("n", lambda s: None, cache_policy={"ttl": 5})  # type: ignore[arg-type]
    assert CachePolicy(ttl=0.5).ttl == 0.5 and CachePolicy(ttl=3).ttl == 3


@pytest.mark.parametrize("key_func, message", [
    (lambda value: value["missing"], r"CachePolicy.key_func raised KeyError: 'missing'"),
    (lambda value: 42, r"CachePolicy.key_func returned int, expected str or bytes"),
])
def test_a_broken_key_func_fails_the_workflow_naming_graph_and_node(key_func: Any, message: str) -> None:
    calls: Counter[str] = Counter()
    graph = (Graph("bad_key").add_node("n", lambda s: calls.update(["n"]) or {}, cache_policy=CachePolicy(key_func=key_func))
             .set_entry_point("n").set_finish_point("n").compile())

    async def scenario() -> str:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            with pytest.raises(ExecutionError, match=rf"graph 'bad_key': node 'n': {message}"):
                await orchestrator.execute(graph, {}, workflow_id="wf-bad-key")
            return (await orchestrator.get_workflow_status("wf-bad-key")).status

    assert run(scenario()) == WorkflowStatus.FAILED
    assert calls["n"] == 0


class NoCacheStore(MemoryStateStore):
    """A third-party store written before the cache existed: it keeps the port's no-op defaults."""

    cache_get = StateStore.cache_get
    cache_set = StateStore.cache_set
    cache_clear = StateStore.cache_clear


def test_a_store_without_a_cache_runs_the_node_every_time_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("uncached_double", calls)
    memory = fresh_backend()
    assert isinstance(memory.state_store, MemoryStateStore)
    backend = Backend(url=memory.url, options=memory.options, task_queue=memory.task_queue,
                      state_store=NoCacheStore(memory.state_store._data), worker_registry=memory.worker_registry,
                      message_bus=memory.message_bus)
    assert not implements_cache(backend.state_store) and implements_cache(memory.state_store)

    async def scenario() -> None:
        async with Orchestrator(backend=backend) as orchestrator:
            for _ in range(3):
                assert (await orchestrator.execute(graph, {"x": 1}))["y"] == 2
            await orchestrator.clear_cache(graph)  # nothing to clear, no error

    with caplog.at_level(logging.WARNING, logger="distributed_agents.cache"):
        run(scenario())
    assert calls["uncached_double:1"] == 3
    warnings = [r.getMessage() for r in caplog.records if "has no node cache" in r.getMessage()]
    assert len(warnings) == 1 and "graph 'uncached_double': node 'double'" in warnings[0]


def test_cacheable_outputs() -> None:
    assert cacheable_output({"a": 1}) and cacheable_output({}) and cacheable_output(None)
    assert cacheable_output({"__command__": {"update": {"a": 1}, "goto": ["b"]}})
    assert not cacheable_output({"__interrupt__": {"value": 1, "index": 0}})
    assert not cacheable_output({"__command__": {"update": {}, "goto": [], "graph": "__parent__"}})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=8))
def test_each_distinct_input_runs_once_and_results_match_an_uncached_graph(inputs: list[int]) -> None:
    cached_calls: Counter[str] = Counter()
    plain_calls: Counter[str] = Counter()
    cached = counting_graph("prop_cached", cached_calls)
    plain = (Graph("prop_plain").add_node("double", lambda s: plain_calls.update([str(s["x"])]) or {"y": s["x"] * 2})
             .set_entry_point("double").set_finish_point("double").compile())

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            with_cache = [dict(await orchestrator.execute(cached, {"x": x})) for x in inputs]
            without = [dict(await orchestrator.execute(plain, {"x": x})) for x in inputs]
            return with_cache, without

    with_cache, without = run(scenario())
    assert with_cache == without
    assert cached_calls == Counter({f"prop_cached:{x}": 1 for x in set(inputs)})
    assert sum(plain_calls.values()) == len(inputs)


class FlakyCacheStore(MemoryStateStore):
    """A store whose cache refuses reads or writes (not an outage): the node runs, its output is used."""

    refuse_reads = False
    refuse_writes = False

    async def cache_get(self, namespace: str, key: str) -> bytes | None:
        if self.refuse_reads:
            raise BackendError("cache read refused")
        return await super().cache_get(namespace, key)

    async def cache_set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        if self.refuse_writes:
            raise BackendError("cache write refused")
        await super().cache_set(namespace, key, value, ttl)


def test_a_cache_the_store_refuses_or_cannot_decode_never_fails_the_node(caplog: pytest.LogCaptureFixture) -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("refused_double", calls)
    memory = fresh_backend()
    assert isinstance(memory.state_store, MemoryStateStore)
    store = FlakyCacheStore(memory.state_store._data)
    backend = Backend(url=memory.url, options=memory.options, task_queue=memory.task_queue, state_store=store,
                      worker_registry=memory.worker_registry, message_bus=memory.message_bus)

    async def scenario() -> list[Any]:
        async with Orchestrator(backend=backend) as orchestrator:
            store.refuse_writes = True
            results = [(await orchestrator.execute(graph, {"x": 1}))["y"]]  # runs; the write is refused
            store.refuse_writes = False
            results.append((await orchestrator.execute(graph, {"x": 1}))["y"])  # runs and is stored
            store.refuse_reads = True
            results.append((await orchestrator.execute(graph, {"x": 1}))["y"])  # a refused read is a miss
            store.refuse_reads = False
            # A foreign or corrupt entry under the node's key is a miss too, and is overwritten.
            for namespace, entries in store._data.cache.items():
                for key in entries:
                    await store.cache_set(namespace, key, b"\xff not json")
            results.append((await orchestrator.execute(graph, {"x": 1}))["y"])
            results.append((await orchestrator.execute(graph, {"x": 1}))["y"])  # cached again
            return results

    with caplog.at_level(logging.WARNING, logger="distributed_agents.cache"):
        assert run(scenario()) == [2, 2, 2, 2, 2]
    assert calls["refused_double:1"] == 4
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "could not cache its output (BackendError: cache write refused)" in messages
    assert "could not read its cache entry" in messages and "cannot be decoded" in messages


def test_a_subgraph_node_is_cached_like_any_node() -> None:
    calls: Counter[str] = Counter()

    def inner_node(state: State) -> dict[str, Any]:
        calls["inner"] += 1
        return {"text": state["text"] + "!"}

    child = (Graph("cached_child").add_node("shout", inner_node)
             .set_entry_point("shout").set_finish_point("shout").compile())
    parent = (Graph("cached_parent").add_node("sub", child, cache_policy=CachePolicy())
              .set_entry_point("sub").set_finish_point("sub").compile())

    async def scenario() -> list[State]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [await orchestrator.execute(parent, {"text": "hi"}) for _ in range(2)]

    first, second = run(scenario())
    assert first["text"] == second["text"] == "hi!"
    assert calls["inner"] == 1


def test_tasks_of_one_step_with_equal_keys_run_once() -> None:
    calls: Counter[int] = Counter()

    def square(state: State) -> dict[str, Any]:
        calls[state["n"]] += 1
        return {"squares": [state["n"] ** 2]}

    graph = (Graph("cached_repeats", reducers={"squares": "append"})
             .add_node("fan", lambda s: None)
             .add_node("square", square, cache_policy=CachePolicy())
             .set_entry_point("fan")
             .add_conditional_edge("fan", lambda s: [Send("square", {"n": n}) for n in s["items"]], ["square"])
             .add_edge("square", END).compile())

    async def scenario() -> tuple[State, list[dict[str, Any]]]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return await events_of(orchestrator, graph, {"items": [2, 2, 3, 2], "squares": []}, "wf-repeats")

    result, events = run(scenario())
    assert result["squares"] == [4, 4, 9, 4]
    assert calls == Counter({2: 1, 3: 1})
    completed = [(e["task"], bool(e.get("cached"))) for e in events if e["type"] == "node.completed" and e["node"] == "square"]
    assert sorted(completed) == [("square#0", False), ("square#1", True), ("square#2", False), ("square#3", True)]


def test_when_the_first_of_equal_tasks_fails_the_others_run_after_it() -> None:
    calls: Counter[str] = Counter()

    def flaky(state: State) -> dict[str, Any]:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first call fails")
        return {"done": [state["n"]]}

    graph = (Graph("cached_repeats_failing", reducers={"done": "append", "handled": "append"})
             .add_node("fan", lambda s: None)
             .add_node("flaky", flaky, cache_policy=CachePolicy(), on_error="handler")
             .add_node("handler", lambda s: {"handled": [s["error"]["task"]]})
             .set_entry_point("fan")
             .add_conditional_edge("fan", lambda s: [Send("flaky", {"n": 1}) for _ in range(3)], ["flaky"])
             .add_edge("flaky", END).add_edge("handler", END).compile())

    async def scenario() -> State:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return await orchestrator.execute(graph, {"done": [], "handled": []})

    result = run(scenario())
    # The first task failed (and went to the handler); the two equal ones then ran, together.
    assert result["handled"] == ["flaky#0"] and result["done"] == [1, 1]
    assert calls["flaky"] == 3


def test_streams_show_a_cached_task_like_a_run_one_and_debug_says_it_was_cached() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph("streamed_double", calls)

    async def scenario() -> list[list[Any]]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            runs = []
            for _ in range(2):
                runs.append([chunk async for chunk in orchestrator.astream(graph, {"x": 3},
                                                                           stream_mode=["updates", "debug"])])
            return runs

    first, second = run(scenario())
    assert calls["streamed_double:3"] == 1
    updates = [[chunk for mode, chunk in chunks if mode == "updates"] for chunks in (first, second)]
    assert updates[0] == updates[1] == [{"double": {"y": 6}}]
    results = [[chunk["payload"] for mode, chunk in chunks if mode == "debug" and chunk["type"] == "task_result"]
               for chunks in (first, second)]
    assert [r.get("cached") for r in results[0]] == [None] and [r.get("cached") for r in results[1]] == [True]


def test_langgraphs_node_caching_example() -> None:
    """LangGraph's "Add node caching" how-to, ported: an expensive node with ``CachePolicy(ttl=3)``.

    LangGraph prints ``[{'expensive_node': {'result': 10}}]`` for the first
    ``invoke({"x": 5}, stream_mode="updates")`` and the same update with
    ``'__metadata__': {'cached': True}`` for the second, which does not run the node.
    Here the updates are the same, the cache needs no ``compile(cache=...)`` (it is the
    backend's), and the cached flag is on the task's ``node.completed`` event (the
    ``debug`` stream), not in the update.
    """
    from typing import TypedDict

    class ExampleState(TypedDict):
        x: int
        result: int

    runs: list[int] = []

    def expensive_node(state: State) -> dict[str, int]:
        runs.append(state["x"])  # LangGraph's example sleeps 2 s here
        return {"result": state["x"] * 2}

    graph = Graph("node_caching_example", state_schema=ExampleState)
    graph.add_node("expensive_node", expensive_node, cache_policy=CachePolicy(ttl=3))
    graph.set_entry_point("expensive_node").set_finish_point("expensive_node").compile()

    async def scenario() -> list[list[Any]]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [[chunk async for chunk in orchestrator.astream(graph, {"x": 5}, stream_mode=["updates", "debug"])]
                    for _ in range(2)]

    first, second = run(scenario())
    assert [chunk for mode, chunk in first if mode == "updates"] == [{"expensive_node": {"result": 10}}]
    assert [chunk for mode, chunk in second if mode == "updates"] == [{"expensive_node": {"result": 10}}]
    assert [c["payload"].get("cached") for m, c in second if m == "debug" and c["type"] == "task_result"] == [True]
    assert runs == [5]


def test_langgraphs_node_caching_example_ports_by_renaming_imports() -> None:
    """The same how-to written against ``StateGraph``, ``compile(cache=...)`` and ``graph.invoke``.

    ``compile(cache=InMemoryCache())`` is accepted and ignored: the cache is the
    backend's (here the default ``memory://``, shared by both invokes of this process).
    """
    from typing import TypedDict

    from distributed_agents import StateGraph

    InMemoryCache = object  # the one line a port changes: the cache is the orchestrator's backend

    class NodeCachingExampleState(TypedDict):
        x: int
        result: int

    runs: list[int] = []

    def expensive_node(state: NodeCachingExampleState) -> dict[str, int]:
        runs.append(state["x"])
        return {"result": state["x"] * 2}

    builder = StateGraph(NodeCachingExampleState, name=f"node_caching_{uuid.uuid4().hex[:8]}")
    builder.add_node("expensive_node", expensive_node, cache_policy=CachePolicy(ttl=3))
    builder.set_entry_point("expensive_node")
    builder.set_finish_point("expensive_node")
    graph = builder.compile(cache=InMemoryCache())

    assert graph.invoke({"x": 5}) == {"x": 5, "result": 10}
    assert graph.invoke({"x": 5}) == {"x": 5, "result": 10}
    assert runs == [5]


def test_graph_clear_cache_and_aclear_cache_as_in_langgraph() -> None:
    calls: Counter[str] = Counter()
    graph = counting_graph(f"graph_clear_{uuid.uuid4().hex[:8]}", calls)
    url = f"memory://cache-graph-clear-{uuid.uuid4().hex[:8]}"
    key = f"{graph.name}:1"
    assert graph.invoke({"x": 1}, backend=url)["y"] == 2
    assert graph.invoke({"x": 1}, backend=url)["y"] == 2 and calls[key] == 1
    graph.clear_cache(backend=url)
    assert graph.invoke({"x": 1}, backend=url)["y"] == 2 and calls[key] == 2
    run(graph.aclear_cache(["double"], backend=url))
    assert run(graph.ainvoke({"x": 1}, backend=url))["y"] == 2 and calls[key] == 3


class Prefixer:
    """A callable object node: instances configured differently are different implementations."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, state: State) -> dict[str, Any]:
        return {"a": self.prefix + state["q"]}


def test_callable_objects_configured_differently_never_share_entries() -> None:
    one, two, same = same_name_graph(Prefixer("1:")), same_name_graph(Prefixer("2:")), same_name_graph(Prefixer("1:"))
    assert NodeCache.namespace(one, "agent") == NodeCache.namespace(same, "agent")

    async def scenario() -> list[str]:
        async with Orchestrator(backend=fresh_backend()) as orchestrator:
            return [(await orchestrator.execute(g, {"q": "q"}))["a"] for g in (one, two, same)]

    assert run(scenario()) == ["1:q", "2:q", "1:q"]
