"""What a node task carries of the workflow state: the state when small, else a reference.

A task of a step runs on the state the step started from, which the step loop has
committed as the workflow's checkpoint at that step. Copying that state into every task
of a fan-out writes it to the backend once per task (a 1,000-way fan-out over a 1 MB
state: 1 GB), so a task carries it only when it encodes to at most
``INLINE_STATE_LIMIT`` bytes. Above that it carries a **reference**::

    payload["state_ref"] = {"step": <the committed step>, "digest": <hex>, "bytes": <encoded size>}

naming the checkpoint of the task's own workflow at that step (``StateStore.get_checkpoint``,
one round trip on Redis) and the ``state_digest`` of the state the orchestrator
dispatched. A ``Send`` task carries its own argument instead, inline, never the state.

Workers read referenced states through a ``StateCache``: one fetch per (workflow, step,
digest) however many of its tasks a worker runs, concurrent tasks waiting for the same
fetch; kept decoded in a bounded LRU by encoded bytes (``DEFAULT_CACHE_BYTES``). Every
task gets its own copy (``copy_json``: containers copied, strings and numbers shared as
they are immutable; cheaper than decoding again), so a node changing its state in place
changes nothing else.

A worker never runs a node on a state other than the one dispatched: the digest is
checked on every fetch, and the key includes it, so a state rewritten under the same
step (the workflow deleted and created again under its id) is a different entry. The
checkpoint of a step never changes once written (``update_state`` and forks write new
steps or new workflows), so a retried task, one delivered after later commits, still
reads its own step. When the store has no checkpoint of that step any more (the
workflow was deleted, or its state expired: ``state_ttl``) or it holds another state,
``TaskStateError`` says so: the worker fails the task finally (dead-lettered, no retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from distributed_agents.core.codec import on_fresh_stack
from distributed_agents.core.errors import ExecutionError, PayloadDecodeError
from distributed_agents.core.ports.state_store import StateStore

__all__ = ["DEFAULT_CACHE_BYTES", "INLINE_STATE_LIMIT", "STATE_REF_KEY", "WRAP_KEY", "StateCache", "StateRef",
           "TaskStateError", "copy_json", "read_ref", "state_digest", "state_ref"]

# States encoding to at most this many bytes travel inside each task: a small state costs
# less than the round trip a worker would spend reading it (single-node workflows stay at
# their round-trip count), and a 1,000-way fan-out over one costs at most 4 MB.
INLINE_STATE_LIMIT = 4096
# Encoded bytes of states a worker keeps (least recently used dropped first); a state larger
# than this is fetched for each task that needs it and not kept.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
STATE_REF_KEY = "state_ref"  # in a task's payload, instead of "state"
# In a task's payload beside "state_ref": the node's input is {**wrap, "state": <the referenced state>}
# (an error handler's task, whose input is the error and the failed task's state).
WRAP_KEY = "wrap"

StateRef = Mapping[str, Any]


class TaskStateError(ExecutionError):
    """The state a task names is not stored (any more), or is not the state dispatched."""


def state_digest(state: Mapping[str, Any]) -> str:
    """A digest of ``state``'s JSON content (hex), the same for equal states whatever their key order."""
    return _digest_and_size(state)[0]


def _digest_and_size(state: Mapping[str, Any]) -> tuple[str, int]:
    """``state_digest`` and the size in bytes of the canonical encoding it digests."""
    try:
        text = _canonical(state)
    except RecursionError:  # the caller's stack was deep, not necessarily the state
        text = on_fresh_stack(_canonical, state)
    canonical = text.encode("utf-8")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest(), len(canonical)


