"""Calling one node function once: the part shared by in-process runs and workers.

``invoke_node`` runs ``async def`` nodes on the event loop and plain functions in a
thread, applies the timeout, exposes a ``NodeContext`` (also through
``current_context()``), and checks that the node returned a dict or None.

Cancellation (the workflow was cancelled, the node timed out, the worker stops)
interrupts an ``async def`` node at its next ``await``. A thread cannot be interrupted
from outside, so a plain-function node is told instead: ``context.cancelled`` becomes
True (``current_context().cancelled`` from anywhere in the node), and a node that works
in a loop should check it and return (or wait with ``context.wait_cancelled(seconds)``
instead of ``time.sleep``). Until the thread returns, the caller is told it still runs
(``on_abandoned``), so a worker keeps its capacity slot taken; if it still runs
``CANCEL_WARNING_GRACE`` seconds after the cancellation, one warning says that it could
not be interrupted (a function that checks the flag and returns in time logs none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import dataclasses
import inspect
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed_agents.core import interrupts, log_context
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import (
    ExecutionError,
    InvalidNodeOutputError,
    NodeTimeoutError,
    PayloadTooLargeError,
    StateNotSerializableError,
)
from distributed_agents.core.messages import coerce_message_updates
from distributed_agents.core.managed import drop_managed, managed_inputs
from distributed_agents.core.quick_init import FACTORY, quick_init
from distributed_agents.core.registry import NodeFunction
from distributed_agents.core.run_cancels import pending_at_start
from distributed_agents.core.state import RESERVED_PREFIX, State, check_values, reserved_keys
from distributed_agents.core.stream_writer import StreamWriter, current_stream_sink
from distributed_agents.core.types import Command, ParentCommand, command_output, interrupt_output, update_dict

__all__ = [
    "CONTEXT_KEY",
    "NodeContext",
    "NodeFailure",
    "NodeRaisedBaseException",
    "RETURNS_TO_CALLER_KEY",
    "RunContext",
    "bounded",
    "cancel_requested",
    "condition_runtime",
    "context_values",
    "current_context",
    "describe_failure",
    "exception_message",
    "get_runtime",
    "get_stream_writer",
    "invoke_node",
    "is_output_error",
    "run_context_of",
    "safe_text",
    "visible_configurable",
    "wants_context",
]

log = logging.getLogger("distributed_agents.node")


# In a run's ``configurable`` (record metadata, task payloads): LangGraph's run context
# (``invoke(..., context=...)``), travelling with the configurable values; never shown in them.
CONTEXT_KEY = "__context__"
# Also there: the run is a graph invoked inside a node, which may end with Command.PARENT for
# that node (``ParentCommand``). Keys of this shape ("__...") are never shown as configurable values.
RETURNS_TO_CALLER_KEY = "__returns_to_caller__"


def visible_configurable(configurable: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's ``configurable`` values as nodes and conditions see them (the framework's ``__`` keys left out)."""
    return {key: value for key, value in (configurable or {}).items() if not str(key).startswith("__")}


def context_values(where: str, context: Any) -> dict[str, Any]:
    """A run's ``context=`` as the JSON object it travels as (``CONTEXT_KEY``): a dataclass's fields,
    a Pydantic model's dump, or a mapping's items. ``ConfigurationError`` naming ``where`` for
    anything else, or for values JSON cannot carry."""
    import dataclasses

    from distributed_agents.core.errors import ConfigurationError
    from distributed_agents.core.state import check_value

    if dataclasses.is_dataclass(context) and not isinstance(context, type):
        values: Any = dataclasses.asdict(context)
    elif callable(getattr(context, "model_dump", None)):
        values = context.model_dump(mode="json")
    elif isinstance(context, Mapping):
        values = dict(context)
    else:
        raise ConfigurationError(
            f"{where}: context= must be a dataclass, a Pydantic model or a dict (its fields travel as JSON to the "
            f"run's nodes, also on workers), got {type(context).__name__}")
    try:
        check_value("context", values)
    except Exception as exc:
        detail = str(exc).replace("state key 'context', ", "").split(". State holds only")[0]
        raise ConfigurationError(
            f"{where}: context= cannot travel as JSON with the run's tasks (also to workers): {detail}; keep objects "
            "such as clients out of it (make them in the node, or once per process at module level)") from None
    return dict(values)


