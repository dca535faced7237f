"""``State``: the data that flows through a workflow, always JSON-serialisable.

Every value is checked when it is written, so a value that could not be checkpointed or
sent to another machine fails at the line that wrote it, naming the key and the nested
path. Accepted are exactly the values JSON returns unchanged (``codec.find_non_json``):
what a node writes is what the next node, ``get_result``, ``resume`` and every other
process read, and what ``execute`` returns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from distributed_agents.core.codec import decode, encode, find_non_json
from distributed_agents.core.errors import StateError, StateNotSerializableError
from distributed_agents.core.random_ids import random_hex

__all__ = ["RESERVED_PREFIX", "State", "new_workflow_id", "reserved_keys"]

RESERVED_PREFIX = "__"  # state keys the framework uses in what it returns (e.g. "__interrupt__")


def reserved_keys(values: Mapping[str, Any]) -> list[str]:
    """The keys of ``values`` that start with ``RESERVED_PREFIX``: nodes and callers may not write them.

    ``execute()`` reports a pause under ``"__interrupt__"``, so a user value there would
    pass for a pause (or hide one); every ``__``-prefixed key is kept for such use.
    """
    return [key for key in values if isinstance(key, str) and key.startswith(RESERVED_PREFIX)]


def new_workflow_id() -> str:
    """A fresh, unique workflow id: ``wf_`` and 32 random hex digits."""
    return "wf_" + random_hex(16)


def check_value(key: str, value: Any, what: str = "state") -> None:
    """Raise ``StateNotSerializableError`` unless JSON returns ``value`` unchanged (see ``codec``).

    The message names the key (of ``what``: the state, or e.g. a node's ``metadata``) and the
    nested path of the culprit (e.g. ``findings[1].fetched`` or ``by_id.<key 7>``) and says
    what to store instead.
    """
    if type(key) is not str:
        raise StateNotSerializableError(
            f"{what} keys must be strings, got {key!r} ({type(key).__name__}); JSON would turn it into "
            f"{str(key)!r}", key=str(key))
    found = find_non_json(value)
    if found is None:
        if not key.isascii() and find_non_json(key) is not None:
            raise StateNotSerializableError(f"{what} key {key!r} has a lone surrogate; it cannot be encoded as "
                                            "UTF-8 JSON", key=key)
        return
    path, why = found
    holder = "State holds" if what == "state" else f"{what[0].upper()}{what[1:]} holds"
    raise StateNotSerializableError(f"{what} key {key!r}, at {key}{path}: {why}. {holder} only {JSON_VALUES}", key=key)


JSON_VALUES = "what JSON returns unchanged: str, int, float, bool, None, and lists and dicts (with str keys) of them"
"""What a value stored or sent as JSON may hold, as error messages say it."""


def non_json_problem(value: Any, root: str) -> str | None:
    """Where and why ``value`` is not JSON (``find_non_json``), as a message's words: ``at
    <root><path>: <why>`` (without ``at`` for ``value`` itself), or None when it is JSON."""
    found = find_non_json(value)
    if found is None:
        return None
    path, why = found
    return f"at {root}{path}: {why}" if path else why


def check_values(values: Mapping[str, Any], what: str = "state") -> None:
    """``check_value`` every item of ``values`` (of ``what``: see there): one pass, no encoding."""
    for key, value in values.items():
        check_value(key, value, what)


class State(dict[str, Any]):
    """A workflow's data: a ``dict`` of string keys to JSON-serialisable values.

    Nodes receive a ``State`` (a snapshot as of the start of their step) and return a
    dict of updates; changing the snapshot in place has no effect on the workflow.

    It is a real ``dict`` (so ``json.dumps(state)``, ``isinstance(state, dict)`` and
    ``{**state}`` work as in code written for LangGraph) with one extra attribute,
    ``workflow_id``, and checked writes: ``state[key] = value``, ``update``,
    ``setdefault`` and ``|=`` refuse a value JSON would not return unchanged
    (``StateNotSerializableError``). Two states are equal when their workflow ids and
    data are; a state equals a plain mapping with the same data.
    """

    __slots__ = ("workflow_id",)

    def __init__(self, data: Mapping[str, Any] | None = None, *, workflow_id: str | None = None) -> None:
        super().__init__()
        self.workflow_id = workflow_id or new_workflow_id()
        if data:
            self.update(data)

    @classmethod
    def _trusted(cls, data: Mapping[str, Any], workflow_id: str) -> State:
        """A state holding ``data`` already known to be JSON-clean: a shallow copy, not checked."""
        state = cls.__new__(cls)
        dict.update(state, data)
        state.workflow_id = workflow_id
        return state

    @property
    def _data(self) -> dict[str, Any]:
        """The data itself (the state is its own dict); kept for code written before it was one."""
        return self

    # -- checked writes ------------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        check_value(key, value)
        super().__setitem__(key, value)

    def update(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None, /,  # type: ignore[override]
               **kwargs: Any) -> None:
        """Write every item of ``data`` (and ``kwargs``), checking each value first."""
        items: dict[str, Any] = dict(data or {})
        items.update(kwargs)
        check_values(items)
        super().update(items)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``state[key]``, first writing ``default`` there (checked) when the key is missing."""
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> State:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, State):
            return self.workflow_id == other.workflow_id and dict.__eq__(self, other)
        if isinstance(other, Mapping):
            return dict.__eq__(self, dict(other))
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self) -> str:
        return f"State(workflow_id={self.workflow_id!r}, data={dict(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle/copy: rebuild through __init__ (checked), keeping the workflow id.
        return (_rebuild, (type(self), dict(self), self.workflow_id))

    # -- copies, checkpoints and serialisation ------------------------------------------

    def values_copy(self) -> dict[str, Any]:
        """A deep copy of the data (through JSON), sharing nothing with this state."""
        result: dict[str, Any] = decode(encode(dict(self)))
        return result

    def copy(self) -> State:
        """A deep copy with the same workflow id."""
        return State._trusted(self.values_copy(), self.workflow_id)

    def checkpoint(self, node_name: str) -> dict[str, Any]:
        """A JSON-serialisable snapshot taken after ``node_name``, for ``restore_from_checkpoint``."""
        return {
            "checkpoint_id": uuid.uuid4().hex,
            "workflow_id": self.workflow_id,
            "node": node_name,
            "timestamp": time.time(),
            "data": self.values_copy(),
        }

    def restore_from_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Replace the data with the checkpoint's; the checkpoint must be of this workflow."""
        if not isinstance(checkpoint, Mapping):
            raise StateError(
                f"not a State checkpoint: got {type(checkpoint).__name__}; pass what State.checkpoint() returned"
            )
        if "data" not in checkpoint or not isinstance(checkpoint["data"], Mapping):
            raise StateError("not a State checkpoint: it has no 'data' mapping; pass what State.checkpoint() returned")
        if checkpoint.get("workflow_id") not in (None, self.workflow_id):
            raise StateError(
                f"checkpoint of workflow {checkpoint.get('workflow_id')!r} cannot restore state of "
                f"workflow {self.workflow_id!r}"
            )
        data = dict(checkpoint["data"])
        check_values(data)
        self.clear()
        dict.update(self, decode(encode(data)))

    def to_dict(self) -> dict[str, Any]:
        """``{"workflow_id": ..., "data": {...}}``, a deep copy."""
        return {"workflow_id": self.workflow_id, "data": self.values_copy()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        """Rebuild a state from ``to_dict`` output."""
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), Mapping):
            raise StateError("State.from_dict needs the output of State.to_dict(): a mapping with 'data'")
        return cls(data["data"], workflow_id=data.get("workflow_id"))


def _rebuild(cls: type[State], data: dict[str, Any], workflow_id: str) -> State:
    """Unpickle a ``State`` (or subclass) from its data and workflow id."""
    state = State.__new__(cls)
    dict.update(state, data)
    state.workflow_id = workflow_id
    return state
