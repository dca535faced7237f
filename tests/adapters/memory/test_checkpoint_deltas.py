"""The memory store keeps checkpoints as what changed and reads back full, independent states."""

from __future__ import annotations

from typing import Any

from support.aio import run

from distributed_agents.adapters.memory.state_store import MemoryStateStore, StateData
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord


def test_unchanged_values_cost_once_and_every_tail_reads_back_whole() -> None:
    data = StateData()
    store = MemoryStateStore(data)
    doc = "d" * 20_000
    states: list[dict[str, Any]] = [{"doc": doc, "n": n, "log": list(range(n))} for n in range(120)]

    async def scenario() -> list[list[Any]]:
        version = 0
        for step, state in enumerate(states):
            saved = await store.save(WorkflowRecord("w1", "g", "running", state), expected_version=version,
                                     checkpoint=Checkpoint("w1", step, state))
            version = saved.version
            state["log"].append("mutated after saving")  # the store must hold its own copy
        return [[cp.step for cp in await store.list_checkpoints("w1", limit=limit)] for limit in (1, 7, 200)] + [
            [cp.state for cp in await store.list_checkpoints("w1", limit=limit)] for limit in (1, 7)]

    steps_1, steps_7, steps_all, states_1, states_7 = run(scenario(), 30)
    stored = sum(map(len, data.workflows["w1"].checkpoints))
    assert stored < 3 * 20_000 + 120 * 1_000, stored  # whole states would take 120 x 20 KB
    expected = [{"doc": doc, "n": n, "log": list(range(n))} for n in range(120)]
    assert steps_1 == [119] and steps_7 == list(range(119, 112, -1)) and steps_all == list(range(119, -1, -1))
    assert states_1 == [expected[119]] and states_7 == expected[119:112:-1]
