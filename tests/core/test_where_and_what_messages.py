"""Error messages that say where (graph, node, workflow) and what is wrong.

* A conditional edge's path map that is not a dict, a list of node names or None used
  to be a bare ``TypeError: 'int' object is not iterable``.
* A routing error listed its targets double-quoted (``["'go'"]``).
* A resume value (interrupt answer) JSON cannot carry was reported as a *state key* ``'resume'``.
"""

from __future__ import annotations

from typing import Any

import pytest

from distributed_agents import END, START, Command, Graph, Orchestrator, interrupt
from distributed_agents.core.errors import GraphValidationError, RoutingError, StateNotSerializableError

pytestmark = pytest.mark.timeout(60)


def two_nodes(name: str = "router") -> Graph:
    graph = Graph(name)
    graph.add_node("a", lambda state: {})
    graph.add_node("b", lambda state: {})
    graph.add_edge(START, "a").add_edge("b", END)
    return graph


PATH_MAP_MUST_BE = "it must be a dict from the values the condition returns to node names or END"


@pytest.mark.parametrize("method", ["add_conditional_edge", "add_conditional_edges"])
@pytest.mark.parametrize("path_map, says", [
    (5, "the path map (targets) is int 5"),
    (5.0, "the path map (targets) is float 5.0"),
    (b"b", "the path map (targets) is bytes b'b'"),
    ([5], "the path map (targets) lists int 5, which is not a node name"),
    ([["b"]], "the path map (targets) lists list ['b'], which is not a node name"),
    ({"yes": 5}, "the path map (targets) maps 'yes' to int 5, which is not a node name"),
    ({"yes": ["b"]}, "the path map (targets) maps 'yes' to list ['b'], which is not a node name"),
])
def test_a_path_map_of_the_wrong_kind_names_graph_node_and_what_it_must_be(method: str, path_map: Any,
                                                                             says: str) -> None:
    graph = two_nodes()
    with pytest.raises(GraphValidationError) as caught:
        getattr(graph, method)("a", lambda state: "b", path_map)
    message = str(caught.value)
    assert message.startswith("graph 'router': conditional edge from 'a': "), message
    assert says in message and PATH_MAP_MUST_BE in message and "a list of the node names" in message
    assert caught.value.graph == "router" and caught.value.culprit == "a"


def test_a_conditional_entry_point_with_a_wrong_path_map_names_start() -> None:
    graph = Graph("entry")
    graph.add_node("a", lambda state: {})
    with pytest.raises(GraphValidationError, match=r"graph 'entry': conditional edge from '__start__': the path map "
                                                   r"\(targets\) is int 7"):
        graph.set_conditional_entry_point(lambda state: "a", 7)  # type: ignore[arg-type]


@pytest.mark.parametrize("path_map", [None, "b", ["b", END], ("b",), {"b"}, (name for name in ["b"]),
                                      {"yes": "b", "no": END}, {True: "b", False: END}])
def test_every_documented_kind_of_path_map_is_still_accepted(path_map: Any) -> None:
    graph = two_nodes()
    # The value routing to b: its key in a dict path map, else the node name itself.
    to_b = next(key for key, target in path_map.items() if target == "b") if isinstance(path_map, dict) else "b"
    graph.add_conditional_edges("a", lambda state: to_b, path_map)
    graph.compile()
    assert Orchestrator().invoke(graph, {}) == {}


def test_a_routing_error_lists_its_targets_quoted_once() -> None:
    graph = two_nodes()
    graph.add_conditional_edges("a", lambda state: "stop", {"go": "b"})
    graph.compile()
    with pytest.raises(RoutingError) as caught:
        Orchestrator().invoke(graph, {})
    message = str(caught.value)
    assert "returned 'stop', which is not in its targets ['go']" in message, message
    assert "\"'go'\"" not in message


def test_a_routing_error_lists_targets_of_several_key_types_each_as_written() -> None:
    graph = two_nodes()
    graph.add_conditional_edges("a", lambda state: 3, {"go": "b", True: END, None: "b"})
    graph.compile()
    with pytest.raises(RoutingError) as caught:
        Orchestrator().invoke(graph, {})
    assert "returned 3, which is not in its targets ['go', None, True]" in str(caught.value)


def asking_graph() -> Graph:
    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"answer": interrupt("approve?")}

    graph = Graph("asking")
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask").add_edge("ask", END)
    return graph.compile()


@pytest.mark.parametrize("answer, where", [
    ({1, 2}, "is not JSON-serialisable: set {1, 2} is not JSON"),
    (Command(resume={1, 2}), "is not JSON-serialisable: set {1, 2} is not JSON"),
    (Command(resume={"picked": {1, 2}}), "is not JSON-serialisable: at answer.picked: set {1, 2} is not JSON"),
    (Command(resume=[1, float("nan")]), "is not JSON-serialisable: at answer[1]: nan is not JSON"),
])
def test_a_resume_value_that_is_not_json_is_named_as_the_answer_of_the_workflow(answer: Any, where: str) -> None:
    orchestrator = Orchestrator()
    paused = orchestrator.invoke(asking_graph(), {}, workflow_id="wf-ask")
    (pending,) = paused["__interrupt__"]
    with pytest.raises(StateNotSerializableError) as caught:
        orchestrator.sync.resume("wf-ask", answer)
    message = str(caught.value)
    assert message.startswith(f"resume('wf-ask'): the resume value (the answer to interrupt {pending['id']!r} of "
                              "node 'ask' in workflow 'wf-ask')"), message
    assert where in message and "state key" not in message
    # Nothing changed: a JSON answer still resumes it.
    assert orchestrator.sync.resume("wf-ask", "yes") == {"answer": "yes"}


def test_a_resume_value_that_is_not_json_through_graph_invoke_names_the_thread() -> None:
    graph = asking_graph()
    config = {"configurable": {"thread_id": "thread-1"}}
    graph.invoke({}, config)
    with pytest.raises(StateNotSerializableError, match=r"resume\('thread-1'\): the resume value .* set \{1, 2\}"):
        graph.invoke(Command(resume={1, 2}), config)


def test_an_interrupt_value_that_is_not_json_is_named_as_such_not_as_a_state_key() -> None:
    def ask(state: dict[str, Any]) -> dict[str, Any]:
        return {"answer": interrupt({"options": {1, 2}})}

    graph = Graph("asking_badly").add_node("ask", ask)
    graph.add_edge(START, "ask").add_edge("ask", END).compile()
    with pytest.raises(Exception) as caught:
        Orchestrator().invoke(graph, {})
    message = str(caught.value)
    assert ("node 'ask': the value given to interrupt() is not JSON-serialisable: at value.options: "
            "set {1, 2} is not JSON") in message
    assert "state key" not in message and "State holds" not in message
