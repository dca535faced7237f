"""A worker serving a graph's own functions runs a task only with the function the task names.

Node types are shared by every graph on a key prefix (a node's type is its name unless given):
two graphs each with a node ``work`` would otherwise have a worker started from one of them run
the other's ``work`` with its own function, silently. The task names its node's function
(``file:qualname``); a worker whose function for the type was taken from a graph
(``NodeRegistry.from_graph``) dead-letters a task naming another one, saying what to do.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from support.aio import run, with_worker

from distributed_agents import Graph, NodeRegistry, Orchestrator, State, Worker
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.core.registry import function_name

RAN: list[str] = []


def billing_work(state: State) -> dict[str, Any]:
    RAN.append("billing")
    return {"who": "billing", "refund_issued": True}


def faq_work(state: State) -> dict[str, Any]:
    RAN.append("faq")
    return {"who": "faq"}


def shared_work(state: State) -> dict[str, Any]:
    RAN.append("shared")
    return {"who": "shared"}


def one_node(name: str, func: Any, node: str = "work") -> Graph:
    return Graph(name).add_node(node, func).set_entry_point(node).set_finish_point(node).compile()


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def execute_on(worker: Worker, backend: str, graph: Graph) -> Any:
    async def body() -> Any:
        async with Orchestrator(backend=backend, local_nodes=False) as orchestrator:
            return await orchestrator.execute(graph, {"q": "hi"})

    return run(with_worker(worker, body))


def test_another_graphs_node_of_the_same_type_is_dead_lettered_not_run_with_this_graphs_function() -> None:
    worker = Worker(registry=one_node("billing", billing_work), backend="memory://wrong-fn", poll_wait=0.05)
    with pytest.raises(NodeExecutionError) as info:
        execute_on(worker, "memory://wrong-fn", one_node("faq", faq_work))
    message = str(info.value)
    assert "wrong function" in message and "'billing'" in message and "'faq'" in message
    assert "'test_worker_functions.py:billing_work'" in message and "'test_worker_functions.py:faq_work'" in message
    assert "node_type='faq.work'" in message and "--prefix" in message
    assert RAN == []  # billing's function never ran for faq's task
    assert worker.stats.malformed == 1 and worker.stats.succeeded == 0


def test_the_graph_the_worker_serves_runs_and_another_graph_is_refused_even_with_a_function_of_the_same_name() -> None:
    """A function's name cannot tell everything apart (two packages' agents.py:agent, closures of
    one factory, partials, lambdas): the task's graph must be one the worker was started from."""
    worker = Worker(registry=one_node("billing", shared_work), backend="memory://same-fn", poll_wait=0.05)
    assert dict(execute_on(worker, "memory://same-fn", one_node("billing", shared_work)))["who"] == "shared"
    with pytest.raises(NodeExecutionError, match="of graph 'reports', whose function has the same name, but which "
                                                 "this worker was not started from"):
        execute_on(worker, "memory://same-fn", one_node("reports", shared_work))
    assert RAN == ["shared"]


def _factory(tag: str) -> Any:
    def agent(state: State) -> dict[str, Any]:
        RAN.append(tag)
        return {"who": tag}
    return agent


def test_closures_of_one_factory_in_two_graphs_are_told_apart_by_the_graph() -> None:
    worker = Worker(registry=one_node("team_a", _factory("a"), node="agent"), backend="memory://factory",
                    poll_wait=0.05)
    with pytest.raises(NodeExecutionError, match="wrong function"):
        execute_on(worker, "memory://factory", one_node("team_b", _factory("b"), node="agent"))
    assert RAN == []


def test_a_function_registered_by_node_type_serves_every_graph_whatever_its_inline_function() -> None:
    """The README's pattern: the orchestrator's graph may hold a local function; a worker registered
    by node type runs its own (``register``/``register_node``), as documented."""
    registry = NodeRegistry()
    registry.register_node("work", shared_work)
    worker = Worker(registry=registry, backend="memory://by-type", poll_wait=0.05)
    assert dict(execute_on(worker, "memory://by-type", one_node("faq", faq_work)))["who"] == "shared"
    # A registry that has the type by node type first stays open when a graph with that function is added.
    NodeRegistry.from_graph(one_node("billing", shared_work), registry)
    assert registry.graphs_of("work") is None


def test_graphs_of_names_the_graph_and_the_graphs_above_a_subgraphs_node() -> None:
    inner = one_node("inner", faq_work, node="deep")
    outer = Graph("outer").add_node("work", billing_work).add_node("nested", inner)
    outer.set_entry_point("work").add_edge("work", "nested").set_finish_point("nested").compile()
    registry = NodeRegistry.from_graph(outer)
    assert registry.graphs_of("work") == {"outer"}
    assert registry.graphs_of("deep") == {"inner", "outer"}
    # The same function from a second graph: bound to both.
    NodeRegistry.from_graph(one_node("again", billing_work), registry)
    assert registry.graphs_of("work") == {"outer", "again"}
    # Registered by type afterwards: open to every graph.
    registry.register_node("work", billing_work)
    assert registry.graphs_of("work") is None


def _logged(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(state: State) -> Any:
        return func(state)
    return wrapper


@_logged
def _decorated(state: State) -> dict[str, Any]:
    return {}


class Tool:
    def __call__(self, state: State) -> dict[str, Any]:
        return {}


def test_function_names_and_when_two_may_be_the_same() -> None:
    here = "test_worker_functions.py"
    assert function_name(billing_work) == f"{here}:billing_work"
    assert function_name(Tool()) == f"{here}:Tool"  # a callable object: its class
    assert function_name(functools.partial(billing_work, x=1)) == f"{here}:billing_work"  # what it wraps
    assert function_name(_decorated) == f"{here}:_decorated"  # what functools.wraps wrapped
    name = "test_function_names_and_when_two_may_be_the_same"
    assert function_name(lambda s: s) == f"{here}:{name}.<locals>.<lambda>"
    assert function_name(billing_work) == function_name(functools.partial(billing_work))
    assert function_name(billing_work) != function_name(faq_work)


def test_one_file_imported_under_two_module_names_names_its_functions_alike(tmp_path: Any) -> None:
    """A script runs its file as __main__, a worker imports it by name; a package is imported as
    ``pkg.agents`` in one process and as ``agents`` in another: the file decides, not the module."""
    import importlib.util

    (tmp_path / "agents_file.py").write_text("def work(state):\n    return {}\n")
    loaded = []
    for module_name in ("agents_file", "__main_alias__", "pkg.agents_file"):
        spec = importlib.util.spec_from_file_location(module_name, tmp_path / "agents_file.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(function_name(module.work))
    assert loaded == ["agents_file.py:work"] * 3
    # In a package, its directory's name too: faq/agents.py and support/agents.py differ.
    for package in ("faq", "support"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "agents_file.py").write_text("def work(state):\n    return {}\n")
    named = []
    for package in ("faq", "support"):
        spec = importlib.util.spec_from_file_location(f"{package}.agents_file", tmp_path / package / "agents_file.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        named.append(function_name(module.work))
    assert named == ["faq/agents_file.py:work", "support/agents_file.py:work"]
    (tmp_path / "other_file.py").write_text("def work(state):\n    return {}\n")
    spec = importlib.util.spec_from_file_location("agents_file", tmp_path / "other_file.py")
    assert spec is not None and spec.loader is not None
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    assert loaded[0] != function_name(other.work)  # another file's work, same module name
