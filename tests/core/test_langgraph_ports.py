"""LangGraph's documented typed-state, messages and subgraph examples, ported, give the same results.

Each test names the LangGraph example it ports and states LangGraph's documented
output; the port differs only where this framework's state is JSON (message dicts in
the OpenAI chat format instead of message objects, the RemoveMessage marker a dict).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import (
    END,
    START,
    Command,
    Graph,
    MessagesState,
    Orchestrator,
    RemainingSteps,
    RemoveMessage,
    State,
    add_messages,
)

pytestmark = pytest.mark.timeout(30)


# -- "Define and update state": reducers and messages ---------------------------------------


class ParallelState(TypedDict):
    aggregate: Annotated[list[str], operator.add]


def test_parallel_branches_accumulate_through_operator_add() -> None:
    """LangGraph's fan-out example: a -> (b, c) -> d with ``Annotated[list, operator.add]``.

    LangGraph: ``graph.invoke({"aggregate": []})`` gives ``{'aggregate': ['A', 'B', 'C', 'D']}``.
    """

    def writer(letter: str) -> Any:
        def node(state: State) -> dict[str, Any]:
            return {"aggregate": [letter]}
        node.__name__ = letter.lower()
        return node

    graph = Graph("fan_out_port", state_schema=ParallelState)
    for letter in "ABCD":
        graph.add_node(letter.lower(), writer(letter))
    graph.add_edge(START, "a").add_edge("a", "b").add_edge("a", "c")
    graph.add_edge("b", "d").add_edge("c", "d").add_edge("d", END).compile()
    assert dict(run(Orchestrator().execute(graph, {"aggregate": []}))) == {"aggregate": ["A", "B", "C", "D"]}


class ChatState(TypedDict):
    messages: Annotated[list[dict[str, Any]], add_messages]
    extra_field: int


def test_a_node_returning_the_whole_history_plus_one_message_appends_only_the_new_one() -> None:
    """LangGraph's "Process state updates with reducers" example.

    The node returns ``messages + [AIMessage("Hello!")]``; because the input message got
    an id on the way in, add_messages replaces it by id and appends only the new one.
    LangGraph: ``[HumanMessage('Hi'), AIMessage('Hello!')]`` and ``extra_field`` 10.
    """

    def node(state: State) -> dict[str, Any]:
        new_message = {"role": "assistant", "content": "Hello!"}
        return {"messages": state["messages"] + [new_message], "extra_field": 10}

    graph = Graph("messages_port", state_schema=ChatState).add_sequence([node])
    graph.add_edge(START, "node").add_edge("node", END).compile()
    result = run(Orchestrator().execute(graph, {"messages": [{"role": "user", "content": "Hi"}]}))
    assert [(m["role"], m["content"]) for m in result["messages"]] == [("user", "Hi"), ("assistant", "Hello!")]
    assert result["extra_field"] == 10


def test_add_messages_docstring_examples() -> None:
    """add_messages' documented examples: append by new id, overwrite by the same id."""
    msgs1 = [{"role": "user", "content": "Hello", "id": "1"}]
    msgs2 = [{"role": "assistant", "content": "Hi there!", "id": "2"}]
    assert add_messages(msgs1, msgs2) == [*msgs1, *msgs2]
    again = [{"role": "user", "content": "Hello again", "id": "1"}]
    assert add_messages(msgs1, again) == again


def test_chatbot_in_a_state_graph() -> None:
    """add_messages' "Use in a StateGraph" example: a chatbot node answering "Hello" from ``invoke({})``.

    LangGraph: ``{'messages': [AIMessage(content='Hello', id=...)]}``.
    """
    graph = Graph("chatbot_port", state_schema=MessagesState)
    graph.add_node("chatbot", lambda state: {"messages": [{"role": "assistant", "content": "Hello"}]})
    graph.set_entry_point("chatbot").set_finish_point("chatbot").compile()
    (message,) = run(Orchestrator().execute(graph, {}))["messages"]
    assert message["role"] == "assistant" and message["content"] == "Hello" and message["id"]


# -- "Delete messages" ----------------------------------------------------------------------


def test_manual_deletion_keeps_the_last_two_messages() -> None:
    """LangGraph's "Delete messages" guide: ``RemoveMessage(id=m.id)`` for all but the last two.

    LangGraph: the result holds messages 3 and 4 only.
    """
    messages = [
        {"role": "assistant", "content": "Hi.", "name": "Bot", "id": "1"},
        {"role": "user", "content": "Hi.", "name": "Lance", "id": "2"},
        {"role": "assistant", "content": "So you said you were researching ocean mammals?", "name": "Bot", "id": "3"},
        {"role": "user", "content": "Yes, I know about whales. But what others should I learn about?",
         "name": "Lance", "id": "4"},
    ]
    delete_messages = [RemoveMessage(id=m["id"]) for m in messages[:-2]]
    assert add_messages(messages, delete_messages) == messages[2:]


def test_a_node_deleting_old_messages_in_a_graph() -> None:
    """The guide's in-graph form: after the model answers, a node removes all but the last two.

    A stand-in model echoes the conversation length; two turns leave only the last
    question and answer, as in LangGraph.
    """

    def call_model(state: State) -> dict[str, Any]:
        return {"messages": {"role": "assistant", "content": f"answer to {state['messages'][-1]['content']}"}}

    def delete_messages(state: State) -> dict[str, Any]:
        messages = state["messages"]
        if len(messages) > 2:
            return {"messages": [RemoveMessage(id=m["id"]) for m in messages[:-2]]}
        return {}

    graph = Graph("delete_port", state_schema=MessagesState)
    graph.add_sequence([call_model, delete_messages]).add_edge(START, "call_model").add_edge("delete_messages", END)
    graph.compile()

    async def two_turns() -> list[dict[str, Any]]:
        orchestrator = Orchestrator()
        first = await orchestrator.execute(graph, {"messages": ["hi! I'm bob"]})
        second = await orchestrator.execute(graph, {"messages": [*first["messages"], "what's my name?"]})
        return list(second["messages"])

    messages = run(two_turns())
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "what's my name?"), ("assistant", "answer to what's my name?")]


# -- "Define input and output schemas" ----------------------------------------------------------


class InputState(TypedDict):
    question: str


class OutputState(TypedDict):
    answer: str


class OverallState(InputState, OutputState):
    pass


def test_input_and_output_schemas() -> None:
    """LangGraph's input/output schema example: ``invoke({"question": "hi"})`` returns ``{'answer': 'bye'}``."""

    def answer_node(state: State) -> dict[str, Any]:
        return {"answer": "bye", "question": state["question"]}

    graph = Graph("io_port", state_schema=OverallState, input_schema=InputState, output_schema=OutputState)
    graph.add_node("answer_node", answer_node).add_edge(START, "answer_node").add_edge("answer_node", END).compile()
    assert dict(run(Orchestrator().execute(graph, {"question": "hi"}))) == {"answer": "bye"}


class PrivateOverall(TypedDict):
    foo: str
    user_input: str
    graph_output: str


class PrivateBar(TypedDict):  # LangGraph's private node schema: node_3's input declares "bar"
    bar: str


class PortInput(TypedDict):
    user_input: str


class PortOutput(TypedDict):
    graph_output: str


def test_private_keys_pass_between_nodes_but_not_out() -> None:
    """LangGraph's multiple-schemas example: node_1 -> node_2 -> node_3 and ``{"user_input": "My"}``.

    LangGraph: ``{'graph_output': 'My name is Lance'}``.
    """

    def node_1(state: State) -> dict[str, Any]:
        return {"foo": state["user_input"] + " name"}

    def node_2(state: State) -> dict[str, Any]:
        return {"bar": state["foo"] + " is"}

    def node_3(state: PrivateBar) -> dict[str, Any]:
        return {"graph_output": state["bar"] + " Lance"}

    graph = Graph("private_port", state_schema=PrivateOverall, input_schema=PortInput, output_schema=PortOutput)
    graph.add_sequence([node_1, node_2, node_3]).add_edge(START, "node_1").add_edge("node_3", END).compile()
    assert dict(run(Orchestrator().execute(graph, {"user_input": "My"}))) == {"graph_output": "My name is Lance"}


# -- "Use subgraphs" ------------------------------------------------------------------------


class SharedSubgraphState(TypedDict):
    foo: str  # shared with the parent
    bar: str


class SharedParentState(TypedDict):
    foo: str


