"""Constructor and call arguments of the wrong kind are refused at once, naming the call and the parameter.

From a trial: ``Worker(capacity=2.5)`` was accepted and the worker never served (Redis refused
the float), ``Worker(capacity='2')`` raised a bare TypeError; ``Worker(state_cache_bytes=-1)`` a
ValueError; ``DistributedOrchestrator(worker_timeout="x")`` failed a workflow later with a
TypeError; ``Orchestrator(recover=True, recovery_interval=0)`` busy-looped;
``Orchestrator(backend_options=5)`` raised "'int' object is not iterable";
``Orchestrator().execute(None, {})`` an AttributeError; ``RetryPolicy(jitter="yes")`` was accepted.
Each is now a ``ConfigurationError`` whose message names the parameter and the bad value.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.errors import ConfigurationError, GraphNotCompiledError
from distributed_agents.core.instrumentation import Instrumentation
from distributed_agents.core.retry import RetryPolicy
from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

pytestmark = pytest.mark.timeout(60)

NAN = float("nan")


def _graph() -> Graph:
    return Graph("checks").add_node("a", lambda s: {"x": 1}).set_entry_point("a").set_finish_point("a").compile()


def _refused(call: str, parameter: str, value: Any) -> str:
    """The pattern a refusal's message must match: the call, the parameter and the bad value."""
    return rf"{re.escape(call)}\({parameter}=\.\.\.\).*{re.escape(repr(value))}"


@pytest.mark.parametrize("capacity", [2.5, "2", True, 0, -1, None, NAN])
def test_a_worker_capacity_that_is_no_int_of_at_least_one_is_refused(capacity: Any) -> None:
    with pytest.raises(ConfigurationError, match=_refused("Worker", "capacity", capacity) + ".*pass a whole number"):
        Worker(capacity=capacity)


@pytest.mark.parametrize(("parameter", "value"), [
    ("poll_wait", -1), ("poll_wait", 0), ("poll_wait", "1"), ("poll_wait", NAN),
    ("heartbeat_interval", "x"), ("heartbeat_interval", -1),
    ("shutdown_grace", -1), ("shutdown_grace", "30"), ("shutdown_grace", NAN),
    ("worker_id", ""), ("worker_id", "  "), ("worker_id", 5), ("worker_id", b"w1"),
    ("state_cache_bytes", -1), ("state_cache_bytes", 1.5), ("state_cache_bytes", "1000"), ("state_cache_bytes", True),
    ("backend_options", 5), ("backend_options", ["prefix"]),
    ("handle_signals", "no"), ("instrumentation", 5),
])
def test_bad_worker_arguments_are_refused_naming_the_parameter(parameter: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=_refused("Worker", parameter, value)):
        Worker(**{parameter: value})


@pytest.mark.parametrize("node_types", [[5], [""], ["a", None], 5])
def test_node_types_that_are_not_non_empty_strings_are_refused(node_types: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"Worker\(node_types=\.\.\.\).* got int|Worker\(node_types=\.\.\.\).*"
                                                 r"non-empty strs.*pass names"):
        Worker(node_types=node_types)


def test_a_distributed_worker_is_named_in_its_refusals() -> None:
    with pytest.raises(ConfigurationError, match=_refused("DistributedWorker", "capacity", 2.5)):
        DistributedWorker(backend_url="redis://localhost:1/0", capacity=2.5)


def test_worker_defaults_and_good_values_are_still_taken() -> None:
    Worker()
    worker = Worker(["a", "b"], 3, worker_id="w-1", poll_wait=0.5, shutdown_grace=0, state_cache_bytes=0,
                    backend_options={"prefix": "p"}, handle_signals=False, instrumentation=Instrumentation())
    assert (worker.node_types, worker.capacity, worker.worker_id) == (frozenset({"a", "b"}), 3, "w-1")
    assert worker.state_cache.max_bytes == 0


@pytest.mark.parametrize("timeout", ["x", -1, -0.5, NAN, float("inf"), True])
def test_a_worker_timeout_that_is_no_number_of_seconds_is_refused(timeout: Any) -> None:
    with pytest.raises(ConfigurationError, match=_refused("DistributedOrchestrator", "worker_timeout", timeout)):
        DistributedOrchestrator(backend_url="redis://localhost:1/0", worker_timeout=timeout)
    with pytest.raises(ConfigurationError, match=_refused("Orchestrator", "worker_timeout", timeout)):
        Orchestrator(wait_for_workers=True, worker_timeout=timeout)


@pytest.mark.parametrize("timeout", [None, 0, 0.1, 60])
def test_worker_timeouts_documented_still_work(timeout: Any) -> None:
    assert DistributedOrchestrator(backend_url="redis://localhost:1/0", worker_timeout=timeout).worker_timeout == timeout


