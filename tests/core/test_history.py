"""core.history: checkpoint ids, and update_state writing exactly what running the node writes."""

from __future__ import annotations

import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import END, Graph, Orchestrator, State
from distributed_agents.adapters.memory import reset_memory_spaces
from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.history import checkpoint_id, parse_checkpoint_id

WORKFLOW_IDS = st.text(st.characters(blacklist_characters=" \t\n\r.*>/\\", blacklist_categories=("Cs",)),
                       min_size=1, max_size=30)


@given(WORKFLOW_IDS, st.integers(0, 10**12))
def test_a_checkpoint_id_names_its_workflow_and_step_whatever_the_id_contains(workflow_id: str, step: int) -> None:
    assert parse_checkpoint_id(checkpoint_id(workflow_id, step)) == (workflow_id, step)


@pytest.mark.parametrize("text", ["", "wf", "wf:", ":3", "wf:-1", "wf:1.5", "wf:٣", None, 7])
def test_anything_else_is_not_a_checkpoint_id(text: Any) -> None:
    with pytest.raises(ConfigurationError, match="'<workflow_id>:<step>'"):
        parse_checkpoint_id(text)


def looping_join_graph(rounds: int) -> Graph:
    """a fans out to b and c, joined into d; d loops back to a until ``rounds`` rounds ran."""
    graph = Graph("loop_join", reducers={"log": "append", "total": "add"})
    graph.add_node("a", lambda s: {"log": "a", "total": 1})
    graph.add_node("b", lambda s: {"log": "b", "total": 10})
    graph.add_node("c", lambda s: {"log": "c"})
    graph.add_node("d", lambda s: {"rounds": s.get("rounds", 0) + 1, "log": "d"})
    graph.set_entry_point("a").add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d")
    graph.add_conditional_edge("d", lambda s: "again" if s["rounds"] < rounds else "stop", {"again": "a", "stop": END})
    return graph.compile()


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3))
def test_update_state_as_the_node_that_ran_reproduces_that_step_exactly(rounds: int) -> None:
    """Fork the checkpoint before each one-node step, write that node's updates with update_state:
    the new checkpoint's values, next nodes and join progress equal those of the real step."""
    reset_memory_spaces()

    async def scenario() -> list[tuple[Any, Any]]:
        async with Orchestrator() as orchestrator:
            graph = looping_join_graph(rounds)
            await orchestrator.execute(graph, {"log": []}, workflow_id="wf")
            history = list(reversed(await orchestrator.get_state_history("wf")))
            compared = []
            for before, after in zip(history, history[1:]):
                if len(after.metadata["writes"]) != 1:
                    continue  # b and c ran together: no single node to stand for
                ((node, updates),) = after.metadata["writes"].items()
                fork = await orchestrator.fork(before.checkpoint_id, workflow_id=f"fork-{before.step}")
                replayed = await orchestrator.update_state(fork, updates, as_node=node)
                store = orchestrator.backend.state_store
                real = (await store.list_checkpoints("wf", limit=1, before=after.step + 1))[0]
                copy = (await store.list_checkpoints(fork, limit=1))[0]
                compared.append(((replayed.values, replayed.next, dict(copy.frontier)),
                                 (after.values, after.next, dict(real.frontier))))
            return compared

    compared = run(scenario())
    assert len(compared) == 2 * rounds  # every a and d step
    for replayed, real in compared:
        assert replayed == real


def test_update_state_as_start_routes_like_input_and_keeps_join_progress() -> None:
    async def scenario() -> tuple[Any, Any]:
        async with Orchestrator() as orchestrator:
            graph = looping_join_graph(2)
            await orchestrator.execute(graph, {"log": []}, workflow_id="wf")
            fork = await orchestrator.fork("wf:0", workflow_id="again")
            snapshot = await orchestrator.update_state(fork, {"log": "input"}, as_node="__start__")
            return snapshot, await orchestrator.resume(fork, graph)

    snapshot, result = run(scenario())
    assert snapshot.next == ("a",) and snapshot.values == {"log": ["input"]}
    assert isinstance(result, State) and result["log"][0] == "input" and result["rounds"] == 2