def shared_keys_parent() -> Graph:
    def subgraph_node_1(state: State) -> dict[str, Any]:
        return {"bar": "bar"}

    def subgraph_node_2(state: State) -> dict[str, Any]:
        return {"foo": state["foo"] + state["bar"]}

    subgraph = Graph("shared_subgraph_port", state_schema=SharedSubgraphState)
    subgraph.add_sequence([subgraph_node_1, subgraph_node_2])
    subgraph.add_edge(START, "subgraph_node_1").add_edge("subgraph_node_2", END).compile()

    def node_1(state: State) -> dict[str, Any]:
        return {"foo": "hi! " + state["foo"]}

    parent = Graph("shared_parent_port", state_schema=SharedParentState)
    parent.add_node("node_1", node_1).add_node("node_2", subgraph)
    return parent.add_edge(START, "node_1").add_edge("node_1", "node_2").add_edge("node_2", END).compile()


def test_a_compiled_subgraph_as_a_node_with_shared_keys_and_its_stream() -> None:
    """LangGraph's "add a graph as a node" / "stream subgraph outputs" example, ``{"foo": "foo"}``.

    LangGraph: ``invoke`` gives ``{'foo': 'hi! foobar'}``; ``stream(..., subgraphs=True)`` yields
    ``((), {'node_1': {'foo': 'hi! foo'}})``, ``(('node_2:<task id>',), {'subgraph_node_1': {'bar': 'bar'}})``,
    ``(('node_2:<task id>',), {'subgraph_node_2': {'foo': 'hi! foobar'}})``, ``((), {'node_2': {'foo': 'hi! foobar'}})``.
    """
    graph = shared_keys_parent()

    async def go() -> tuple[State, list[Any]]:
        orchestrator = Orchestrator()
        result = await orchestrator.execute(graph, {"foo": "foo"})
        chunks = [chunk async for chunk in orchestrator.astream(graph, {"foo": "foo"}, subgraphs=True)]
        return result, chunks

    result, chunks = run(go())
    assert dict(result) == {"foo": "hi! foobar"}
    assert [(tuple(ns.partition(":")[0] for ns in namespace), update) for namespace, update in chunks] == [
        ((), {"node_1": {"foo": "hi! foo"}}),
        (("node_2",), {"subgraph_node_1": {"bar": "bar"}}),
        (("node_2",), {"subgraph_node_2": {"foo": "hi! foobar"}}),
        ((), {"node_2": {"foo": "hi! foobar"}}),
    ]


def test_subgraphs_invoked_inside_nodes_two_deep_with_different_schemas() -> None:
    """LangGraph's grandchild -> child -> parent example with different schemas, ``{"my_key": "Bob"}``.

    LangGraph calls each subgraph inside a node (``invoke`` with a mapped input, the output
    mapped back); here ``add_node(name, subgraph, input=, output=)`` does both mappings.
    LangGraph: ``{'my_key': 'hi Bob, how are you today? bye!'}``.
    """

    def grandchild_1(state: State) -> dict[str, Any]:
        return {"my_grandchild_key": state["my_grandchild_key"] + ", how are you"}

    grandchild = Graph("grandchild_port").add_node("grandchild_1", grandchild_1)
    grandchild.add_edge(START, "grandchild_1").add_edge("grandchild_1", END).compile()

    child = Graph("child_port")
    child.add_node("child_1", grandchild, input=lambda s: {"my_grandchild_key": s["my_child_key"]},
                   output=lambda s: {"my_child_key": s["my_grandchild_key"] + " today?"})
    child.add_edge(START, "child_1").add_edge("child_1", END).compile()

    parent = Graph("parent_port")
    parent.add_node("parent_1", lambda s: {"my_key": "hi " + s["my_key"]})
    parent.add_node("child", child, input=lambda s: {"my_child_key": s["my_key"]},
                    output=lambda s: {"my_key": s["my_child_key"]})
    parent.add_node("parent_2", lambda s: {"my_key": s["my_key"] + " bye!"})
    parent.add_edge(START, "parent_1").add_edge("parent_1", "child").add_edge("child", "parent_2")
    parent.add_edge("parent_2", END).compile()
    assert dict(run(Orchestrator().execute(parent, {"my_key": "Bob"}))) == {
        "my_key": "hi Bob, how are you today? bye!"}


class ParentCommandState(TypedDict):
    foo: Annotated[str, operator.add]  # a reducer on the key Command.PARENT updates, as LangGraph requires


@pytest.mark.parametrize(("value", "documented"), [("b", "bc"), ("a", "ab")])
def test_command_parent_navigates_from_a_subgraph_to_a_node_of_the_parent(value: str, documented: str) -> None:
    """LangGraph's "navigate to a node in a parent graph" example, ``{"foo": ""}``.

    Its subgraph node picks ``"a"`` or ``"b"`` at random and returns
    ``Command(update={"foo": value}, goto="node_b" if value == "a" else "node_c", graph=Command.PARENT)``;
    the choice is a parameter here. LangGraph: ``{'foo': 'bc'}`` when it picks ``"b"`` (``'ab'`` for ``"a"``).
    """
    called = []

    def node_a(state: State) -> Command[Any]:
        called.append("A")
        return Command(update={"foo": value}, goto="node_b" if value == "a" else "node_c", graph=Command.PARENT)

    subgraph = Graph("navigating_subgraph_port", state_schema=ParentCommandState)
    subgraph.add_node("node_a", node_a).add_edge(START, "node_a").add_edge("node_a", END).compile()

    def node_b(state: State) -> dict[str, Any]:
        called.append("B")
        return {"foo": "b"}

    def node_c(state: State) -> dict[str, Any]:
        called.append("C")
        return {"foo": "c"}

    parent = Graph("navigating_parent_port", state_schema=ParentCommandState)
    parent.add_node("subgraph", subgraph, destinations=["node_b", "node_c"])
    parent.add_node("node_b", node_b).add_node("node_c", node_c)
    parent.add_edge(START, "subgraph").add_edge("node_b", END).add_edge("node_c", END).compile()
    assert dict(run(Orchestrator().execute(parent, {"foo": ""}))) == {"foo": documented}
    assert called == ["A", "B" if value == "a" else "C"]


# -- Ported "by renaming imports": langgraph.graph / langgraph.types -> distributed_agents -------------
# These keep LangGraph's own spelling: StateGraph(State), add_node(func), add_conditional_edges,
# compile(checkpointer=..., interrupt_before=...), graph.invoke(input, config) with a thread_id,
# Command(resume=...) and invoke(None, config) to continue. The checkpointer is whatever the
# LangGraph code had (here a stand-in object): every workflow is checkpointed in the backend anyway.

from typing import Literal  # noqa: E402
import uuid  # noqa: E402

from distributed_agents import Send, StateGraph, interrupt  # noqa: E402

InMemorySaver = object  # the one line a port changes: the checkpointer is the orchestrator's backend


class JokeState(TypedDict):
    subjects: list[str]
    jokes: Annotated[list[str], operator.add]


def test_map_reduce_with_send() -> None:
    """LangGraph's ``Send`` docstring: one ``generate_joke`` task per subject, merged by ``operator.add``.

    LangGraph: ``graph.invoke({"subjects": ["cats", "dogs"]})`` gives
    ``{'subjects': ['cats', 'dogs'], 'jokes': ['Joke about cats', 'Joke about dogs']}``.
    """

    def continue_to_jokes(state: JokeState) -> list[Send]:
        return [Send("generate_joke", {"subject": s}) for s in state["subjects"]]

    builder = StateGraph(JokeState)
    builder.add_node("generate_joke", lambda state: {"jokes": [f"Joke about {state['subject']}"]})
    builder.add_conditional_edges(START, continue_to_jokes)
    builder.add_edge("generate_joke", END)
    graph = builder.compile()
    assert graph.invoke({"subjects": ["cats", "dogs"]}) == {
        "subjects": ["cats", "dogs"], "jokes": ["Joke about cats", "Joke about dogs"]}


class TextState(TypedDict):
    some_text: str


def test_interrupt_then_resume_with_a_command_on_the_same_thread() -> None:
    """LangGraph's ``interrupt`` example: ``human_node`` asks for a revision and uses the answer.

    LangGraph: the first run stops with ``__interrupt__`` holding
    ``value={'text_to_revise': 'Original text'}``; ``Command(resume="Edited text")`` on the
    same thread then gives ``{'some_text': 'Edited text'}``.
    """

    def human_node(state: TextState) -> dict[str, Any]:
        value = interrupt({"text_to_revise": state["some_text"]})
        return {"some_text": value}

    graph_builder = StateGraph(TextState)
    graph_builder.add_node("human_node", human_node)
    graph_builder.add_edge(START, "human_node")
    checkpointer = InMemorySaver()
    graph = graph_builder.compile(checkpointer=checkpointer)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    paused = graph.invoke({"some_text": "Original text"}, config=config)
    (pause,) = paused["__interrupt__"]
    assert pause["value"] == {"text_to_revise": "Original text"} and pause["node"] == "human_node"
    assert graph.invoke(Command(resume="Edited text"), config=config) == {"some_text": "Edited text"}


