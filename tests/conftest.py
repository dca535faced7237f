"""Test-session setup shared by every test module."""

from __future__ import annotations

import pytest

from distributed_agents.adapters.memory import reset_memory_spaces

# Real-server fixtures live in their own modules so each backend owns its launcher.
pytest_plugins = ["support.redis_server", "support.nats_server", "support.nats_cluster", "support.redis_cluster"]


@pytest.fixture(autouse=True)
def _fresh_memory_backend() -> None:
    """Every test starts with an empty process-wide ``memory://`` backend."""
    reset_memory_spaces()
