"""A step whose batches run side by side stops them all when one of them raises.

A step runs its in-process nodes, its worker tasks and each subgraph as batches side by
side. When one batch raised (no worker after ``worker_timeout``, say), the others went on:
a subgraph's child workflow was still driven, its nodes run, after the parent's step had
failed (and a step retried after an outage would start a second driver of the same child).
Now the others are cancelled and awaited before the step's error is raised. On the memory
backend, real orchestrator and engine; the subgraph's node waits on an event the test
never sets, so only a cancellation ends it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.errors import NodeNotFoundError

pytestmark = pytest.mark.timeout(60)


def _graphs(seen: list[str], never: asyncio.Event | None) -> Graph:
    async def slow(state: Any) -> dict[str, Any]:
        seen.append("child started")
        try:
            if never is not None:
                await never.wait()
            else:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            seen.append("child cancelled")
            raise
        seen.append("child finished")
        return {"child": True}

    child = Graph("child_flow").add_node("slow", slow).set_entry_point("slow").set_finish_point("slow").compile()
    parent = Graph("parent_flow").add_node("start", lambda state: {})
    parent.add_node("inner", child).add_node("remote", node_type="nobody_serves_this")
    parent.add_edge("start", "inner").add_edge("start", "remote")
    parent.set_finish_point("inner").set_finish_point("remote")
    return parent.set_entry_point("start").compile()


def test_a_failing_batch_cancels_the_subgraph_running_beside_it() -> None:
    seen: list[str] = []

    url = f"memory://batches-{uuid.uuid4().hex[:6]}"

    async def scenario() -> tuple[str, list[str], dict[str, Any]]:
        from distributed_agents import Worker
        from support.aio import with_worker

        never = asyncio.Event()
        graph = _graphs(seen, never)
        async with Orchestrator(backend=url, wait_for_workers=True, worker_timeout=1.0, recover=False) as orchestrator:
            with pytest.raises(NodeNotFoundError) as caught:
                await orchestrator.execute(graph, {}, workflow_id="wf-batches")
            # The step's error came once the subgraph had ended: nothing of it runs from here on.
            assert seen == ["child started", "child cancelled"]
            await asyncio.sleep(0.3)
            before_resume = list(seen)
            # The child is left resumable; its status names the parent whose run drives it.
            children = [r for r in await orchestrator.backend.state_store.list_workflows()
                        if r.workflow_id.startswith("wf-batches:sub:")]
            assert [c.status for c in children] == ["running"], children
            note = (await orchestrator.get_workflow_status(children[0].workflow_id)).waiting_for or ""
            assert "its parent workflow 'wf-batches'" in note and "resume('wf-batches', parent graph)" in note, note
            # The cancelled child is continued when the parent is resumed (its node runs again).
            never.set()
            worker = Worker(backend=url, poll_wait=0.05)
            worker.register_node("nobody_serves_this", lambda state: {"remote": True})

            async def resumed() -> dict[str, Any]:
                result: dict[str, Any] = await orchestrator.resume("wf-batches", graph)
                return result

            result = await with_worker(worker, resumed)
            return str(caught.value), before_resume, result

    text, before_resume, result = run(scenario())
    assert "nobody_serves_this" in text
    assert before_resume == ["child started", "child cancelled"], before_resume
    assert result.get("child") is True and result.get("remote") is True, result


def test_batches_that_all_finish_give_every_outcome() -> None:
    seen: list[str] = []
    parent = _graphs(seen, None)
    url = f"memory://batches-ok-{uuid.uuid4().hex[:6]}"

    async def scenario() -> dict[str, Any]:
        from distributed_agents import Worker
        from support.aio import with_worker

        worker = Worker(backend=url, poll_wait=0.05)
        worker.register_node("nobody_serves_this", lambda state: {"remote": True})

        async def body() -> dict[str, Any]:
            async with Orchestrator(backend=url, wait_for_workers=True, worker_timeout=5, recover=False) as orch:
                result: dict[str, Any] = await orch.execute(parent, {})
                return result

        return await with_worker(worker, body)

    result = run(scenario())
    assert result.get("child") is True and result.get("remote") is True, result
    assert seen == ["child started", "child finished"]