def _canonical(state: Mapping[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def copy_json(value: Any) -> Any:
    """A copy of JSON value ``value``: new dicts and lists at every depth, the same (immutable) leaves.

    Iterative: any depth, wherever it is called from (no recursion limit involved).
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    top: Any = {} if kind is dict else []
    # (original container, its copy): each copy is filled from its original; nested
    # containers get an empty copy at once and are filled when popped.
    todo: list[tuple[Any, Any]] = [(value, top)]
    while todo:
        original, copy = todo.pop()
        if type(original) is dict:
            for key, item in original.items():
                kind = type(item)
                if kind is dict or kind is list:
                    inner: Any = {} if kind is dict else []
                    todo.append((item, inner))
                    item = inner
                copy[key] = item
        else:
            for item in original:
                kind = type(item)
                if kind is dict or kind is list:
                    inner = {} if kind is dict else []
                    todo.append((item, inner))
                    item = inner
                copy.append(item)
    return top



def state_ref(step: int, state: Mapping[str, Any], encoded_size: int) -> dict[str, Any]:
    """The reference a task carries to ``state``, committed as checkpoint ``step`` of its workflow."""
    return {"step": int(step), "digest": state_digest(state), "bytes": int(encoded_size)}


def read_ref(value: Any) -> StateRef:
    """``value`` checked as a ``state_ref`` payload; ``ValueError`` (a malformed task) if it is not one."""
    if (not isinstance(value, Mapping) or type(value.get("step")) is not int or value["step"] < 0
            or not isinstance(value.get("digest"), str) or not value["digest"]):
        raise ValueError(f"payload's {STATE_REF_KEY!r} is not {{'step': int >= 0, 'digest': str}}: {value!r:.200}")
    return value


class StateCache:
    """Referenced states a worker read, by (workflow id, step, digest); bounded by encoded bytes.

    ``max_bytes`` bounds the encoded states kept (LRU); 0 keeps none (every task
    fetches). Not thread-safe: used from the worker's event loop.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"StateCache max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, str], tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._fetching: dict[tuple[str, int, str], asyncio.Future[tuple[dict[str, Any], int]]] = {}
        self.fetches = 0  # reads from the store (for tests and stats)

    @property
    def size(self) -> int:
        """Encoded bytes kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def state(self, store: StateStore, workflow_id: str, ref: StateRef) -> dict[str, Any]:
        """A copy of the state ``ref`` names in ``workflow_id``, from the cache or read once from ``store``.

        Raises ``TaskStateError`` if the store has no such state; a backend error of the
        read propagates (to every task waiting for it; the next call reads again).
        """
        cached = (await self._entry(store, workflow_id, ref))[0]
        state: dict[str, Any] = copy_json(cached)
        return state

    async def _entry(self, store: StateStore, workflow_id: str, ref: StateRef) -> tuple[dict[str, Any], int]:
        key = (workflow_id, int(ref["step"]), str(ref["digest"]))
        while True:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
            pending = self._fetching.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending)  # a waiter's cancellation must not cancel the others' read
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this waiter was cancelled
                # the task that was reading was cancelled: read again
        future: asyncio.Future[tuple[dict[str, Any], int]] = asyncio.get_running_loop().create_future()
        self._fetching[key] = future
        try:
            entry = await _fetch(store, workflow_id, key[1], key[2])
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) raise it themselves
            raise
        finally:
            self._fetching.pop(key, None)
        self.fetches += 1
        self._keep(key, entry)
        future.set_result(entry)
        return entry

    def _keep(self, key: tuple[str, int, str], entry: tuple[dict[str, Any], int]) -> None:
        size = entry[1]
        if size > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped


async def _fetch(store: StateStore, workflow_id: str, step: int, digest: str) -> tuple[dict[str, Any], int]:
    """The state of checkpoint ``step`` of ``workflow_id`` and its encoded size, if its digest is ``digest``.

    The record is the fallback: it holds the state of the workflow's latest step, which a
    store may hold no checkpoint of (written before checkpoints were kept per step).
    """
    try:
        checkpoint = await store.get_checkpoint(workflow_id, step)
    except PayloadDecodeError as exc:  # damaged checkpoints stay damaged: the task fails, without a retry
        raise TaskStateError(f"the state of workflow {workflow_id!r} at step {step}, which this task runs on, "
                             f"cannot be read: {exc}") from None
    if checkpoint is not None:
        found, size = _digest_and_size(checkpoint.state)
        if found == digest:
            return dict(checkpoint.state), size
    record = await store.get(workflow_id)
    if record is not None and record.step == step:
        found, size = _digest_and_size(record.state)
        if found == digest:
            return dict(record.state), size
    if record is None:
        why = "the workflow is no longer stored (deleted, or its state expired after state_ttl)"
    elif checkpoint is None:
        why = (f"the workflow (now at step {record.step}) holds no checkpoint of step {step} (deleted, or expired "
               "after state_ttl)")
    else:
        why = ("the stored checkpoint of that step holds another state than the one the task was dispatched with "
               "(the workflow was deleted and started again under its id)")
    raise TaskStateError(
        f"the state of workflow {workflow_id!r} at step {step}, which this task runs on, cannot be read: {why}; "
        "the task cannot run. Start the workflow again (or resume it, which dispatches its tasks anew)")