class ApprovalState(TypedDict):
    llm_output: str
    decision: str


@pytest.mark.parametrize(("answer", "path", "decision"), [("approve", "approved_path", "approved"),
                                                          ("reject", "rejected_path", "rejected")])
def test_approve_or_reject_routes_with_command_after_the_interrupt(answer: str, path: str, decision: str) -> None:
    """LangGraph's human-in-the-loop "approve or reject" example.

    LangGraph: ``invoke({}, config)`` pauses with the question and the output;
    ``invoke(Command(resume="approve"), config)`` takes the approved path and gives
    ``{'llm_output': 'This is the generated output.', 'decision': 'approved'}``.
    """
    taken: list[str] = []

    def generate_llm_output(state: ApprovalState) -> dict[str, Any]:
        return {"llm_output": "This is the generated output."}

    def human_approval(state: ApprovalState) -> Command[Literal["approved_path", "rejected_path"]]:
        decision = interrupt({"question": "Do you approve the following output?", "llm_output": state["llm_output"]})
        if decision == "approve":
            return Command(goto="approved_path", update={"decision": "approved"})
        return Command(goto="rejected_path", update={"decision": "rejected"})

    def approved_node(state: ApprovalState) -> ApprovalState:
        taken.append("approved_path")
        return state

    def rejected_node(state: ApprovalState) -> ApprovalState:
        taken.append("rejected_path")
        return state

    builder = StateGraph(ApprovalState)
    builder.add_node("generate_llm_output", generate_llm_output)
    builder.add_node("human_approval", human_approval)
    builder.add_node("approved_path", approved_node)
    builder.add_node("rejected_path", rejected_node)
    builder.set_entry_point("generate_llm_output")
    builder.add_edge("generate_llm_output", "human_approval")
    builder.add_edge("approved_path", END)
    builder.add_edge("rejected_path", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"approval-{answer}"}}
    result = graph.invoke({}, config=config)
    assert [pause["value"] for pause in result["__interrupt__"]] == [
        {"question": "Do you approve the following output?", "llm_output": "This is the generated output."}]
    assert graph.invoke(Command(resume=answer), config=config) == {
        "llm_output": "This is the generated output.", "decision": decision}
    assert taken == [path]


class FooState(TypedDict):
    foo: str


@pytest.mark.parametrize("value", ["a", "b"])
def test_command_updates_and_routes_in_one_return_value(value: str) -> None:
    """LangGraph's "combine control flow and state updates with Command" example.

    ``node_a`` picks ``"a"`` or ``"b"`` at random (fixed here); LangGraph's result is
    ``{'foo': 'bb'}`` after node_b or ``{'foo': 'cc'}`` after node_c: the update, then
    the node it routed to appending its letter.
    """

    def node_a(state: FooState) -> Command[Literal["node_b", "node_c"]]:
        goto = "node_b" if value == "a" else "node_c"
        # note how Command allows you to BOTH update the graph state AND route to the next node
        return Command(update={"foo": "b" if value == "a" else "c"}, goto=goto)

    def node_b(state: FooState) -> dict[str, Any]:
        return {"foo": state["foo"] + "b"}

    def node_c(state: FooState) -> dict[str, Any]:
        return {"foo": state["foo"] + "c"}

    builder = StateGraph(FooState)
    builder.add_edge(START, "node_a")
    builder.add_node(node_a)
    builder.add_node(node_b)
    builder.add_node(node_c)
    # no edges out of node_a: Command routes, its Literal annotation declares where to
    graph = builder.compile()
    assert graph.invoke({"foo": ""}) == {"foo": "bb" if value == "a" else "cc"}


class AggregateState(TypedDict):
    aggregate: Annotated[list[str], operator.add]


def test_a_deferred_node_waits_for_the_longer_branch() -> None:
    """LangGraph's "defer node execution" example: a -> (b -> b_2, c) -> d with ``d`` deferred.

    LangGraph: ``graph.invoke({"aggregate": []})`` gives
    ``{'aggregate': ['A', 'B', 'C', 'B_2', 'D']}`` (d runs once, after b_2).
    """

    def letter(name: str) -> Any:
        def node(state: AggregateState) -> dict[str, Any]:
            return {"aggregate": [name.upper()]}
        node.__name__ = name
        return node

    a, b, b_2, c, d = (letter(n) for n in ("a", "b", "b_2", "c", "d"))
    builder = StateGraph(AggregateState)
    builder.add_node(a)
    builder.add_node(b)
    builder.add_node(b_2)
    builder.add_node(c)
    builder.add_node(d, defer=True)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("a", "c")
    builder.add_edge("b", "b_2")
    builder.add_edge("b_2", "d")
    builder.add_edge("c", "d")
    builder.add_edge("d", END)
    graph = builder.compile()
    assert graph.invoke({"aggregate": []}) == {"aggregate": ["A", "B", "C", "B_2", "D"]}


class StepState(TypedDict):
    input: str


def test_static_breakpoint_before_a_node_then_continue_with_none() -> None:
    """LangGraph's breakpoints example: ``compile(interrupt_before=["step_3"])``, then ``invoke(None, thread)``.

    LangGraph: steps 1 and 2 run, the run stops before step_3 (``get_state(thread).next``
    is ``('step_3',)``); streaming ``None`` on the thread runs step 3 and the state stays
    ``{'input': 'hello world'}``.
    """
    ran: list[str] = []

    def step(n: int) -> Any:
        def node(state: StepState) -> None:
            ran.append(f"---Step {n}---")
        node.__name__ = f"step_{n}"
        return node

    builder = StateGraph(StepState)
    for n in (1, 2, 3):
        builder.add_node(step(n))
    builder.add_edge(START, "step_1")
    builder.add_edge("step_1", "step_2")
    builder.add_edge("step_2", "step_3")
    builder.add_edge("step_3", END)
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["step_3"])
    thread = {"configurable": {"thread_id": "breakpoints-1"}}
    first = graph.invoke({"input": "hello world"}, thread)
    assert ran == ["---Step 1---", "---Step 2---"] and first["input"] == "hello world"
    assert [pause["node"] for pause in first["__interrupt__"]] == ["step_3"]
    assert graph.invoke(None, thread) == {"input": "hello world"}
    assert ran == ["---Step 1---", "---Step 2---", "---Step 3---"]


def test_static_breakpoint_streamed_as_in_the_docs() -> None:
    """The same breakpoints example as LangGraph's docs run it: ``stream`` with ``stream_mode="values"``.

    LangGraph 1.2 prints ``{'input': 'hello world'}`` once (the input: steps 1 and 2 write
    nothing, so no values follow them; older releases, whose docs show it three times, printed
    it after every step), then ``graph.get_state(thread).next == ('step_3',)``;
    ``stream(None, thread)`` prints the state it resumes from once and runs step 3 (which
    writes nothing either).
    """
    ran: list[str] = []

    def step(n: int) -> Any:
        def node(state: StepState) -> None:
            ran.append(f"---Step {n}---")
        node.__name__ = f"step_{n}"
        return node

    builder = StateGraph(StepState)
    for n in (1, 2, 3):
        builder.add_node(step(n))
    builder.add_edge(START, "step_1")
    builder.add_edge("step_1", "step_2")
    builder.add_edge("step_2", "step_3")
    builder.add_edge("step_3", END)
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["step_3"])
    thread = {"configurable": {"thread_id": "breakpoints-2"}}
    events = list(graph.stream({"input": "hello world"}, thread, stream_mode="values"))
    assert events == [{"input": "hello world"}] and ran == ["---Step 1---", "---Step 2---"]
    assert graph.get_state(thread).next == ("step_3",)
    assert list(graph.stream(None, thread, stream_mode="values")) == [{"input": "hello world"}]
    assert ran == ["---Step 1---", "---Step 2---", "---Step 3---"] and graph.get_state(thread).next == ()


class SubgraphState(TypedDict):
    foo: str  # shared with the parent
    bar: str  # the subgraph's own


class ParentState(TypedDict):
    foo: str


def test_nested_graph_with_shared_keys_ported_by_renaming_imports() -> None:
    """LangGraph's "add a compiled subgraph as a node" example, written with StateGraph as there.

    LangGraph: streaming ``{"foo": "foo"}`` shows ``{'node_1': {'foo': 'hi! foo'}}`` then
    ``{'node_2': {'foo': 'hi! foobar'}}``: the final state is ``{'foo': 'hi! foobar'}``.
    """

    def subgraph_node_1(state: SubgraphState) -> dict[str, Any]:
        return {"bar": "bar"}

    def subgraph_node_2(state: SubgraphState) -> dict[str, Any]:
        return {"foo": state["foo"] + state["bar"]}

    subgraph_builder = StateGraph(SubgraphState)
    subgraph_builder.add_node(subgraph_node_1)
    subgraph_builder.add_node(subgraph_node_2)
    subgraph_builder.add_edge(START, "subgraph_node_1")
    subgraph_builder.add_edge("subgraph_node_1", "subgraph_node_2")
    subgraph = subgraph_builder.compile()

    def node_1(state: ParentState) -> dict[str, Any]:
        return {"foo": "hi! " + state["foo"]}

    builder = StateGraph(ParentState)
    builder.add_node("node_1", node_1)
    builder.add_node("node_2", subgraph)
    builder.add_edge(START, "node_1")
    builder.add_edge("node_1", "node_2")
    graph = builder.compile()
    assert graph.invoke({"foo": "foo"}) == {"foo": "hi! foobar"}


