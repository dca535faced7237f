"""Checks of the arguments a ``Worker`` or an ``Orchestrator`` is made with.

Each raises ``ConfigurationError`` naming the call and parameter (``where``, e.g.
``"Worker(capacity=...)"``), the value given and what to pass instead, at once, instead of
letting a bad value fail later, elsewhere (a worker that never serves, a busy loop).
Durations are checked by ``core.ports.backend.check_duration``. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.instrumentation import Instrumentation

__all__ = ["check_count", "check_flag_argument", "check_instrumentation_argument", "check_name_argument",
           "check_node_types", "check_options_argument"]


def check_count(where: str, value: object, least: int, meaning: str, hint: str = "") -> None:
    """Raise ``ConfigurationError`` unless ``value`` is an int (not a bool) of at least ``least``.

    ``meaning`` says what the number counts (for the message), ``hint`` what to pass.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{where} must be an int >= {least} ({meaning}), got {type(value).__name__} "
                                 f"{value!r}{'; ' + hint if hint else ''}")


def check_name_argument(where: str, value: object, example: str) -> None:
    """Raise ``ConfigurationError`` unless ``value`` is None or a str that is not blank.

    For the ids that name a worker or an orchestrator (``where``: ``"Worker(worker_id=...)"``,
    ``example``: ``"worker-1"``); None makes one up.
    """
    if value is None or (isinstance(value, str) and value.strip()):
        return
    raise ConfigurationError(
        f"{where} must be a non-empty str (a name unique among the processes on the backend), got "
        f"{type(value).__name__} {value!r}; pass a name such as {example!r}, or leave it unset (None) for a "
        "generated one")


def check_flag_argument(where: str, value: object) -> None:
    """Raise ``ConfigurationError`` unless ``value`` is True or False (a str such as ``"no"`` would read as True)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where} must be True or False, got {type(value).__name__} {value!r}")


def check_options_argument(where: str, value: object) -> None:
    """Raise ``ConfigurationError`` unless ``value`` is None or a mapping of str option names (``backend_options``)."""
    if value is None or (isinstance(value, Mapping) and all(isinstance(key, str) for key in value)):
        return
    got = (f"a mapping with key(s) {', '.join(repr(k) for k in value if not isinstance(k, str))} that are not str"
           if isinstance(value, Mapping) else f"{type(value).__name__} {value!r}")
    raise ConfigurationError(
        f"{where} takes a mapping of backend option names to values (e.g. {{'prefix': 'app', 'heartbeat_ttl': 60}}), "
        f"got {got}")


def check_instrumentation_argument(where: str, value: object) -> None:
    """Raise ``ConfigurationError`` unless ``value`` is None or an ``Instrumentation``."""
    if value is None or isinstance(value, Instrumentation):
        return
    raise ConfigurationError(
        f"{where} takes an Instrumentation (a subclass of distributed_agents.core.instrumentation.Instrumentation, "
        f"such as telemetry.Tracing or metrics.Metrics) or None (the process-wide one), got "
        f"{type(value).__name__} {value!r}")


def check_node_types(where: str, node_types: object) -> frozenset[str] | None:
    """``node_types`` as a frozenset; ``ConfigurationError`` unless None or a collection of non-empty strs."""
    if node_types is None:
        return None
    if not isinstance(node_types, Iterable):
        raise ConfigurationError(
            f"{where} takes a collection of node type names, got {type(node_types).__name__} {node_types!r}; "
            "pass a list such as node_types=['llm'], or None for every type with a registered function")
    types = list(node_types)
    bad = [t for t in types if not isinstance(t, str) or not t]
    if bad:
        raise ConfigurationError(
            f"{where}: node types are non-empty strs (the names given to register_node / add_node), got "
            f"{', '.join(f'{type(t).__name__} {t!r}' for t in bad)} in {types!r}; pass names such as ['llm']")
    return frozenset(types)
