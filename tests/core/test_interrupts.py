"""``interrupt(value)`` and static breakpoints, on the in-process (memory) backend.

A node that calls ``interrupt`` pauses the workflow (status ``interrupted``, the value
in ``get_workflow_status(...).interrupts`` and in ``execute``'s ``__interrupt__``);
``resume(id, Command(resume=answer))`` re-runs the node from its start with
``interrupt`` returning the answer. Other nodes of the step keep their writes.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import (
    END,
    START,
    Command,
    Graph,
    Orchestrator,
    Send,
    State,
    WorkflowStatus,
    interrupt,
)
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    NodeExecutionError,
    WorkflowCancelledError,
)

pytestmark = pytest.mark.timeout(60)


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


# -- LangGraph's documented human-approval example -----------------------------------


def approval_graph() -> Graph:
    def generate(state: State) -> dict[str, Any]:
        return {"llm_output": f"summary of {state['topic']}"}

    def human_approval(state: State) -> Command[Literal["some_node", "another_node"]]:
        is_approved = interrupt({"question": "Is this correct?", "llm_output": state["llm_output"]})
        if is_approved:
            return Command(goto="some_node")
        return Command(goto="another_node")

    graph = Graph("approval")
    graph.add_node("generate", generate)
    graph.add_node("human_approval", human_approval)
    graph.add_node("some_node", lambda s: {"decision": "approved"})
    graph.add_node("another_node", lambda s: {"decision": "rejected"})
    graph.add_edge(START, "generate").add_edge("generate", "human_approval")
    graph.add_edge("some_node", END).add_edge("another_node", END)
    return graph.compile()


@pytest.mark.parametrize(("answer", "decision"), [(True, "approved"), (False, "rejected")])
def test_langgraph_human_approval_example_gives_the_same_result(answer: bool, decision: str) -> None:
    workflow_id = new_id()

    async def scenario() -> tuple[State, Any, State]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(approval_graph(), {"topic": "tides"}, workflow_id=workflow_id)
            status = await orchestrator.get_workflow_status(workflow_id)
            done = await orchestrator.resume(workflow_id, Command(resume=answer))
            return paused, status, done

    paused, status, done = run(scenario())
    value = {"question": "Is this correct?", "llm_output": "summary of tides"}
    assert paused["__interrupt__"] == [{"id": "1:human_approval:0", "node": "human_approval", "value": value,
                                        "kind": "interrupt"}]
    assert paused["llm_output"] == "summary of tides"
    assert status.status == WorkflowStatus.INTERRUPTED and not status.done and status.error is None
    assert [(i.id, i.node, i.value) for i in status.interrupts] == [("1:human_approval:0", "human_approval", value)]
    assert status.next_nodes == ("human_approval",)
    assert dict(done) == {"topic": "tides", "llm_output": "summary of tides", "decision": decision}


def test_langgraph_review_and_edit_example() -> None:
    def human_editing(state: State) -> dict[str, Any]:
        result = interrupt({"task": "Review the output from the LLM and make any necessary edits.",
                            "llm_generated_summary": state["llm_generated_summary"]})
        return {"llm_generated_summary": result["edited_text"]}

    graph = Graph("review_edit")
    graph.add_node("summarise", lambda s: {"llm_generated_summary": "draft"})
    graph.add_node("human_editing", human_editing).add_node("publish", lambda s: {"published": True})
    graph.set_entry_point("summarise").add_edge("summarise", "human_editing").add_edge("human_editing", "publish")
    graph.set_finish_point("publish").compile()
    workflow_id = new_id()

    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            # A dict answer whose keys are no interrupt ids is one answer.
            return await orchestrator.resume(workflow_id, resume={"edited_text": "final text"})

    assert dict(run(scenario())) == {"llm_generated_summary": "final text", "published": True}


# -- semantics ----------------------------------------------------------------------


def test_the_node_re_runs_from_its_start_and_interrupts_are_answered_in_call_order() -> None:
    side_effects: list[str] = []

    def ask(state: State) -> dict[str, Any]:
        side_effects.append("before")  # runs again on every resume: the idempotency rule
        name = interrupt("name?")
        age = interrupt(f"age of {name}?")
        return {"name": name, "age": age}

    graph = Graph("two_questions").add_node("ask", ask).set_entry_point("ask").set_finish_point("ask").compile()
    workflow_id = new_id()

    async def scenario() -> list[Any]:
        async with Orchestrator() as orchestrator:
            first = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            second = await orchestrator.resume(workflow_id, Command(resume="Ada"))
            done = await orchestrator.resume(workflow_id, Command(resume=36))
            return [first["__interrupt__"], second["__interrupt__"], dict(done)]

    first, second, done = run(scenario())
    assert [i["value"] for i in first] == ["name?"] and [i["value"] for i in second] == ["age of Ada?"]
    assert [i["id"] for i in second] == ["0:ask:1"]
    assert done == {"name": "Ada", "age": 36}
    assert side_effects == ["before"] * 3


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(), min_size=1, max_size=5))
def test_any_number_of_interrupts_answered_one_by_one_returns_the_answers_in_order(answers: list[int]) -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"got": [interrupt(i) for i in range(len(answers))]}

    graph = Graph("n_questions").add_node("ask", ask).set_entry_point("ask").set_finish_point("ask").compile()
    workflow_id = new_id()

    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            result = await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            for index, answer in enumerate(answers):
                assert result["__interrupt__"][0]["value"] == index  # the next unanswered call
                result = await orchestrator.resume(workflow_id, resume=answer)
            return result

    assert run(scenario())["got"] == answers


def parallel_graph(calls: list[str]) -> Graph:
    def ask(name: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            calls.append(name)
            return {name: interrupt(f"{name}?")}
        return node

    def quiet(state: State) -> dict[str, Any]:
        calls.append("quiet")
        return {"quiet": True}

    graph = Graph("parallel_questions")
    graph.add_node("left", ask("left")).add_node("right", ask("right")).add_node("quiet", quiet)
    for name in ("left", "right", "quiet"):
        graph.set_entry_point(name).set_finish_point(name)
    return graph.compile()


def test_parallel_interrupts_are_answered_by_id_and_other_nodes_keep_their_writes() -> None:
    calls: list[str] = []
    workflow_id = new_id()

    async def scenario() -> tuple[State, State, State]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(parallel_graph(calls), {}, workflow_id=workflow_id)
            ids = {i["node"]: i["id"] for i in paused["__interrupt__"]}
            with pytest.raises(ConfigurationError, match="2 interrupts pending"):
                await orchestrator.resume(workflow_id, Command(resume="both?"))
            # Answer one: the other pauses again, with the same id.
            partly = await orchestrator.resume(workflow_id, Command(resume={ids["left"]: "L"}))
            assert [i["id"] for i in partly["__interrupt__"]] == [ids["right"]]
            done = await orchestrator.resume(workflow_id, Command(resume={ids["right"]: "R"}))
            return paused, partly, done

    paused, partly, done = run(scenario())
    assert [i["node"] for i in paused["__interrupt__"]] == ["left", "right"]
    assert paused["quiet"] is True  # the writes the paused step kept show in its values, as LangGraph's
    assert dict(done) == {"left": "L", "right": "R", "quiet": True}
    assert calls.count("quiet") == 1  # its write was kept across both pauses
    assert calls.count("left") == 2 and calls.count("right") == 3


def test_interrupts_inside_send_tasks_are_answered_by_id() -> None:
    def review(state: State) -> dict[str, Any]:
        return {"verdicts": [f"{state['doc']}:{interrupt({'review': state['doc']})}"]}

    graph = Graph("send_reviews", reducers={"verdicts": "extend"})
    graph.add_node("review", review)
    graph.add_conditional_edge(START, lambda s: [Send("review", {"doc": d}) for d in s["docs"]], ["review"])
    graph.set_finish_point("review").compile()
    workflow_id = new_id()

    async def scenario() -> tuple[State, State]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(graph, {"docs": ["a", "b"]}, workflow_id=workflow_id)
            answers = {i["id"]: ("ok" if i["value"]["review"] == "a" else "no") for i in paused["__interrupt__"]}
            return paused, await orchestrator.resume(workflow_id, Command(resume=answers))

    paused, done = run(scenario())
    assert [i["id"] for i in paused["__interrupt__"]] == ["0:review#0:0", "0:review#1:0"]
    assert done["verdicts"] == ["a:ok", "b:no"]


def test_another_orchestrator_sees_and_resumes_the_interrupt_and_wait_returns_at_the_pause() -> None:
    workflow_id = new_id()

    async def scenario() -> tuple[State, Any, State]:
        first = Orchestrator()
        other = Orchestrator()  # same in-process backend; knows no graph until given one
        try:
            await first.execute(approval_graph(), {"topic": "reefs"}, workflow_id=workflow_id)
            waited = await other.wait(workflow_id, timeout=10)
            snapshot = await other.get_state(workflow_id)
            done = await other.resume(workflow_id, approval_graph(), Command(resume=True))
            return waited, snapshot, done
        finally:
            await first.close()
            await other.close()

    waited, snapshot, done = run(scenario())
    assert waited["__interrupt__"][0]["node"] == "human_approval"
    assert snapshot.next == ("human_approval",) and snapshot.interrupts[0].value["question"] == "Is this correct?"
    assert done["decision"] == "approved"


def test_resume_refuses_answers_that_do_not_fit() -> None:
    workflow_id = new_id()
    graph = approval_graph()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {"topic": "x"}, workflow_id=workflow_id)
            with pytest.raises(ConfigurationError, match=r"paused by interrupt\(\) in node\(s\) human_approval"):
                await orchestrator.resume(workflow_id)
            # An edit is no answer: as LangGraph, the node runs again on the edited state and asks again.
            asked_again = await orchestrator.resume(workflow_id, Command(update={"a": 1}))
            assert asked_again["a"] == 1 and [i["node"] for i in asked_again["__interrupt__"]] == ["human_approval"]
            assert (await orchestrator.get_workflow_status(workflow_id)).status == WorkflowStatus.INTERRUPTED
            await orchestrator.resume(workflow_id, Command(resume=True))
            with pytest.raises(ExecutionError, match="completed, not paused: nothing waits for an answer"):
                await orchestrator.resume(workflow_id, Command(resume=True))

    run(scenario())


def test_an_interrupted_workflow_can_be_cancelled() -> None:
    workflow_id = new_id()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(approval_graph(), {"topic": "x"}, workflow_id=workflow_id)
            assert await orchestrator.cancel_workflow(workflow_id)
            with pytest.raises(WorkflowCancelledError):
                await orchestrator.get_result(workflow_id)

    run(scenario())


def test_interrupt_outside_a_node_and_with_a_non_json_value() -> None:
    with pytest.raises(ExecutionError, match=r"interrupt\(\) was called outside a node"):
        interrupt("x")
    graph = Graph("bad_value").add_node("a", lambda s: interrupt({1, 2}))
    graph.set_entry_point("a").set_finish_point("a").compile()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {})

    with pytest.raises(NodeExecutionError, match=r"the value given to interrupt\(\)"):
        run(scenario())


# -- static breakpoints ---------------------------------------------------------------


def chain(name: str, ran: list[str], **options: Any) -> Graph:
    def node(n: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            ran.append(n)
            return {n: True}
        return run_node

    graph = Graph(name, **options)
    for n in ("a", "b", "c"):
        graph.add_node(n, node(n))
    return graph.set_entry_point("a").add_edge("a", "b").add_edge("b", "c").set_finish_point("c")


@pytest.mark.parametrize(("compiled", "per_call", "paused_before"), [
    ({"interrupt_before": ["b"]}, {}, ["a"]),
    ({"interrupt_after": ["b"]}, {}, ["a", "b"]),
    ({}, {"interrupt_before": ["c"]}, ["a", "b"]),
    ({"interrupt_before": ["b"]}, {"interrupt_after": ["a"]}, ["a"]),  # per call replaces the graph's lists
    ({}, {"interrupt_before": "*"}, []),
    ({"graph": {"interrupt_before": ["c"]}}, {}, ["a", "b"]),  # Graph(..., interrupt_before=)
])
def test_static_breakpoints_pause_and_resume_continues(compiled: dict[str, Any], per_call: dict[str, Any],
                                                       paused_before: list[str]) -> None:
    ran: list[str] = []
    compiled = dict(compiled)
    graph = chain(f"breakpoints_{uuid.uuid4().hex[:6]}", ran, **compiled.pop("graph", {})).compile(**compiled)
    workflow_id = new_id()

    async def scenario() -> tuple[Any, State]:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {}, workflow_id=workflow_id, **per_call)
            status = await orchestrator.get_workflow_status(workflow_id)
            ran.append("|")
            with pytest.raises(ConfigurationError, match="no interrupt\\(\\) waiting for an answer"):
                await orchestrator.resume(workflow_id, Command(resume="x"))
            result = await orchestrator.resume(workflow_id)
            while "__interrupt__" in result:  # "*" pauses before every step
                result = await orchestrator.resume(workflow_id)
            return status, result

    status, result = run(scenario())
    assert status.status == WorkflowStatus.INTERRUPTED
    assert status.interrupts[0].kind in ("before", "after") and status.interrupts[0].value is None
    assert ran[:ran.index("|")] == paused_before
    assert [n for n in ran if n != "|"] == ["a", "b", "c"]
    assert dict(result) == {"a": True, "b": True, "c": True}


def _paused_before(graph: Graph, ran: list[str]) -> list[str]:
    """The nodes one workflow of ``graph`` ran before it first paused (all of them if it never did)."""
    del ran[:]

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {}, workflow_id=new_id())

    run(scenario())
    return list(ran)


@pytest.mark.parametrize("builder", ["Graph", "StateGraph"])
def test_each_compile_returns_a_graph_with_exactly_its_own_breakpoints(builder: str) -> None:
    """As LangGraph's builder.compile(): a later compile never changes what an earlier one returned.

    The example (LangGraph parity trial): compile(interrupt_before=["b"]) then compile()
    silently kept the first call's breakpoint (and the other order raised GraphFrozenError).
    """
    from distributed_agents import StateGraph

    ran: list[str] = []
    if builder == "Graph":
        graph = chain(f"recompile_{uuid.uuid4().hex[:6]}", ran)
    else:
        graph = StateGraph(dict, name=f"recompile_{uuid.uuid4().hex[:6]}")
        for n in ("a", "b", "c"):
            graph.add_node(n, lambda s, n=n: ran.append(n) or {n: True})
        graph.set_entry_point("a").add_edge("a", "b").add_edge("b", "c")
    paused = graph.compile(interrupt_before=["b"])
    plain = graph.compile()
    after_c = graph.compile(interrupt_after=["a"])
    again = graph.compile(interrupt_before=["b"])
    assert plain.interrupt_before == () and plain.interrupt_after == ()
    assert paused.interrupt_before == ("b",) and again is paused
    assert after_c.interrupt_after == ("a",) and after_c.interrupt_before == ()
    assert plain.fingerprint() == paused.fingerprint() == after_c.fingerprint()  # one graph, as in LangGraph
    assert _paused_before(plain, ran) == ["a", "b", "c"]
    assert _paused_before(paused, ran) == ["a"]
    assert _paused_before(after_c, ran) == ["a"]
    assert paused.interrupt_before == ("b",)  # unchanged by the later compiles


def test_compile_without_breakpoints_keeps_the_constructors() -> None:
    ran: list[str] = []
    graph = chain(f"declared_{uuid.uuid4().hex[:6]}", ran, interrupt_before=["c"])
    first = graph.compile()
    assert graph.compile() is first and first.interrupt_before == ("c",)
    cleared = graph.compile(interrupt_before=[])
    assert cleared.interrupt_before == () and first.interrupt_before == ("c",)
    assert _paused_before(first, ran) == ["a", "b"]
    assert _paused_before(cleared, ran) == ["a", "b", "c"]
    with pytest.raises(Exception, match="breakpoint on unknown node 'zz'"):
        first.compile(interrupt_before=["zz"])  # checked on a compiled graph too


def test_breakpoints_name_nodes_of_the_graph() -> None:
    with pytest.raises(Exception, match="breakpoint on unknown node 'zz'"):
        chain("bp_unknown", []).compile(interrupt_before=["zz"])

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(chain("bp_call", []).compile(), {}, interrupt_after=["zz"])

    with pytest.raises(ConfigurationError, match="'zz' is not a node of graph 'bp_call'"):
        run(scenario())


def test_execute_with_command_resume_as_input_resumes_as_langgraph_invoke_does() -> None:
    workflow_id = new_id()

    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(approval_graph(), {"topic": "x"}, workflow_id=workflow_id)
            with pytest.raises(ConfigurationError, match="pass its workflow_id="):
                await orchestrator.execute(approval_graph(), Command(resume=True))
            return await orchestrator.execute(approval_graph(), Command(resume=False), workflow_id=workflow_id)

    assert run(scenario())["decision"] == "rejected"


@settings(max_examples=15, deadline=None)
@given(st.lists(st.text(max_size=3), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_parallel_send_interrupts_answered_in_any_batches_end_with_every_answer_in_send_order(
    docs: list[str], rng: Any
) -> None:
    def review(state: State) -> dict[str, Any]:
        return {"verdicts": [[state["i"], interrupt(state["i"])]]}

    graph = Graph("batched_reviews", reducers={"verdicts": "extend"})
    graph.add_node("review", review)
    graph.add_conditional_edge(START, lambda s: [Send("review", {"i": i}) for i in range(len(s["docs"]))],
                               ["review"])
    graph.set_finish_point("review").compile()
    workflow_id = new_id()

    async def scenario() -> State:
        async with Orchestrator() as orchestrator:
            result = await orchestrator.execute(graph, {"docs": docs}, workflow_id=workflow_id)
            while "__interrupt__" in result:
                pending = result["__interrupt__"]
                batch = rng.sample(pending, rng.randint(1, len(pending)))  # answer some, by id
                result = await orchestrator.resume(workflow_id, Command(resume={
                    i["id"]: docs[i["value"]] for i in batch}))
            return result

    assert run(scenario())["verdicts"] == [[i, doc] for i, doc in enumerate(docs)]


def test_update_state_while_interrupted_then_the_node_asks_again_about_the_edited_state() -> None:
    workflow_id = new_id()

    async def scenario() -> tuple[State, State]:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(approval_graph(), {"topic": "x"}, workflow_id=workflow_id)
            await orchestrator.update_state(workflow_id, {"llm_output": "edited by hand"}, as_node="generate")
            asked = await orchestrator.resume(workflow_id)  # the pause was replaced: no answer needed
            return asked, await orchestrator.resume(workflow_id, Command(resume=True))

    asked, done = run(scenario())
    assert asked["__interrupt__"][0]["value"]["llm_output"] == "edited by hand"
    assert done["decision"] == "approved" and done["llm_output"] == "edited by hand"


def breakpoint_chain(ran: list[str]) -> Graph:
    """a -> x -> z; x records the ``v`` it saw."""
    def node(name: str) -> Any:
        def run_node(state: State) -> dict[str, Any]:
            ran.append(name)
            return {"v": state.get("v", 0) + 1} if name == "a" else {f"{name}_saw": state["v"]}
        return run_node

    graph = Graph("bp_chain")
    for name in ("a", "x", "z"):
        graph.add_node(name, node(name))
    return graph.add_edge(START, "a").add_edge("a", "x").add_edge("x", "z").add_edge("z", END).compile()


@pytest.mark.parametrize(("as_node", "next_nodes", "runs"),
                         [(None, ("x",), ["x", "z"]), ("a", ("x",), ["x", "z"]), ("x", ("z",), ["z"])])
def test_update_state_at_a_breakpoint_then_resume_runs_the_next_step_without_pausing_again(
        as_node: str | None, next_nodes: tuple[str, ...], runs: list[str]) -> None:
    """As LangGraph: after interrupt_before=["x"], update_state (as the last writer by default) keeps x
    next and resume runs it on the edited state; as_node="x" stands in for x, so z runs next."""
    workflow_id = new_id()
    ran: list[str] = []

    async def scenario() -> tuple[Any, ...]:
        async with Orchestrator() as orchestrator:
            graph = breakpoint_chain(ran)
            paused = await orchestrator.execute(graph, {"v": 0}, workflow_id=workflow_id, interrupt_before=["x", "z"])
            updated = await orchestrator.update_state(workflow_id, {"v": 10}, as_node=as_node)
            read = await orchestrator.get_state(workflow_id)
            resumed = await orchestrator.resume(workflow_id, graph)
            return paused, updated.next, read.next, resumed

    paused, updated_next, read_next, resumed = run(scenario())
    assert [pause["node"] for pause in paused["__interrupt__"]] == ["x"]
    assert updated_next == read_next == next_nodes
    assert ran == ["a", *runs[:1]]  # the step after the update ran; the breakpoint before z paused after it
    assert [pause["node"] for pause in resumed.get("__interrupt__", [])] == (["z"] if runs[0] == "x" else [])
    if runs[0] == "x":
        assert resumed["x_saw"] == 10
    else:
        assert "x_saw" not in resumed and resumed["z_saw"] == 10


@pytest.mark.parametrize("as_node", [None, "a"])
def test_update_state_at_a_dynamic_interrupt_then_resume_runs_the_node_again_and_it_asks_again(
        as_node: str | None) -> None:
    """As LangGraph: the update (as the last writer by default) keeps x next; x runs from its start on the
    edited state, and its interrupt() pauses again (the answer given before the update is not reused)."""
    workflow_id = new_id()
    ran: list[Any] = []

    def x(state: State) -> dict[str, Any]:
        ran.append(("x", state["v"]))
        return {"answer": interrupt(f"v is {state['v']}?")}

    graph = (Graph("dyn_update").add_node("a", lambda s: {"v": 1}).add_node("x", x)
             .add_edge(START, "a").add_edge("a", "x").add_edge("x", END).compile())

    async def scenario() -> tuple[Any, ...]:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            updated = await orchestrator.update_state(workflow_id, {"v": 2}, as_node=as_node)
            asked = await orchestrator.resume(workflow_id, graph)
            return updated.next, asked, await orchestrator.resume(workflow_id, graph, "yes")

    updated_next, asked, done = run(scenario())
    assert updated_next == ("x",)
    assert [pause["value"] for pause in asked["__interrupt__"]] == ["v is 2?"]
    assert dict(done) == {"v": 2, "answer": "yes"}
    assert ran == [("x", 1), ("x", 2), ("x", 2)]


# -- ids that match no pending interrupt, positional answers, both ways of reading a pause --------


def single_question() -> Graph:
    graph = Graph("one_question")
    graph.add_node("ask", lambda s: {"answer": interrupt("ok?")})
    return graph.add_edge(START, "ask").add_edge("ask", END).compile()


@pytest.mark.parametrize("answer", [{"0:nope:0": 1}, {"3:ask:0": "yes"}, {"0:ask:0": 1, "0:ask:1": 2},
                                    {"0:ask:1": "stale"}])
def test_an_answer_keyed_by_ids_that_match_no_pending_interrupt_is_refused_naming_them(answer: dict[str, Any]) -> None:
    workflow_id = new_id()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(single_question(), {}, workflow_id=workflow_id)
            if "0:ask:0" in answer:  # one known, one unknown: the unknown one is named
                expected = r"'0:ask:1' is not a pending interrupt id; the pending ones are '0:ask:0'"
            else:
                expected = (f"{', '.join(map(repr, answer))} is not a pending interrupt id of workflow "
                            f"'{workflow_id}'; the pending ones are '0:ask:0'")
            with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
                await orchestrator.resume(workflow_id, Command(resume=answer))
            assert (await orchestrator.get_workflow_status(workflow_id)).status == WorkflowStatus.INTERRUPTED
            # A dict whose keys are not id-shaped is an answer like any other.
            done = await orchestrator.resume(workflow_id, Command(resume={"approved": True, "0": 1}))
            assert done["answer"] == {"approved": True, "0": 1}

    run(scenario())


def test_with_several_pending_an_unknown_id_is_named_with_the_pending_ones() -> None:
    workflow_id = new_id()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            await orchestrator.execute(parallel_graph([]), {}, workflow_id=workflow_id)
            with pytest.raises(ConfigurationError) as caught:
                await orchestrator.resume(workflow_id, Command(resume={"0:lfet:0": "L"}))
            assert "'0:lfet:0' is not a pending interrupt id" in str(caught.value)
            assert "'0:left:0', '0:right:0'" in str(caught.value)
            with pytest.raises(ConfigurationError, match=r"the answer's keys 'left' are not pending ids"):
                await orchestrator.resume(workflow_id, Command(resume={"left": "L"}))

    run(scenario())


@pytest.mark.parametrize("answer", ["yes", {"approved": True}, True, 0, ["a", "b"]])
def test_resume_takes_the_answer_as_its_second_positional_argument(answer: Any) -> None:
    workflow_id = new_id()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            graph = single_question()
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            with pytest.raises(ConfigurationError, match="give it once"):
                await orchestrator.resume(workflow_id, answer, resume=answer)
            done = await orchestrator.resume(workflow_id, answer)
            assert done["answer"] == answer

    run(scenario())


@pytest.mark.parametrize("answer", ["yes", {"approved": True}, 0])
def test_resume_takes_the_answer_as_its_third_positional_argument_after_the_graph(answer: Any) -> None:
    workflow_id = new_id()

    async def scenario() -> None:
        async with Orchestrator() as orchestrator:
            graph = single_question()
            await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            with pytest.raises(ConfigurationError, match="give it once"):
                await orchestrator.resume(workflow_id, graph, answer, resume=answer)
            done = await orchestrator.resume(workflow_id, graph, answer)
            assert done["answer"] == answer

    run(scenario())


def test_resume_keeps_a_graph_in_second_position_and_none_is_no_answer() -> None:
    ids = [new_id() for _ in range(4)]

    async def scenario() -> list[Any]:
        async with Orchestrator() as orchestrator:
            graph = single_question()
            for workflow_id in ids:
                await orchestrator.execute(graph, {}, workflow_id=workflow_id)
            # None (positional, or Command(resume=None)) is no answer, as in LangGraph.
            with pytest.raises(ConfigurationError, match="paused by interrupt"):
                await orchestrator.resume(ids[0], None)
            with pytest.raises(ConfigurationError, match="paused by interrupt"):
                await orchestrator.resume(ids[0], Command(resume=None))
            return [(await orchestrator.resume(ids[0], graph, Command(resume="g+c")))["answer"],
                    (await orchestrator.resume(ids[1], graph, resume="g+kw"))["answer"],
                    (await orchestrator.resume(ids[2], Command(resume="c")))["answer"],
                    (await orchestrator.resume(ids[3], resume=None))["answer"]]  # the keyword answers None itself

    assert run(scenario()) == ["g+c", "g+kw", "c", None]


def test_a_pause_reads_as_item_and_as_attribute_from_execute_and_from_the_status() -> None:
    workflow_id = new_id()

    async def scenario() -> tuple[State, Any, Any]:
        async with Orchestrator() as orchestrator:
            paused = await orchestrator.execute(single_question(), {}, workflow_id=workflow_id)
            status = await orchestrator.get_workflow_status(workflow_id)
            snapshot = await orchestrator.get_state(workflow_id)
            return paused, status.interrupts[0], snapshot.interrupts[0]

    paused, from_status, from_state = run(scenario())
    returned = paused["__interrupt__"][0]
    assert returned == {"id": "0:ask:0", "node": "ask", "value": "ok?", "kind": "interrupt"}  # still a plain dict
    for pause in (returned, from_status, from_state):
        assert (pause["id"], pause["value"], pause["node"]) == ("0:ask:0", "ok?", "ask")
        assert (pause.id, pause.value, pause.node, pause.kind) == ("0:ask:0", "ok?", "ask", "interrupt")
        assert pause.get("missing", 7) == 7
    with pytest.raises(KeyError, match="an interrupt has 'id'"):
        from_status["nope"]
    with pytest.raises(AttributeError, match="pending interrupt has no 'nope'"):
        returned.nope


def test_a_workflow_stored_when_breakpoints_were_hashed_still_matches_its_graph() -> None:
    """Fingerprints left breakpoints out from this version on; a record stored with the earlier
    digest (spec with the breakpoints) matches the same graph still, a different graph does not."""
    import hashlib
    import json

    from distributed_agents.core.orchestrator import graph_mismatch
    from distributed_agents.core.ports.state_store import WorkflowRecord

    graph = chain("legacy_fp", [], interrupt_before=["b"]).compile()
    earlier = hashlib.sha256(json.dumps(graph.spec(), sort_keys=True).encode()).hexdigest()
    record = WorkflowRecord("wf-legacy", "legacy_fp", "interrupted", {}, graph={"name": "legacy_fp", "nodes": 3,
                                                                            "sha256": earlier})
    assert graph.earlier_digests() == (earlier,) and earlier != graph.fingerprint()["sha256"]
    assert graph_mismatch(record, graph.fingerprint(), graph.earlier_digests()) is None
    other = chain("legacy_fp", []).add_node("d", lambda s: {}).add_edge("c", "d").set_finish_point("d").compile()
    assert graph_mismatch(record, other.fingerprint(), other.earlier_digests()) is not None
    assert chain("plain_fp", []).compile().earlier_digests() == ()


def test_a_node_that_catches_its_own_interrupt_is_warned_about_and_one_that_lets_it_through_is_not(
        caplog: pytest.LogCaptureFixture) -> None:
    """``except Exception`` around ``interrupt()`` catches the pause (``GraphInterrupt`` is an
    ``Exception``, as in LangGraph): the workflow runs on without pausing, now with a warning
    naming the node; a node that lets it through pauses, silently."""
    import logging

    from distributed_agents import END, START, Graph, Orchestrator, interrupt

    def careless(state: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = interrupt("approve?")
        except Exception:
            answer = "no answer"
        return {"answer": answer}

    def careful(state: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = interrupt("approve?")
        except ValueError:
            answer = "no answer"
        return {"answer": answer}

    def thread_graph(name: str, node: Any) -> Graph:
        graph = Graph(name).add_node("ask", node)
        return graph.add_edge(START, "ask").add_edge("ask", END).compile()

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        ran_on = Orchestrator().invoke(thread_graph("careless", careless), {})
        paused = Orchestrator().invoke(thread_graph("careful", careful), {})
    assert dict(ran_on) == {"answer": "no answer"}
    assert "__interrupt__" in paused
    warned = [r.getMessage() for r in caplog.records if "caught the pause" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("node 'ask' called interrupt() and caught the pause")


def test_a_caught_pause_is_named_when_the_node_raises_another_error_or_pauses_at_a_later_interrupt(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from distributed_agents import END, START, Graph, Orchestrator, interrupt

    def rewraps(state: dict[str, Any]) -> dict[str, Any]:
        try:
            interrupt("approve?")
        except Exception as exc:  # a retry or tool wrapper's pattern
            raise RuntimeError("wrapped") from exc
        return {}

    def asks_twice(state: dict[str, Any]) -> dict[str, Any]:
        try:
            interrupt("first")
        except Exception:
            pass
        return {"answer": interrupt("second")}

    def one(name: str, node: Any) -> Graph:
        return Graph(name).add_node("ask", node).add_edge(START, "ask").add_edge("ask", END).compile()

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        with pytest.raises(Exception, match="wrapped"):
            Orchestrator().invoke(one("rewraps", rewraps), {})
        paused = Orchestrator().invoke(one("asks_twice", asks_twice), {})
    assert "__interrupt__" in paused
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("node 'ask' raised RuntimeError after catching the pause") for m in messages)
    assert any(m.startswith("node 'ask' caught the pause of an earlier interrupt()") for m in messages)