# -- prompt-building code: the state a node gets is a dict ---------------------------------------


def test_a_node_json_dumps_its_state_and_sees_a_dict_locally_and_by_registry() -> None:
    """LangGraph prompt code does ``json.dumps(state)`` and ``isinstance(state, dict)``; both work."""
    import json

    from distributed_agents import NodeRegistry, StateGraph

    class S(TypedDict):
        a: int
        out: str

    def describe(state: Any) -> dict[str, Any]:
        return {"out": f"{isinstance(state, dict)} {json.dumps(state)}"}

    builder = StateGraph(S)
    builder.add_node(describe)
    builder.add_edge(START, "describe")
    assert builder.compile().invoke({"a": 1}) == {"a": 1, "out": 'True {"a": 1}'}
    registry = NodeRegistry()
    registry.register("describe")(describe)
    by_name = Graph("dumps_by_name")
    by_name.add_node("describe")
    by_name.add_edge(START, "describe").add_edge("describe", END).compile()
    assert run(Orchestrator(registry=registry).execute(by_name, {"a": 2}))["out"] == 'True {"a": 2}'


# -- nodes written as node(state, config) ----------------------------------------------------------


def test_a_node_reads_its_config_as_langgraphs_runnable_config() -> None:
    """``config["configurable"]["thread_id"]`` is the workflow id; ``config["metadata"]`` has
    ``langgraph_step``/``langgraph_node``; ``recursion_limit`` in the caller's config is the step limit."""
    from distributed_agents import StateGraph

    class S(TypedDict):
        log: Annotated[list, operator.add]

    def first(state: Any, config: Any) -> dict[str, Any]:
        meta = config["metadata"]
        return {"log": [config["configurable"]["thread_id"], meta["langgraph_node"], meta["langgraph_step"],
                        config.get("recursion_limit"), config.get("missing", "default")]}

    builder = StateGraph(S)
    builder.add_node(first)
    builder.add_edge(START, "first")
    out = builder.compile().invoke({"log": []}, {"configurable": {"thread_id": "t-cfg"}, "recursion_limit": 7})
    assert out == {"log": ["t-cfg", "first", 0, 7, "default"]}



def test_the_callers_configurable_values_reach_the_nodes_of_that_run() -> None:
    """``config["configurable"]["user_id"]`` as LangGraph nodes read it; each invoke on a thread has its own."""
    from distributed_agents import StateGraph

    class S(TypedDict):
        log: Annotated[list, operator.add]

    def greet(state: Any, config: Any) -> dict[str, Any]:
        return {"log": [f"{config['configurable'].get('user_id')}@{config['configurable']['thread_id']}"]}

    builder = StateGraph(S, name="configurable_values")
    builder.add_node(greet)
    builder.add_edge(START, "greet")
    app = builder.compile()
    assert app.invoke({"log": []}, {"configurable": {"thread_id": "cfg-u", "user_id": "ann"}}) == {
        "log": ["ann@cfg-u"]}
    assert app.invoke({"log": []}, {"configurable": {"thread_id": "cfg-u"}}) == {"log": ["ann@cfg-u", "None@cfg-u"]}


def test_recursion_limit_in_the_config_stops_a_loop_as_the_step_limit() -> None:
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import StepLimitExceededError

    class S(TypedDict):
        n: int

    builder = StateGraph(S)
    builder.add_node("loop", lambda s: {"n": s["n"] + 1})
    builder.add_edge(START, "loop").add_conditional_edges("loop", lambda s: "loop" if s["n"] < 100 else END,
                                                           ["loop", END])
    with pytest.raises(StepLimitExceededError):
        builder.compile().invoke({"n": 0}, {"recursion_limit": 3})


def test_the_step_limit_error_is_caught_as_langgraphs_graph_recursion_error_and_as_recursion_error() -> None:
    """LangGraph code catches its recursion limit as ``GraphRecursionError`` (a ``RecursionError``):
    both clauses, ported with the import changed, catch the step limit's error."""
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import GraphRecursionError, StepLimitExceededError

    class S(TypedDict):
        n: int

    builder = StateGraph(S)
    builder.add_node("loop", lambda s: {"n": s["n"] + 1})
    builder.add_edge(START, "loop").add_conditional_edges("loop", lambda s: "loop", ["loop", END])
    app = builder.compile()
    with pytest.raises(GraphRecursionError) as caught:
        app.invoke({"n": 0}, {"recursion_limit": 4})
    assert isinstance(caught.value, StepLimitExceededError) and caught.value.limit == 3  # recursion_limit 4: 3 steps
    try:
        app.invoke({"n": 0}, {"recursion_limit": 2})
    except RecursionError as exc:  # what `except RecursionError` in ported code sees
        assert "loop" in str(exc)
    else:
        raise AssertionError("the step limit was not reached")


@pytest.mark.parametrize(("config", "match"), [
    ({"recursion_limit": 0}, "recursion_limit"),
    ({"recursion_limit": "5"}, "recursion_limit"),
    ({"configurable": {"thread_id": "x", "user_id": ("not", "json")}}, "configurable"),
    ({"configurable": {"thread_id": "x"}, "retries": 2}, "'retries' are not understood"),
])
def test_a_config_it_cannot_honour_is_refused_saying_why(config: dict[str, Any], match: str) -> None:
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import ConfigurationError

    class S(TypedDict):
        n: int

    builder = StateGraph(S)
    builder.add_node("one", lambda s: {"n": 1})
    builder.add_edge(START, "one")
    with pytest.raises(ConfigurationError, match=match):
        builder.compile().invoke({"n": 0}, config)


def test_a_node_in_a_subgraph_sees_the_parents_thread_id() -> None:
    from distributed_agents import StateGraph

    class S(TypedDict):
        log: Annotated[list, operator.add]

    def inner(state: Any, config: Any) -> dict[str, Any]:
        return {"log": [config["configurable"]["thread_id"], bool(config["configurable"]["checkpoint_ns"])]}

    sub = StateGraph(S, name="cfg_sub")
    sub.add_node(inner)
    sub.add_edge(START, "inner")
    parent = StateGraph(S, name="cfg_parent")
    parent.add_node("sub", sub.compile())
    parent.add_edge(START, "sub")
    assert parent.compile().invoke({"log": []}, {"configurable": {"thread_id": "t-sub"}}) == {
        "log": ["t-sub", True]}

    def inner_user(state: Any, config: Any) -> dict[str, Any]:
        return {"log": [config["configurable"]["user_id"]]}

    sub2 = StateGraph(S, name="cfg_sub2")
    sub2.add_node("inner", inner_user)
    sub2.add_edge(START, "inner")
    parent2 = StateGraph(S, name="cfg_parent2")
    parent2.add_node("sub", sub2.compile())
    parent2.add_edge(START, "sub")
    assert parent2.compile().invoke({"log": []}, {"configurable": {"thread_id": "t-sub2", "user_id": "deep"}}) == {
        "log": ["deep"]}


def test_messages_as_role_content_tuples_in_the_input_a_node_output_and_a_command() -> None:
    """LangGraph's ``{"messages": [("user", "bob")]}`` shorthand, in and out of nodes."""
    from distributed_agents import StateGraph

    def bot(state: Any) -> Any:
        return {"messages": [("ai", "hi " + state["messages"][-1]["content"])]}

    def handoff(state: Any) -> Any:
        return Command(goto=END, update={"messages": ("assistant", "bye")})

    builder = StateGraph(MessagesState)
    builder.add_node(bot)
    builder.add_node(handoff, destinations=(END,))
    builder.add_edge(START, "bot").add_edge("bot", "handoff")
    out = builder.compile().invoke({"messages": [("user", "bob")]})
    assert [(m["role"], m["content"]) for m in out["messages"]] == [
        ("user", "bob"), ("assistant", "hi bob"), ("assistant", "bye")]
    assert all(isinstance(m["id"], str) and m["id"] for m in out["messages"])


