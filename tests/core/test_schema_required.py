"""A Pydantic state schema's required fields must be in the input, as in LangGraph.

The example (LangGraph user's trial): a schema with ``q: str`` (no default) accepted input
``{}`` and ran; LangGraph refuses it (the first node's input fails the model's validation).
Now the input must give every field declared without a default (of the input schema when
there is one); a thread's next run needs only what its state does not hold already.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from distributed_agents import END, START, StateGraph
from distributed_agents.core.errors import StateValidationError

pytestmark = pytest.mark.timeout(30)
pydantic = pytest.importorskip("pydantic")


class Question(pydantic.BaseModel):  # type: ignore[name-defined,misc]
    q: str
    answer: str = ""
    tries: int = 0


class Ask(pydantic.BaseModel):  # type: ignore[name-defined,misc]
    q: str


def app(input_schema: Any = None) -> Any:
    builder = StateGraph(Question, input_schema=input_schema) if input_schema else StateGraph(Question)
    builder.add_node("answer", lambda s: {"answer": "re: " + s["q"], "tries": s["tries"] + 1})
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


@pytest.mark.parametrize("input_schema", [None, Ask])
@pytest.mark.parametrize("given", [{}, {"answer": "x"}, {"tries": 2}])
def test_an_input_without_a_required_field_is_refused_naming_it(input_schema: Any, given: dict[str, Any]) -> None:
    with pytest.raises(StateValidationError) as caught:
        app(input_schema).invoke(given)
    assert "lacks required key(s) 'q'" in str(caught.value) and "without a default" in str(caught.value)


def test_an_input_with_the_required_fields_runs_and_a_threads_next_run_needs_only_new_keys() -> None:
    graph = app()
    config = {"configurable": {"thread_id": f"q-{uuid.uuid4().hex[:8]}"}}
    assert graph.invoke({"q": "why"}, config) == {"q": "why", "answer": "re: why", "tries": 1}
    assert graph.invoke({"answer": "again"}, config)["tries"] == 2  # q is in the thread's state already
