"""The pytest face of the suite: abstract test classes a backend subclasses.

``BackendConformanceTests`` has one test per registered check (``test_<check name>``),
each marked with its port and clauses. A subclass provides the backend in one of two
ways (the fsspec/SQLAlchemy pattern):

* a ``backend_url`` class attribute, or a ``conformance_backend_url`` fixture that
  returns the URL (for example from a session fixture that starts a server);
* or an ``open_backend(url, **options)`` method returning an unconnected ``Backend``,
  for a backend that is not installed as a plugin.

``requirements`` declares what the backend lacks; the checks that need a missing
capability are skipped with the reason, which pytest reports (never a silent pass).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from distributed_agents.conformance.catalog import Check, CheckSkipped, all_checks, run_check
from distributed_agents.conformance.context import BackendFactory, CheckContext, current_profile
from distributed_agents.conformance.requirements import Requirements
from distributed_agents.core.ports.backend import Backend

__all__ = ["BackendConformanceTests"]


class _ConformanceBase:
    """Fixtures and hooks shared by the generated tests."""

    backend_url: ClassVar[str] = ""
    requirements: ClassVar[Requirements] = Requirements()
    open_backend: ClassVar[Callable[..., Backend] | None] = None

    @pytest.fixture
    def conformance_backend_url(self) -> str:
        """The URL of the backend under test; override as a fixture or set ``backend_url``."""
        if not self.backend_url:
            raise NotImplementedError(f"{type(self).__name__} must set backend_url or override conformance_backend_url")
        return self.backend_url

    @pytest.fixture
    def conformance_context(self, conformance_backend_url: str) -> CheckContext:
        """The context every check runs in: a factory of fresh backends on that URL."""
        opener = getattr(type(self), "open_backend", None)
        bound = None if opener is None else functools.partial(opener, self)
        return CheckContext(BackendFactory(conformance_backend_url, opener=bound), self.requirements, current_profile())


def _make_test(check: Check) -> Callable[..., None]:
    def test(self: _ConformanceBase, conformance_context: CheckContext) -> None:
        try:
            run_check(check, conformance_context)
        except CheckSkipped as skipped:
            pytest.skip(f"{check.port}: {skipped}")

    test.__name__ = f"test_{check.name}"
    test.__doc__ = check.doc
    # An attribute, not a marker: a host suite running --strict-markers need not register anything.
    test.conformance_check = check  # type: ignore[attr-defined]
    return test


def _build() -> type:
    namespace: dict[str, Any] = {"__doc__": __doc__, "__module__": __name__}
    for check in all_checks():
        namespace[f"test_{check.name}"] = _make_test(check)
    return type("BackendConformanceTests", (_ConformanceBase,), namespace)


# Not collected itself (its name does not start with "Test"); subclasses named Test* are.
BackendConformanceTests = _build()
