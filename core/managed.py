"""Managed values: state keys the engine fills in for each node's input and never stores.

LangGraph's ``RemainingSteps`` and ``IsLastStep`` (``langgraph.managed``), declared the same way
in a state schema::

    class AgentState(TypedDict):
        messages: Annotated[list, add_messages]
        remaining_steps: RemainingSteps     # an int: steps left before the step limit, this one included
        is_last_step: IsLastStep            # a bool: this step is the last the step limit allows

A node reads them as ``state["remaining_steps"]`` / ``state["is_last_step"]``, locally and on
workers (the task names the keys; the step budget travels with it anyway). On the last step
the limit allows, ``remaining_steps`` is 1 and ``is_last_step`` True, so an agent loop can
stop cleanly (``if state["remaining_steps"] < 2: ...``) before ``StepLimitExceededError``.
With a ``Send``'s argument as its input, or as an error handler, a node gets none of them.

They are not state: never in a checkpoint, ``get_state``, a stream or a result. As in
LangGraph, an input value for one is ignored and a node's write to one is dropped with a
warning (``update_state`` refuses it: ``StateValidationError``).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IS_LAST_STEP", "MANAGED_KINDS", "REMAINING_STEPS", "IsLastStep", "ManagedValue", "RemainingSteps",
           "drop_managed", "managed_inputs", "managed_kind"]

_log = logging.getLogger("distributed_agents.managed")


@dataclass(frozen=True)
class ManagedValue:
    """The ``Annotated`` marker of a managed key; ``kind`` says which value the engine fills in."""

    kind: str


REMAINING_STEPS = ManagedValue("remaining_steps")
IS_LAST_STEP = ManagedValue("is_last_step")
MANAGED_KINDS = frozenset({REMAINING_STEPS.kind, IS_LAST_STEP.kind})

RemainingSteps = typing.Annotated[int, REMAINING_STEPS]
"""An ``int`` state key: the steps left before the step limit, this one included (1 on the last)."""
IsLastStep = typing.Annotated[bool, IS_LAST_STEP]
"""A ``bool`` state key: True on the last step the step limit allows."""


def managed_kind(metadata: tuple[Any, ...]) -> str | None:
    """The kind of managed value ``Annotated`` ``metadata`` declares, or None for a state key.

    Also LangGraph's own markers (``langgraph.managed``'s manager classes), recognised by
    name, so a schema written against LangGraph's imports keeps working."""
    for item in metadata:
        if isinstance(item, ManagedValue):
            return item.kind
        name = getattr(item, "__name__", "")
        if name == "RemainingStepsManager":
            return REMAINING_STEPS.kind
        if name == "IsLastStepManager":
            return IS_LAST_STEP.kind
    return None


def managed_inputs(managed: Mapping[str, str], remaining_steps: int) -> dict[str, Any]:
    """The values of the ``managed`` keys (key -> kind) for a node with ``remaining_steps`` steps left (this one included)."""
    values: dict[str, Any] = {}
    for key, kind in managed.items():
        if kind == REMAINING_STEPS.kind:
            values[key] = remaining_steps
        elif kind == IS_LAST_STEP.kind:
            values[key] = remaining_steps <= 1
    return values


def drop_managed(updates: dict[str, Any], managed: Mapping[str, str], node: str) -> dict[str, Any]:
    """``updates`` without the ``managed`` keys (the same dict when it writes none), each dropped one logged."""
    dropped = [key for key in updates if key in managed]
    if not dropped:
        return updates
    _log.warning("node %r wrote managed value(s) %s, which the engine fills in and never stores; the write is "
                 "ignored (return only state keys)", node, ", ".join(map(repr, dropped)))
    return {key: value for key, value in updates.items() if key not in managed}
