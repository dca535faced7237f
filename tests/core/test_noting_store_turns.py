"""The engine's store view (``core.waiting.NotingStore``) lets one save at a time reach the store.

A commit may be in flight while the next step runs (durability ``"async"``); saves must
not interleave, or one would expect a version the other just moved on. The view keeps
them in turn with a flag and waiters (no lock per commit); a waiter cancelled while it
waits does not stop the ones behind it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from distributed_agents.adapters.memory.state_store import MemoryStateStore, StateData
from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus
from distributed_agents.core.waiting import NotingStore
from support.aio import run


class _HeldStore(MemoryStateStore):
    """A memory store whose saves wait for ``gate`` and log when they start and end."""

    def __init__(self) -> None:
        super().__init__(StateData())
        self.gate = asyncio.Event()
        self.log: list[str] = []

    async def save(self, record: WorkflowRecord, **kwargs: Any) -> WorkflowRecord:
        self.log.append(f"start {record.step}")
        await self.gate.wait()
        saved = await super().save(record, **kwargs)
        self.log.append(f"end {record.step}")
        return saved


def _record(workflow_id: str) -> WorkflowRecord:
    return WorkflowRecord(workflow_id=workflow_id, graph_name="g", status=WorkflowStatus.RUNNING, state={},
                          frontier={"next": ["n"], "joins": {}})


def test_saves_through_the_view_take_turns_and_a_cancelled_waiter_does_not_block_the_next() -> None:
    async def scenario() -> tuple[list[str], int, bool]:
        inner = _HeldStore()
        workflow_id = f"wf-{uuid.uuid4().hex[:6]}"
        lease = await inner.acquire_lease(workflow_id, "me", 30)
        assert lease is not None
        inner.gate.set()
        created = await inner.save(_record(workflow_id), expected_version=0, fencing_token=lease.fencing_token)
        inner.gate.clear()
        inner.log.clear()
        view = NotingStore(inner, workflow_id, lease)
        one = asyncio.ensure_future(view.save(created.evolve(step=1), expected_version=created.version,
                                              fencing_token=lease.fencing_token))
        await asyncio.sleep(0)
        dropped = asyncio.ensure_future(view.save(created.evolve(step=7), expected_version=created.version + 1,
                                                  fencing_token=lease.fencing_token))
        two = asyncio.ensure_future(view.save(created.evolve(step=2), expected_version=created.version + 1,
                                              fencing_token=lease.fencing_token))
        await asyncio.sleep(0)
        dropped.cancel()  # waiting for its turn: it never reaches the store, the next still does
        inner.gate.set()
        saved_one, saved_two = await one, await two
        return inner.log, saved_two.step, dropped.cancelled() and saved_one.step == 1

    log, last_step, dropped = run(scenario())
    assert log == ["start 1", "end 1", "start 2", "end 2"]
    assert last_step == 2 and dropped