@pytest.mark.parametrize("interval", [0, -1, "5", NAN])
def test_a_recovery_interval_that_is_not_positive_is_refused(interval: Any) -> None:
    with pytest.raises(ConfigurationError, match=_refused("Orchestrator", "recovery_interval", interval)):
        Orchestrator(recover=True, recovery_interval=interval)


def test_the_default_recovery_interval_is_still_half_the_lease() -> None:
    assert Orchestrator(recover=True, lease_ttl=10).recovery_interval == 5
    assert Orchestrator(recover=True, recovery_interval=0.5).recovery_interval == 0.5


@pytest.mark.parametrize(("parameter", "value"), [
    ("orchestrator_id", 5), ("orchestrator_id", ""), ("backend_options", 5), ("backend_options", {1: "x"}),
    ("local_nodes", "no"), ("local_nodes", 0), ("wait_for_workers", "yes"), ("recover", 1),
    ("instrumentation", 5), ("instrumentation", "otel"),
])
def test_bad_orchestrator_arguments_are_refused_naming_the_parameter(parameter: str, value: Any) -> None:
    pattern = rf"Orchestrator\({parameter}=\.\.\.\)" + (r".*not str" if isinstance(value, dict) else
                                                        rf".*{re.escape(repr(value))}")
    with pytest.raises(ConfigurationError, match=pattern):
        Orchestrator(**{parameter: value})


def test_orchestrator_defaults_and_good_values_are_still_taken() -> None:
    Orchestrator()
    orchestrator = Orchestrator(orchestrator_id="o-1", backend_options={"prefix": "p"}, local_nodes=False,
                                wait_for_workers=True, recover=False, instrumentation=Instrumentation())
    assert orchestrator.orchestrator_id == "o-1"


@pytest.mark.parametrize("graph", [None, "graph", {"nodes": []}, 5])
def test_a_graph_that_is_no_graph_is_refused_by_every_entry_point(graph: Any) -> None:
    orchestrator = Orchestrator()
    got = rf"takes a compiled Graph as its graph, got {type(graph).__name__}"
    with pytest.raises(ConfigurationError, match=r"Orchestrator\.execute\(\) " + got):
        run(orchestrator.execute(graph, {}))
    with pytest.raises(ConfigurationError, match=r"Orchestrator\.submit\(\) " + got):
        run(orchestrator.submit(graph, {}))
    with pytest.raises(ConfigurationError, match=r"Orchestrator\.invoke\(\) " + got):
        orchestrator.invoke(graph, {})
    with pytest.raises(ConfigurationError, match=r"Orchestrator\.register_graph\(\) " + got):
        orchestrator.register_graph(graph)
    if not isinstance(graph, str):  # a str is a workflow id to attach to
        with pytest.raises(ConfigurationError, match=r"astream\(\) takes a compiled Graph"):
            orchestrator.stream(graph, {})


def test_an_uncompiled_graph_is_still_graph_not_compiled() -> None:
    draft = Graph("draft").add_node("a", lambda s: {"x": 1}).set_entry_point("a").set_finish_point("a")
    with pytest.raises(GraphNotCompiledError, match="'draft' is not compiled"):
        run(Orchestrator().execute(draft, {}))


def test_fork_and_update_state_refuse_a_graph_that_is_no_graph() -> None:
    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(_graph(), {}, workflow_id="wf-checks")
            first = (await orchestrator.get_state_history("wf-checks"))[-1]
            with pytest.raises(ConfigurationError, match=r"takes a compiled Graph as its graph, got int"):
                await orchestrator.fork(first.checkpoint_id, graph=5)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match=r"update_state\('wf-checks'\) takes a compiled Graph as "
                                                         r"its graph, got int"):
                await orchestrator.update_state("wf-checks", {"x": 2}, graph=5)  # type: ignore[arg-type]

    run(scenario())


@pytest.mark.parametrize("nodes", [5, object(), (n for n in ["a"])])
def test_clear_cache_refuses_nodes_that_are_no_list(nodes: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"clear_cache\(nodes=\.\.\.\) takes a list of node names"):
        run(Orchestrator().clear_cache(_graph(), nodes))


def test_clear_cache_still_takes_one_name_as_a_str() -> None:
    run(Orchestrator().clear_cache(_graph(), "a"))


@pytest.mark.parametrize("jitter", ["yes", "no", 1, 0.25, None])
def test_a_retry_jitter_that_is_no_bool_is_refused(jitter: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryPolicy\.jitter must be True .* or False, got "
                                                 rf"{type(jitter).__name__} {re.escape(repr(jitter))}"):
        RetryPolicy(jitter=jitter)


def test_retry_jitter_defaults_and_round_trips() -> None:
    assert RetryPolicy().jitter is True
    policy = RetryPolicy(jitter=False)
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
