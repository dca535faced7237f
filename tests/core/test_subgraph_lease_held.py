"""A subgraph's child workflow driven by another orchestrator is waited for, not failed.

When a parent's step is taken over (its orchestrator died), the child workflow of its
subgraph node may be driven by yet another orchestrator, whose recovery loop took it
over. The parent's ``resume`` of the child is then refused with the lease holder named:
that refusal must read as "driven elsewhere" (look again shortly), whatever its wording.
"""

from __future__ import annotations

import pytest
from support.aio import run

from distributed_agents import Orchestrator
from distributed_agents.core.errors import ExecutionError, WorkflowLeaseHeldError
from distributed_agents.core.subgraphs import _driven_elsewhere


def test_a_lease_held_by_another_orchestrator_reads_as_driven_elsewhere() -> None:
    async def refused() -> tuple[ExecutionError, Orchestrator]:
        orchestrator = Orchestrator(lease_ttl=30.0)
        await orchestrator.connect()
        try:
            store = orchestrator.backend.state_store
            assert await store.acquire_lease("parent:sub:1:inner", "another-orchestrator", 30.0) is not None
            with pytest.raises(WorkflowLeaseHeldError) as caught:
                await orchestrator._acquire("parent:sub:1:inner", wait=0.0, call="resume('parent:sub:1:inner')")
            return caught.value, orchestrator
        finally:
            await orchestrator.close()

    error, orchestrator = run(refused())
    assert isinstance(error, ExecutionError)  # what callers caught before
    assert "another-orchestrator" in str(error)
    assert _driven_elsewhere(error, "parent:sub:1:inner", orchestrator)
