"""Size limits: one documented, configurable ceiling on what a backend is asked to store.

Every backend has a largest value it accepts, and they differ: NATS refuses a message
over the server's ``max_payload`` (1 MiB by default, advertised in the server's INFO;
JetStream KV values are messages too); Redis refuses a bulk string over
``proto-max-bulk-len`` (512 MB by default); the memory backend has none. Rather than
let each fail in its own way, at its own size, after the work was done (on NATS a
700 KB result used to leave the workflow ``running`` for ever), the core checks one
limit, ``max_payload_bytes``, before writing, on every backend:

* a node's result (its updates, as UTF-8 JSON) over the limit fails the node at once
  (``PayloadTooLargeError`` naming the node, the size and the limit; no retry: the
  same input gives the same result);
* a commit whose workflow record or checkpoint (the state plus the step's writes that
  the state does not already hold: a value a node set is stored once) would be over the limit fails the workflow with the same error, naming the largest
  state keys and the node that wrote the most.

The default, ``DEFAULT_MAX_PAYLOAD_BYTES`` (1 MiB minus ``ENVELOPE_BYTES``), is the same
on every backend so a workflow that runs on one runs on all. It is set with the backend
option ``max_payload_bytes`` (keyword or ``?max_payload_bytes=`` in the URL). A backend
may lower it to what its server accepts (the NATS backend takes the server's
``max_payload`` minus ``ENVELOPE_BYTES``) and refuses a configured value its server
cannot store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distributed_agents.core.checkpoint_delta import split_writes
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import PayloadTooLargeError

__all__ = [
    "DEAD_RAW_KEPT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ENVELOPE_BYTES",
    "check_commit_size",
    "check_result_size",
    "limit_below",
    "oversized_task_reason",
    "task_bytes_limit",
]

ENVELOPE_BYTES = 64 * 1024
"""Room left under a transport's own message limit for what wraps a result or state:
task and record fields, the error history of earlier attempts, metadata."""

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024 - ENVELOPE_BYTES
"""983,040 bytes: fits NATS's default 1 MiB ``max_payload`` with its envelope."""

_HINT = ("keep large data outside the workflow state (store it elsewhere and keep a reference in the state), "
         "or raise the backend option max_payload_bytes (on NATS also the server's max_payload)")


DEAD_RAW_KEPT = 64 * 1024
"""A dead letter of bytes that are not a task keeps at most their first 64 KiB (``DeadLetter.raw``):
enough to see what wrote them, and the letter fits any backend's message limit."""


def task_bytes_limit(max_payload_bytes: int) -> int:
    """The largest encoded task a worker reads: a payload at ``max_payload_bytes`` plus the envelope.

    A task carries no state over 4 KB (it names its checkpoint), so its own payload (a
    ``Send`` argument, resume answers) is bounded by ``max_payload_bytes``; one over this
    limit was not written by ``enqueue`` of a process with the same limit (a backend may
    refuse less at enqueue: on NATS a task's dead letter must fit ``max_payload`` too). Queues
    dead-letter it at claim time (``oversized_task_reason``) without decoding it.
    """
    return max_payload_bytes + ENVELOPE_BYTES


def oversized_task_reason(size: int | str, limit: int) -> str:
    """The dead-letter reason for a task of ``size`` bytes over ``limit`` (``task_bytes_limit``).

    ``size`` may be a placeholder (Redis fills it in inside the server)."""
    return (f"oversized task: {size} bytes, over the limit of {limit} bytes (max_payload_bytes plus "
            f"{ENVELOPE_BYTES} for the envelope); it was not decoded. Whatever wrote it bypassed enqueue, or runs "
            f"with a larger max_payload_bytes: give every process the same max_payload_bytes. The dead letter "
            f"keeps its first {DEAD_RAW_KEPT} bytes")


def limit_below(transport_max: int) -> int:
    """The largest payload that fits a transport accepting ``transport_max`` bytes per message."""
    return max(transport_max - ENVELOPE_BYTES, 1)


def _size(value: Any) -> int | None:
    try:
        return len(encode(value))
    except (TypeError, ValueError):
        return None  # not JSON: the serialisation check reports that, naming the key


