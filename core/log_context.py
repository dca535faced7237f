"""Which workflow, step, node, task and attempt a log record was emitted for.

The step engine binds ``workflow_id`` and ``step`` while it drives a workflow,
``invoke_node`` binds all five fields while a node function runs (in-process or on a
worker), and a worker binds them while it handles a claimed task. The values live in a
``contextvars.ContextVar``, so every asyncio task sees its own (a task copies the
context it was created in) and a plain-function node's thread sees its node's
(``invoke_node`` runs it in a copy of the context).

``LogContextFilter``, attached to a ``logging.Handler``, copies the bound values onto
every record that handler sees, user code's records included
(``logging.getLogger("myapp").info(...)`` inside a node): as the attributes
``workflow_id``, ``step``, ``node``, ``task_id``, ``attempt`` (None when not bound) and
``log_context`` (the bound ones, compactly: ``"[wf=wf_1 step=3 node=writer] "``, or
``""``). Formatters read them (``%(log_context)s``, ``record.workflow_id``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["FIELDS", "LogContextFilter", "alert_level", "bind", "bind_fields", "current", "reset", "restore",
           "set_fields"]

# The record attributes, in the order they are shown.
FIELDS: tuple[str, ...] = ("workflow_id", "step", "node", "task_id", "attempt")
_SHORT = {"workflow_id": "wf", "step": "step", "node": "node", "task_id": "task", "attempt": "attempt"}

_FIELD_NAMES = frozenset(FIELDS)
_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Holds a plain dict, never changed once set (each set_fields makes a new one): one object
# per binding instead of a dict and a read-only view of it (current() makes the view).
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("distributed_agents_log_context",
                                                                          default=_EMPTY)


def current() -> Mapping[str, Any]:
    """The fields bound in this task or thread (a read-only mapping; empty outside any run)."""
    return MappingProxyType(_bound.get())


def set_fields(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind ``fields`` (names from ``FIELDS``) over the current ones; undo with ``reset(token)``.

    A value of None unbinds that field. Raises ``ValueError`` for a name not in ``FIELDS``.
    """
    if not _FIELD_NAMES.issuperset(fields):
        unknown = set(fields) - _FIELD_NAMES
        raise ValueError(f"unknown log context field(s) {sorted(unknown)}; use {', '.join(FIELDS)}")
    merged = {**_bound.get(), **fields}
    if None in merged.values():
        merged = {k: v for k, v in merged.items() if v is not None}
    return _bound.set(merged)


def reset(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Restore the fields bound before the ``set_fields`` call that returned ``token``."""
    _bound.reset(token)


def bind_fields(**fields: Any) -> Mapping[str, Any]:
    """``set_fields(**fields)``, returning the fields bound before it: undo with ``restore(them)``.

    No token is kept: a token is a GC-tracked object, and a workflow run keeps its
    binding for as long as it runs, hundreds of runs at once in one orchestrator.
    """
    before = _bound.get()
    set_fields(**fields)
    return before


def restore(before: Mapping[str, Any]) -> None:
    """Bind again the fields ``bind_fields`` returned (those bound before it)."""
    _bound.set(before)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` for the ``with`` block (see ``set_fields``), restoring the previous ones after."""
    token = set_fields(**fields)
    try:
        yield
    finally:
        _bound.reset(token)


class LogContextFilter(logging.Filter):
    """Adds the bound fields (and ``log_context``, their compact text) to each record; never drops one.

    Attach it to a handler (``handler.addFilter(LogContextFilter())``): a handler's filters
    see records of every logger, a logger's only its own. A field the record already has
    (passed with ``extra=``) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _bound.get()
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound.get(name))
        shown = " ".join(f"{_SHORT[name]}={getattr(record, name)}" for name in FIELDS
                         if getattr(record, name) is not None)
        if not hasattr(record, "log_context"):
            record.log_context = f"[{shown}] " if shown else ""
        return True


def alert_level(logger: logging.Logger) -> int:
    """The level of a line alerting should see (a final node failure, a failed workflow).

    WARNING where logging is set up (``logger.hasHandlers()``: the worker and orchestrator
    services, an application's own handlers); INFO where none is, because Python's
    last-resort handler would print a WARNING to stderr beside the error a script already gets.
    """
    return logging.WARNING if logger.hasHandlers() else logging.INFO
