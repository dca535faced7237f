"""The shared conformance suite against a real redis-server, through the pytest route."""

from __future__ import annotations

import pytest

from distributed_agents.conformance import BackendConformanceTests, Requirements


class TestRedisConformance(BackendConformanceTests):
    # Deadlines are kept by the server's clock (ms resolution) and reached over loopback.
    requirements = Requirements(timing_slack=0.05, short_timeout=0.3, delivery_timeout=2.0)

    @pytest.fixture
    def conformance_backend_url(self, redis_url: str) -> str:
        return redis_url