def run_context_of(configurable: Mapping[str, Any] | None) -> RunContext | None:
    """The run context the ``configurable`` values carry (``CONTEXT_KEY``) as a ``RunContext``, or None."""
    value = (configurable or {}).get(CONTEXT_KEY)
    return RunContext(value) if isinstance(value, Mapping) else None


class RunContext(dict[str, Any]):
    """A run's context (``NodeContext.context``): a dict whose keys also read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
            # (A nested dataclass or model travelled as a dict: read by attribute too.)
            return RunContext(value) if type(value) is dict else value
        except KeyError:
            raise AttributeError(f"the run context has no {name!r}; it has {', '.join(map(repr, self)) or 'nothing'}"
                                 ) from None


@quick_init  # made every step
@dataclass(frozen=True)
class NodeContext:
    """Where a node runs: pass ``idempotency_key`` to external systems for side effects.

    The key is the same on every attempt of the same node in the same step of the same
    workflow run, so a re-delivered task can recognise work it already did.

    ``cancelled`` turns True when the run is cancelled (workflow cancelled, timeout,
    worker stopping). An ``async def`` node is interrupted anyway; a plain function
    runs in a thread that nothing can interrupt, so it should check ``cancelled``
    between units of work and return early (its result is discarded), and wait with
    ``wait_cancelled(seconds)`` rather than ``time.sleep``.

    ``stream_writer`` streams what the node produces while it runs (``writer(chunk)``
    for ``stream_mode="custom"``, ``writer.message(token)`` or ``emit_message(token)``
    for ``"messages"``); see ``core.stream_writer``.
    """

    workflow_id: str
    step: int
    node: str
    node_type: str
    attempt: int
    idempotency_key: str
    worker_id: str = ""
    remaining_steps: int | None = None  # steps left before the step limit, this one included
    configurable: Mapping[str, Any] | None = None  # the caller's config["configurable"] values (execute(configurable=))
    metadata: Mapping[str, Any] | None = None  # the node's own (add_node(metadata=)), read in config["metadata"]
    step_limit: int | None = None  # the run's step limit (config["recursion_limit"]); None: step + remaining_steps
    # [event] once anything waits for or sets the cancellation: most runs never need one, and a
    # threading.Event per node call costs more than a no-op node.
    _cancel: list[threading.Event] = field(default_factory=list, repr=False, compare=False)
    # [sink] once bound by invoke_node, then [sink, writer] once a writer was asked for.
    _stream: list[Any] = field(default_factory=list, repr=False, compare=False)

    def __init__(self, workflow_id: str, step: int, node: str, node_type: str, attempt: int, idempotency_key: str,
                 worker_id: str = "", remaining_steps: int | None = None,
                 configurable: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                 step_limit: int | None = None, _cancel: list[threading.Event] = FACTORY,
                 _stream: list[Any] = FACTORY) -> None:
        # One per node attempt: the fields at once (core.quick_init checks this against them).
        self.__dict__.update({
            "workflow_id": workflow_id, "step": step, "node": node, "node_type": node_type, "attempt": attempt,
            "idempotency_key": idempotency_key, "worker_id": worker_id, "remaining_steps": remaining_steps,
            "configurable": configurable, "metadata": metadata, "step_limit": step_limit,
            "_cancel": [] if _cancel is FACTORY else _cancel,
            "_stream": [] if _stream is FACTORY else _stream})

    @property
    def stream_writer(self) -> StreamWriter:
        """This run's ``StreamWriter`` (the same object on every access); usable from any thread."""
        if len(self._stream) < 2:
            with _writer_lock:
                if not self._stream:
                    self._stream.append(current_stream_sink())
                if len(self._stream) < 2:
                    self._stream.append(StreamWriter(
                        self._stream[0], workflow_id=self.workflow_id, node=self.node, step=self.step,
                        task_id=self.idempotency_key, attempt=self.attempt, namespace=getattr(self, "namespace", None),
                        root_workflow_id=getattr(self, "root_workflow_id", None), node_metadata=self.metadata))
        writer: StreamWriter = self._stream[1]
        return writer

    def emit_message(self, chunk: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Stream one LLM token/delta in ``stream_mode="messages"``: ``stream_writer.message(chunk, metadata)``."""
        self.stream_writer.message(chunk, metadata)

    def _bind_stream(self) -> None:
        """Fix the stream sink of this context's process now (a node's own threads may not see it later)."""
        if not self._stream:
            with _writer_lock:
                if not self._stream:
                    self._stream.append(current_stream_sink())

    def _stream_seq(self) -> int:
        """The publisher's sequence number of the last chunk this run streamed (0: none)."""
        return int(self._stream[1].last_seq) if len(self._stream) > 1 else 0

    @property
    def cancelled(self) -> bool:
        """Whether this run of the node was cancelled; safe to read from any thread."""
        return bool(self._cancel) and self._cancel[0].is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds (None: until cancelled); True if cancelled.

        A sleep that ends early on cancellation, for plain-function nodes.
        """
        return self._cancel_event().wait(timeout)

    def cancel(self) -> None:
        """Mark the run cancelled (done by the framework; nodes only read it)."""
        self._cancel_event().set()

    def _cancel_event(self) -> threading.Event:
        if not self._cancel:
            with _writer_lock:
                if not self._cancel:
                    self._cancel.append(threading.Event())
        return self._cancel[0]

    # -- read as LangGraph's Runtime (``def node(state, runtime: Runtime[Context])``) -------------------

    def __class_getitem__(cls, item: Any) -> Any:
        """``Runtime[Context]`` (``NodeContext[...]``) in annotations: the class itself."""
        return cls

    @property
    def context(self) -> RunContext | None:
        """The run's context (LangGraph's ``runtime.context``: ``invoke(..., context=...)``), read
        by attribute or key (``runtime.context.user_id``, ``runtime.context["user_id"]``); it
        travelled as JSON, so it is a ``RunContext`` dict, not the caller's object; None if none
        was given."""
        return run_context_of(self.configurable)

    @property
    def store(self) -> None:
        """LangGraph's ``runtime.store``: None (no long-term store is attached to a run)."""
        return None

    @property
    def previous(self) -> None:
        """LangGraph's ``runtime.previous`` (the Functional API's): None for graph nodes."""
        return None

    # -- read as LangGraph's RunnableConfig (``def node(state, config)``) ---------------------------

    def as_config(self) -> dict[str, Any]:
        """This context as LangGraph's ``RunnableConfig`` dict, for nodes ported as ``node(state, config)``.

        ``{"configurable": {"thread_id", "checkpoint_ns", <the caller's configurable>}, "metadata": {"thread_id",
        "langgraph_step", "langgraph_node", "langgraph_checkpoint_ns", "langgraph_task_id",
        "attempt", and the node's own ``add_node(metadata=)``}, "recursion_limit"}``. ``thread_id`` is the workflow id (inside a
        subgraph, that of the outermost workflow, as LangGraph's subgraphs share the
        parent's thread); ``checkpoint_ns`` is ``""`` for the outermost graph, else the
        subgraph's workflow id. ``recursion_limit`` (the step limit) is there only when
        the step limit is known to the node (``remaining_steps``). A fresh dict each call.
        """
        thread = getattr(self, "root_workflow_id", None) or self.workflow_id.split(":sub:", 1)[0]
        namespace = "" if thread == self.workflow_id else self.workflow_id
        config: dict[str, Any] = {
            "configurable": {**visible_configurable(self.configurable), "thread_id": thread, "checkpoint_ns": namespace},
            "metadata": {**(self.metadata or {}), "thread_id": thread, "langgraph_step": self.step,
                         "langgraph_node": self.node,
                         "langgraph_checkpoint_ns": namespace, "langgraph_task_id": self.idempotency_key,
                         "attempt": self.attempt},
        }
        # LangGraph's recursion_limit of a call of N steps is N + 1 (the config that gave the limit).
        if self.step_limit is not None:  # the call's: a thread's later runs and resumes count their own steps
            config["recursion_limit"] = self.step_limit + 1
        elif self.remaining_steps is not None:
            config["recursion_limit"] = self.step + self.remaining_steps + 1
        return config

    def __getitem__(self, key: str) -> Any:
        """``config[key]`` of ``as_config()``; ``KeyError`` naming the keys there are."""
        config = self.as_config()
        if key not in config:
            raise KeyError(f"node {self.node!r}: its context read as a LangGraph config has no {key!r}; it has "
                           f"{', '.join(map(repr, config))} (and attributes workflow_id, step, node, attempt, ...)")
        return config[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``as_config().get(key, default)``."""
        return self.as_config().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.as_config()

    def keys(self) -> list[str]:
        """The keys of ``as_config()``."""
        return list(self.as_config())


_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("distributed_agents_node", default=None)


_writer_lock = threading.Lock()


# While a condition runs with a run context: what get_runtime() returns there (graph.ConditionConfig).
condition_runtime: contextvars.ContextVar[Any] = contextvars.ContextVar("condition_runtime", default=None)


def get_runtime(context_schema: Any = None) -> Any:
    """LangGraph's ``get_runtime()``: the running node's ``NodeContext``, read as its ``Runtime``
    (``.context``, ``.stream_writer``, ``.store``); in a condition, its config (``.context``).
    ``context_schema`` is accepted for LangGraph's signature and not checked. ``RuntimeError``
    outside a node or condition."""
    context = current_context()
    if context is None:
        context = condition_runtime.get()
    if context is None:
        raise RuntimeError("get_runtime() is called inside a running node or condition (or code one calls), and "
                           "none runs here")
    return context


def current_context() -> NodeContext | None:
    """The ``NodeContext`` of the node running in this task or thread, if any."""
    return _current.get()


def get_stream_writer() -> StreamWriter:
    """The running node's ``StreamWriter`` (LangGraph's ``get_stream_writer``); in async and thread nodes.

    ``ExecutionError`` outside a node (no node runs in this task or thread).
    """
    context = _current.get()
    if context is None:
        raise ExecutionError(
            "get_stream_writer() was called outside a node: call it in a node function (async def or plain) "
            "while a workflow runs it, or use the node's context.stream_writer"
        )
    return context.stream_writer


@dataclass(frozen=True)
class NodeFailure:
    """A node's exception, in a form that crosses processes.

    ``exception`` is the exception object itself when the node ran in this process
    (never stored or sent: ``to_dict``/``to_text`` leave it out); the workflow's
    ``NodeExecutionError`` then names it as its ``__cause__``.
    """

    error_type: str
    message: str
    traceback_text: str
    timed_out: bool = False
    exception: BaseException | None = field(default=None, compare=False, repr=False)

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


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped, so it can be stored."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class NodeRaisedBaseException(Exception):
    """A node's own code raised ``original``, which asyncio cannot carry as a node failure.

    ``StopIteration`` (a future refuses it: the run would hang), ``KeyboardInterrupt``,
    ``SystemExit``, ``GeneratorExit``, a ``CancelledError`` that is not a cancellation of
    the run, or a library's own ``BaseException`` subclass: each fails the node like any
    exception, and ``describe_failure`` reports it by its own type and traceback.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


