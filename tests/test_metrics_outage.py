"""The metrics poll during a backend outage: one warning at its start, one info line at its end.

Not a traceback every ``DA_METRICS_INTERVAL``. The backend here is a stand-in whose
reads raise ``BackendUnavailableError`` while ``down`` is set (the poll is what is tested).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.task_queue import QueueStats
from distributed_agents.metrics import Metrics


class _Flaky:
    def __init__(self) -> None:
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailableError("Redis at redis://127.0.0.1:1/0 is unreachable while trying to read stats")


class _Backend:
    def __init__(self) -> None:
        self.flaky = _Flaky()
        backend = self

        class Queue:
            async def stats(self, node_type: str) -> QueueStats:
                backend.flaky._check()
                return QueueStats(node_type, 1, 0, 0)

        class Registry:
            async def list_workers(self) -> list[Any]:
                backend.flaky._check()
                return []

        class Store:
            async def count_workflows(self) -> dict[str, int]:
                backend.flaky._check()
                return {"completed": 2}

        self.task_queue, self.worker_registry, self.state_store = Queue(), Registry(), Store()


def test_an_outage_is_logged_once_at_its_start_and_once_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    backend = _Backend()

    async def polls() -> None:
        await metrics.poll(backend, frozenset({"writer"}))
        backend.flaky.down = True
        for _ in range(5):
            await metrics.poll(backend, frozenset({"writer"}))
            await metrics.poll(backend)  # an orchestrator's poll (workers, workflow counts)
        backend.flaky.down = False
        await metrics.poll(backend)

    with caplog.at_level(logging.INFO, logger="distributed_agents.metrics"):
        asyncio.run(polls())
    records = [r for r in caplog.records if r.name == "distributed_agents.metrics"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in records)
    assert "unavailable" in records[0].getMessage() and "redis://127.0.0.1:1/0" in records[0].getMessage()
    assert "available again" in records[1].getMessage()
    assert 'distributed_agents_workflows{status="completed"} 2.0' in metrics.text()
