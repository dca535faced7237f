"""``core.task_state``: digests, the worker's state cache (one read per state, bounded, never stale)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.memory.state_store import MemoryStateStore, StateData
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord
from distributed_agents.core.task_state import StateCache, TaskStateError, copy_json, read_ref, state_digest, state_ref

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                               st.text(max_size=5)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=3)), max_leaves=10)
_states = st.dictionaries(st.text(max_size=4), _json, max_size=5)


@settings(max_examples=50, deadline=None)
@given(state=_states, seed=st.integers(0, 1000))
def test_the_digest_is_of_the_content_not_the_key_order(state: dict[str, Any], seed: int) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            random.Random(seed).shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    assert state_digest(shuffled(state)) == state_digest(state) == state_digest(decode(encode(state)))


@settings(max_examples=50, deadline=None)
@given(a=_states, b=_states)
def test_different_states_have_different_digests(a: dict[str, Any], b: dict[str, Any]) -> None:
    if encode(a) != encode(b) and decode(encode(a)) != decode(encode(b)):
        assert state_digest(a) != state_digest(b)
    assert state_digest({"n": 1}) != state_digest({"n": 1.0}) != state_digest({"n": True})


def test_a_malformed_reference_is_a_value_error() -> None:
    for bad in (None, {}, {"step": -1, "digest": "ab"}, {"step": "1", "digest": "ab"}, {"step": 1, "digest": ""},
                {"step": True, "digest": "ab"}):
        with pytest.raises(ValueError, match="state_ref"):
            read_ref(bad)
    assert read_ref({"step": 3, "digest": "ab"}) == {"step": 3, "digest": "ab"}


class CountingStore(MemoryStateStore):
    """A memory store that counts checkpoint reads and can be made to fail or wait."""

    def __init__(self) -> None:
        super().__init__(StateData())
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().get_checkpoint(workflow_id, step)


async def _commit(store: MemoryStateStore, workflow_id: str, states: list[dict[str, Any]]) -> None:
    version = 0
    for step, state in enumerate(states):
        saved = await store.save(WorkflowRecord(workflow_id, "g", "running", state, step=step),
                                 expected_version=version, checkpoint=Checkpoint(workflow_id, step, state))
        version = saved.version


def _ref(step: int, state: dict[str, Any]) -> dict[str, Any]:
    return state_ref(step, state, len(encode(state)))


def test_concurrent_tasks_of_one_state_read_it_once() -> None:
    state = {"doc": "d" * 10_000}

    async def scenario() -> tuple[int, list[dict[str, Any]], int]:
        store = CountingStore()
        await _commit(store, "w", [state])
        cache = StateCache()
        store.gate = asyncio.Event()
        readers = [asyncio.ensure_future(cache.state(store, "w", _ref(0, state))) for _ in range(200)]
        await asyncio.sleep(0.01)
        store.gate.set()
        got = await asyncio.gather(*readers)
        again = await cache.state(store, "w", _ref(0, state))
        return store.reads, [*got, again], cache.fetches

    reads, got, fetches = run(scenario(), 10)
    assert reads == 1 and fetches == 1
    assert all(copy == state for copy in got)
    assert len({id(copy) for copy in got}) == len(got)  # each caller its own copy


def test_the_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    states = [{"doc": str(n) * 1000} for n in range(5)]

    async def scenario() -> tuple[int, int, int, int]:
        store = CountingStore()
        await _commit(store, "w", states)
        cache = StateCache(max_bytes=3 * len(encode(states[0])))
        for step in (0, 1, 2, 0, 3):  # 1 is the least recently used when 3 comes in
            await cache.state(store, "w", _ref(step, states[step]))
        reads = store.reads
        await cache.state(store, "w", _ref(0, states[0]))  # kept
        kept_read = store.reads - reads
        await cache.state(store, "w", _ref(1, states[1]))  # dropped: read again
        return kept_read, store.reads - reads - kept_read, cache.size, len(cache)

    kept_read, dropped_read, size, count = run(scenario(), 10)
    assert (kept_read, dropped_read) == (0, 1)
    assert count == 3 and size <= 3 * 1024


def test_a_cache_of_zero_bytes_reads_for_every_task() -> None:
    state = {"doc": "x" * 5000}

    async def scenario() -> int:
        store = CountingStore()
        await _commit(store, "w", [state])
        cache = StateCache(max_bytes=0)
        for _ in range(3):
            assert (await cache.state(store, "w", _ref(0, state))) == state
        return store.reads

    assert run(scenario(), 10) == 3


def test_a_state_rewritten_under_the_same_step_is_never_served_from_the_cache() -> None:
    """A workflow deleted and created again under its id: same (workflow, step), another state."""
    first, second = {"doc": "a" * 5000}, {"doc": "b" * 5000}

    async def scenario() -> tuple[Any, Any, str]:
        store = CountingStore()
        cache = StateCache()
        await _commit(store, "w", [first])
        old = (await cache.state(store, "w", _ref(0, first)))
        await store.delete("w")
        await _commit(store, "w", [second])
        new = (await cache.state(store, "w", _ref(0, second)))
        with pytest.raises(TaskStateError) as stale:  # a task still naming the first state
            await StateCache().state(store, "w", _ref(0, first))
        return old, new, str(stale.value)

    old, new, message = run(scenario(), 10)
    assert old == first and new == second
    assert "'w'" in message and "step 0" in message and "another state" in message


def test_a_state_that_is_gone_is_a_task_state_error_naming_workflow_and_step() -> None:
    state = {"doc": "x" * 5000}

    async def scenario() -> list[str]:
        store = CountingStore()
        await _commit(store, "w", [state, {**state, "n": 1}])
        messages = []
        with pytest.raises(TaskStateError) as missing_step:
            await StateCache().state(store, "w", _ref(7, state))
        messages.append(str(missing_step.value))
        await store.delete("w")
        with pytest.raises(TaskStateError) as deleted:
            await StateCache().state(store, "w", _ref(0, state))
        messages.append(str(deleted.value))
        return messages

    missing_step, deleted = run(scenario(), 10)
    assert "workflow 'w' at step 7" in missing_step and "now at step 1" in missing_step
    assert "workflow 'w' at step 0" in deleted and "no longer stored" in deleted


def test_the_record_serves_a_step_that_has_no_checkpoint() -> None:
    state = {"doc": "r" * 5000}

    async def scenario() -> Any:
        store = CountingStore()
        await store.save(WorkflowRecord("w", "g", "running", state, step=4), expected_version=0)  # no checkpoint
        return (await StateCache().state(store, "w", _ref(4, state)))

    assert run(scenario(), 10) == state


def test_a_failed_read_fails_its_waiters_and_the_next_call_reads_again() -> None:
    state = {"doc": "f" * 5000}

    async def scenario() -> tuple[list[Any], Any, int]:
        store = CountingStore()
        await _commit(store, "w", [state])
        cache = StateCache()
        store.gate, store.fail = asyncio.Event(), BackendUnavailableError("redis://x: connection refused")
        readers = [asyncio.ensure_future(cache.state(store, "w", _ref(0, state))) for _ in range(5)]
        await asyncio.sleep(0.01)
        store.gate.set()
        outcomes = await asyncio.gather(*readers, return_exceptions=True)
        store.gate, store.fail = None, None
        return outcomes, (await cache.state(store, "w", _ref(0, state))), store.reads

    outcomes, state_read, reads = run(scenario(), 10)
    assert all(isinstance(o, BackendUnavailableError) for o in outcomes)
    assert state_read == state and reads == 2


def test_a_cancelled_reader_does_not_cancel_the_others() -> None:
    state = {"doc": "c" * 5000}

    async def scenario() -> tuple[Any, Any]:
        store = CountingStore()
        await _commit(store, "w", [state])
        cache = StateCache()
        store.gate = asyncio.Event()
        leader = asyncio.ensure_future(cache.state(store, "w", _ref(0, state)))
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(cache.state(store, "w", _ref(0, state)))
        await asyncio.sleep(0.01)
        leader.cancel()
        await asyncio.sleep(0.01)
        store.gate.set()
        got = await follower
        with pytest.raises(asyncio.CancelledError):
            await leader
        return got, store.reads

    got, reads = run(scenario(), 10)
    assert got == state and reads == 2  # the follower read it itself


@settings(max_examples=50, deadline=None)
@given(state=_states)
def test_copy_json_shares_no_container_with_its_original(state: dict[str, Any]) -> None:
    copy = copy_json(state)
    assert copy == state and encode(copy) == encode(state)

    def containers(value: Any) -> list[int]:
        if isinstance(value, dict):
            return [id(value), *(i for v in value.values() for i in containers(v))]
        if isinstance(value, list):
            return [id(value), *(i for v in value for i in containers(v))]
        return []

    assert not set(containers(copy)) & set(containers(state))


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["commit", "delete", "read"]), st.sampled_from(["a", "b"]),
                              st.integers(0, 3)), max_size=30),
       cache_bytes=st.sampled_from([0, 12_000, 10**9]))
def test_a_read_returns_the_dispatched_state_or_says_it_is_gone_never_another(
    ops: list[tuple[str, str, int]], cache_bytes: int
) -> None:
    """Commits, deletes (and re-creations under the same ids) and reads of references taken at any time:
    a reference reads back exactly the state it was taken of, or raises TaskStateError."""

    async def scenario() -> None:
        store = MemoryStateStore(StateData())
        cache = StateCache(max_bytes=cache_bytes)
        steps: dict[str, int] = {}
        versions: dict[str, int] = {}
        refs: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        counter = 0
        for op, workflow_id, pick in ops:
            if op == "commit":
                counter += 1
                step = steps.get(workflow_id, -1) + 1
                state = {"doc": f"{workflow_id}{counter}" * 1000, "step": step}
                saved = await store.save(WorkflowRecord(workflow_id, "g", "running", state, step=step),
                                         expected_version=versions.get(workflow_id, 0),
                                         checkpoint=Checkpoint(workflow_id, step, state))
                steps[workflow_id], versions[workflow_id] = step, saved.version
                refs.append((workflow_id, state, _ref(step, state)))
            elif op == "delete":
                await store.delete(workflow_id)
                steps.pop(workflow_id, None)
                versions.pop(workflow_id, None)
            elif refs:
                workflow_id, state, ref = refs[pick % len(refs)]
                try:
                    got = await cache.state(store, workflow_id, ref)
                except TaskStateError:
                    continue
                assert got == state

    run(scenario(), 20)


def test_a_state_nested_as_deep_as_state_may_be_is_copied_too() -> None:
    deep: Any = "leaf"
    for _ in range(880):
        deep = [deep]
    state = {"deep": deep, "pad": "p" * 5000}

    class DecodingStore(MemoryStateStore):
        """Reads the checkpoint by decoding it (as the Redis and NATS stores do), without a deep copy."""

        async def get_checkpoint(self, workflow_id: str, step: int) -> Checkpoint | None:
            return Checkpoint(workflow_id, step, decode(encode(state)))

    async def scenario() -> Any:
        store = DecodingStore(StateData())

        async def nested(depth: int) -> Any:  # called from deep in a stack, as a worker's task may be
            return await nested(depth - 1) if depth else await StateCache().state(store, "w", _ref(0, state))

        return await nested(60)

    assert run(scenario(), 10) == state


def _at_depth(frames: int, func: Any) -> Any:
    """``func()`` called from ``frames`` more Python frames down the stack than here."""
    return _at_depth(frames - 1, func) if frames else func()


@pytest.mark.parametrize("caller_frames", [0, 300, 600])
def test_how_deep_a_state_may_be_does_not_depend_on_the_callers_stack(caller_frames: int) -> None:
    """Digest, encode, decode, the JSON check and the task's copy of a state nested as deep
    as JSON state may be give the same answers from the top of a stack and from deep in one
    (a worker's task, a test runner's thread)."""
    from distributed_agents.core.codec import find_non_json

    deep: Any = "leaf"
    for level in range(880):  # lists and dicts, 880 levels in all
        deep = {"d": deep} if level % 2 else [deep]
    state = {"deep": deep}
    digest, encoded = state_digest(state), encode(state)

    def handle() -> tuple[str, bytes, Any, Any, Any]:
        copy = copy_json(state)
        return state_digest(state), encode(state), decode(encoded), find_non_json(state), copy

    got_digest, got_encoded, decoded, problem, copy = _at_depth(caller_frames, handle)
    assert (got_digest, got_encoded, problem) == (digest, encoded, None)
    assert decoded == state and copy == state
    inner_copy, inner_state = copy, state  # the copy shares no container with the state
    while isinstance(inner_state, (dict, list)):
        assert inner_copy is not inner_state
        inner_copy, inner_state = (inner_copy["deep"], inner_state["deep"]) if "deep" in inner_state else \
            ((inner_copy["d"], inner_state["d"]) if isinstance(inner_state, dict) else (inner_copy[0], inner_state[0]))
