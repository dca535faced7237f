"""Every built-in adapter's port methods accept exactly the port's parameters.

The ports are taken from the backends ``open_backend`` really builds for each scheme
(not connected, so no server is needed), so a new adapter class is covered as soon as
a factory uses it. A method missing a keyword the core passes (the NATS queue once
lacked ``nack(final=...)``) or with another default fails here, naming the method.
"""

from __future__ import annotations

import pytest

from distributed_agents.adapters.memory.message_bus import MemorySubscription
from distributed_agents.adapters.nats.message_bus import NatsSubscription
from distributed_agents.adapters.redis.message_bus import RedisSubscription
from distributed_agents.conformance.signatures import (
    PORT_CLASSES,
    port_methods,
    signature_mismatches,
    subscription_mismatches,
)
from distributed_agents.core.ports.task_queue import TaskQueue
from distributed_agents.plugins import open_backend

URLS = ["memory://", "redis://127.0.0.1:1/0", "nats://127.0.0.1:1"]


@pytest.mark.parametrize("port", sorted(PORT_CLASSES))
@pytest.mark.parametrize("url", URLS)
def test_port_methods_match_the_port(url: str, port: str) -> None:
    backend = open_backend(url)
    implementation = type(getattr(backend, port))
    assert implementation is not PORT_CLASSES[port]
    assert signature_mismatches(PORT_CLASSES[port], implementation) == []


@pytest.mark.parametrize("subscription", [MemorySubscription, RedisSubscription, NatsSubscription])
def test_subscriptions_match_the_port(subscription: type) -> None:
    assert subscription_mismatches(subscription) == []


def test_a_missing_keyword_is_reported() -> None:
    """Control: the check fails for a queue whose nack lacks ``final``, naming the method."""

    class NoFinal(TaskQueue):
        async def nack(self, claim, error, *, delay=0.0):  # type: ignore[no-untyped-def,override]
            return True

    problems = signature_mismatches(TaskQueue, NoFinal)
    assert any(".nack(self, claim, error, *, delay=0.0) accepts other parameters" in p and "final=False" in p for p in problems)
    # Every other abstract method is reported as not implemented.
    assert any("does not implement TaskQueue.claim" in p for p in problems)
    assert "nack" in port_methods(TaskQueue)
