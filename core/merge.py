"""``merge_updates``: fold the updates of one step's nodes into the state.

The engine passes the writes in node declaration order (the order of the step's
frontier), so the merged state never depends on which node finished first. Every value
a reducer produces is checked like a node's output, so a reducer that returns
something JSON cannot carry fails here, naming the key, the reducer and the node,
instead of at commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distributed_agents.core.errors import ExecutionError, ReducerConflictError, StateNotSerializableError
from distributed_agents.core.reducers import Reducer, reducer_name, suggest_reducer
from distributed_agents.core.state import check_value

__all__ = ["merge_updates"]


def merge_updates(
    state: Mapping[str, Any], writes: Sequence[tuple[str, Mapping[str, Any]]], reducers: Mapping[str, Reducer]
) -> dict[str, Any]:
    """Apply ``writes`` (node, updates), in the given order, to a copy of ``state``.

    Keys with a reducer are folded through it, once per writing node. A key without
    one may be written by one node per step only: ``ReducerConflictError`` names every
    writer of the key in the step and suggests a reducer that fits all their values. A reducer that raises is an
    ``ExecutionError``, one that returns a value JSON cannot carry a
    ``StateNotSerializableError``; both name the key, the reducer and the node.
    """
    merged = dict(state)
    writer: dict[str, str] = {}
    reduced: dict[str, list[tuple[str, Any]]] = {}  # key -> (node, update) folded through its reducer
    for node, updates in writes:
        for key, value in updates.items():
            reducer = reducers.get(key)
            if reducer is None:
                if key in writer:
                    # Every writer of the key in this step, so the hint fits all their values.
                    writers = [(name, written[key]) for name, written in writes if key in written]
                    names = [name for name, _ in writers]
                    listed = ", ".join(map(repr, names[:-1])) + f" and {names[-1]!r}"
                    raise ReducerConflictError(
                        f"nodes {listed} {'both' if len(names) == 2 else 'all'} wrote state key {key!r} in one step "
                        "and the key has no reducer; "
                        f"{suggest_reducer(key, [v for _, v in writers])}",
                        key=key, nodes=tuple(names),
                    )
                merged[key] = value
            else:
                try:
                    merged[key] = reducer(merged.get(key), value)
                except BaseException as exc:  # a reducer's KeyboardInterrupt, CancelledError... too: it runs no await
                    if key in reduced:  # perhaps an earlier merge left a value the reducer cannot take
                        _check_reduced(key, state.get(key), reduced[key], reducer, merged.get(key))
                    raise ExecutionError(
                        f"reducer {reducer_name(reducer)!r} of state key {key!r} failed on the update from node "
                        f"{node!r}: {type(exc).__name__}: {exc}"
                    ) from exc
                reduced.setdefault(key, []).append((node, value))
            writer.setdefault(key, node)
    for key, folded in reduced.items():
        _check_reduced(key, state.get(key), folded, reducers[key], merged[key])
    return merged


def _check_reduced(key: str, initial: Any, folded: Sequence[tuple[str, Any]], reducer: Reducer, result: Any) -> None:
    """Raise ``StateNotSerializableError`` if the reduced ``result`` of ``key`` is not JSON."""
    try:
        check_value(key, result)  # one check per key and step: the common case
        return
    except StateNotSerializableError as exc:
        first_error = exc
    # Fold again, checking after each update, to name the node whose merge went wrong.
    culprit, error, value = folded[-1][0], first_error, initial
    for node, update in folded:
        try:
            value = reducer(value, update)
            check_value(key, value)
        except StateNotSerializableError as exc:
            culprit, error = node, exc
            break
        except Exception:  # a reducer that is not a pure function: blame the last writer
            break
    raise StateNotSerializableError(
        f"reducer {reducer_name(reducer)!r} of state key {key!r} returned a value JSON cannot carry when it merged "
        f"the update from node {culprit!r}; make the reducer return plain JSON data ({error})",
        key=key,
    ) from first_error