def test_a_tuple_under_a_key_without_add_messages_is_still_refused() -> None:
    """Only add_messages keys take the shorthand: elsewhere a tuple is refused as not JSON."""
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import StateNotSerializableError

    class S(TypedDict):
        pairs: list

    builder = StateGraph(S)
    builder.add_node("n", lambda s: {"pairs": [("user", "x")]})
    builder.add_edge(START, "n")
    with pytest.raises(StateNotSerializableError):
        builder.compile().invoke({"pairs": [("user", "y")]})


# -- names a port expects: checkpointers, get_graph, batch, astream ---------------------------------


def test_memory_saver_get_graph_batch_and_astream_port_unchanged() -> None:
    """``compile(checkpointer=MemorySaver())``, ``app.get_graph().draw_mermaid()``, ``app.batch`` and
    ``app.astream`` as LangGraph's quickstarts write them."""
    import asyncio

    from distributed_agents import InMemorySaver, MemorySaver, StateGraph
    from distributed_agents.core.errors import ConfigurationError

    class S(TypedDict):
        log: Annotated[list, operator.add]

    builder = StateGraph(S)
    builder.add_node("n", lambda s: {"log": ["n"]})
    builder.add_edge(START, "n")
    app = builder.compile(checkpointer=MemorySaver())
    assert MemorySaver is InMemorySaver
    drawn = app.get_graph().draw_mermaid()
    assert "n" in drawn and app.get_graph(xray=True).draw_ascii() == app.draw_ascii()
    assert app.batch([{"log": ["a"]}, {"log": ["b"]}]) == [{"log": ["a", "n"]}, {"log": ["b", "n"]}]
    with pytest.raises(ConfigurationError, match="2 input"):
        app.batch([{"log": []}, {"log": []}], [{"recursion_limit": 5}])

    async def scenario() -> tuple[list[Any], list[Any]]:
        chunks = [chunk async for chunk in app.astream({"log": []}, stream_mode="values")]
        together = await app.abatch([{"log": ["x"]}, {"log": ["y"]}])
        return chunks, together

    chunks, together = asyncio.run(scenario())
    assert chunks == [{"log": []}, {"log": ["n"]}]
    assert together == [{"log": ["x", "n"]}, {"log": ["y", "n"]}]


# -- multi-turn: a thread takes a new input once a run completed -------------------------------------


def test_a_second_invoke_on_a_completed_thread_continues_it_as_a_new_run() -> None:
    """LangGraph's chatbot-with-memory: each ``invoke`` on the thread appends to the saved history."""
    from distributed_agents import StateGraph

    def bot(state: Any) -> dict[str, Any]:
        return {"messages": [("ai", f"{len(state['messages'])}: {state['messages'][-1]['content']}")]}

    builder = StateGraph(MessagesState)
    builder.add_node(bot)
    builder.add_edge(START, "bot")
    app = builder.compile()
    config = {"configurable": {"thread_id": "multi-turn-1"}}
    app.invoke({"messages": [("user", "hi")]}, config)
    out = app.invoke({"messages": [("user", "again")]}, config)
    assert [m["content"] for m in out["messages"]] == ["hi", "1: hi", "again", "3: again"]
    streamed = list(app.stream({"messages": "third"}, config, stream_mode="updates"))
    assert [list(chunk) for chunk in streamed] == [["bot"]]

    async def inspect_thread() -> tuple[Any, list[Any]]:
        orchestrator = Orchestrator()
        record = await orchestrator.backend.state_store.get("multi-turn-1")
        history = await orchestrator.get_state_history("multi-turn-1")
        return record, history

    record, history = run(inspect_thread())
    assert record.status == "completed" and record.metadata["run"] == 2 and record.step == 5
    assert [snap.step for snap in history] == [5, 4, 3, 2, 1, 0]
    assert [snap.metadata.get("source") for snap in history if snap.next] == ["input", "input", "input"]
    assert len(history[0].values["messages"]) == 6


def test_a_continued_run_gets_its_own_step_limit_and_keeps_unwritten_keys() -> None:
    """recursion_limit counts per run; keys the new input does not give keep their saved values
    (a dataclass default is not written over them)."""
    from dataclasses import dataclass, field

    from distributed_agents import StateGraph

    @dataclass
    class S:
        turns: Annotated[list, operator.add] = field(default_factory=list)
        name: str = "nobody"

    builder = StateGraph(S, name="continued_limit")
    builder.add_node("a", lambda s: {"turns": ["a"]}).add_node("b", lambda s: {"turns": ["b"]})
    builder.add_edge(START, "a").add_edge("a", "b")
    app = builder.compile()
    config = {"configurable": {"thread_id": "multi-turn-2"}, "recursion_limit": 3}  # 2 steps each run
    assert app.invoke({"name": "ann"}, config) == {"turns": ["a", "b"], "name": "ann"}
    assert app.invoke({"turns": ["user"]}, config) == {"turns": ["a", "b", "user", "a", "b"], "name": "ann"}


def test_a_paused_thread_given_a_new_input_says_to_resume_and_execute_keeps_refusing_a_taken_id() -> None:
    from distributed_agents import StateGraph, interrupt
    from distributed_agents.core.errors import WorkflowExistsError

    class S(TypedDict):
        answer: str

    builder = StateGraph(S, name="paused_thread")
    builder.add_node("ask", lambda s: {"answer": interrupt("ok?")})
    builder.add_edge(START, "ask")
    app = builder.compile()
    config = {"configurable": {"thread_id": "multi-turn-3"}}
    assert "__interrupt__" in app.invoke({"answer": ""}, config)
    with pytest.raises(WorkflowExistsError, match=r"is interrupted at step 0.*resume\('multi-turn-3', Command"):
        app.invoke({"answer": "x"}, config)
    assert app.invoke(Command(resume="yes"), config) == {"answer": "yes"}
    with pytest.raises(WorkflowExistsError, match="'multi-turn-3' already exists"):
        run(Orchestrator().execute(app, {"answer": "z"}, workflow_id="multi-turn-3"))
    assert "__interrupt__" in app.invoke({"answer": "next"}, config)  # completed: a new run, paused again


# -- "Time travel" / persistence: the compiled graph's state methods and snapshot configs ------


def _counting_thread() -> tuple[Any, dict[str, Any]]:
    from distributed_agents import StateGraph

    class S(TypedDict):
        n: int
        log: Annotated[list[str], operator.add]

    builder = StateGraph(S, name=f"tt_{uuid.uuid4().hex[:6]}")
    builder.add_node("a", lambda s: {"n": s["n"] + 1, "log": ["a"]})
    builder.add_node("b", lambda s: {"n": s["n"] * 10, "log": ["b"]})
    builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", END)
    graph = builder.compile()
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    assert graph.invoke({"n": 1, "log": []}, config) == {"n": 20, "log": ["a", "b"]}
    return graph, config


def test_get_state_history_and_get_state_of_a_snapshots_config_as_in_langgraph() -> None:
    """The parity trial's examples: ``checkpoint_id`` in a config was silently ignored by
    get_state (it gave the latest), and the compiled graph had no get_state_history or
    update_state, nor snapshots a ``config``."""
    graph, config = _counting_thread()
    thread = config["configurable"]["thread_id"]
    history = list(graph.get_state_history(config))
    assert [h.values["n"] for h in history] == [20, 2, 1]
    middle = history[1]
    assert middle.config == {"configurable": {"thread_id": thread, "checkpoint_ns": "",
                                              "checkpoint_id": middle.checkpoint_id}}
    assert middle.parent_config == history[2].config and history[2].parent_config is None
    assert graph.get_state(middle.config).values == {"n": 2, "log": ["a"]}  # that checkpoint, not the latest
    assert graph.get_state(config).values["n"] == 20
    assert [h.step for h in graph.get_state_history(middle.config)] == [1, 0]  # from it, it included
    assert [h.step for h in graph.get_state_history(config, before=middle.config)] == [0]
    assert [h.step for h in graph.get_state_history(config, limit=1)] == [2]
    assert [h.step for h in graph.get_state_history(config, filter={"source": "loop"})] == [2, 1]
    assert list(graph.get_state_history(config, limit=0)) == []  # as LangGraph
    from distributed_agents.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="filter=...\\) takes a dict"):
        graph.get_state_history(config, filter="loop")  # type: ignore[arg-type]
    other = {"configurable": {"thread_id": "other", "checkpoint_id": "other:1"}}
    with pytest.raises(ConfigurationError, match="is not of thread"):
        graph.get_state_history(config, before=other)  # another thread's checkpoint is refused, as get_state does


