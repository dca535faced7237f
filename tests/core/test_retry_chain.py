"""Several retry policies on one node (LangGraph's ``retry_policy=[...]``): the first whose
``retry_on`` matches the error decides, against the node's one count of attempts - in the
engine, on a worker, and as the task carries them."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import pytest
from support.aio import run, with_worker

from distributed_agents import END, START, Graph, NodeContext, Orchestrator, RetryPolicy, State, Worker
from distributed_agents.core.errors import GraphValidationError, NodeExecutionError
from distributed_agents.core.ports import Task
from distributed_agents.core.executors import NodeCall, task_payload
from distributed_agents.core.retry import RetryChain, node_retry, retry_from_wire
from distributed_agents.core import task_payload as task_payload_module
from distributed_agents.core.task_payload import RETRY_LIST_PAYLOAD_VERSION, check_payload

pytestmark = pytest.mark.timeout(60)


class RateLimited(Exception):
    """Worth several more tries."""


class Flaky(Exception):
    """Worth one more try."""


def policies() -> list[RetryPolicy]:
    return [RetryPolicy(max_attempts=4, initial_interval=0.0, jitter=False, retry_on=RateLimited),
            RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False, retry_on=(Flaky, KeyError))]


def failing(errors: list[BaseException]) -> tuple[list[int], Callable[[State, NodeContext], dict[str, Any]]]:
    """A node raising ``errors`` in turn (then succeeding), and the attempts it saw."""
    seen: list[int] = []

    def node(state: State, context: NodeContext) -> dict[str, Any]:
        seen.append(context.attempt)
        if len(seen) <= len(errors):
            raise errors[len(seen) - 1]
        return {"done": len(seen)}

    return seen, node


# -- the rule ----------------------------------------------------------------------------


def test_the_first_matching_policy_decides_with_the_shared_attempt_count() -> None:
    chain = RetryChain(tuple(policies()))
    assert chain.max_attempts == 4
    assert chain.should_retry(1, RateLimited()) and chain.should_retry(3, RateLimited())
    assert not chain.should_retry(4, RateLimited())
    assert chain.should_retry(1, Flaky()) and not chain.should_retry(2, Flaky())
    assert chain.should_retry(1, KeyError("k")) and not chain.should_retry(2, KeyError("k"))
    # An error no policy matches is not retried; the chain's largest max_attempts does not save it.
    assert not chain.should_retry(1, ValueError("bad")) and not chain.retries(ValueError("bad"))


def test_a_policy_earlier_in_the_list_wins_over_a_later_one_that_also_matches() -> None:
    everything = RetryPolicy(max_attempts=5, initial_interval=3.0, jitter=False, retry_on=Exception)
    narrow = RetryPolicy(max_attempts=2, initial_interval=0.25, jitter=False, retry_on=Flaky)
    assert RetryChain((narrow, everything)).should_retry(3, RateLimited())
    assert not RetryChain((narrow, everything)).should_retry(2, Flaky())  # narrow comes first
    assert RetryChain((everything, narrow)).should_retry(2, Flaky())  # everything comes first
    assert RetryChain((narrow, everything)).delay(1, Flaky()) == 0.25
    assert RetryChain((narrow, everything)).delay(2, RateLimited()) == 6.0  # everything's schedule


def test_node_retry_normalises_what_add_node_takes() -> None:
    one = RetryPolicy(max_attempts=2)
    assert node_retry(None, "here") is None and node_retry(one, "here") is one
    assert node_retry([one], "here") is one and node_retry((one,), "here") is one
    assert node_retry([], "here") is None  # LangGraph: no policies, no retry
    assert isinstance(node_retry(policies(), "here"), RetryChain)


@pytest.mark.parametrize("bad", [[RetryPolicy(), "fast"], "fast", 3, {"max_attempts": 2}, [None]])
def test_add_node_refuses_other_retry_values_naming_graph_and_node(bad: Any) -> None:
    graph = Graph("g")
    with pytest.raises(GraphValidationError) as caught:
        graph.add_node("n", lambda s: {}, retry_policy=bad)
    message = str(caught.value)
    assert "graph 'g'" in message and "node 'n'" in message and "list of them" in message


def test_the_error_names_the_bad_item_and_a_langgraph_policy_left_in_the_imports() -> None:
    # LangGraph's RetryPolicy is a NamedTuple of the same fields (langgraph.types).
    foreign = collections.namedtuple("RetryPolicy", "initial_interval backoff_factor max_interval max_attempts "
                                     "jitter retry_on")
    foreign.__module__ = "langgraph.types"
    theirs = foreign(0.5, 2.0, 128.0, 3, True, Exception)
    cases = [([RetryPolicy(), RetryPolicy(max_attempts=5), "oops"], "item 2 of the list is str 'oops'"),
             ([[RetryPolicy()]], "item 0 of the list is a nested list"),
             (theirs, "got langgraph.types.RetryPolicy (another library's policy); use distributed_agents.RetryPolicy"),
             ([RetryPolicy(), theirs], "item 1 of the list is langgraph.types.RetryPolicy")]
    for bad, said in cases:
        with pytest.raises(GraphValidationError) as caught:
            Graph("g").add_node("n", lambda s: {}, retry=bad)
        assert said in str(caught.value)


def test_a_task_with_several_policies_is_a_version_3_payload_an_older_worker_refuses_asking_to_upgrade(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def payload(retry: Any) -> dict[str, Any]:
        graph = Graph("versions")
        graph.add_node("remote", retry_policy=retry)
        app = graph.add_edge(START, "remote").add_edge("remote", END).compile()
        call = NodeCall("wf", app.name, 0, "remote", "remote", "wf:0:remote", b"{}", retry=app.nodes["remote"].retry)
        return task_payload(call)

    assert payload(policies())["v"] == RETRY_LIST_PAYLOAD_VERSION == 3
    assert payload(policies())["retry"] == [p.to_dict() for p in policies()]
    assert payload(policies()[:1])["v"] == payload(None)["v"] == 1  # one policy: the payload older workers read
    monkeypatch.setattr(task_payload_module, "READABLE_VERSIONS", (1, 2))  # a worker of before lists
    with pytest.raises(ValueError, match="reads version 1 or 2; upgrade the worker"):
        check_payload(payload(policies()))


def test_a_subgraph_node_refuses_several_policies() -> None:
    child = Graph("child")
    child.add_node("a", lambda s: {})
    child.add_edge(START, "a").add_edge("a", END)
    parent = Graph("parent")
    with pytest.raises(GraphValidationError, match="subgraph node takes one RetryPolicy"):
        parent.add_node("sub", child.compile(), retry_policy=policies())
    parent.add_node("sub", child.compile(), retry_policy=[RetryPolicy(max_attempts=2)])  # one is fine


def test_the_wire_form_round_trips_and_a_single_policy_keeps_its_fingerprint() -> None:
    chain = RetryChain(tuple(policies()))
    back = retry_from_wire(chain.to_dict())
    assert isinstance(back, RetryChain) and len(back.policies) == 2
    assert back.should_retry(3, RateLimited()) and not back.should_retry(2, KeyError("k"))
    assert not back.should_retry(1, ValueError("no"))

    def graph(retry: Any) -> Graph:
        g = Graph("fp")
        g.add_node("n", lambda s: {}, retry_policy=retry)
        return g.add_edge(START, "n").add_edge("n", END).compile()

    one = RetryPolicy(max_attempts=2)
    assert graph([one]).fingerprint() == graph(one).fingerprint()
    assert graph(policies()).fingerprint() != graph(policies()[0]).fingerprint()


# -- in the engine -------------------------------------------------------------------------


@pytest.mark.parametrize(("errors", "attempts", "succeeds"), [
    ([RateLimited(), RateLimited(), RateLimited()], 4, True),  # the first policy: 4 attempts
    ([RateLimited()] * 4, 4, False),
    ([Flaky()], 2, True),  # the second policy: 2 attempts
    ([Flaky(), Flaky()], 2, False),
    ([RateLimited(), Flaky()], 2, False),  # attempt 2 fails with Flaky: 2 is Flaky's limit
    ([Flaky(), RateLimited(), RateLimited()], 4, True),  # counted together, under RateLimited's 4
    ([ValueError("bad")], 1, False),  # no policy matches: not retried
])
def test_the_engine_retries_by_the_matching_policy(errors: list[BaseException], attempts: int, succeeds: bool) -> None:
    seen, node = failing(errors)
    graph = Graph("chain")
    graph.add_node("call", node, retry_policy=policies())
    graph.add_edge(START, "call").add_edge("call", END)
    app = graph.compile()
    if succeeds:
        assert run(Orchestrator().execute(app, {}))["done"] == attempts
    else:
        with pytest.raises(NodeExecutionError) as caught:
            run(Orchestrator().execute(app, {}))
        assert caught.value.attempts == attempts
    assert seen == list(range(1, attempts + 1))


# -- on a worker ---------------------------------------------------------------------------


@pytest.mark.parametrize(("errors", "attempts", "succeeds"), [
    ([RateLimited(), RateLimited(), RateLimited()], 4, True),
    ([RateLimited(), Flaky()], 2, False),
    ([Flaky(), RateLimited(), RateLimited()], 4, True),
    ([ValueError("bad")], 1, False),
])
def test_a_worker_retries_by_the_matching_policy(errors: list[BaseException], attempts: int, succeeds: bool) -> None:
    seen, node = failing(errors)
    worker = Worker(poll_wait=0.05)
    worker.register_node("remote_call", node)
    graph = Graph("chain_remote")
    graph.add_node("remote_call", retry_policy=policies())  # no function here: a worker runs it
    graph.add_edge(START, "remote_call").add_edge("remote_call", END)
    app = graph.compile()

    async def body() -> Any:
        if succeeds:
            return (await Orchestrator().execute(app, {}))["done"]
        with pytest.raises(NodeExecutionError) as caught:
            await Orchestrator().execute(app, {})
        return caught.value.attempts

    assert run(with_worker(worker, body)) == attempts
    assert seen == list(range(1, attempts + 1))
    assert worker.stats.retried == attempts - 1


@pytest.mark.parametrize(("retry", "why"), [
    ([{"max_attempts": 2}, "fast"], "list of them"),
    ([{"max_attempts": 2, "retry_on": "Flaky"}], "retry_on"),
    ([], "non-empty list"),
    ([{"max_attempts": 0}], "invalid retry policy"),
])
def test_a_task_with_a_malformed_policy_list_is_dead_lettered_with_the_reason(retry: Any, why: str) -> None:
    ran: list[int] = []
    worker = Worker(poll_wait=0.05)
    worker.register_node("echo", lambda s: ran.append(1) or {})
    queue = worker.backend.task_queue

    async def body() -> Any:
        await queue.enqueue(Task("bad-retry", "wf-x", "echo", "echo", {"state": {}, "retry": retry}))
        for _ in range(200):
            letters = await queue.dead_letters("echo")
            if letters:
                return letters
            await asyncio.sleep(0.02)
        return []

    (letter,) = run(with_worker(worker, body))
    assert ran == [] and why in letter.reason
