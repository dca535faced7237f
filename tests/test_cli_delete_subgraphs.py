"""``delete`` of a workflow deletes its subgraphs' child workflows (and theirs) with it.

A subgraph node runs its graph as a child workflow (``<parent>:sub:<step>:<node>``) that only
its parent's run drives. ``delete PARENT`` left the children's records behind (listed, taking
storage, never driven again), and a child left ``running`` when its parent's step failed kept
its step's queued tasks. Now the children, found by the ``parent`` their records name, go
with the parent: records, queued tasks, dead letters. Real CLI processes on real Redis and NATS.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator

from .test_cli import cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


def _nested() -> Graph:
    inner = Graph("inner_flow").add_node("leaf", lambda state: {"leaf": True})
    inner = inner.set_entry_point("leaf").set_finish_point("leaf").compile()
    middle = Graph("middle_flow").add_node("inner", inner).set_entry_point("inner").set_finish_point("inner").compile()
    outer = Graph("outer_flow").add_node("first", lambda state: {}).add_node("middle", middle)
    return outer.add_edge("first", "middle").set_entry_point("first").set_finish_point("middle").compile()


def test_delete_takes_the_subgraph_workflows_with_their_parent(url: str) -> None:
    prefix = f"ds{uuid.uuid4().hex[:8]}"
    graph = _nested()

    async def listed() -> list[str]:
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}, recover=False) as orchestrator:
            return sorted(r.workflow_id for r in await orchestrator.backend.state_store.list_workflows())

    async def scenario() -> tuple[list[str], Any, list[str]]:
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}, recover=False) as orchestrator:
            result = await orchestrator.execute(graph, {}, workflow_id="wf-outer")
            assert result.get("leaf") is True
            other = await orchestrator.execute(graph, {}, workflow_id="wf-other")  # not deleted: not a child
            assert other.get("leaf") is True
        before = await listed()
        done = await asyncio.to_thread(cli, "delete", "wf-outer", "--yes", "--backend-url", url, "--prefix", prefix)
        return before, done, await listed()

    before, done, after = run(scenario(), timeout=100)
    ours = [wid for wid in before if wid.startswith("wf-outer")]
    assert len(ours) == 3, before  # the parent, its child and the child's child
    assert done.returncode == 0, done.stderr
    assert "deleted 3 workflow(s), 2 of them subgraph workflows of the others" in done.stdout, done.stdout
    assert [wid for wid in after if wid.startswith("wf-outer")] == []
    assert len([wid for wid in after if wid.startswith("wf-other")]) == 3, after


def test_delete_of_a_workflow_without_subgraphs_says_nothing_more(url: str) -> None:
    prefix = f"ds{uuid.uuid4().hex[:8]}"
    plain = Graph("plain_flow").add_node("only", lambda state: {"x": 1}).set_entry_point("only")
    plain = plain.set_finish_point("only").compile()

    async def scenario() -> Any:
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}, recover=False) as orchestrator:
            await orchestrator.execute(plain, {}, workflow_id="wf-plain")
        return await asyncio.to_thread(cli, "delete", "wf-plain", "--yes", "--backend-url", url, "--prefix", prefix)

    done = run(scenario(), timeout=100)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 workflow(s)\n" in done.stdout, done.stdout
