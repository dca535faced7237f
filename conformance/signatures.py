"""Signature parity: a backend's port methods accept exactly the port's parameters.

The core calls ports with keyword arguments (``nack(claim, error, final=True)``,
``claim(types, worker_id=..., wait=...)``). A method that lacks one raises TypeError only
on the path that passes it, which a caller may take for a passing failure; a method
with another default behaves differently when the core leaves the argument out. So
every public method of a port class (and of ``Subscription``) must exist on the
adapter, be ``async`` where the port's is, and have the same parameters: names, kinds
(positional, keyword-only, ...) and defaults. Annotations are not compared.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from distributed_agents.core.ports.message_bus import MessageBus, Subscription
from distributed_agents.core.ports.state_store import StateStore
from distributed_agents.core.ports.task_queue import TaskQueue
from distributed_agents.core.ports.worker_registry import WorkerRegistry

__all__ = ["PORT_CLASSES", "port_methods", "signature_mismatches", "subscription_mismatches"]

PORT_CLASSES: dict[str, type] = {
    "task_queue": TaskQueue,
    "state_store": StateStore,
    "worker_registry": WorkerRegistry,
    "message_bus": MessageBus,
}


def port_methods(port: type) -> dict[str, Callable[..., Any]]:
    """The public methods ``port`` declares (its own and its port base classes')."""
    methods: dict[str, Callable[..., Any]] = {}
    for klass in reversed(port.__mro__):
        if klass is object:
            continue
        for name, member in vars(klass).items():
            if not name.startswith("_") and inspect.isfunction(member):
                methods[name] = member
    return methods


def _abstract(function: Callable[..., Any]) -> bool:
    """Whether a port method only raises NotImplementedError (adapters must override it)."""
    code = getattr(function, "__code__", None)
    return code is not None and "NotImplementedError" in code.co_names


def _shape(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def _render(function: Callable[..., Any]) -> str:
    signature = inspect.signature(function)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def signature_mismatches(port: type, implementation: type) -> list[str]:
    """Each way ``implementation``'s methods differ from ``port``'s, as one sentence each."""
    problems: list[str] = []
    where = f"{implementation.__module__}.{implementation.__qualname__}"
    for name, declared in port_methods(port).items():
        actual = inspect.getattr_static(implementation, name, None)
        if isinstance(actual, (staticmethod, classmethod)):
            problems.append(f"{where}.{name} is a {type(actual).__name__}; the port declares a plain method")
            continue
        if actual is None or not callable(actual):
            problems.append(f"{where} has no method {name}{_render(declared)}")
            continue
        if actual is declared:
            if _abstract(declared):
                problems.append(f"{where} does not implement {port.__name__}.{name}{_render(declared)}")
            continue
        if inspect.iscoroutinefunction(declared) != inspect.iscoroutinefunction(actual):
            want = "async def" if inspect.iscoroutinefunction(declared) else "def"
            problems.append(f"{where}.{name} must be '{want}' like {port.__name__}.{name}")
        try:
            same = _shape(actual) == _shape(declared)
        except (TypeError, ValueError):
            same = False
        if not same:
            problems.append(f"{where}.{name}{_render(actual)} accepts other parameters than "
                            f"{port.__name__}.{name}{_render(declared)}")
    return problems


def subscription_mismatches(implementation: type) -> list[str]:
    """``signature_mismatches`` for a subscription class against ``Subscription``."""
    return signature_mismatches(Subscription, implementation)
