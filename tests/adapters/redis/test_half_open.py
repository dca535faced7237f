"""Redis pub/sub readers notice a half-open connection and subscribe again.

A subscribed connection only reads, so a peer that vanished without FIN or RST (a
``FaultProxy.half_open()`` here) would leave its reader silent for ever. The message
bus's reader pings after ``health_check_interval`` seconds without a message and, with
no answer after as long again, connects again (redis-py re-subscribes its patterns):
a message published afterwards reaches the subscriber. (The queue notifier's reader
is covered by tests/distributed/test_network_faults.py.)
"""

from __future__ import annotations

import asyncio
import uuid

from support.aio import run
from support.fault_proxy import FaultProxy
from support.redis_server import RedisServer

from distributed_agents.adapters.redis.message_bus import RedisMessageBus


def test_a_bus_subscription_on_a_half_open_connection_resubscribes(redis_server: RedisServer) -> None:
    prefix = f"ho{uuid.uuid4().hex[:8]}"
    with FaultProxy(redis_server.port) as proxy:
        async def scenario() -> str:
            listening = RedisMessageBus(proxy.url("redis", "/0?health_check_interval=1&socket_timeout=2"),
                                        prefix=prefix)
            speaking = RedisMessageBus(redis_server.url, prefix=prefix)
            try:
                subscription = await listening.subscribe("control.*")
                await speaking.publish("control.before", {"n": 0})
                first = await subscription.get(10)
                assert first is not None and first.channel == "control.before"
                assert proxy.half_open() >= 1
                for n in range(120):  # published again and again: pub/sub keeps nothing for a reconnect
                    await speaking.publish("control.after", {"n": n})
                    message = await subscription.get(0.25)
                    if message is not None:
                        return message.channel
                raise AssertionError("the subscription never heard again after its connection went half-open")
            finally:
                await listening.close()
                await speaking.close()

        assert run(scenario(), timeout=60) == "control.after"
