"""A step that fails for want of a worker names the nodes of that step that had failed already.

The example (a new user): a step ran two nodes on workers; one failed (dead-lettered), the
other's only worker had stopped. After ``worker_timeout`` the workflow failed with the
no-worker error alone: the node's own error showed only as its dead letter. Now that error
says, after what to start, which nodes failed meanwhile and how (and where the traceback
is). Real workers on the memory backend; the waits are the orchestrator's own.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.aio import run, with_worker

from distributed_agents import Graph, Orchestrator, Worker
from distributed_agents.core.errors import NodeNotFoundError

pytestmark = pytest.mark.timeout(60)


def _boom(state: Any) -> dict[str, Any]:
    raise ValueError("the mail server refused")


def _parallel(failing: list[str], orphaned: list[str]) -> Graph:
    graph = Graph("mixed_step").add_node("start", node_type="starter")
    for name in failing:
        graph.add_node(name, node_type="served")
        graph.add_edge("start", name).set_finish_point(name)
    for name in orphaned:
        graph.add_node(name, node_type=f"unserved_{name}")
        graph.add_edge("start", name).set_finish_point(name)
    return graph.set_entry_point("start").compile()


def _failure(failing: list[str], orphaned: list[str]) -> tuple[str, str]:
    url = f"memory://mixed-{uuid.uuid4().hex[:6]}"
    worker = Worker(backend=url, poll_wait=0.05)
    worker.register_node("starter", lambda state: {})
    worker.register_node("served", _boom)

    async def scenario() -> tuple[str, str]:
        async with Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=1.5,
                                recover=False) as orchestrator:
            with pytest.raises(NodeNotFoundError) as caught:
                await orchestrator.execute(_parallel(failing, orphaned), {}, workflow_id="wf-mixed")
            status = await orchestrator.get_workflow_status("wf-mixed")
            return str(caught.value), str(status.error)

    async def body() -> tuple[str, str]:
        return await scenario()

    return run(with_worker(worker, body))


def test_a_node_that_failed_while_another_waited_for_a_worker_is_named_in_the_steps_error() -> None:
    raised, stored = _failure(["mailer"], ["archiver"])
    for text in (raised, stored):
        assert "no live worker serves node type(s) 'unserved_archiver'" in text, text
        assert ("meanwhile node 'mailer' failed after 1 attempt(s): ValueError: the mail server refused" in text), text
        assert "dead-letters list" in text


def test_several_failed_nodes_are_each_named_up_to_five() -> None:
    failing = [f"mailer{i}" for i in range(7)]
    raised, _ = _failure(failing, ["archiver"])
    named = [name for name in failing if f"node {name!r} failed" in raised]
    assert len(named) == 5, raised
    assert "(and 2 more)" in raised


def test_a_step_whose_other_nodes_did_not_fail_keeps_the_plain_no_worker_error() -> None:
    url = f"memory://plain-{uuid.uuid4().hex[:6]}"
    worker = Worker(backend=url, poll_wait=0.05)
    worker.register_node("starter", lambda state: {})
    worker.register_node("served", lambda state: {"ok": True})

    async def body() -> str:
        async with Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, worker_timeout=0.3,
                                recover=False) as orchestrator:
            with pytest.raises(NodeNotFoundError) as caught:
                await orchestrator.execute(_parallel(["fine"], ["archiver"]), {})
            return str(caught.value)

    text = run(with_worker(worker, body))
    assert "no live worker serves node type(s) 'unserved_archiver'" in text and "meanwhile" not in text, text


def test_without_worker_timeout_the_status_of_the_waiting_step_names_the_failed_node() -> None:
    """The step waits on for a worker (no ``worker_timeout``), and its status says which node
    failed meanwhile, not only which worker it waits for."""
    url = f"memory://waiting-{uuid.uuid4().hex[:6]}"
    worker = Worker(backend=url, poll_wait=0.05)
    worker.register_node("starter", lambda state: {})
    worker.register_node("served", _boom)

    async def body() -> str:
        import asyncio

        async with Orchestrator(backend=url, local_nodes=False, wait_for_workers=True, recover=False) as orchestrator:
            running = asyncio.ensure_future(orchestrator.execute(_parallel(["mailer"], ["archiver"]), {},
                                                                 workflow_id="wf-waits"))
            note = ""
            for _ in range(200):
                await asyncio.sleep(0.05)
                note = (await orchestrator.get_workflow_status("wf-waits")).waiting_for or ""
                if "meanwhile" in note:
                    break
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            return note

    note = run(with_worker(worker, body))
    assert note.startswith("waiting for a worker of type 'unserved_archiver'"), note
    assert "meanwhile node 'mailer' failed after 1 attempt(s): ValueError: the mail server refused" in note, note
