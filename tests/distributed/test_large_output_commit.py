"""A node output of 60% of max_payload_bytes commits: the checkpoint stores it once.

Ops finding: a value about half the limit failed at commit ("checkpoint encodes to
1,000,041 bytes, over 983,040") because the checkpoint held it in the state and again in
the step's writes. The README's rule is a result or a state over the limit; each entry now
stores a written value the state holds only once, and history still shows the writes.
On memory, a real Redis and a real NATS server (whose 1 MiB max_payload really bounds it).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator, State
from distributed_agents.core.limits import DEFAULT_MAX_PAYLOAD_BYTES

pytestmark = pytest.mark.timeout(90)

BLOB = "x" * int(DEFAULT_MAX_PAYLOAD_BYTES * 0.6)


@pytest.fixture(params=["memory", "redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    prefix = f"bigout{uuid.uuid4().hex[:8]}"
    base = "memory://" if request.param == "memory" else request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix={prefix}&max_payload_bytes={DEFAULT_MAX_PAYLOAD_BYTES}"


def _make(state: State) -> dict[str, Any]:
    return {"blob": BLOB, "n": 1}


def _again(state: State) -> dict[str, Any]:
    return {"blob": state["blob"] + "y", "n": 2}  # a second large write: a delta entry on the chain


def test_an_output_of_60_percent_of_the_limit_commits_and_history_keeps_the_writes(url: str) -> None:
    graph = (Graph("bigout").add_node("make", _make).add_node("again", _again).set_entry_point("make")
             .add_edge("make", "again").set_finish_point("again").compile())

    async def scenario() -> Any:
        orchestrator = Orchestrator(backend=url)
        try:
            result = await orchestrator.execute(graph, {}, workflow_id="wf-big")
            checkpoints = await orchestrator.backend.state_store.list_checkpoints("wf-big")
            return result, checkpoints
        finally:
            await orchestrator.close()

    result, checkpoints = run(scenario(), timeout=60)
    assert result["blob"] == BLOB + "y" and result["n"] == 2
    by_step = {cp.step: cp for cp in checkpoints}
    made = next(cp for cp in checkpoints if "make" in cp.writes)
    again = next(cp for cp in checkpoints if "again" in cp.writes)
    assert made.writes["make"] == {"blob": BLOB, "n": 1} and made.state["blob"] == BLOB
    assert again.writes["again"] == {"blob": BLOB + "y", "n": 2} and again.state["blob"] == BLOB + "y"
    assert len(by_step) == len(checkpoints)
