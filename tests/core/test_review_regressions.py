"""Regression tests (memory backend) for the step loop's hot-path changes: a new workflow's
input encoded once and reused for its stored record, step-limit and on_error failures, and
the log context's read-only view."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

import pytest

from distributed_agents import Graph, Orchestrator, Send, State
from distributed_agents.core import log_context
from distributed_agents.core.errors import StepLimitExceededError

pytestmark = pytest.mark.timeout(60)


def test_the_created_record_holds_the_state_the_first_step_runs_on() -> None:
    """A conditional entry's router gets a shallow copy of the input; one that changes a nested
    value in place changes the state the workflow starts with (its checkpoint 0 and first
    step): the created record must hold that same state, not the input's earlier encoding."""
    seen: dict[str, Any] = {}

    def route(state: State) -> str:
        state["items"].append("routed")  # in place, on the shared nested list
        return "look"

    async def look(state: State) -> dict[str, Any]:
        stored = await orchestrator.backend.state_store.get(state.workflow_id)
        assert stored is not None
        seen["node"], seen["stored"] = list(state["items"]), list(stored.state["items"])
        return {"done": True}

    graph = (Graph("review_router_mutates").add_node("look", look)
             .set_conditional_entry_point(route, ["look"]).set_finish_point("look").compile())
    orchestrator = Orchestrator(backend="memory://")

    async def main() -> Any:
        try:
            await orchestrator.execute(graph, {"items": ["given"]}, workflow_id="wf-router")
            return await orchestrator.get_state_history("wf-router")
        finally:
            await orchestrator.close()

    history = asyncio.run(main())
    first = [snapshot for snapshot in history if snapshot.step == 0][0]
    assert seen["stored"] == seen["node"] == list(first.values["items"]), (seen, first.values)


class Counted(TypedDict):
    n: Annotated[int, operator.add]


def test_a_step_limit_error_names_the_cycle() -> None:
    graph = (Graph("review_loop", state_schema=Counted).add_node("tick", lambda s: {"n": 1})
             .set_entry_point("tick").add_conditional_edges("tick", lambda s: "tick", ["tick", "__end__"]).compile())

    async def main() -> StepLimitExceededError:
        orchestrator = Orchestrator(backend="memory://")
        try:
            with pytest.raises(StepLimitExceededError) as caught:
                await orchestrator.execute(graph, {"n": 0}, workflow_id="wf-loop", step_limit=4)
            return caught.value
        finally:
            await orchestrator.close()

    error = asyncio.run(main())
    assert "'wf-loop'" in str(error) and "step limit of 4" in str(error) and "'tick' ran" in str(error)
    assert "cycling" in str(error) and error.nodes == ("tick",)


def test_a_fan_out_with_a_routed_and_an_unhandled_failure_raises_both() -> None:
    """One failure goes to its on_error handler, one has none: the step fails naming both
    (unhandled first), and the handler does not run."""
    ran: list[str] = []

    def fan(state: State) -> list[Send]:
        return [Send("routed", {"i": 1}), Send("plain", {"i": 2})]

    def routed(state: State) -> dict[str, Any]:
        raise ValueError("routed failed")

    def plain(state: State) -> dict[str, Any]:
        raise KeyError("plain failed")

    def handler(state: State) -> dict[str, Any]:
        ran.append("handler")
        return {}

    graph = (Graph("review_on_error").add_node("routed", routed, on_error="handler").add_node("plain", plain)
             .add_node("handler", handler).set_conditional_entry_point(fan, ["routed", "plain"])
             .set_finish_point("routed").set_finish_point("plain").set_finish_point("handler").compile())

    async def main() -> tuple[BaseException, Any]:
        orchestrator = Orchestrator(backend="memory://")
        try:
            with pytest.raises(Exception) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-on-error")
            return caught.value, await orchestrator.backend.state_store.get("wf-on-error")
        finally:
            await orchestrator.close()

    error, stored = asyncio.run(main())
    assert "plain" in str(error), str(error)
    assert ran == []
    assert stored is not None and stored.status == "failed"
    assert stored.error is not None and stored.error["node"] == "plain"
    assert stored.error["failed_nodes"] == ["plain", "routed"]  # the unhandled first, then the routed


def test_the_log_context_view_cannot_change_what_is_bound() -> None:
    with log_context.bind(workflow_id="wf", step=3):
        view = log_context.current()
        with pytest.raises(TypeError):
            view["step"] = 4  # type: ignore[index]
        assert dict(log_context.current()) == {"workflow_id": "wf", "step": 3}
    assert dict(log_context.current()) == {}
