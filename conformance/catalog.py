"""The registry of checks: each one names its port, the clauses it proves, its needs.

A check is either an ``async def check(session)`` (a scenario, run in its own event
loop with a ``Session`` of backends closed afterwards) or a plain ``def check(context)``
(a Hypothesis state machine, which manages its own loops). Both fail by raising
``ContractViolation``; a check whose capabilities the backend lacks raises
``CheckSkipped`` with the reason instead of running.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from distributed_agents.conformance.clauses import CLAUSES, PORTS
from distributed_agents.conformance.context import CheckContext, Session
from distributed_agents.conformance.requirements import CAPABILITIES

__all__ = ["Check", "CheckSkipped", "all_checks", "checks_for_clause", "conformance_check", "run_check"]

# The modules that define checks, in report order; imported on first use.
CHECK_MODULES = (
    "distributed_agents.conformance.signature_checks",
    "distributed_agents.conformance.task_queue_checks",
    "distributed_agents.conformance.task_queue_machine",
    "distributed_agents.conformance.state_store_checks",
    "distributed_agents.conformance.state_store_machine",
    "distributed_agents.conformance.cache_checks",
    "distributed_agents.conformance.worker_registry_checks",
    "distributed_agents.conformance.worker_registry_machine",
    "distributed_agents.conformance.message_bus_checks",
    "distributed_agents.conformance.message_bus_machine",
    "distributed_agents.conformance.isolation_checks",
    "distributed_agents.conformance.concurrency_checks",
)


class CheckSkipped(Exception):
    """The backend declared a capability this check needs as unsupported; ``str`` says which."""


@dataclass(frozen=True)
class Check:
    """One registered check; ``name`` is unique and becomes the pytest test name."""

    name: str
    port: str
    clauses: tuple[str, ...]
    requires: tuple[str, ...]
    func: Callable[..., Any]
    timeout: float
    doc: str

    @property
    def is_scenario(self) -> bool:
        """True for ``async def check(session)``, False for ``def check(context)``."""
        return inspect.iscoroutinefunction(self.func)


_CHECKS: dict[str, Check] = {}


def conformance_check(
    port: str, clauses: tuple[str, ...], *, requires: tuple[str, ...] = (), timeout: float = 60.0
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a check of ``clauses`` of ``port``."""
    if port not in PORTS:
        raise ValueError(f"unknown port {port!r}")
    for clause_id in clauses:
        if clause_id not in CLAUSES:
            raise ValueError(f"unknown clause {clause_id!r}")
    for capability in requires:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        name = func.__name__.removeprefix("check_")
        if name in _CHECKS:
            raise ValueError(f"two conformance checks are called {name!r}")
        doc = inspect.getdoc(func) or ""
        _CHECKS[name] = Check(name, port, clauses, requires, func, timeout, doc.splitlines()[0] if doc else "")
        return func

    return register


def all_checks() -> list[Check]:
    """Every check, in report order (port modules in ``CHECK_MODULES`` order)."""
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return list(_CHECKS.values())


def checks_for_clause(clause_id: str) -> list[Check]:
    """The checks that prove ``clause_id``."""
    return [check for check in all_checks() if clause_id in check.clauses]


def run_check(check: Check, context: CheckContext) -> None:
    """Run one check; ``CheckSkipped`` if the backend lacks a capability it needs."""
    reason = context.requirements.skip_reason(check.requires)
    if reason is not None:
        raise CheckSkipped(reason)
    if check.is_scenario:
        asyncio.run(_scenario(check.func, context, check.timeout))
    else:
        check.func(context)


async def _scenario(func: Callable[[Session], Awaitable[None]], context: CheckContext, timeout: float) -> None:
    session = Session(context)
    try:
        await asyncio.wait_for(func(session), timeout)
    finally:
        await asyncio.wait_for(session.close(), 30.0)
