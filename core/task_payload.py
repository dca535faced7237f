"""The payload of a node task as a worker reads it: one check of its whole shape.

``executors.task_payload`` writes the payload; ``check_payload`` is the one reader-side
check, run by the worker on every claimed task before anything of it is used, on every
backend. A payload that fails it is dead-lettered at once (``malformed task: ...``),
never run: a field of the wrong type or out of range (a negative timeout, a negative
step budget), or a version this worker does not read. Cheap by design (a handful of
dict lookups and type checks): it runs once per task on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from distributed_agents.core.managed import MANAGED_KINDS
from distributed_agents.core.task_state import STATE_REF_KEY, WRAP_KEY, read_ref

__all__ = ["FUNCTION_KEY", "MANAGED_KEY", "MANAGED_PAYLOAD_VERSION", "NODE_METADATA_KEY", "PAYLOAD_VERSION", "READABLE_VERSIONS",
           "RETRY_LIST_PAYLOAD_VERSION", "check_payload"]

MANAGED_KEY = "managed"
"""The payload field naming the managed values the node's input gets (``core.managed``: key -> kind)."""
NODE_METADATA_KEY = "node_metadata"
"""The payload field holding the node's own metadata (``add_node(metadata=)``), read in ``config["metadata"]``."""
FUNCTION_KEY = "function"
"""The payload field naming the node's own function (``file:qualname``, ``core.registry.function_name``)
when its graph holds one: a worker serving that graph's functions runs the task only with the same one
(an older worker ignores it)."""

PAYLOAD_VERSION = 1
"""The version ``executors.task_payload`` writes (``"v"``); bumped when a change would
make an older worker run a task wrongly."""
MANAGED_PAYLOAD_VERSION = 2
"""The version of a payload with ``managed`` values: a version-1 worker would ignore them and
run the node without the keys it reads, so it dead-letters the task saying to upgrade."""
RETRY_LIST_PAYLOAD_VERSION = 3
"""The version of a payload whose ``retry`` is a list of policies (``core.retry.RetryChain``):
a version-2 worker would refuse the list without saying why, so it dead-letters the task
saying to upgrade."""
READABLE_VERSIONS = (1, 2, 3)
"""Versions this worker reads. A payload without ``"v"`` is read as version 1."""

# Optional fields: name -> (allowed JSON types, what the message says it must be). None is allowed for each.
_OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "graph": ((str,), "a string"),
    WRAP_KEY: ((dict,), "an object"),
    "retry": ((dict, list), "an object (a retry policy) or a list of them"),
    "resume": ((list,), "a list (interrupt answers)"),
    "message_keys": ((list,), "a list of strings"),
    MANAGED_KEY: ((dict,), "an object (managed value kinds by key)"),
    NODE_METADATA_KEY: ((dict,), "an object (the node's metadata)"),
    FUNCTION_KEY: ((str,), "a string (file:qualname)"),
    "configurable": ((dict,), "an object"),
    "trace": ((dict,), "an object"),
}


def check_payload(payload: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field and the rule if ``payload`` is not a node-task payload this worker reads.

    The rules: ``v`` (absent: 1) one of ``READABLE_VERSIONS``; ``state`` an object, or
    else a valid ``state_ref`` (``core.task_state``); ``step``, ``remaining_steps`` and
    ``step_limit`` ints >= 0; ``timeout`` a finite number of seconds > 0; ``graph`` a string;
    ``retry`` an object or a list of objects (several policies); ``wrap``, ``configurable``,
    ``node_metadata`` and ``trace`` objects; ``resume`` a list;
    ``message_keys`` a list of strings; ``managed`` an object whose values are managed
    value kinds (``core.managed.MANAGED_KINDS``); ``retry.retry_on`` a list of strings. Each of
    these but ``state``/``state_ref`` may be absent or null. Other keys are ignored.
    JSON types exactly: ``true`` is no int. The retry policy's numbers are checked where
    the policy is built (``RetryPolicy.from_dict``).
    """
    version = payload.get("v", 1)
    if type(version) is not int or version not in READABLE_VERSIONS:
        *rest, last = READABLE_VERSIONS
        readable = f"{', '.join(map(str, rest))} or {last}" if rest else str(last)
        raise ValueError(
            f"unknown payload version {version!r:.40}; this worker reads version {readable}; upgrade the worker "
            "(a newer engine wrote the task), then requeue the dead letter")
    state = payload.get("state")
    if state is None and STATE_REF_KEY in payload:
        read_ref(payload[STATE_REF_KEY])  # raises ValueError if it is no reference
    elif type(state) is not dict:
        raise ValueError(f"payload has no 'state' object and no {STATE_REF_KEY!r}")
    for name in ("step", "remaining_steps", "step_limit"):
        value = payload.get(name)
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"payload field {name!r} must be an int >= 0, got {value!r:.80}")
    timeout = payload.get("timeout")
    if timeout is not None and (type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"payload field 'timeout' must be a number of seconds > 0 or null, got {timeout!r:.80}")
    for name, (kinds, rule) in _OPTIONAL.items():
        value = payload.get(name)
        if value is not None and type(value) not in kinds:
            raise ValueError(f"payload field {name!r} must be {rule} or null, got a JSON {type(value).__name__}")
    keys = payload.get("message_keys")
    if keys and not all(type(key) is str for key in keys):
        raise ValueError("payload field 'message_keys' must be a list of strings")
    managed = payload.get(MANAGED_KEY)
    if managed and not all(type(kind) is str and kind in MANAGED_KINDS for kind in managed.values()):
        raise ValueError(f"payload field {MANAGED_KEY!r} must map state keys to one of "
                         f"{', '.join(sorted(MANAGED_KINDS))}; upgrade the worker if a newer engine wrote the task")
    retry = payload.get("retry")
    if retry == []:  # (the engine writes one policy as an object, several as a list; none as null)
        raise ValueError("payload field 'retry' must be a retry policy object or a non-empty list of them, got []")
    for policy in retry if isinstance(retry, list) else () if retry is None else (retry,):
        if type(policy) is not dict:
            raise ValueError("payload field 'retry' must be a retry policy object or a list of them, got a list "
                             f"holding a JSON {type(policy).__name__}")
        if "retry_on" in policy:
            names = policy["retry_on"]
            if type(names) is not list or not all(type(name) is str for name in names):
                raise ValueError("payload field 'retry.retry_on' must be a list of exception names (strings)")
