"""``delete --force`` of a running workflow cancels it first.

The example (distributed trial): ``delete WF --force --yes`` on a running 40-task fan-out
removed the record but left its queued tasks (``queues`` showed 24 on Redis, 20 on NATS), and a
worker started later ran every one of them for a workflow that no longer existed. Now the
workflow is cancelled first, as ``cancel`` does (queued tasks taken back, running ones told
to stop, the driving orchestrator stopped), then deleted.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from support.aio import run
from support.nodes import BlockingNode

from distributed_agents import Graph, Orchestrator, Send, Worker
from distributed_agents.core.errors import WorkflowCancelledError, WorkflowNotFoundError

from .test_cli import cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


def test_delete_force_of_a_running_fan_out_leaves_no_queued_task(url: str) -> None:
    prefix = f"df{uuid.uuid4().hex[:8]}"
    graph = Graph("fan12").add_node("start").add_node("work", node_type="slow")
    graph.set_entry_point("start").add_conditional_edges("start", lambda s: [Send("work", {"i": i}) for i in range(12)])
    graph = graph.set_finish_point("work").compile()
    worker = Worker(backend=url, backend_options={"prefix": prefix}, capacity=1, poll_wait=0.1)

    async def scenario() -> tuple[str, int, int]:
        slow = BlockingNode()
        worker.register_node("start", lambda s: None)
        worker.register_node("slow", slow)
        driver = Orchestrator(backend=url, backend_options={"prefix": prefix}, wait_for_workers=True,
                              local_nodes=False, worker_timeout=60, lease_ttl=1.5)
        serving = asyncio.ensure_future(worker.start())
        try:
            running = asyncio.ensure_future(driver.execute(graph, {}, workflow_id="wf-del"))
            await asyncio.wait_for(slow.started.wait(), 20)
            assert (await driver.backend.task_queue.stats("slow")).queued > 0
            done = await asyncio.to_thread(cli, "delete", "wf-del", "--force", "--yes", "--backend-url", url,
                                           "--prefix", prefix)
            assert done.returncode == 0, done.stderr
            with pytest.raises((WorkflowCancelledError, WorkflowNotFoundError)):
                await asyncio.wait_for(running, 30)
            await asyncio.wait_for(slow.cancelled.wait(), 20)  # the running one was told to stop
            stats = await driver.backend.task_queue.stats("slow")
            return done.stdout, stats.queued, len(await driver.backend.task_queue.dead_letters("slow"))
        finally:
            await worker.stop(grace=2)
            await serving
            await driver.close()

    out, queued, letters = run(scenario(), timeout=100)
    assert "deleted 1 workflow(s)" in out
    assert queued == 0 and letters == 0
