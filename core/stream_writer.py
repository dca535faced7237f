"""What a node streams while it runs: ``custom`` chunks and ``messages`` (LLM tokens).

A node gets its writer from its context (``context.stream_writer``, or
``get_stream_writer()`` from anywhere in the node, async or in a thread)::

    writer = get_stream_writer()
    writer({"progress": 0.5})                       # stream_mode="custom" yields {"progress": 0.5}
    for delta in llm_stream:                         # stream_mode="messages" yields (chunk, metadata)
        writer.message(delta, metadata={"model": "gpt-4o"})   # or context.emit_message(delta)

A chunk must be JSON (a ``str``, number, list or dict of those), or an object with
``model_dump()`` (Pydantic, OpenAI SDK objects) or ``to_dict()``, which is called; it is
copied when emitted, so the node may reuse its objects. Anything else raises
``InvalidNodeOutputError`` in the node, naming it.

Emitting never blocks and never waits for the network: the chunk is queued on the
process's ``EventPublisher`` (see ``core.events``: bounded, oldest dropped and reported as
a gap when the bus cannot keep up) and published to ``stream.<workflow_id>.<mode>``. A
worker publishes a task's chunks before it reports the task's result, so a caller
receives every chunk of a step before that step's values. Each chunk carries
``workflow_id``, ``node``, ``step``, ``task_id``, ``run``, ``attempt``, ``seq`` (1, 2, ...
per writer, so per node attempt), ``time`` (``time.time()`` at emission), ``chunk``,
and, as given, ``metadata`` and ``namespace``.
"""

from __future__ import annotations

import contextvars
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import InvalidNodeOutputError

if TYPE_CHECKING:
    from distributed_agents.core.events import EventPublisher

__all__ = ["StreamWriter", "current_stream_sink", "reset_stream_sink", "set_stream_sink", "swap_stream_sink"]

_OVERHEAD = 300  # bytes of a chunk's fields besides the chunk (ids, node, step, times)

_sink: contextvars.ContextVar[EventPublisher | None] = contextvars.ContextVar(
    "distributed_agents_stream_sink", default=None)


def current_stream_sink() -> EventPublisher | None:
    """The publisher stream writers made here use (set by the orchestrator and the worker)."""
    return _sink.get()


def set_stream_sink(publisher: EventPublisher | None) -> contextvars.Token[EventPublisher | None]:
    """Make ``publisher`` the stream sink of this context (and of tasks and threads started from it)."""
    return _sink.set(publisher)


def reset_stream_sink(token: contextvars.Token[EventPublisher | None]) -> None:
    """Undo ``set_stream_sink``."""
    _sink.reset(token)


def swap_stream_sink(publisher: EventPublisher | None) -> EventPublisher | None:
    """Make ``publisher`` the stream sink of this context; the sink it had (swap it back to undo).

    Nothing is set when ``publisher`` is the sink already, and no token is kept: a token is
    a GC-tracked object, kept for as long as a workflow run drives, hundreds at once.
    """
    before = _sink.get()
    if before is not publisher:
        _sink.set(publisher)
    return before


class StreamWriter:
    """A node's writer: ``writer(chunk)`` streams a custom chunk, ``writer.message(chunk)`` a token.

    Safe to call from any thread. Without a sink (a node function called directly, not
    by a workflow) chunks are checked and discarded.
    """

    def __init__(
        self, sink: EventPublisher | None, *, workflow_id: str, node: str, step: int, task_id: str,
        attempt: int, namespace: Sequence[str] | None = None, root_workflow_id: str | None = None,
        node_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._sink = sink
        # The node's own metadata (add_node(metadata=)): in every message's metadata, as LangGraph's.
        self._node_metadata = dict(node_metadata) if node_metadata else None
        # A subgraph's node runs in a child workflow ("<root>:sub:<step>:<task>", see core.subgraphs):
        # its chunks go to the root workflow's stream, which is what callers follow.
        self._channel_workflow = root_workflow_id or workflow_id.partition(":sub:")[0] or workflow_id
        self._counter = itertools.count(1)
        self.last_seq = 0  # the publisher's sequence number of the last chunk queued (0: none)
        prefix = f"{workflow_id}:"
        # "<workflow>:<run>[.<incarnation>]:<step>:<node>" (engine.task_id_for)
        run_text = task_id[len(prefix):].partition(":")[0].partition(".")[0] if task_id.startswith(prefix) else ""
        self._base: dict[str, Any] = {
            "workflow_id": workflow_id, "node": node, "step": step, "task_id": task_id,
            "run": int(run_text) if run_text.isdigit() else 0, "attempt": attempt,
            **({"namespace": list(namespace)} if namespace else {}),
            **({"subgraph_workflow_id": workflow_id} if self._channel_workflow != workflow_id else {}),
        }

    def __call__(self, chunk: Any) -> None:
        """Stream ``chunk`` in ``stream_mode="custom"``."""
        self._emit("custom", chunk, None)

    def message(self, chunk: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Stream one LLM message chunk (a token, a delta) in ``stream_mode="messages"``.

        The caller gets ``(chunk, metadata)``: the node's own metadata (``add_node(metadata=)``),
        then ``metadata``, merged with the node, step, task id, workflow id, run and attempt.
        """
        if self._node_metadata:
            metadata = {**self._node_metadata, **(metadata or {})}
        self._emit("messages", chunk, metadata)

    def _emit(self, mode: str, chunk: Any, metadata: Mapping[str, Any] | None) -> None:
        value, size = self._json(chunk, "chunk")
        data = {"type": mode, **self._base, "seq": next(self._counter), "time": time.time(), "chunk": value}
        if metadata:
            data["metadata"], extra = self._json(dict(metadata), "metadata")
            size += extra
        if self._sink is not None:
            seq = self._sink.emit_chunk(self._channel_workflow, mode, data, size + _OVERHEAD)
            if seq:
                self.last_seq = seq

    def _json(self, value: Any, what: str) -> tuple[Any, int]:
        """``value`` as a JSON copy, and its approximate size in bytes."""
        if value is None or type(value) in (int, bool):
            return value, 8
        if type(value) is str:
            return value, len(value) * 2  # escapes and multi-byte characters: a bound, not a count
        for method in ("model_dump", "to_dict"):
            convert = getattr(value, method, None)
            if callable(convert) and not isinstance(value, (dict, list)):
                value = convert(mode="json") if method == "model_dump" else convert()
                break
        try:
            raw = encode(value)
            return decode(raw), len(raw)  # checks, and copies: the node may change its object afterwards
        except (TypeError, ValueError) as exc:
            raise InvalidNodeOutputError(
                f"node {self._base['node']!r} streamed a {what} of type {type(value).__name__}, which is not JSON "
                f"({exc}); stream a str, a number, a list or dict of JSON values, or an object with model_dump()"
            ) from None
