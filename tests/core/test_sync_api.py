"""The blocking facade: invoke/execute_sync and orchestrator.sync, for code that is not async."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from distributed_agents import Graph, Orchestrator, open_backend
from distributed_agents.core.errors import ConfigurationError, ExecutionError

pytestmark = pytest.mark.timeout(120)


def doubling_graph() -> Graph:
    graph = Graph("doubling", reducers={"seen": "append"})
    graph.add_node("double", lambda s: {"value": s["value"] * 2, "seen": s["value"]})
    return graph.set_entry_point("double").set_finish_point("double").compile()


@pytest.mark.parametrize("backend", ["memory", "redis_url", "nats_url"])
def test_invoke_and_sync_methods_run_without_an_event_loop_call_after_call(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Each call runs its own loop and closes its connections; the next call opens fresh ones."""
    url = "memory://" if backend == "memory" else str(request.getfixturevalue(backend))
    options = {} if backend == "memory" else {"prefix": f"sync{uuid.uuid4().hex[:8]}"}
    orchestrator = Orchestrator(backend=url, backend_options=options)
    graph = doubling_graph()
    assert orchestrator.invoke(graph, {"value": 2}, workflow_id="wf-1")["value"] == 4
    assert orchestrator.execute_sync(graph, {"value": 5}, workflow_id="wf-2")["value"] == 10
    snapshot = orchestrator.sync.get_state("wf-1")
    assert snapshot.values == {"value": 4, "seen": [2]} and snapshot.status == "completed"
    assert [s.step for s in orchestrator.sync.get_state_history("wf-1")] == [1, 0]
    orchestrator.sync.update_state("wf-1", {"value": 3}, as_node="__start__")
    assert dict(orchestrator.sync.resume("wf-1")) == {"value": 6, "seen": [2, 3]}
    assert [info.workflow_id for info in orchestrator.sync.list_workflows("completed")] == ["wf-1", "wf-2"]
    assert not orchestrator._connected


def test_blocking_calls_are_refused_inside_a_running_loop_with_what_to_do_instead() -> None:
    orchestrator = Orchestrator()

    async def inside() -> None:
        with pytest.raises(ExecutionError, match=r"invoke\(\) blocks .* inside a running event loop .*await"):
            orchestrator.invoke(doubling_graph(), {"value": 1})
        with pytest.raises(ExecutionError, match=r"sync\.get_state\(\) blocks"):
            orchestrator.sync.get_state("anything")

    asyncio.run(inside())


def test_sync_refuses_an_opened_backend_and_background_only_methods() -> None:
    shared = Orchestrator(backend=open_backend("memory://"))
    with pytest.raises(ConfigurationError, match="given an opened Backend, .*give it a backend URL"):
        shared.invoke(doubling_graph(), {"value": 1})
    with pytest.raises(AttributeError, match="submit needs a running loop: use invoke"):
        Orchestrator().sync.submit
    with pytest.raises(AttributeError, match="no '_drive'"):
        Orchestrator().sync._drive


def test_sync_passes_errors_through_unchanged() -> None:
    def boom(state: Any) -> None:
        raise RuntimeError("kaput")

    graph = Graph("boom").add_node("boom", boom).set_entry_point("boom").set_finish_point("boom").compile()
    orchestrator = Orchestrator()
    with pytest.raises(ExecutionError, match="kaput"):
        orchestrator.invoke(graph, {}, workflow_id="wf-boom")
    assert orchestrator.sync.get_workflow_status("wf-boom").status == "failed"
