"""Cancelling a workflow from another process stops the orchestrator driving it.

The example (distributed trial): orchestrator A drives a fan-out whose worker is busy, so
some tasks are still queued; another process runs ``distributed-agents cancel WF``, which
records CANCELLED and takes the queued tasks back. A waited in ``wait_results`` for exactly
those tasks, whose results never come: its ``execute`` hung for ever (the service's drive
too), renewing the lease, until someone resumed the workflow. Now the driver reads the
record with each lease renewal and stops: ``execute`` raises ``WorkflowCancelledError``
within a third of ``lease_ttl``. On memory, a real Redis server and a real NATS server; the
other process is another ``Orchestrator`` on the same backend (it does not drive the run).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.errors import WorkflowCancelledError
from distributed_agents.core.ports.state_store import WorkflowStatus

pytestmark = pytest.mark.timeout(90)

LEASE_TTL = 1.5


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"cx{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def two_branches() -> Graph:
    graph = Graph("two_branches").add_node("start").add_node("slow_a", node_type="slow").add_node(
        "slow_b", node_type="slow")
    graph.set_entry_point("start").add_edge("start", "slow_a").add_edge("start", "slow_b")
    return graph.set_finish_point("slow_a").set_finish_point("slow_b").compile()


@pytest.mark.parametrize("fan", ["two branches", "sends"])
def test_a_cancel_from_another_orchestrator_stops_the_driver_waiting_for_queued_tasks(url: str, fan: str) -> None:
    from distributed_agents import Send

    if fan == "two branches":
        graph = two_branches()
    else:
        graph = Graph("sends").add_node("start").add_node("work", node_type="slow")
        graph.set_entry_point("start").add_conditional_edges(
            "start", lambda s: [Send("work", {"i": i}) for i in range(12)])
        graph = graph.set_finish_point("work").compile()
    worker = Worker(backend=url, capacity=1, poll_wait=0.1)  # one slot: the other tasks stay queued

    async def scenario() -> tuple[float, str]:
        slow = BlockingNode()
        worker.register_node("start", lambda s: None)
        worker.register_node("slow", slow)
        driver = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60,
                              lease_ttl=LEASE_TTL)
        other = Orchestrator(backend=url)
        serving = asyncio.ensure_future(worker.start())
        try:
            running = asyncio.ensure_future(driver.execute(graph, {}, workflow_id="wf-x"))
            await asyncio.wait_for(slow.started.wait(), 20)
            assert await other.cancel_workflow("wf-x")
            cancelled_at = time.monotonic()
            with pytest.raises(WorkflowCancelledError):
                await asyncio.wait_for(running, 20)
            took = time.monotonic() - cancelled_at
            status = (await other.get_workflow_status("wf-x")).status
            return took, status
        finally:
            await worker.stop(grace=2)
            await serving
            await driver.close()
            await other.close()

    took, status = run(scenario(), timeout=80)
    assert status == WorkflowStatus.CANCELLED
    assert took < 20  # (bounded by the wait_for above: before, it never returned)


def test_a_workflow_deleted_under_its_driver_ends_its_run_saying_it_is_gone(url: str) -> None:
    """From the trial: a record deleted (or lost by a server restarted without persistence)
    while its orchestrator drove it was logged as "lease taken by another orchestrator;
    waiting for its result", then a bare WorkflowNotFoundError. Now the run ends with an
    error saying the workflow is gone and why that happens."""
    from distributed_agents.core.errors import WorkflowNotFoundError

    worker = Worker(backend=url, capacity=1, poll_wait=0.1)

    async def scenario() -> str:
        slow = BlockingNode()
        worker.register_node("start", lambda s: None)
        worker.register_node("slow", slow)
        driver = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60,
                              lease_ttl=LEASE_TTL)
        other = Orchestrator(backend=url)
        serving = asyncio.ensure_future(worker.start())
        try:
            running = asyncio.ensure_future(driver.execute(two_branches(), {}, workflow_id="wf-gone"))
            await asyncio.wait_for(slow.started.wait(), 20)
            await other.connect()
            assert await other.backend.state_store.delete("wf-gone")
            with pytest.raises(WorkflowNotFoundError) as caught:
                await asyncio.wait_for(running, 20)
            return str(caught.value)
        finally:
            await worker.stop(grace=2)
            await serving
            await driver.close()
            await other.close()

    message = run(scenario(), timeout=80)
    assert "is gone from" in message and "delete --force" in message, message


def test_a_record_deleted_while_its_lease_stays_held_still_ends_the_run() -> None:
    """A delete whose write freeing the lease lost a race with a renewal (on NATS, a CAS against
    the revision it read) left the record gone and the lease renewing: the driver renewed on
    and waited for ever. Now two renewals in a row that find no record stop the run, which
    says the workflow is gone. The state is made by hand on the memory backend: the record
    removed, the lease kept."""
    from distributed_agents.core.errors import WorkflowNotFoundError

    url = f"memory://?prefix=kept{uuid.uuid4().hex[:8]}"
    worker = Worker(backend=url, capacity=1, poll_wait=0.1)

    async def scenario() -> str:
        slow = BlockingNode()
        worker.register_node("start", lambda s: None)
        worker.register_node("slow", slow)
        driver = Orchestrator(backend=url, wait_for_workers=True, local_nodes=False, worker_timeout=60,
                              lease_ttl=LEASE_TTL)
        serving = asyncio.ensure_future(worker.start())
        try:
            running = asyncio.ensure_future(driver.execute(two_branches(), {}, workflow_id="wf-kept"))
            await asyncio.wait_for(slow.started.wait(), 20)
            data = driver.backend.state_store._data  # type: ignore[attr-defined]
            with data.lock:
                assert data.leases.get("wf-kept") is not None
                data.workflows.pop("wf-kept")  # the record goes, the lease stays
            with pytest.raises(WorkflowNotFoundError) as caught:  # before: it never returned
                await asyncio.wait_for(running, 20)
            return str(caught.value)
        finally:
            await worker.stop(grace=2)
            await serving
            await driver.close()

    message = run(scenario(), timeout=60)
    assert "wf-kept" in message, message
