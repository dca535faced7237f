"""The conformance suite: one executable contract every backend must pass.

Placeholder docstring, completed below.
"""

from __future__ import annotations

from distributed_agents.conformance.catalog import Check, CheckSkipped, all_checks, checks_for_clause, run_check
from distributed_agents.conformance.clauses import CLAUSES, Clause, ContractViolation
from distributed_agents.conformance.context import BackendFactory, CheckContext, Profile, current_profile
from distributed_agents.conformance.requirements import CAPABILITIES, Requirements

__all__ = [
    "CAPABILITIES",
    "CLAUSES",
    "BackendConformanceTests",
    "BackendFactory",
    "Check",
    "CheckContext",
    "CheckSkipped",
    "Clause",
    "ContractViolation",
    "Profile",
    "Requirements",
    "all_checks",
    "checks_for_clause",
    "current_profile",
    "run_check",
]


def __getattr__(name: str) -> object:
    # The pytest classes import pytest; load them only when asked for.
    if name == "BackendConformanceTests":
        from distributed_agents.conformance.suite import BackendConformanceTests

        return BackendConformanceTests
    raise AttributeError(name)
