"""``resume`` whose lease ran out before its write, the workflow taken over meanwhile.

On a slow process (or with a short ``lease_ttl``) another orchestrator can take a
workflow over between ``resume`` acquiring its lease and writing the answers. The write
is refused (fencing token); ``resume`` must say so as ``WorkflowLeaseHeldError`` (an
``ExecutionError``: nothing changed, call it again), not leak a backend error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Command, Graph, Orchestrator, State, interrupt
from distributed_agents.core.errors import WorkflowLeaseHeldError
from distributed_agents.core.ports.state_store import WorkflowStatus


def ask(state: State) -> dict[str, Any]:
    return {"answer": interrupt("proceed?")}


def test_resume_taken_over_before_its_write_says_so_and_changes_nothing() -> None:
    graph = Graph("ask_once")
    graph.add_node("ask", ask).set_entry_point("ask").set_finish_point("ask")
    compiled = graph.compile()

    async def scenario() -> tuple[WorkflowLeaseHeldError, Any]:
        orchestrator = Orchestrator(lease_ttl=0.2)
        try:
            paused = await orchestrator.execute(compiled, {}, workflow_id="wf")
            assert "__interrupt__" in paused
            store = orchestrator.backend.state_store
            real_get = store.get

            async def slow_get(workflow_id: str) -> Any:
                record = await real_get(workflow_id)
                holder = await store.lease_holder(workflow_id)
                if holder is not None and holder.owner == orchestrator.orchestrator_id:
                    # resume holds the lease now: stall past it, and let another orchestrator take over.
                    await asyncio.sleep(0.5)
                    assert await store.acquire_lease(workflow_id, "other-orchestrator", 30.0) is not None
                return record

            store.get = slow_get  # type: ignore[method-assign]
            with pytest.raises(WorkflowLeaseHeldError) as caught:
                await orchestrator.resume("wf", compiled, Command(resume="yes"))
            store.get = real_get  # type: ignore[method-assign]
            return caught.value, await store.get("wf")
        finally:
            await orchestrator.close()

    error, record = run(scenario())
    assert "took the workflow over" in str(error) and "call resume() again" in str(error)
    assert record.status == WorkflowStatus.INTERRUPTED  # the answer was not recorded