def test_a_fork_of_a_typed_workflow_returns_what_its_output_schema_declares() -> None:
    from typing import TypedDict

    class Essay(TypedDict, total=False):
        topic: str
        draft: str
        notes: list[str]

    class Published(TypedDict, total=False):
        draft: str

    graph = Graph("typed", state_schema=Essay, output_schema=Published)
    graph.add_node("write", lambda s: {"draft": f"on {s['topic']}", "notes": ["written"]})
    graph.set_entry_point("write").set_finish_point("write").compile()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Orchestrator() as orchestrator:
            original = await orchestrator.execute(graph, {"topic": "bees"}, workflow_id="wf-typed")
            forked = await orchestrator.execute(graph, from_checkpoint="wf-typed:0", workflow_id="fork-typed")
            return dict(original), dict(forked)

    original, forked = run(scenario())
    assert original == forked == {"draft": "on bees"}


def failing_parallel_graph(name: str, ran: list[str]) -> Graph:
    def a(state: State) -> dict[str, Any]:
        ran.append("a")
        return {"log": ["a"], "a_done": True}

    def b(state: State) -> dict[str, Any]:
        raise RuntimeError("b down")

    graph = Graph(name, reducers={"log": "extend"})
    graph.add_node("s", lambda st: {"log": ["s"]}).add_node("a", a).add_node("b", b)
    graph.add_node("j", lambda st: {"log": ["j"]})
    graph.set_entry_point("s").add_edge("s", "a").add_edge("s", "b").add_edge(["a", "b"], "j")
    return graph.set_finish_point("j").compile()


@pytest.mark.parametrize("as_node", ["b", "j"])
def test_update_state_after_a_failed_step_keeps_the_finished_nodes_writes(as_node: str) -> None:
    """The kept write of a (which succeeded beside the failing b) is merged, never dropped."""
    reset_memory_spaces()
    ran: list[str] = []
    graph = failing_parallel_graph(f"keep_pending_{as_node}", ran)

    async def scenario() -> tuple[Any, Any]:
        orchestrator = Orchestrator()
        with pytest.raises(Exception):
            await orchestrator.execute(graph, {}, workflow_id="wf")
        snapshot = await orchestrator.update_state("wf", {"log": [f"{as_node} (manual)"]}, as_node=as_node)
        return snapshot, (await orchestrator.resume("wf") if as_node == "b" else None)

    snapshot, final = run(scenario())
    assert ran == ["a"]  # a never re-runs: its kept write was applied
    assert snapshot.values["a_done"] is True and snapshot.status == "pending"
    if as_node == "b":  # the update stood in for b: the join [a, b] fires
        assert snapshot.next == ("j",)
        assert final["log"] == ["s", "a", "b (manual)", "j"]
    else:  # b still has no output: it runs next (and fails again, as it is still broken)
        assert "b" in snapshot.next


def test_update_state_at_an_interrupt_keeps_the_siblings_writes() -> None:
    from distributed_agents import interrupt

    def asks(state: State) -> dict[str, Any]:
        return {"answer": interrupt("ok?")}

    graph = Graph("keep_sibling").add_node("asks", asks).add_node("plain", lambda s: {"plain": 1})
    graph.add_node("after", lambda s: {"saw_plain": s.get("plain")})
    graph.set_entry_point("asks").set_entry_point("plain").add_edge(["asks", "plain"], "after")
    graph.set_finish_point("after").compile()

    async def scenario() -> tuple[Any, Any]:
        orchestrator = Orchestrator()
        await orchestrator.execute(graph, {}, workflow_id="wf-int")
        snapshot = await orchestrator.update_state("wf-int", {"answer": "manual"}, as_node="asks")
        return snapshot, await orchestrator.resume("wf-int")

    snapshot, final = run(scenario())
    assert snapshot.values["plain"] == 1 and snapshot.next == ("after",)
    assert final == {"answer": "manual", "plain": 1, "saw_plain": 1}


