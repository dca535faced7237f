"""``StateStore.count_workflows``: the workflows per status, as the metrics gauge polls them.

On memory (the port's default, from ``list_workflows``), a real Redis (counted inside the
server) and a real NATS server: the counts match the records, every status is a key.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.core.errors import NodeExecutionError
from distributed_agents.core.ports.state_store import WorkflowStatus

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"count{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}"


def _boom(state: State) -> dict[str, Any]:
    raise ValueError("no")


def test_counts_match_the_records_of_each_status(url: str) -> None:
    ok = Graph("ok").add_node("a", lambda s: {"x": 1}).set_entry_point("a").set_finish_point("a").compile()
    bad = Graph("bad").add_node("b", _boom).set_entry_point("b").set_finish_point("b").compile()

    async def scenario() -> tuple[dict[str, int], collections.Counter[str], dict[str, int]]:
        orchestrator = Orchestrator(backend=url)
        try:
            store = orchestrator.backend.state_store
            await orchestrator.backend.connect()
            empty = await store.count_workflows()
            for n in range(3):
                await orchestrator.execute(ok, {}, workflow_id=f"wf-ok-{n}")
            with pytest.raises(NodeExecutionError):
                await orchestrator.execute(bad, {}, workflow_id="wf-bad")
            counts = await store.count_workflows()
            listed = collections.Counter(record.status for record in await store.list_workflows())
            return empty, listed, counts
        finally:
            await orchestrator.close()

    empty, listed, counts = run(scenario(), timeout=60)
    assert empty == dict.fromkeys(WorkflowStatus.ALL, 0)
    assert set(counts) == WorkflowStatus.ALL
    assert counts["completed"] == 3 and counts["failed"] == 1
    assert {status: n for status, n in counts.items() if n} == dict(listed)
