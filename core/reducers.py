"""Per-key reducers: how updates from the nodes of one step are merged into state.

A reducer is called as ``reducer(current, update)`` and returns the new value; it is
applied once per writing node, in the graph's node declaration order, so the result
never depends on which branch finished first. Keys without a reducer take the written
value ("replace"), and two nodes writing such a key in one step is an error.

Built-ins, by name: ``replace``, ``append`` (add one item, or every item of a list, to
a list), ``extend`` (concatenate lists), ``merge`` (shallow dict merge), ``add``
(numbers), ``add_messages`` (chat history: append, replace and remove by message id;
see ``messages``), plus any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.messages import add_messages

__all__ = ["BUILTIN_REDUCERS", "Reducer", "add_messages", "reducer_name", "resolve_reducer", "suggest_reducer"]

Reducer = Callable[[Any, Any], Any]


def _replace(current: Any, update: Any) -> Any:
    return update


def _as_list(name: str, current: Any) -> list[Any]:
    # list("abc") or list({"k": 1}) would silently turn a scalar or a dict into something else.
    if current is None:
        return []
    if not isinstance(current, (list, tuple)):
        raise TypeError(f"{name!r} needs a list in state, found {type(current).__name__}")
    return list(current)


def _append(current: Any, update: Any) -> Any:
    base = _as_list("append", current)
    if isinstance(update, list):
        return base + update
    return base + [update]


def _extend(current: Any, update: Any) -> Any:
    if not isinstance(update, list):
        raise TypeError(f"'extend' needs a list update, got {type(update).__name__}")
    return _as_list("extend", current) + update


def _merge(current: Any, update: Any) -> Any:
    if not isinstance(update, dict):
        raise TypeError(f"'merge' needs a dict update, got {type(update).__name__}")
    if current is not None and not isinstance(current, dict):
        raise TypeError(f"'merge' needs a dict in state, found {type(current).__name__}")
    merged = {} if current is None else dict(current)
    merged.update(update)
    return merged


def _add(current: Any, update: Any) -> Any:
    return update if current is None else current + update


BUILTIN_REDUCERS: dict[str, Reducer] = {
    "replace": _replace,
    "append": _append,
    "extend": _extend,
    "merge": _merge,
    "add": _add,
    "add_messages": add_messages,
}


def resolve_reducer(key: str, reducer: str | Reducer) -> Reducer:
    """The callable for ``reducer`` (a built-in name or a callable) of state key ``key``."""
    if callable(reducer):
        return reducer
    found = BUILTIN_REDUCERS.get(reducer) if isinstance(reducer, str) else None
    if found is None:
        raise ConfigurationError(
            f"unknown reducer {reducer!r} for state key {key!r}; "
            f"use one of {', '.join(sorted(BUILTIN_REDUCERS))} or a callable (current, update) -> value"
        )
    return found


def reducer_name(reducer: str | Reducer) -> str:
    """A printable name for a reducer, for graph specs."""
    if isinstance(reducer, str):
        return reducer
    for name, builtin in BUILTIN_REDUCERS.items():
        if builtin is reducer:
            return name
    return getattr(reducer, "__qualname__", repr(reducer))


def suggest_reducer(key: str, values: Sequence[Any]) -> str:
    """A hint naming the built-in reducer that combines ``values`` (written to ``key`` in one step).

    By the values' type: numbers -> ``add`` (their sum), lists -> ``extend`` (one list
    of all items), dicts -> ``merge``, anything else -> ``append`` (a list of the values).
    """
    kinds = {_kind(value) for value in values}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    reducer, effect = {
        "number": ("add", "to sum the numbers"),
        "list": ("extend", "to concatenate the lists (or 'append' to collect them as items)"),
        "dict": ("merge", "to merge the dicts key by key"),
    }.get(kind, ("append", "to collect every value in a list"))
    return (f"declare one, e.g. Graph(..., reducers={{{key!r}: {reducer!r}}}) {effect}, "
            "or a callable (current, update) -> value")


def _kind(value: Any) -> str:
    if isinstance(value, bool):  # bool is an int, but summing flags is rarely what is meant
        return "other"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "other"