def _cancel_requested() -> bool:
    """Whether the running task is being cancelled (a ``CancelledError`` now is genuine)."""
    return cancel_requested()


def cancel_requested() -> bool:
    """Whether the running asyncio task is being cancelled, so a ``CancelledError`` now is genuine.

    Uses ``Task.cancelling()`` (Python 3.11+). On Python 3.10 there is no way to tell a
    cancellation from a ``CancelledError`` raised by user code, so every one counts as a
    cancellation (the workflow stays resumable rather than failing on a real cancel).
    """
    task = asyncio.current_task()
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    # Beyond those pending when the run started in this task (core.run_cancels).
    return True if cancelling is None else bool(cancelling() > pending_at_start(task))


def _guarded(func: NodeFunction, *args: Any) -> Any:
    """Call ``func`` in a worker thread; what a future cannot carry comes back wrapped."""
    try:
        return func(*args)
    except interrupts.GraphInterrupt:
        raise
    except (StopIteration, asyncio.CancelledError) as exc:
        raise NodeRaisedBaseException(exc) from exc
    except Exception:
        raise
    except BaseException as exc:
        raise NodeRaisedBaseException(exc) from exc


def describe_failure(exc: BaseException) -> NodeFailure:
    """Capture ``exc`` with its traceback text (made storable with ``safe_text``).

    A ``NodeRaisedBaseException`` is described as the exception the node raised.
    """
    if isinstance(exc, NodeRaisedBaseException):
        exc = exc.original
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception as problem:  # the failure must be reported whatever the exception object does
        text = f"{type(exc).__name__}: <its traceback could not be formatted: {type(problem).__name__}>"
    return NodeFailure(type(exc).__name__, safe_text(bounded(exception_message(exc), MAX_MESSAGE)),
                       safe_text(bounded(text, MAX_TRACEBACK)), timed_out=isinstance(exc, NodeTimeoutError),
                       exception=exc)


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it failed: a node's exception class may have a broken ``__str__``.

    Reporting a node's failure must never raise: an error escaping here would leave the
    task unsettled, re-delivered after its lease and run again.
    """
    try:
        return str(exc)
    except Exception as problem:
        return f"<str() of this {type(exc).__name__} raised {type(problem).__name__}>"


MAX_MESSAGE = 4000  # characters of a node's error message kept (records, dead letters, events)
MAX_TRACEBACK = 16000  # characters of its traceback kept
CANCEL_WARNING_GRACE = 1.0  # seconds a cancelled plain function may take to return before a warning


def bounded(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and end and saying how much was cut.

    A node's error is stored in the workflow record and dead letters; a message of
    megabytes would make them too large for the backend and hide the node's failure.
    """
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    return f"{text[:head]}... ({len(text) - head - tail:,} characters cut) ...{text[-tail:]}"


