"""NATS liveness settings: pings every 10 s, a connection re-made after 3 unanswered.

nats-py's own defaults (120 s, 2 pings) would leave a half-open connection unnoticed for
minutes; ``?ping_interval=`` and ``?max_outstanding_pings=`` tune it, and values that
would never notice one are refused. (Behaviour on a half-open connection:
tests/distributed/test_network_faults.py.)
"""

from __future__ import annotations

import pytest

from distributed_agents.adapters.nats.connection import NatsSettings
from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.ports.backend import BackendOptions


def settings(**extra: str) -> NatsSettings:
    return NatsSettings.from_url("nats://127.0.0.1:4222", BackendOptions(extra=extra))


def test_defaults_notice_a_dead_connection_within_about_forty_seconds() -> None:
    kwargs = settings().connect_kwargs()
    assert kwargs["ping_interval"] == 10.0 and kwargs["max_outstanding_pings"] == 3


def test_the_url_options_tune_them() -> None:
    kwargs = settings(ping_interval="1.5", max_outstanding_pings="2").connect_kwargs()
    assert kwargs["ping_interval"] == 1.5 and kwargs["max_outstanding_pings"] == 2


@pytest.mark.parametrize("extra", [{"ping_interval": "0"}, {"ping_interval": "-1"}, {"max_outstanding_pings": "0"},
                                   {"ping_interval": "soon"}])
def test_values_that_would_never_notice_are_refused(extra: dict[str, str]) -> None:
    with pytest.raises(BackendConfigError, match="invalid NATS option"):
        settings(**extra)