@pytest.mark.parametrize("sends", [0, 1, 3])
def test_next_has_one_entry_per_task_as_in_langgraph(sends: int) -> None:
    from distributed_agents import START, Send

    graph = Graph("next_per_task", reducers={"out": "extend"})
    graph.add_node("plan", lambda s: {}).add_node("w", lambda s: {"out": [s["i"]]}).add_node("log", lambda s: {})
    graph.add_edge(START, "plan").add_edge("plan", "log")
    graph.add_conditional_edge("plan", lambda s: [Send("w", {"i": i}) for i in range(s["n"])] or "log", ["w", "log"])
    graph.add_edge("w", END).add_edge("log", END)
    graph.compile(interrupt_before=["log"])

    async def scenario() -> tuple[tuple[str, ...], Any]:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {"n": sends}, workflow_id=f"wf-next-{sends}")
            snapshot = await orchestrator.get_state(f"wf-next-{sends}")
            return snapshot.next, await orchestrator.resume(f"wf-next-{sends}")

    next_tasks, done = run(scenario())
    # One per Send, then edge-triggered nodes once each: LangGraph 1.2.24 gives ('w', 'w', 'w', 'log') here.
    assert next_tasks == (*["w"] * sends, "log")
    assert sorted(done.get("out", [])) == list(range(sends))


def test_next_of_a_paused_step_leaves_out_its_tasks_that_finished() -> None:
    """LangGraph 1.2.24, side by side: a step paused by one task's interrupt() lists as next only
    the tasks still to run, not those whose writes are kept (edge-triggered ones and Sends)."""
    from distributed_agents import END, START, InMemorySaver, Send, StateGraph, interrupt

    def work(state: Work) -> dict[str, Any]:
        if state["item"] == "q":
            interrupt("which?")
        return {"log": [state["item"]]}

    builder = StateGraph(Work)
    builder.add_node("p1", lambda s: {"log": ["p1"]}).add_node("work", work)
    builder.add_conditional_edges(START, lambda s: [Send("work", {"item": i}) for i in ("x", "q", "y")] + ["p1"],
                                  ["work", "p1"])
    builder.add_edge("p1", END).add_edge("work", END)
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    app.invoke({"log": []}, config)
    assert app.get_state(config).next == ("work",)


class Work(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    item: str


class Side(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    a: str


def test_a_paused_steps_kept_writes_show_in_its_values_and_merge_once() -> None:
    """LangGraph 1.2.24, side by side: ``invoke`` at the pause returns ``{'log': ['side'], ...}``,
    ``get_state`` has ``values == {'log': ['side']}`` and ``next == ('ask',)``, and the resumed run
    ends with ``{'log': ['side'], 'a': 'A'}``: the kept write is shown, and merged once."""
    from distributed_agents import END, START, Command, InMemorySaver, StateGraph, interrupt

    def ask(state: Side) -> dict[str, Any]:
        return {"a": interrupt("q?")}

    builder = StateGraph(Side)
    builder.add_node("ask", ask).add_node("side", lambda s: {"log": ["side"]})
    builder.add_edge(START, "ask").add_edge(START, "side").add_edge("ask", END).add_edge("side", END)
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    paused = app.invoke({"log": []}, config)
    assert paused["log"] == ["side"] and [i.value for i in paused["__interrupt__"]] == ["q?"]
    snapshot = app.get_state(config)
    assert (snapshot.values, snapshot.next) == ({"log": ["side"]}, ("ask",))
    assert app.invoke(Command(resume="A"), config) == {"log": ["side"], "a": "A"}


class Paused(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    x: int


def test_an_update_as_the_steps_predecessor_does_not_run_a_node_whose_kept_write_it_merged() -> None:
    """start -> (ok, ask) -> after; ask pauses in interrupt(), ok's write is kept. update_state with
    the default as_node (start, the last committed step's writer) routes from start again: ok, whose
    kept write the update merged, must not run a second time (its write counted twice before)."""
    from distributed_agents import END, START, InMemorySaver, StateGraph, interrupt

    def ask(state: Paused) -> dict[str, Any]:
        return {"log": [f"ask:{interrupt('q')}"]}

    builder = StateGraph(Paused)
    builder.add_node("start", lambda s: {"log": ["start"]}).add_node("ok", lambda s: {"log": ["ok"], "x": 1})
    builder.add_node("ask", ask).add_node("after", lambda s: {"log": ["after"]})
    builder.add_edge(START, "start").add_edge("start", "ok").add_edge("start", "ask")
    builder.add_edge(["ok", "ask"], "after").add_edge("after", END)
    app = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    app.invoke({"log": []}, config)
    app.update_state(config, {"log": ["edit"]})
    assert app.get_state(config).next == ("ask",)
    assert app.invoke(None, config)["log"] == ["start", "ok", "edit"]  # asks again; ok did not run again
    from distributed_agents import Command
    assert app.invoke(Command(resume="Y"), config)["log"] == ["start", "ok", "edit", "ask:Y", "after"]
