"""``ReadOnlyState``: the view of the merged state that routing conditions receive.

A condition decides where the workflow goes; it must not change what the workflow
holds (writes go through nodes, reducers and the one-writer rule). Setting, deleting or
updating a key of the view raises ``ExecutionError`` naming the condition, the graph
and the key. Values read from the view are copies, made the first time each key is
read, so changing a nested list or dict in place changes nothing that is committed.
"""

from __future__ import annotations

import copy
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, NoReturn

from distributed_agents.core.errors import ExecutionError
from distributed_agents.core.state import State

__all__ = ["ReadOnlyState"]

_IMMUTABLE = (str, int, float, bool, type(None))


def _copy(value: Any) -> Any:
    # JSON values are dicts, lists and scalars: copy those by hand (much faster than deepcopy).
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return copy.deepcopy(value)


class ReadOnlyState(State):
    """A ``State`` that refuses writes; ``where`` names its reader, e.g. "condition f after node 'a' of graph 'g'".

    It is a ``dict`` (a ``State``), so ``json.dumps(view)`` and ``isinstance(view, dict)``
    work; every way to write (``view[k] = v``, ``del``, ``update``, ``pop``, ``popitem``,
    ``clear``, ``setdefault``, ``|=``) raises ``ExecutionError``. Values read through
    ``[]``, ``get``, ``items()``, ``values()`` and ``dict(view)`` are copies.
    """

    __slots__ = ("_copies", "_where", "refused")

    def __init__(self, data: Mapping[str, Any], *, workflow_id: str, where: str) -> None:  # noqa: D107
        dict.__init__(self)
        dict.update(self, data)  # a shallow copy of the mapping: later writes to ``data`` are not seen
        self.workflow_id = workflow_id
        self._copies: dict[str, Any] = {}
        self._where = where
        self.refused: ExecutionError | None = None  # the last write refused, so callers can tell it apart

    @classmethod
    def of(cls, state: Mapping[str, Any], *, where: str) -> ReadOnlyState:
        """A read-only view of ``state`` (a ``State`` or a plain mapping); values are copied when read."""
        return cls(state, workflow_id=str(getattr(state, "workflow_id", "")), where=where)

    def _refuse(self, key: object, what: str) -> NoReturn:
        self.refused = ExecutionError(
            f"{self._where} tried to {what} state key {key!r}; conditions get a read-only view of the state: "
            "return only the route from the condition and write state from a node"
        )
        raise self.refused

    def __getitem__(self, key: str) -> Any:
        try:
            return self._copies[key]
        except KeyError:
            value = self._copies[key] = _copy(dict.__getitem__(self, key))
            return value

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (a copy), or ``default``."""
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:
        # Defined (not inherited) so dict(view) and {**view} read values through __getitem__ (copies).
        return iter(list(dict.keys(self)))

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        """The keys, as a live view."""
        return KeysView(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        """The items; each value a copy."""
        return ItemsView(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        """The values, each a copy."""
        return ValuesView(self)

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(key, "set")

    def __delitem__(self, key: str) -> None:
        self._refuse(key, "delete")

    def update(self, data: Any = None, /, **kwargs: Any) -> None:
        """Refused: the view is read-only."""
        keys = [*(data or {}), *kwargs]
        self._refuse(keys[0] if len(keys) == 1 else keys, "update")

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Refused: the view is read-only."""
        self._refuse(key, "set")

    def pop(self, key: str, *default: Any) -> Any:
        """Refused: the view is read-only."""
        self._refuse(key, "pop")

    def popitem(self) -> tuple[str, Any]:
        """Refused: the view is read-only."""
        self._refuse(list(dict.keys(self))[-1:], "pop")

    def clear(self) -> None:
        """Refused: the view is read-only."""
        self._refuse(list(dict.keys(self)), "clear")

    def __ior__(self, other: Any) -> ReadOnlyState:  # type: ignore[override,misc]
        self._refuse(list(other), "update")

    def restore_from_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Refused: the view is read-only."""
        self._refuse(list(dict.keys(self)), "restore")

    def copy(self) -> State:
        """A writable deep copy (a ``State``), detached from the workflow."""
        return State._trusted(self.values_copy(), self.workflow_id)

    def __reduce__(self) -> tuple[Any, ...]:
        # copy.copy / deepcopy / pickle of a view give a plain, writable State with the same data.
        return State(dict.copy(self), workflow_id=self.workflow_id).__reduce__()

    def __repr__(self) -> str:
        return f"ReadOnlyState(workflow_id={self.workflow_id!r}, data={dict.copy(self)!r})"
