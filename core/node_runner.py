"""Calling one node function once: the part shared by in-process runs and workers.

``invoke_node`` runs ``async def`` nodes on the event loop and plain functions in a
thread, applies the timeout, exposes a ``NodeContext`` (also through
``current_context()``), and checks that the node returned a dict or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distributed_agents.core.errors import InvalidNodeOutputError, NodeTimeoutError, StateNotSerializableError
from distributed_agents.core.registry import NodeFunction
from distributed_agents.core.state import State, check_values

__all__ = ["NodeContext", "NodeFailure", "current_context", "describe_failure", "invoke_node"]


@dataclass(frozen=True)
class NodeContext:
    """Where a node runs: pass ``idempotency_key`` to external systems for side effects.

    The key is the same on every attempt of the same node in the same step of the same
    workflow run, so a re-delivered task can recognise work it already did.
    """

    workflow_id: str
    step: int
    node: str
    node_type: str
    attempt: int
    idempotency_key: str
    worker_id: str = ""


_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("distributed_agents_node", default=None)


def current_context() -> NodeContext | None:
    """The ``NodeContext`` of the node running in this task or thread, if any."""
    return _current.get()


@dataclass(frozen=True)
class NodeFailure:
    """A node's exception, in a form that crosses processes."""

    error_type: str
    message: str
    traceback_text: str
    timed_out: bool = False

    def to_text(self) -> str:
        """One string: ``Type: message`` then the traceback (what dead letters record)."""
        return f"{self.error_type}: {self.message}\n{self.traceback_text}".rstrip()

    @classmethod
    def from_text(cls, text: str) -> NodeFailure:
        """Parse ``to_text`` output (or any error string) back."""
        first, _, rest = (text or "").partition("\n")
        error_type, sep, message = first.partition(": ")
        if not sep or " " in error_type:
            return cls("Error", first, rest)
        return cls(error_type, message, rest, timed_out=error_type == "NodeTimeoutError")

    def to_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {"error_type": self.error_type, "message": self.message, "traceback": self.traceback_text,
                "timed_out": self.timed_out}


def describe_failure(exc: BaseException) -> NodeFailure:
    """Capture ``exc`` with its traceback text."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return NodeFailure(type(exc).__name__, str(exc), text, timed_out=isinstance(exc, NodeTimeoutError))


def _wants_context(func: NodeFunction) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


async def invoke_node(
    func: NodeFunction, state: State, context: NodeContext, *, timeout: float | None
) -> dict[str, Any] | None:
    """Run ``func`` once on ``state``; return its checked updates.

    Raises ``NodeTimeoutError`` past ``timeout`` (an ``async`` node is cancelled; a
    plain function's thread cannot be stopped and finishes in the background, its
    result discarded), ``InvalidNodeOutputError`` for a return value that is not a
    dict or None, ``StateNotSerializableError`` for a non-JSON value, and whatever the
    node itself raises.
    """
    args: tuple[Any, ...] = (state, context) if _wants_context(func) else (state,)

    async def call() -> Any:
        token = _current.set(context)
        try:
            if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)):
                result = await func(*args)
            else:
                ctx = contextvars.copy_context()
                result = await asyncio.to_thread(ctx.run, func, *args)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            _current.reset(token)

    if timeout is None:
        output = await call()
    else:
        # Not asyncio.wait_for: a TimeoutError raised by the node itself must stay the
        # node's error, not be mistaken for the node running out of time.
        running = asyncio.ensure_future(call())
        try:
            done, _ = await asyncio.wait({running}, timeout=timeout)
        except asyncio.CancelledError:
            running.cancel()
            raise
        if not done:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            raise NodeTimeoutError(
                f"node {context.node!r} timed out after {timeout}s (attempt {context.attempt})",
                node=context.node, attempts=context.attempt, error_type="NodeTimeoutError",
            )
        output = running.result()
    if output is None:
        return None
    if not isinstance(output, Mapping):
        raise InvalidNodeOutputError(
            f"node {context.node!r} returned {type(output).__name__}; a node must return a dict of "
            "state updates or None"
        )
    updates = dict(output)
    try:
        check_values(updates)
    except StateNotSerializableError as exc:
        raise StateNotSerializableError(f"node {context.node!r}: {exc}", key=exc.key) from None
    return updates
