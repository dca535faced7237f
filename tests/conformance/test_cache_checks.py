"""A store without a node cache (the port's no-op defaults) has its cache checks skipped, saying why.

That is the safe default for third-party backends written before the cache: nothing
fails, the report shows the ``state_store.cache*`` clauses as skipped, never as passed.
"""

from __future__ import annotations

import pytest

from conformance import broken_backends as bb
from distributed_agents.adapters.memory.state_store import MemoryStateStore
from distributed_agents.conformance import CheckContext, Requirements
from distributed_agents.conformance.catalog import CheckSkipped, all_checks, run_check
from distributed_agents.conformance.context import BackendFactory, current_profile
from distributed_agents.core.ports.state_store import StateStore

CACHE_CHECKS = [check for check in all_checks() if any(c.startswith("state_store.cache") for c in check.clauses)]


class NoCacheStore(MemoryStateStore):
    """Keeps the port's defaults: stores nothing."""

    cache_get = StateStore.cache_get
    cache_set = StateStore.cache_set
    cache_clear = StateStore.cache_clear


def test_every_cache_clause_has_checks() -> None:
    clauses = {c for check in CACHE_CHECKS for c in check.clauses if c.startswith("state_store.cache")}
    assert clauses == {"state_store.cache", "state_store.cache-isolation", "state_store.cache-clear",
                       "state_store.cache-ttl"}


@pytest.mark.parametrize("check", CACHE_CHECKS, ids=lambda check: check.name)
def test_a_store_without_a_cache_is_skipped_with_the_reason(check: object) -> None:
    context = CheckContext(BackendFactory("memory://no-cache", opener=bb.broken_opener(state_store=NoCacheStore)),
                           Requirements(), current_profile("default"))
    with pytest.raises(CheckSkipped, match="no-op node cache"):
        run_check(check, context)  # type: ignore[arg-type]


@pytest.mark.parametrize("check", CACHE_CHECKS, ids=lambda check: check.name)
def test_declaring_the_capability_away_skips_them_too(check: object) -> None:
    context = CheckContext(BackendFactory("memory://declared", opener=bb.broken_opener()),
                           Requirements().without(node_cache="not yet"), current_profile("default"))
    with pytest.raises(CheckSkipped, match="node_cache"):
        run_check(check, context)  # type: ignore[arg-type]
