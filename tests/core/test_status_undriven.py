"""A running workflow that no orchestrator drives says so in its status.

The example (distributed trial): ``submit`` with no orchestrator up (or after the driving
orchestrator died and none recovers) left ``status --json`` at ``"status": "running"``,
``"waiting_for": null``: it looked as live as a workflow being driven. Now ``waiting_for``
says an orchestrator is needed and how to get one; a workflow whose lease is held says
nothing more than before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.errors import WorkflowNotFoundError
from distributed_agents.core.ports.state_store import WorkflowStatus

pytestmark = pytest.mark.timeout(60)


def one(node: object) -> Graph:
    return Graph("one").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"ud{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def test_a_submitted_workflow_nobody_drives_says_it_waits_for_an_orchestrator(url: str) -> None:
    async def scenario() -> tuple[str | None, str | None, str]:
        node = BlockingNode()
        driver = Orchestrator(backend=url, lease_ttl=1.0)
        reader = Orchestrator(backend=url)
        try:
            running = asyncio.ensure_future(driver.execute(one(node), {}, workflow_id="wf-live"))
            await asyncio.wait_for(node.started.wait(), 20)
            driven = (await reader.get_workflow_status("wf-live")).waiting_for
            running.cancel()  # the caller gives up: the workflow stays stored, running, its lease released
            await asyncio.gather(running, return_exceptions=True)
            info = await reader.get_workflow_status("wf-live")
            return driven, info.waiting_for, info.status
        finally:
            await driver.close()
            await reader.close()

    driven, undriven, status = run(scenario(), 50)
    assert driven is None
    assert status == WorkflowStatus.RUNNING
    assert undriven is not None and "none is driving it" in undriven and "resume('wf-live', graph)" in undriven
    assert "serving graph 'one'" in undriven


def test_the_note_a_dead_driver_left_gives_way_to_saying_nobody_drives_it(url: str) -> None:
    """From an operations trial: the driver, waiting for a worker, stored "waiting for a worker of
    type 'work'"; once it was gone (SIGKILL, or stopped) status still said that, though a worker
    was up by then and what was missing was an orchestrator."""
    graph = Graph("remote").add_node("n", node_type="far_away").set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> tuple[str | None, str | None]:
        driver = Orchestrator(backend=url, lease_ttl=1.0, wait_for_workers=True, local_nodes=False)
        reader = Orchestrator(backend=url)
        try:
            running = asyncio.ensure_future(driver.execute(graph, {}, workflow_id="wf-noted"))
            noted = None
            for _ in range(200):
                with contextlib.suppress(WorkflowNotFoundError):  # (not stored yet)
                    noted = (await reader.get_workflow_status("wf-noted")).waiting_for
                if noted:
                    break
                await asyncio.sleep(0.05)
            running.cancel()  # the driver stops; its note stays in the record
            await asyncio.gather(running, return_exceptions=True)
            return noted, (await reader.get_workflow_status("wf-noted")).waiting_for
        finally:
            await driver.close()
            await reader.close()

    noted, after = run(scenario(), 50)
    assert noted is not None and "waiting for a worker of type 'far_away'" in noted
    assert after is not None and "none is driving it" in after


def test_a_wait_on_a_workflow_nobody_drives_says_so_once_and_one_on_a_driven_workflow_says_nothing(
        url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wait`` on a workflow submitted with no orchestrator up waited silently for ever."""
    import logging

    from distributed_agents.core import orchestrator as orchestrator_module

    monkeypatch.setattr(orchestrator_module, "UNDRIVEN_LOOK_AFTER", 0.2)

    async def scenario() -> None:
        node = BlockingNode()
        driver = Orchestrator(backend=url, lease_ttl=1.0)
        reader = Orchestrator(backend=url)
        try:
            running = asyncio.ensure_future(driver.execute(one(node), {}, workflow_id="wf-waited"))
            await asyncio.wait_for(node.started.wait(), 20)
            with pytest.raises(TimeoutError):
                await reader.wait("wf-waited", timeout=0.8)  # driven: nothing said
            assert not [r for r in caplog.records if "none is driving it" in r.getMessage()]
            running.cancel()  # the caller gives up: stored running, its lease released
            await asyncio.gather(running, return_exceptions=True)
            with pytest.raises(TimeoutError):
                await reader.wait("wf-waited", timeout=1.5)
        finally:
            await driver.close()
            await reader.close()

    with caplog.at_level(logging.WARNING, logger="distributed_agents"):
        run(scenario(), 50)
    said = [r.getMessage() for r in caplog.records if "none is driving it" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith("wait for workflow 'wf-waited': it is running, but waiting for an orchestrator")
    assert "resume('wf-waited', graph)" in said[0] and "or 1.5s have passed" in said[0]
