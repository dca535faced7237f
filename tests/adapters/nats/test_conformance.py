"""The shared conformance suite against a real nats-server -js."""

from __future__ import annotations

import pytest

from distributed_agents.conformance import BackendConformanceTests


class TestNatsConformance(BackendConformanceTests):
    @pytest.fixture
    def conformance_backend_url(self, nats_url: str) -> str:
        return nats_url
