"""The conformance suite: one executable contract every backend must pass.

It checks the four ports (TaskQueue, StateStore, WorkerRegistry, MessageBus) clause by
clause (``CLAUSES``): Hypothesis state machines compare the backend with plain reference
models after every step, scenario checks prove each clause once, and threaded checks
prove the concurrency properties. Needs ``pip install 'distributed-agents[conformance]'``.

From the command line (the URL is resolved through the plugin entry points)::

    python -m distributed_agents.conformance redis://127.0.0.1:6379/0 [--thorough] [--without state_ttl]

prints a per-port, per-clause report and exits 1 if any clause fails.

From a backend's own pytest suite, subclass the test class (fsspec/SQLAlchemy style)::

    # tests/adapters/redis/test_conformance.py
    import pytest
    from distributed_agents.conformance import BackendConformanceTests, Requirements

    class TestRedisConformance(BackendConformanceTests):
        requirements = Requirements(timing_slack=0.1)   # optional: capabilities and timing

        @pytest.fixture
        def conformance_backend_url(self, redis_url: str) -> str:
            return redis_url

A plain ``backend_url = "mybackend://..."`` class attribute works too, and a backend
that is not installed as a plugin can define ``open_backend(self, url, **options)``
returning an unconnected ``Backend``. Every backend the suite opens is connected and on
a fresh unique prefix; short timeouts are passed as options. A capability declared in
``Requirements(unsupported={"state_ttl": "why"})`` skips the checks that need it, and
pytest and the command report them as skipped. ``DA_TEST_PROFILE=thorough`` runs many
more examples.
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