def is_output_error(exc: BaseException) -> bool:
    """Whether ``exc`` rejects what a node returned (not JSON, not a dict, too large).

    The same input gives the same output, so such a failure is final: it is never retried.
    """
    return isinstance(exc, (InvalidNodeOutputError, StateNotSerializableError, PayloadTooLargeError))


async def _in_thread(
    func: NodeFunction, args: tuple[Any, ...], context: NodeContext, on_abandoned: AbandonedHook | None,
    executor: concurrent.futures.Executor | None = None,
) -> Any:
    ctx = contextvars.copy_context()
    thread = asyncio.get_running_loop().run_in_executor(executor, ctx.run, _guarded, func, *args)
    try:
        # Shielded: cancelling the caller must not cancel ``thread``, which has to keep
        # reporting when the function really returns.
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        context.cancel()
        if not thread.done():
            since = time.monotonic()
            # Most cooperative functions return within moments of seeing context.cancelled:
            # warn only about one that is still running after the grace.
            timer = asyncio.get_running_loop().call_later(
                CANCEL_WARNING_GRACE, _warn_still_running, thread, context, since)
            thread.add_done_callback(lambda done: _abandoned_returned(done, context, since, timer))
            if on_abandoned is not None:
                on_abandoned(thread)
        raise


def _warn_still_running(thread: asyncio.Future[Any], context: NodeContext, since: float) -> None:
    if thread.done():
        return
    log.warning(
        "node %r (workflow %r, attempt %d) is still running %.1fs after it was cancelled: it runs as a plain "
        "function in a thread, which cannot be interrupted, so it keeps its worker slot until it returns and its "
        "result will be discarded. Check context.cancelled (or distributed_agents.current_context().cancelled) in "
        "the function to stop early, or make it async def",
        context.node, context.workflow_id, context.attempt, time.monotonic() - since,
    )


