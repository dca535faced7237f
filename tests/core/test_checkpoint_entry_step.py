"""``entry_step`` reads a stored checkpoint entry's step, whatever its workflow id and state hold,
and the memory store's ``get_checkpoint`` agrees with ``list_checkpoints`` on any chain."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.memory.state_store import MemoryStateStore, StateData
from distributed_agents.core.checkpoint_delta import entry_step, next_entry
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord

# Workflow ids and state keys that look like the entry's own fields: quotes, backslashes, '"step":'.
_tricky = st.one_of(st.text(max_size=12), st.sampled_from(['","step":9', '\\', '\\"', 'x\\","step":1,"', '"delta":']))


@settings(max_examples=200, deadline=None)
@given(workflow_id=_tricky, steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True),
       key=_tricky, big=st.booleans())
def test_entry_step_reads_the_step_of_snapshots_and_deltas(workflow_id: str, steps: list[int], key: str,
                                                          big: bool) -> None:
    tip = None
    for index, step in enumerate(sorted(steps)):
        state: dict[str, Any] = {key: {"step": index, "workflow_id": workflow_id}, "pad": "p" * (2000 if big else 5),
                                 "n": index}
        entry, tip = next_entry(Checkpoint(workflow_id, step, state, {"next": [key]}, writes={key: {"step": -1}}),
                                tip, index=index)
        assert entry_step(entry) == step


def test_entry_step_refuses_what_is_no_entry() -> None:
    with pytest.raises(PayloadDecodeError, match="no step"):
        entry_step(b'{"delta":{"base":"ab","snap":0},"id":"x"}')


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True), grow=st.booleans(),
       probe=st.integers(-1, 45))
def test_memory_get_checkpoint_is_list_checkpoints_at_that_step(steps: list[int], grow: bool, probe: int) -> None:
    async def scenario() -> None:
        store = MemoryStateStore(StateData())
        version = 0
        history: list[str] = []
        for step in sorted(steps):
            history.append(f"message {step} " + "m" * 200)
            state = {"history": list(history) if grow else [f"only {step}"], "doc": "d" * 1500, "at": step}
            record = WorkflowRecord("w", "g", "running", state, step=step)
            version = (await store.save(record, expected_version=version,
                                        checkpoint=Checkpoint("w", step, state, writes={"n": {"at": step}}))).version
        listed = {cp.step: cp.to_dict() for cp in await store.list_checkpoints("w")}
        for step in [*steps, probe]:
            got = await store.get_checkpoint("w", step)
            assert (None if got is None else got.to_dict()) == listed.get(step)

    run(scenario(), 10)
