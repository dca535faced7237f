"""Redis ``get_checkpoint``: one script reads one step's checkpoint (its entry and its chain back to
the snapshot), for any workflow id, and agrees with ``list_checkpoints``."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis import RedisStateManager
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

pytestmark = pytest.mark.timeout(60)

# Ids whose encoding holds quotes, backslashes and the entry's own field names.
_IDS = ['plain', 'w","step":99', 'w\\', 'w\\"', '"delta":{"base":"","snap":0}', 'ünï "cödé"']


async def _evalsha_calls(probe: redis_asyncio.Redis) -> int:
    stats = await probe.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_each_step_reads_back_in_one_script_for_any_workflow_id(redis_url: str) -> None:
    prefix = f"gc{uuid.uuid4().hex[:8]}"
    steps = [2, 3, 4, 7, 8, 9, 10, 11, 12, 13]

    async def scenario() -> None:
        store = RedisStateManager(redis_url, prefix=prefix)
        try:
            for workflow_id in _IDS:
                version, history = 0, []
                for step in steps:
                    history.append(f"message {step} " + "m" * 400)
                    state: dict[str, Any] = {"history": list(history), "doc": "d" * 3000, "step": step,
                                             "workflow_id": f'{workflow_id}","step":{step + 1}'}
                    record = WorkflowRecord(workflow_id, "g", "running", state, step=step)
                    saved = await store.save(record, expected_version=version,
                                             checkpoint=Checkpoint(workflow_id, step, state, writes={"n": {"i": step}}))
                    version = saved.version
                listed = {cp.step: cp.to_dict() for cp in await store.list_checkpoints(workflow_id)}
                for step in [*steps, 0, 1, 5, 6, 14]:
                    got = await store.get_checkpoint(workflow_id, step)
                    assert (None if got is None else got.to_dict()) == listed.get(step), (workflow_id, step)
            assert await store.get_checkpoint("ghost", 0) is None
        finally:
            await store.close()

    run(scenario(), 50)


def test_one_read_is_one_round_trip() -> None:
    """Counted on a private server: other tests' scripts would count too on a shared one."""

    async def scenario(url: str) -> int:
        store = RedisStateManager(url, prefix="one")
        probe = redis_asyncio.Redis.from_url(url)
        try:
            version = 0
            for step in range(30):
                state = {"doc": "d" * 5000, "n": step}
                saved = await store.save(WorkflowRecord("w", "g", "running", state, step=step), expected_version=version,
                                         checkpoint=Checkpoint("w", step, state))
                version = saved.version
            await store.get_checkpoint("w", 29)  # loads the script
            before = await _evalsha_calls(probe)
            found = [await store.get_checkpoint("w", step) for step in (29, 17, 3)]
            assert [None if cp is None else cp.state["n"] for cp in found] == [29, 17, 3]
            return await _evalsha_calls(probe) - before
        finally:
            await probe.aclose()
            await store.close()

    with RedisServer() as server:
        assert run(scenario(server.url), 50) == 3
