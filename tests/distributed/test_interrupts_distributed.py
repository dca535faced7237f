"""interrupt() on Redis and NATS: nodes on real worker processes, answers from other processes.

The interrupted node runs on a worker; the pause is stored in the workflow record, so
another orchestrator reads it and resumes the workflow, the answer travelling to the
worker in the task payload. An orchestrator SIGKILLed while its workflow is interrupted
loses nothing: a new process resumes it.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.worker_processes import WorkerProcesses, load_test_app, sigkill_orchestrator_child

from distributed_agents import Command, Orchestrator, State, WorkflowStatus
from distributed_agents.distributed import DistributedOrchestrator

pytestmark = pytest.mark.timeout(120)


def control_app() -> ModuleType:
    return load_test_app("control_app")


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_interrupts_on_workers_are_seen_and_answered_from_another_orchestrator(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"hitl{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "control_app:registry")
    app = control_app()

    async def scenario() -> dict[str, Any]:
        starter = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        answerer = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            paused = await starter.execute(app.approval_graph(), {"topic": "tides"}, workflow_id="wf-approval")
            status = await answerer.get_workflow_status("wf-approval")
            rejected = await answerer.resume("wf-approval", app.approval_graph(), Command(resume=False))
            asked = await starter.execute(app.ask_graph(), {}, workflow_id="wf-ask")
            second = await answerer.resume("wf-ask", app.ask_graph(), Command(resume="Ada"))
            greeted = await starter.resume("wf-ask", resume="Countess")
            return {"paused": paused, "status": status, "rejected": rejected, "asked": asked, "second": second,
                    "greeted": greeted}
        finally:
            await starter.close()
            await answerer.close()

    workers.start("w1", "--capacity", "2")
    try:
        out = run(scenario(), timeout=100)
    finally:
        workers.close()
    value = {"question": "Is this correct?", "llm_output": "summary of tides"}
    assert out["paused"]["__interrupt__"] == [{"id": "1:human_approval:0", "node": "human_approval",
                                               "value": value, "kind": "interrupt"}]
    assert out["status"].status == WorkflowStatus.INTERRUPTED and out["status"].interrupts[0].value == value
    assert dict(out["rejected"]) == {"topic": "tides", "llm_output": "summary of tides", "decision": "rejected"}
    assert [i["value"] for i in out["asked"]["__interrupt__"]] == ["name?"]
    assert [i["value"] for i in out["second"]["__interrupt__"]] == ["title of Ada?"]
    assert dict(out["greeted"]) == {"greeting": "Countess Ada"}


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_an_interrupt_survives_sigkill_of_its_orchestrator_and_another_process_resumes_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"hitlkill{uuid.uuid4().hex[:8]}"
    seen = json.loads(sigkill_orchestrator_child("interrupt_child.py", url, prefix, "wf-killed", tmp_path))
    assert seen["status"] == "interrupted"
    app = control_app()

    async def scenario() -> tuple[Any, State]:
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}) as orchestrator:
            status = await orchestrator.get_workflow_status("wf-killed")
            done = await orchestrator.resume("wf-killed", app.approval_graph(local=True), Command(resume=True))
            return status, done

    status, done = run(scenario())
    assert status.status == WorkflowStatus.INTERRUPTED
    assert [(i.id, i.node) for i in status.interrupts] == [(seen["interrupt"][0]["id"], "human_approval")]
    assert dict(done) == {"topic": "storms", "llm_output": "summary of storms", "decision": "approved"}


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_an_answer_with_an_update_reaches_the_node_on_a_worker_through_the_state_reference(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """``Command(resume=..., update=...)`` over a state too large to travel in the task
    (``core.task_state``): the step's checkpoint holds the state it paused on, so the re-run
    node's task must carry the edited state rather than refer to that checkpoint."""
    url = str(request.getfixturevalue(backend))
    prefix = f"hitlupd{uuid.uuid4().hex[:8]}"
    workers = WorkerProcesses(url, prefix, tmp_path, "control_app:registry")
    app = control_app()
    edited = "y" * 6000 + "-edited-"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        starter = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        answerer = DistributedOrchestrator(backend_url=url, prefix=prefix, recover=False)
        try:
            paused = await starter.execute(app.review_graph(), {"draft": "x" * 6000}, workflow_id="wf-review")
            done = await answerer.resume("wf-review", app.review_graph(),
                                         Command(resume="send", update={"draft": edited}))
            history = await answerer.get_state_history("wf-review")
            return dict(paused), dict(done), history
        finally:
            await starter.close()
            await answerer.close()

    workers.start("w1")
    try:
        paused, done, history = run(scenario(), timeout=100)
    finally:
        workers.close()
    assert [i["value"] for i in paused["__interrupt__"]] == ["send this draft?"]
    assert (done["answer"], done["seen"], done["length"]) == ("send", "-edited-", len(edited))
    # The edit has no checkpoint of its own (the step keeps its number, so its interrupt and
    # subgraph ids stay): the step's commit holds it.
    assert [(s.metadata.get("source"), s.metadata.get("step")) for s in reversed(history)] == [
        ("input", 0), ("loop", 1)]
    assert history[0].values["draft"] == edited
