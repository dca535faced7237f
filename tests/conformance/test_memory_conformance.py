"""The whole conformance suite against the reference backend, through the pytest route."""

from __future__ import annotations

from distributed_agents.conformance import BackendConformanceTests


class TestMemoryConformance(BackendConformanceTests):
    backend_url = "memory://"