def test_update_state_returns_the_new_checkpoints_config_and_a_past_one_is_refused() -> None:
    from distributed_agents.core.errors import ConfigurationError, WorkflowNotFoundError

    graph, config = _counting_thread()
    thread = config["configurable"]["thread_id"]
    first = list(graph.get_state_history(config))[-1]
    new = graph.update_state(config, {"n": 100, "log": ["edit"]}, as_node="b")
    assert new["configurable"]["thread_id"] == thread
    assert graph.get_state(new).values == {"n": 100, "log": ["a", "b", "edit"]}
    with pytest.raises(ConfigurationError, match="not thread .* latest, would fork the thread"):
        graph.update_state(first.config, {"n": 5})
    with pytest.raises(WorkflowNotFoundError, match="has no checkpoint"):
        graph.get_state({"configurable": {"thread_id": thread, "checkpoint_id": f"{thread}:99"}})
    with pytest.raises(ConfigurationError, match="is not of thread 'other'"):
        graph.get_state({"configurable": {"thread_id": "other", "checkpoint_id": first.checkpoint_id}})
    with pytest.raises(ConfigurationError, match="older than thread .* latest .* is not done in place"):
        graph.invoke(None, first.config)  # LangGraph replays from there; here: fork it, saying so


def test_edit_then_continue_from_the_latest_checkpoints_config() -> None:
    """LangGraph's edit-and-continue: invoke(None, update_state(...)) and invoke(Command, latest.config) go on
    in place (the fresh-user trial's example: both were refused as if the checkpoint were a past one)."""
    from distributed_agents import StateGraph

    class S(TypedDict):
        log: Annotated[list[str], operator.add]

    builder = StateGraph(S, name=f"edit_{uuid.uuid4().hex[:6]}")
    builder.add_node("a", lambda s: {"log": ["a"]}).add_node("b", lambda s: {"log": ["b"]})
    builder.add_node("c", lambda s: {"log": [f"c:{interrupt('ok?')}"]})
    builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c")
    graph = builder.compile(interrupt_before=["b"])
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    assert "__interrupt__" in graph.invoke({"log": []}, config)
    edited = graph.update_state(config, {"log": ["edited"]}, as_node="a")
    paused = graph.invoke(None, edited)  # runs b, then pauses in c's interrupt()
    assert paused["log"] == ["a", "edited", "b"] and paused["__interrupt__"][0]["value"] == "ok?"
    latest = graph.get_state(config).config
    assert graph.invoke(Command(resume="yes"), latest)["log"] == ["a", "edited", "b", "c:yes"]
    assert [chunk for chunk in graph.stream({"log": ["again"]}, graph.get_state(config).config)]  # a new run


class LogState(TypedDict):
    log: Annotated[list[str], operator.add]


def _abc_builder(name: str) -> Any:
    """A StateGraph builder a -> b -> c, each node appending its name to ``log``."""
    from distributed_agents import StateGraph

    builder = StateGraph(LogState, name=f"{name}_{uuid.uuid4().hex[:6]}")
    for node in ("a", "b", "c"):
        builder.add_node(node, lambda s, node=node: {"log": [node]})
    return builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c")


def test_a_thread_continues_under_another_compile_of_the_same_builder() -> None:
    """As in LangGraph, breakpoints belong to the compiled graph making the call, not to the thread
    (the trial's example: a thread started by compile(interrupt_before=['b']) was refused, as 'another
    graph', by compile(interrupt_before=['c']) and by compile())."""
    builder = _abc_builder("variants")
    before_b, before_c, plain = (builder.compile(interrupt_before=["b"]), builder.compile(interrupt_before=["c"]),
                                 builder.compile())
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    assert before_b.invoke({"log": []}, config)["log"] == ["a"]  # paused before b
    assert before_c.invoke(None, config)["log"] == ["a", "b"]  # paused before c: this compile's breakpoint
    assert plain.invoke(None, config)["log"] == ["a", "b", "c"]
    assert before_b.invoke({"log": ["x"]}, config)["log"] == ["a", "b", "c", "x", "a"]  # a new turn, paused again


def test_a_node_exception_is_the_cause_of_the_workflows_error_and_every_failed_task_is_named() -> None:
    """The parity trial's example: the NodeExecutionError of a node run in this process had
    no __cause__ (LangGraph raises the node's exception itself); and a fan-out whose Sends
    all failed named only the first."""
    from distributed_agents import Send
    from distributed_agents.core.errors import NodeExecutionError

    class Kaput(Exception):
        pass

    def boom(state: State) -> dict[str, Any]:
        raise Kaput("kaput")

    graph = Graph(f"cause_{uuid.uuid4().hex[:6]}").add_node("a", boom).set_entry_point("a").set_finish_point("a")
    with pytest.raises(NodeExecutionError) as caught:
        graph.compile().invoke({})
    assert isinstance(caught.value.__cause__, Kaput) and str(caught.value.__cause__) == "kaput"

    def worker(state: State) -> dict[str, Any]:
        raise ValueError(f"bad {state['i']}")

    fan = Graph(f"fan_{uuid.uuid4().hex[:6]}").add_node("w", worker).set_finish_point("w")
    fan.add_conditional_edge(START, lambda s: [Send("w", {"i": i}) for i in range(9)])
    with pytest.raises(NodeExecutionError) as caught:
        fan.compile().invoke({})
    message = str(caught.value)
    assert "8 other task(s) of the step failed too" in message and "and 3 more" in message
    assert "'w#1' (ValueError: bad 1)" in message  # each Send task by its key, not only the node
    assert all(f"bad {i}" in message for i in range(6))


def test_an_unknown_thread_reads_as_empty_and_the_async_state_methods_exist() -> None:
    """LangGraph's "first turn?" check: get_state of a thread with no checkpoint is an empty snapshot, its
    history empty (both raised WorkflowNotFoundError); aget_state, aget_state_history, aupdate_state exist."""
    graph, config = _counting_thread()
    fresh = {"configurable": {"thread_id": f"never-{uuid.uuid4().hex[:8]}"}}
    empty = graph.get_state(fresh)
    assert (empty.values, empty.next, empty.step) == ({}, (), -1)
    assert empty.config == {"configurable": {"thread_id": fresh["configurable"]["thread_id"], "checkpoint_ns": ""}}
    assert list(graph.get_state_history(fresh)) == []

    async def scenario() -> tuple[Any, list[int], dict[str, Any], Any]:
        latest = await graph.aget_state(config)
        steps = [s.step async for s in graph.aget_state_history(config)]
        new = await graph.aupdate_state(config, {"n": 7}, as_node="b")
        return latest, steps, new, await graph.aget_state(fresh)

    latest, steps, new, empty_again = run(scenario())
    assert latest.values["n"] == 20 and steps == [2, 1, 0]
    assert graph.get_state(new).values["n"] == 7 and empty_again.values == {}


def test_invoke_takes_this_runs_breakpoints_as_langgraph_does() -> None:
    """invoke/stream(..., interrupt_before=[...]) (a TypeError before): this run's breakpoints, the compiled
    graph's otherwise; a new turn on a completed thread has its own, not an earlier turn's."""
    graph = _abc_builder("runbp").compile()
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    assert graph.invoke({"log": []}, config, interrupt_before=["b"])["log"] == ["a"]
    assert graph.invoke(None, config, interrupt_before=["c"])["log"] == ["a", "b"]
    assert graph.invoke(None, config)["log"] == ["a", "b", "c"]
    assert graph.invoke({"log": ["x"]}, config)["log"] == ["a", "b", "c", "x", "a", "b", "c"]  # none kept
    chunks = list(graph.stream({"log": ["y"]}, config, interrupt_after=["a"], stream_mode="values"))
    assert chunks[-1]["log"][-2:] == ["y", "a"] and graph.get_state(config).next == ("b",)  # paused after a

    async def scenario() -> dict[str, Any]:
        other = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
        return await graph.ainvoke({"log": []}, other, interrupt_after=["b"])

    assert run(scenario())["log"] == ["a", "b"]


def test_the_usual_resume_loop_goes_past_static_breakpoints_and_values_streams_show_the_pause() -> None:
    """From the third trial: ``while "__interrupt__" in out: out = graph.invoke(Command(resume=...), config)``
    raised at a static breakpoint (LangGraph continues past one whatever the resume value); and a
    "values" stream ended at an interrupt() with no chunk saying so (LangGraph's last chunk holds
    the values and "__interrupt__")."""
    from distributed_agents import StateGraph

    class S(TypedDict):
        log: Annotated[list[str], operator.add]

    builder = StateGraph(S, name=f"loop_{uuid.uuid4().hex[:6]}")
    builder.add_node("a", lambda s: {"log": ["a"]})
    builder.add_node("ask", lambda s: {"log": [f"ask:{interrupt('ok?')}"]})
    builder.add_node("c", lambda s: {"log": ["c"]})
    builder.add_edge(START, "a").add_edge("a", "ask").add_edge("ask", "c")
    graph = builder.compile(interrupt_before=["c"])
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    out = graph.invoke({"log": []}, config)
    answers = iter(["yes", "ignored at the breakpoint"])
    while "__interrupt__" in out:
        out = graph.invoke(Command(resume=next(answers)), config)
    assert out["log"] == ["a", "ask:yes", "c"]

    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}
    chunks = list(graph.stream({"log": []}, config, stream_mode="values"))
    assert chunks[-2] == {"log": ["a"]}
    assert chunks[-1]["log"] == ["a"] and [p["value"] for p in chunks[-1]["__interrupt__"]] == ["ok?"]
    resumed = list(graph.stream(Command(resume="fine"), config, stream_mode="values"))
    assert resumed[-1] == {"log": ["a", "ask:fine"]}  # paused before c: a static breakpoint adds no chunk
    assert list(graph.stream(Command(resume="x"), config, stream_mode="values"))[-1]["log"][-1] == "c"


