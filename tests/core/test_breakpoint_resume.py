"""A resume continues past the pause it answers, with or without update_state in between.

As LangGraph's resume: after a pause at a static breakpoint (``interrupt_before`` or
``interrupt_after``), the step the resume runs first never pauses before it, so a pause
after ``x`` is not followed by a second pause before the next node at the same point;
the breakpoints of later steps pause as usual. Here on the memory backend, through the
async and the blocking API; ``tests/distributed/test_breakpoint_updates.py`` runs the same
with nodes on workers over Redis and NATS.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, START, Graph, Orchestrator, Send, State

pytestmark = pytest.mark.timeout(120)
NAMES = ("n0", "n1", "n2", "n3")


def chain(ran: list[str], length: int, fan_out: bool = False) -> Graph:
    """n0 -> n1 -> ... (``length`` nodes); with ``fan_out``, n0 Sends three tasks to ``s``, which all lead to n1."""
    def node(name: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            ran.append(name)
            return {"log": [name]}
        return run_node

    graph = Graph(f"bp_resume_{uuid.uuid4().hex[:6]}", reducers={"log": "extend"})
    for name in NAMES[:length]:
        graph.add_node(name, node(name))
    graph.add_edge(START, NAMES[0])
    if fan_out:
        graph.add_node("s", lambda state: ran.append("s") or {"log": [f"s{state['i']}"]})
        graph.add_conditional_edge(NAMES[0], lambda state: [Send("s", {"i": i}) for i in range(3)])
        graph.add_edge("s", NAMES[1])
        start = 1
    else:
        start = 0
    for here, there in zip(NAMES[start:length], NAMES[start + 1:length]):
        graph.add_edge(here, there)
    return graph.add_edge(NAMES[length - 1], END)


def pauses_of(result: Any) -> list[tuple[str, str]]:
    return [(pause["node"], pause["kind"]) for pause in result.get("__interrupt__", [])]


@given(length=st.integers(2, 4), before=st.sets(st.sampled_from(NAMES)), after=st.sets(st.sampled_from(NAMES)),
       updates=st.lists(st.booleans(), min_size=8, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_each_step_boundary_pauses_at_most_once_and_every_node_runs_once(
        length: int, before: set[str], after: set[str], updates: list[bool]) -> None:
    """Boundary i (before node i, after node i-1) pauses once if any breakpoint names it, whatever
    kinds name it and whether each pause is followed by an update (as the last writer)."""
    names = NAMES[:length]
    before &= set(names)
    after &= set(names)
    ran: list[str] = []
    graph = chain(ran, length).compile(interrupt_before=sorted(before), interrupt_after=sorted(after))
    expected = [(names[i - 1], "after") if i > 0 and names[i - 1] in after else (names[i], "before")
                for i in range(length + 1)
                if (i > 0 and names[i - 1] in after) or (i < length and names[i] in before)]
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[tuple[str, str]], list[int], State]:
        async with Orchestrator() as orchestrator:
            result = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            seen: list[tuple[str, str]] = []
            runs: list[int] = []
            while "__interrupt__" in result and len(seen) <= length + 1:
                seen.extend(pauses_of(result))
                runs.append(len(ran))
                if updates[len(seen) % len(updates)]:
                    await orchestrator.update_state(workflow_id, {"edited": len(seen)})
                result = await orchestrator.resume(workflow_id, graph)
            return seen, runs, result

    seen, runs, result = run(scenario())
    assert seen == expected
    assert all(b > a for a, b in zip(runs, runs[1:]))  # a node ran between any two pauses
    assert ran == list(names) and result["log"] == list(names)


@pytest.mark.parametrize(("as_node", "runs_after"), [
    (None, ["n1", "n2", "n3"]),  # the last writer, n0, stands for the interrupted node
    ("n0", ["n1", "n2", "n3"]),  # the interrupted node itself
    ("n1", ["n2", "n3"]),  # another node: n1 is skipped, n2 runs without a pause before it
    (START, ["n0", "n1", "n2", "n3"]),  # from the start: n0 runs again and pauses after itself again
])
def test_interrupt_after_then_update_state_as_any_node_then_resume_continues(
        as_node: str | None, runs_after: list[str]) -> None:
    ran: list[str] = []
    graph = chain(ran, 4).compile(interrupt_after=["n0"], interrupt_before=["n1", "n2"])
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[Any, Any, list[list[tuple[str, str]]]]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            snapshot = await orchestrator.update_state(workflow_id, {"log": ["edit"]}, as_node=as_node)
            result = await orchestrator.resume(workflow_id, graph)
            later = []
            while "__interrupt__" in result and len(later) < 5:
                later.append(pauses_of(result))
                result = await orchestrator.resume(workflow_id, graph)
            return paused, snapshot, later

    paused, snapshot, later = run(scenario())
    assert pauses_of(paused) == [("n0", "after")]
    assert snapshot.next == tuple(runs_after[:1])
    assert ran == ["n0", *runs_after]
    if as_node == START:  # n0 ran again: its own breakpoint, then n1's is passed by the resume
        assert later == [[("n0", "after")], [("n2", "before")]]
    elif runs_after[0] == "n1":  # n1's breakpoint is at the point the pause was: passed; n2's is not
        assert later == [[("n2", "before")]]
    else:  # n2 runs first after the resume
        assert later == []


def test_a_send_fan_out_before_an_interrupt_after_breakpoint_then_update_then_resume_runs_each_send_once() -> None:
    ran: list[str] = []
    graph = chain(ran, 3, fan_out=True).compile(interrupt_after=["s"], interrupt_before=["n1"])
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[Any, Any]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            await orchestrator.update_state(workflow_id, {"log": ["edit"]}, as_node="s")
            return paused, await orchestrator.resume(workflow_id, graph)

    paused, done = run(scenario())
    assert pauses_of(paused) == [("s", "after")]
    assert "__interrupt__" not in done
    assert ran == ["n0", "s", "s", "s", "n1", "n2"]
    assert done["log"] == ["n0", "s0", "s1", "s2", "edit", "n1", "n2"]


def test_the_blocking_api_resumes_past_an_interrupt_after_pause_and_an_update() -> None:
    ran: list[str] = []
    graph = chain(ran, 3).compile(interrupt_after=["n0"], interrupt_before=["n1"])
    orchestrator = Orchestrator()
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    paused = orchestrator.invoke(graph, {}, workflow_id=workflow_id)
    orchestrator.sync.update_state(workflow_id, {"log": ["edit"]})
    done = orchestrator.sync.resume(workflow_id, graph)
    assert pauses_of(paused) == [("n0", "after")]
    assert "__interrupt__" not in done and ran == ["n0", "n1", "n2"]
    assert done["log"] == ["n0", "edit", "n1", "n2"]
