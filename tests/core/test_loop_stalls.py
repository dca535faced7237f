"""``core.loop_stalls.StallWatch``: a blocked event loop is noticed, reported with the nodes that
ran then and what to do, and remembered for a lease lost meanwhile (``Worker``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from support.aio import run, with_worker

from distributed_agents import Graph, Orchestrator, State, Worker
from distributed_agents.core.loop_stalls import StallWatch

pytestmark = pytest.mark.timeout(60)


def test_a_block_of_the_loop_is_reported_with_the_async_nodes_running_then(caplog: pytest.LogCaptureFixture) -> None:
    running = [("node 'sync_one' (task t1)", False), ("node 'blocky' (task t2)", True)]

    async def scenario() -> StallWatch:
        watch = StallWatch("w-test", lambda: running)
        watch.start()
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        time.sleep(1.3)  # what a synchronous client inside an async def node does
        await asyncio.sleep(0.4)  # the next tick finds the loop late
        watch.close()
        assert watch.longest_since(started) >= 1.0  # (late by the block less what was left to the tick: <= TICK)
        assert watch.longest_since(asyncio.get_running_loop().time()) == 0.0  # none ended after now
        return watch

    with caplog.at_level(logging.WARNING, logger="distributed_agents.worker"):
        run(scenario())
    [warning] = [r.getMessage() for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert warning.startswith("worker w-test: its event loop was blocked for at least 1.")
    # The async node is the suspect (a plain function runs in a thread and blocks nothing).
    assert "while running node 'blocky' (task t2)" in warning and "sync_one" not in warning
    assert "asyncio.to_thread" in warning and "plain def" in warning and "lease" in warning


def test_a_loop_that_is_never_blocked_that_long_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        watch = StallWatch("w-quiet", list, warn_after=5.0)  # (a 5 s starvation of the test is not expected)
        watch.start()
        for _ in range(20):
            time.sleep(0.02)  # short blocks, as busy nodes make
            await asyncio.sleep(0.01)
        watch.close()
        assert watch.stalls == []

    with caplog.at_level(logging.WARNING, logger="distributed_agents.worker"):
        run(scenario())
    assert not [r for r in caplog.records if "event loop was blocked" in r.getMessage()]


async def _blocking_node(state: State) -> dict[str, Any]:
    time.sleep(1.5)  # a blocking call inside async def: the mistake this catches
    return {"n": 1}


def test_a_worker_names_the_async_node_that_blocked_it_and_the_lease_it_lost_because(
        caplog: pytest.LogCaptureFixture) -> None:
    graph = Graph("stall").add_node("blocky", node_type="blocky_stall").set_entry_point("blocky")
    graph.set_finish_point("blocky").compile()
    # A lease shorter than the block: lost while the loop is blocked (the node runs again).
    worker = Worker(backend="memory://stall", poll_wait=0.05, lease_seconds=0.6)
    worker.register_node("blocky_stall", _blocking_node)

    async def body() -> None:
        async with Orchestrator(backend="memory://stall", local_nodes=False) as orchestrator:
            task = asyncio.ensure_future(orchestrator.execute(graph, {}))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                    "lease lost before settling" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="distributed_agents.worker"):
        run(with_worker(worker, body))
    messages = [r.getMessage() for r in caplog.records]
    assert any("event loop was blocked for at least 1." in m and "while running node 'blocky'" in m for m in messages)
    lost = [m for m in messages if "lease lost before settling" in m]
    assert lost and "this worker's event loop was blocked for at least 1." in lost[0]