def test_fork_gives_a_new_thread_at_a_past_checkpoint_as_the_refusal_says() -> None:
    """The advice of the refusal to run from a past checkpoint, followed as written."""
    from distributed_agents.core.errors import ConfigurationError

    graph, config = _counting_thread()
    past = list(graph.get_state_history(config))[1]  # after node a: n == 2
    with pytest.raises(ConfigurationError, match=r"graph.fork\(config\)") as refused:
        graph.invoke(None, past.config)
    assert "invoke(None, new_config)" in str(refused.value)
    new_config = graph.fork(past.config)
    assert new_config["configurable"]["thread_id"] != config["configurable"]["thread_id"]
    assert graph.get_state(new_config).values["n"] == 2
    graph.update_state(new_config, {"n": 5}, as_node="a")
    assert graph.invoke(None, new_config)["n"] == 50
    assert graph.get_state(config).values["n"] == 20  # the original thread as it was
    named = graph.fork(config, thread_id=f"copy-{uuid.uuid4().hex[:6]}")  # no checkpoint: the latest
    assert graph.get_state(named).values["n"] == 20


def test_a_graph_invoked_inside_a_node_runs_as_a_workflow_of_its_own() -> None:
    """LangGraph's "call a graph from a node" (e.g. a subgraph with another schema): the node's
    state passed as the input. Before, the ``State`` it got named the caller's workflow, so the
    inner run took that id and failed on the caller's lease (WorkflowLeaseHeldError)."""
    import operator
    from typing import Annotated, TypedDict

    from distributed_agents import END, START, StateGraph

    class Log(TypedDict, total=False):
        foo: str
        log: Annotated[list[str], operator.add]

    inner_builder = StateGraph(Log)
    inner_builder.add_node("x", lambda s: {"log": ["x"]}).add_edge(START, "x").add_edge("x", END)
    inner = inner_builder.compile()

    def wrapper(state: Log) -> dict[str, Any]:
        return inner.invoke(state)

    async def awrapper(state: Log) -> dict[str, Any]:
        return {"foo": (await inner.ainvoke(state))["log"][-1]}

    outer = StateGraph(Log)
    outer.add_node("w", wrapper).add_node("aw", awrapper)
    outer.add_edge(START, "w").add_edge("w", "aw").add_edge("aw", END)
    # LangGraph 1.2.24: {'foo': '', 'log': ['in', 'in', 'x']} after w (the inner final state, appended)
    assert outer.compile().invoke({"foo": "", "log": ["in"]}) == {"foo": "x", "log": ["in", "in", "x"]}


def test_invoke_with_a_stream_mode_returns_that_modes_chunks() -> None:
    """LangGraph 1.2.24, side by side: ``invoke(..., stream_mode="updates")`` is the list of the run's
    updates chunks, a list of modes gives ``(mode, chunk)`` pairs, ``"values"`` the final state."""
    from typing import TypedDict

    from distributed_agents import END, START, StateGraph

    class X(TypedDict, total=False):
        x: int

    builder = StateGraph(X)
    builder.add_node("a", lambda s: {"x": 1}).add_node("b", lambda s: {"x": 2})
    builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", END)
    app = builder.compile()
    assert app.invoke({}, stream_mode="values") == {"x": 2}
    assert app.invoke({}, stream_mode="updates") == [{"a": {"x": 1}}, {"b": {"x": 2}}]
    assert app.invoke({}, stream_mode=["values", "updates"]) == [
        ("updates", {"a": {"x": 1}}), ("values", {"x": 1}), ("updates", {"b": {"x": 2}}), ("values", {"x": 2})]
    assert run(app.ainvoke({}, stream_mode="updates")) == [{"a": {"x": 1}}, {"b": {"x": 2}}]


class PassOverall(TypedDict):
    a: str


class Node1Output(TypedDict):
    private_data: str


class Node2Input(TypedDict):
    private_data: str


def test_private_state_declared_only_in_a_nodes_input_schema_passes_between_nodes() -> None:
    """LangGraph's "pass private state between nodes": node_1 writes ``private_data``, which only
    node_2's input TypedDict declares. LangGraph 1.2.24: ``{'a': 'set by node_2 from set by node_1'}``
    (the key is not in the output); a key no schema declares is still refused."""
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import StateValidationError

    def node_1(state: PassOverall) -> Node1Output:
        return {"private_data": "set by node_1"}

    def node_2(state: Node2Input) -> PassOverall:
        return {"a": f"set by node_2 from {state['private_data']}"}

    builder = StateGraph(PassOverall)
    builder.add_node(node_1).add_node(node_2)
    builder.add_edge(START, "node_1").add_edge("node_1", "node_2").add_edge("node_2", END)
    assert builder.compile().invoke({"a": "start"}) == {"a": "set by node_2 from set by node_1"}

    def stray(state: PassOverall) -> dict[str, Any]:
        return {"undeclared": 1}

    refused = StateGraph(PassOverall)
    refused.add_node(stray).add_edge(START, "stray").add_edge("stray", END)
    with pytest.raises(StateValidationError, match="wrote state key 'undeclared'"):
        refused.compile().invoke({"a": "x"})


class Handoff(TypedDict):
    foo: str
    log: Annotated[list[str], operator.add]


def test_command_parent_from_a_graph_invoked_inside_a_node_routes_that_node() -> None:
    """LangGraph 1.2.24: ``{'foo': 'from-sub', 'log': ['in', 'sub_a', 'parent_c saw from-sub']}``."""
    from distributed_agents import StateGraph

    def sub_a(state: Handoff) -> Command[Any]:
        return Command(graph=Command.PARENT, goto="parent_c", update={"foo": "from-sub", "log": ["sub_a"]})

    inner = StateGraph(Handoff)
    inner.add_node("sub_a", sub_a).add_edge(START, "sub_a")
    compiled = inner.compile()

    def wrapper(state: Handoff) -> dict[str, Any]:
        return compiled.invoke(state)

    outer = StateGraph(Handoff)
    outer.add_node("wrapper", wrapper, destinations=("parent_c",))
    outer.add_node("parent_c", lambda s: {"log": ["parent_c saw " + s["foo"]]}).add_edge(START, "wrapper")
    assert outer.compile().invoke({"foo": "", "log": ["in"]}) == {
        "foo": "from-sub", "log": ["in", "sub_a", "parent_c saw from-sub"]}


class AccOverall(TypedDict, total=False):
    out: str


class AccPrivate(TypedDict, total=False):
    acc: Annotated[list[str], operator.add]


def test_a_private_keys_reducer_merges_parallel_writes() -> None:
    """The reducer of a key declared only in a node's input schema merges two parallel writes
    (LangGraph 1.2.24: ``{'out': 'p1,p2'}``); ``add_node(input_schema=)`` declares one too."""
    from distributed_agents import StateGraph

    def join(state: AccPrivate) -> dict[str, Any]:
        return {"out": ",".join(sorted(state["acc"]))}

    for explicit in (False, True):
        builder = StateGraph(AccOverall)
        builder.add_node("p1", lambda s: {"acc": ["p1"]}).add_node("p2", lambda s: {"acc": ["p2"]})
        if explicit:
            builder.add_node("join", lambda s: {"out": ",".join(sorted(s["acc"]))}, input_schema=AccPrivate)
        else:
            builder.add_node("join", join)
        builder.add_edge(START, "p1").add_edge(START, "p2").add_edge(["p1", "p2"], "join").add_edge("join", END)
        assert builder.compile().invoke({}) == {"out": "p1,p2"}


class StreamIn(TypedDict, total=False):
    question: str


class StreamOut(TypedDict, total=False):
    answer: str


class StreamAll(StreamIn, StreamOut):
    pass