def check_result_size(updates: Mapping[str, Any] | None, limit: int | None, *, node: str, workflow_id: str) -> int:
    """Return the encoded size of a node's ``updates``; raise if it is over ``limit``.

    Raises ``PayloadTooLargeError`` (with ``node``, ``size`` and ``limit``) naming the
    node, the workflow, the size, the limit and the largest keys. ``limit`` None: no check.
    """
    if updates is None:
        return 0
    size = _size(dict(updates)) or 0
    if limit is not None and size > limit:
        raise PayloadTooLargeError(
            f"node {node!r} (workflow {workflow_id!r}) returned a result of {size:,} bytes, over the backend's "
            f"limit of {limit:,} bytes (max_payload_bytes); largest keys: {_largest(updates)}; {_HINT}",
            size=size, limit=limit, node=node,
        )
    return size


def check_commit_size(
    workflow_id: str,
    step: int,
    state: Mapping[str, Any],
    record_rest: Mapping[str, Any] | bytes,
    writes: Mapping[str, Mapping[str, Any] | None] | None,
    limit: int | None,
    *,
    state_json: bytes | None = None,
) -> int:
    """Return the encoded size of the largest value a commit writes; raise if over ``limit``.

    A commit stores the workflow record (``state`` plus ``record_rest``: frontier,
    metadata, error) and, for a step, a checkpoint (``state`` plus the step's
    ``writes`` by node; None for a node that wrote nothing). ``PayloadTooLargeError`` names the workflow, the step, the
    size, the limit, the largest state keys and (as ``node``) the node that wrote the
    most. ``limit`` None: no check. Values that are not JSON are not measured here.
    ``state_json`` is ``encode(state)`` when the caller has it already (it is not encoded again),
    and ``record_rest`` may be given encoded (bytes) likewise.
    """
    state_size = len(state_json) if state_json is not None else _size(dict(state))
    if limit is None or state_size is None:
        return state_size or 0
    rest_size = len(record_rest) if isinstance(record_rest, bytes) else _size(dict(record_rest))
    record_size = state_size + (rest_size or 0)
    # What the checkpoint entry stores: the writes less the values the state holds already
    # (checkpoint_delta.split_writes), so a node's large output is not counted twice.
    written = None if writes is None else {k: dict(v) for k, v in writes.items() if v is not None}
    kept = None if written is None else split_writes(written, state)[0]
    writes_size = 0 if not kept else (_size(kept) or 0)
    checkpoint_size = state_size + writes_size
    size = max(record_size, checkpoint_size)
    if size <= limit:
        return size
    what = "checkpoint (the state plus this step's writes)" if checkpoint_size >= record_size else "workflow record"
    writer = ""
    if written:
        sizes = {name: _size(updates) or 0 for name, updates in written.items()}
        writer = max(sizes, key=lambda name: sizes[name])
        # writes_size counts only what the checkpoint stores besides the state (values the state
        # holds are stored once): say which, or 8 bytes of writes next to a 5 MB node output reads as a mistake.
        added = (f", of which {writes_size:,} bytes are stored besides the state (values the state holds are "
                 "stored once)") if writes_size else ", all of it held in the state"
        by_node = (f"; node {writer!r} wrote the most this step ({sizes[writer]:,} bytes); the step's writes come to "
                   f"{sum(sizes.values()):,} bytes{added}")
    else:
        by_node = ""
    raise PayloadTooLargeError(
        f"workflow {workflow_id!r} cannot commit step {step}: its {what} encodes to {size:,} bytes, over the "
        f"backend's limit of {limit:,} bytes (max_payload_bytes); the state is {state_size:,} bytes, largest keys: "
        f"{_largest(state)}{by_node}; {_HINT}",
        size=size, limit=limit, node=writer,
    )


def _largest(values: Mapping[str, Any], count: int = 3) -> str:
    sizes = [(key, _size(value) or 0) for key, value in values.items()]
    sizes.sort(key=lambda item: -item[1])
    return ", ".join(f"{key!r} ({size:,} bytes)" for key, size in sizes[:count]) or "none"