def _abandoned_returned(thread: asyncio.Future[Any], context: NodeContext, since: float,
                        timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    error = None if thread.cancelled() else thread.exception()  # retrieved: nobody else will
    log.info("cancelled node %r (workflow %r) returned %.1fs after its cancellation%s; its result was discarded",
             context.node, context.workflow_id, time.monotonic() - since,
             f" raising {type(error).__name__}" if error is not None else "")


def wants_context(func: NodeFunction) -> bool:
    """Whether ``func`` is called as ``func(state, context)`` rather than ``func(state)``.

    The rule: a node gets its ``NodeContext`` as the second positional argument when
    that parameter has no default value, or is annotated ``NodeContext`` (also
    ``NodeContext | None``), or the function takes ``*args``. A second parameter with
    a default (``lambda state, i=i: ...``) keeps its default.
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2:
        second = positional[1]
        annotation = second.annotation
        annotated = annotation is NodeContext or (
            annotation is not second.empty and "NodeContext" in (annotation if isinstance(annotation, str)
                                                                  else repr(annotation)))
        return second.default is second.empty or annotated
    return any(p.kind is p.VAR_POSITIONAL for p in params)


# Per function: (wants_context, is a coroutine function, what its second positional parameter
# gets, the parameters passed by keyword). Reading a signature costs more than running a no-op
# node, and a node is called once per step.
_CallStyle = tuple[bool, bool, str, tuple[tuple[str, str], ...]]
_CALL_STYLES: weakref.WeakKeyDictionary[Any, _CallStyle] = weakref.WeakKeyDictionary()
# LangGraph's injected parameters, by name: what each gets here (a NodeContext reads as both).
_INJECTED = {"config": "context", "runtime": "context", "writer": "writer", "store": "none"}


def _call_style(func: NodeFunction) -> _CallStyle:
    """How ``func`` is called, remembered per function object while it lives: whether it takes a
    second argument (``wants_context``), whether it is async, what that argument is (its
    ``NodeContext``; its ``stream_writer`` for a parameter named ``writer``; None for ``store``), and
    LangGraph's injected parameters it takes by keyword (``config``, ``runtime``, ``writer``,
    ``store``: keyword-only ones, and positional ones after the second)."""
    try:
        return _CALL_STYLES[func]
    except (KeyError, TypeError):  # TypeError: not hashable or not weakly referenceable
        pass
    second, by_name = "context", []
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 and positional[1].name in _INJECTED:
        second = _INJECTED[positional[1].name]
    for param in params:
        later = param.kind is param.POSITIONAL_OR_KEYWORD and param in positional[2:]
        if (param.kind is param.KEYWORD_ONLY or later) and param.name in _INJECTED:
            by_name.append((param.name, _INJECTED[param.name]))
    style = (wants_context(func),
             inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)),
             second, tuple(by_name))
    with contextlib.suppress(TypeError):
        _CALL_STYLES[func] = style
    return style


def _injected(kind: str, context: NodeContext) -> Any:
    """What a parameter of ``kind`` (``_INJECTED``) gets."""
    return context if kind == "context" else context.stream_writer if kind == "writer" else None


AbandonedHook = Callable[["asyncio.Future[Any]"], None]


async def invoke_node(
    func: NodeFunction,
    state: State,
    context: NodeContext,
    *,
    timeout: float | None,
    on_abandoned: AbandonedHook | None = None,
    resume: Any = None,
    message_keys: Collection[str] = (),
    executor: concurrent.futures.Executor | None = None,
    managed: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Run ``func`` once on ``state``; return its checked updates.

    A ``Command`` the node returns, and a pause by ``interrupt()``, come back in their
    JSON forms (``types.command_output`` / ``types.interrupt_output``); ``resume`` is
    the list of answers the node's ``interrupt()`` calls return, in order.
    ``message_keys`` (keys whose reducer is ``add_messages``) take LangGraph's message
    shorthands (``("user", "hi")``, ``"hi"``), turned into message dicts before the check.
    ``managed`` (key -> kind, ``core.managed``) are the managed values the node's input
    gets, from ``context.remaining_steps``; its writes to them are dropped (logged).

    Raises ``NodeTimeoutError`` past ``timeout``, ``InvalidNodeOutputError`` for a
    return value that is not a dict or None, ``StateNotSerializableError`` for a
    non-JSON value, and whatever the node itself raises: an ``Exception`` as it is, any
    other ``BaseException`` (``StopIteration``, ``KeyboardInterrupt``, ``SystemExit``, a
    ``CancelledError`` while the run is not being cancelled, ...) wrapped in
    ``NodeRaisedBaseException``. ``CancelledError`` escapes only when the run itself is
    cancelled.

    On cancellation or timeout ``context.cancelled`` becomes True. An ``async`` node is
    cancelled; a plain function's thread cannot be stopped: it is logged once, its
    result will be discarded, and ``on_abandoned`` receives a future that completes
    when the thread returns (a worker counts it against its capacity until then).
    A plain function runs in ``executor`` (default: the event loop's default executor,
    whose ``min(32, CPUs + 4)`` threads cap how many run at once).
    """
    if managed and context.remaining_steps is not None:  # (a copy: the caller's state stays as it was)
        state = State._trusted({**state, **managed_inputs(managed, context.remaining_steps)}, context.workflow_id)
    takes_context, is_async, second, by_name = _call_style(func)
    args: tuple[Any, ...] = (state, _injected(second, context)) if takes_context else (state,)
    if by_name:  # LangGraph's injected parameters taken by keyword (def node(state, *, runtime))
        func = functools.partial(func, **{name: _injected(kind, context) for name, kind in by_name})
    context._bind_stream()

    async def call() -> Any:
        token = _current.set(context)
        # Every record logged while the node runs (its thread included: it runs in a copy of this
        # context) names it; the idempotency key is the task id in both executors.
        logged = log_context.set_fields(workflow_id=context.workflow_id, step=context.step, node=context.node,
                                        task_id=context.idempotency_key, attempt=context.attempt)
        answers = interrupts.resume_scope(resume if isinstance(resume, list) else None, context.node)
        try:
            if is_async:
                result = await func(*args)
            else:
                result = await _in_thread(func, args, context, on_abandoned, executor)
            if result is not None and type(result) is not dict and inspect.isawaitable(result):
                result = await result
            pad = answers.var.get()  # (the node's scratchpad: no call per node to look)
            if pad is not None and pad.pauses:  # an interrupt() of it raised, and it returned
                log.warning("node %r called interrupt() and caught the pause it raises (GraphInterrupt, an "
                            "Exception: an except Exception around interrupt() catches it), so the workflow did not "
                            "pause and the node's result was used; let it through (catch narrower exceptions, or "
                            "re-raise GraphInterrupt)", context.node)
            return result
        except interrupts.GraphInterrupt as paused:
            pad = answers.var.get()
            if pad is not None and pad.pauses > 1:
                log.warning("node %r caught the pause of an earlier interrupt() (an except Exception around it) and "
                            "paused at a later one: answers go to its interrupt() calls in order, so the caught one "
                            "takes the next resume's answer; let GraphInterrupt through", context.node)
            return paused
        except ParentCommand as handed:  # a graph this node ran ended with Command.PARENT: the node's own Command
            return handed.command
        except asyncio.CancelledError as exc:
            if _cancel_requested():  # the run itself is cancelled (timeout, workflow cancelled, worker stops)
                context.cancel()
                raise
            raise NodeRaisedBaseException(exc) from exc  # the node's code raised it: a node failure
        except Exception as exc:
            pad = answers.var.get()
            if pad is not None and pad.pauses:
                log.warning("node %r raised %s after catching the pause its interrupt() raises (an except Exception "
                            "around it raised another error): the step fails instead of pausing; let GraphInterrupt "
                            "through", context.node, type(exc).__name__)
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, GeneratorExit... raised by the node
            raise NodeRaisedBaseException(exc) from exc
        finally:
            interrupts.reset_scope(answers)
            log_context.reset(logged)
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
            await asyncio.wait({running})  # let it see the cancellation (and report a thread it leaves)
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
    # Every output leaves as a copy (decode(encode(...)), after the JSON check): what a node
    # returns must not stay linked to objects it (or a later node) may still mutate.
    if isinstance(output, interrupts.GraphInterrupt):
        return _detached(interrupt_output(output.value, output.index, context.node))
    if isinstance(output, Command):
        if output.update is not None:  # (a list of (key, value) pairs read as the dict it stands for)
            update = update_dict(output.update, f"node {context.node!r} returned Command(update=...)")
            _refuse_reserved(update, context.node)
            if managed:
                update = drop_managed(update, managed, context.node)
            output = dataclasses.replace(output, update=coerce_message_updates(update, message_keys)
                                         if message_keys else update)
        return _detached(command_output(output, context.node))
    if not isinstance(output, Mapping):
        raise InvalidNodeOutputError(
            f"node {context.node!r} returned {type(output).__name__}; a node must return a dict of "
            "state updates, a Command or None"
        )
    updates = coerce_message_updates(output, message_keys) if message_keys else dict(output)
    _refuse_reserved(updates, context.node)
    if managed:
        updates = drop_managed(updates, managed, context.node)
    try:
        check_values(updates)
    except StateNotSerializableError as exc:
        raise StateNotSerializableError(f"node {context.node!r}: {exc}", key=exc.key) from None
    return _detached(updates)


def _refuse_reserved(updates: Mapping[str, Any], node: str) -> None:
    """Raise ``InvalidNodeOutputError`` if ``updates`` write a reserved (``__``-prefixed) key."""
    reserved = reserved_keys(updates)
    if reserved:
        raise InvalidNodeOutputError(
            f"node {node!r} wrote state key(s) {', '.join(map(repr, reserved))}: keys starting with "
            f"{RESERVED_PREFIX!r} are reserved for the framework (execute() reports a pause under '__interrupt__'); "
            "rename the key"
        )


def _detached(output: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a checked JSON ``output`` sharing nothing with the node's objects."""
    copied: dict[str, Any] = decode(encode(output))
    return copied