def test_the_values_stream_carries_the_whole_state_with_an_output_schema() -> None:
    """LangGraph 1.2.24 streams ``{'question': 'hi'}`` then ``{'answer': 'bye', 'question': 'hi'}``;
    only the run's result is filtered to the output schema (``{'answer': 'bye'}``)."""
    from distributed_agents import StateGraph

    builder = StateGraph(StreamAll, input_schema=StreamIn, output_schema=StreamOut)
    builder.add_node("answer", lambda s: {"answer": "bye"}).add_edge(START, "answer").add_edge("answer", END)
    app = builder.compile()
    assert list(app.stream({"question": "hi"}, stream_mode="values")) == [
        {"question": "hi"}, {"question": "hi", "answer": "bye"}]
    assert app.invoke({"question": "hi"}) == {"answer": "bye"}


class WideParent(TypedDict):
    foo: str
    other: str


class NarrowSub(TypedDict):
    foo: str


def test_a_typed_subgraph_gets_only_the_keys_it_shares_with_its_parent() -> None:
    """LangGraph 1.2.24: a subgraph node whose schema declares some of the parent's keys runs on
    those; the parent's other keys stay as they were (``{'foo': 'a!', 'other': 'x'}``)."""
    from distributed_agents import StateGraph

    for options in ({}, {"input_schema": NarrowSub}):
        inner = StateGraph(NarrowSub, name=f"narrow{len(options)}", **options)
        inner.add_node("inner", lambda s: {"foo": s["foo"] + "!"}).add_edge(START, "inner")
        outer = StateGraph(WideParent, name=f"wide{len(options)}")
        outer.add_node("child", inner.compile()).add_edge(START, "child")
        assert outer.compile().invoke({"foo": "a", "other": "x"}) == {"foo": "a!", "other": "x"}


def test_with_config_binds_a_config_under_each_calls_own() -> None:
    """LangGraph's ``compiled.with_config(...)``: the bound recursion_limit and configurable values
    apply to invoke/stream/batch; the call's own config wins; the original graph is unchanged."""
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import ConfigurationError, StepLimitExceededError

    class S(TypedDict):
        n: int

    def step(state: dict[str, Any], config: Any) -> dict[str, Any]:
        return {"n": 99 if config["configurable"].get("user") == "x" else state["n"] + 1}

    builder = StateGraph(S)
    builder.add_node("a", step).add_edge(START, "a")
    builder.add_conditional_edges("a", lambda s: "a" if s["n"] < 10 else END, ["a", END])
    app = builder.compile()
    limited = app.with_config({"recursion_limit": 3})
    with pytest.raises(StepLimitExceededError):
        limited.invoke({"n": 0})
    with pytest.raises(StepLimitExceededError):
        list(limited.stream({"n": 0}))
    assert limited.invoke({"n": 0}, {"recursion_limit": 20}) == {"n": 10}  # the call's own wins
    assert app.invoke({"n": 0}) == {"n": 10}  # unchanged
    tagged = app.with_config(configurable={"user": "x"}).with_config(recursion_limit=50)
    assert tagged.invoke({"n": 0}) == {"n": 99}
    assert tagged.batch([{"n": 0}, {"n": 5}], [{"configurable": {"user": "y"}}, {}]) == [{"n": 10}, {"n": 99}]
    with pytest.raises(ConfigurationError, match="with_config"):
        app.with_config(["recursion_limit"])  # type: ignore[arg-type]


class Turns(TypedDict):
    turns: Annotated[list, operator.add]
    remaining_steps: RemainingSteps


def test_each_resume_is_a_call_with_its_own_step_budget() -> None:
    """A human-in-the-loop agent that pauses on every turn: each resume gets recursion_limit steps
    of its own, as each LangGraph invoke does (the run's steps since its first call counted, so
    it hit the limit after a few approvals)."""
    from distributed_agents.core.errors import StepLimitExceededError

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        approved = interrupt(f"turn {len(state['turns'])}?")
        return {"turns": [[approved, state["remaining_steps"]]]}

    builder = StateGraph(Turns)
    builder.add_node("agent", agent).add_edge(START, "agent")
    builder.add_conditional_edges("agent", lambda s: "agent" if len(s["turns"]) < 6 else END, ["agent", END])
    app = builder.compile()
    # recursion_limit 4: the first call 3 steps, each resume 5 (LangGraph's resumed invoke has no input step)
    config = {"configurable": {"thread_id": "hitl-budget"}, "recursion_limit": 4}
    assert "__interrupt__" in app.invoke({"turns": []}, config)
    for turn in range(5):
        assert "__interrupt__" in app.invoke(Command(resume=f"ok{turn}"), config)
    assert app.invoke(Command(resume="ok5"), config)["turns"] == [[f"ok{i}", 5] for i in range(6)]
    # The budget still bounds one call: a loop that never pauses stops at the limit.
    looping = StateGraph(Turns)
    looping.add_node("agent", lambda s: {"turns": [1]}).add_edge(START, "agent")
    looping.add_conditional_edges("agent", lambda s: "agent", ["agent", END])
    with pytest.raises(StepLimitExceededError):
        looping.compile().invoke({"turns": []}, config)


def test_invoke_and_stream_take_langgraphs_durability() -> None:
    """invoke/stream/ainvoke(..., durability="exit") as in LangGraph 1.x: the run checkpoints at
    exit only (its history holds the input and the end), "sync" at every step."""
    from distributed_agents import StateGraph
    from distributed_agents.core.errors import ConfigurationError
    from support.aio import run as run_async

    class S(TypedDict):
        n: int

    builder = StateGraph(S)
    builder.add_node("a", lambda s: {"n": s["n"] + 1}).add_node("b", lambda s: {"n": s["n"] + 1})
    app = builder.add_edge(START, "a").add_edge("a", "b").compile()

    def steps(thread: str) -> list[int]:
        return sorted(snapshot.step for snapshot in app.get_state_history({"configurable": {"thread_id": thread}}))

    assert app.invoke({"n": 0}, {"configurable": {"thread_id": "dur-exit"}}, durability="exit") == {"n": 2}
    assert list(app.stream({"n": 0}, {"configurable": {"thread_id": "dur-sync"}}, durability="sync",
                           stream_mode="values")) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert run_async(app.ainvoke({"n": 0}, {"configurable": {"thread_id": "dur-async"}}, durability="async")) == {"n": 2}
    assert len(steps("dur-exit")) < len(steps("dur-sync")) == 3
    with pytest.raises(ConfigurationError, match="durability"):
        app.invoke({"n": 0}, durability="sometimes")


# -- batch(return_exceptions=True) -------------------------------------------------------------------


def _picky_app() -> Any:
    """A graph whose node fails on a negative ``n`` (a NodeExecutionError naming the node)."""
    from distributed_agents import StateGraph

    class S(TypedDict):
        n: int

    def check(state: S) -> dict[str, int]:
        if state["n"] < 0:
            raise ValueError(f"negative: {state['n']}")
        return {"n": state["n"] * 10}

    builder = StateGraph(S)
    builder.add_node("check", check)
    builder.add_edge(START, "check")
    return builder.compile()


def test_batch_with_return_exceptions_puts_each_failed_runs_error_in_its_place() -> None:
    """LangGraph's ``batch(inputs, return_exceptions=True)``: every input runs; a failed one's
    error stands in the list where its result would be. Without it the first failure is raised."""
    from distributed_agents.core.errors import NodeExecutionError

    app = _picky_app()
    results = app.batch([{"n": 1}, {"n": -2}, {"n": 3}], return_exceptions=True)
    assert results[0] == {"n": 10} and results[2] == {"n": 30}
    assert isinstance(results[1], NodeExecutionError) and "negative: -2" in str(results[1])
    with pytest.raises(NodeExecutionError, match="negative: -2"):
        app.batch([{"n": 1}, {"n": -2}, {"n": 3}])


def test_abatch_with_return_exceptions_runs_every_input_concurrently_and_keeps_the_order() -> None:
    import asyncio

    from distributed_agents.core.errors import NodeExecutionError

    app = _picky_app()

    async def scenario() -> tuple[list[Any], BaseException | None]:
        got = await app.abatch([{"n": -1}, {"n": 2}, {"n": -3}, {"n": 4}], return_exceptions=True)
        try:
            await app.abatch([{"n": 5}, {"n": -6}])
        except NodeExecutionError as error:
            return got, error
        return got, None

    got, raised = asyncio.run(scenario())
    assert [type(item).__name__ for item in got] == ["NodeExecutionError", "dict", "NodeExecutionError", "dict"]
    assert got[1] == {"n": 20} and got[3] == {"n": 40}
    assert "negative: -1" in str(got[0]) and "negative: -3" in str(got[2])
    assert raised is not None and "negative: -6" in str(raised)


def test_batch_takes_any_iterable_of_inputs() -> None:
    app = _picky_app()
    assert app.batch(({"n": n} for n in (1, 2))) == [{"n": 10}, {"n": 20}]
    from distributed_agents.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="2 input"):
        app.batch(({"n": n} for n in (1, 2)), [{}])
