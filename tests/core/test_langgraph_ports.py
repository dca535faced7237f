"""LangGraph's documented typed-state and messages examples, ported, give the same results.

Each test names the LangGraph example it ports and states LangGraph's documented
output; the port differs only where this framework's state is JSON (message dicts in
the OpenAI chat format instead of message objects, the RemoveMessage marker a dict).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from support.aio import run

from distributed_agents import END, START, Graph, MessagesState, Orchestrator, RemoveMessage, State, add_messages

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
    bar: str  # LangGraph keeps this in a private node schema; here every key is declared in a graph schema


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

    def node_3(state: State) -> dict[str, Any]:
        return {"graph_output": state["bar"] + " Lance"}

    graph = Graph("private_port", state_schema=PrivateOverall, input_schema=PortInput, output_schema=PortOutput)
    graph.add_sequence([node_1, node_2, node_3]).add_edge(START, "node_1").add_edge("node_3", END).compile()
    assert dict(run(Orchestrator().execute(graph, {"user_input": "My"}))) == {"graph_output": "My name is Lance"}
