"""The NATS backend: four JetStream ports sharing one connection.

``open_nats_backend(url, options)`` is the factory named by the plugin. It raises
``MissingExtraError`` at once when nats-py is missing; ``connect()`` connects and
creates the streams and buckets; ``close()`` stops lease keepers and subscriptions,
then drains the connection.
"""

from __future__ import annotations

from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.adapters.nats.errors import mask_url
from distributed_agents.adapters.nats.message_bus import NatsMessageBus
from distributed_agents.adapters.nats.state_store import NatsStateStore
from distributed_agents.adapters.nats.task_queue import NatsTaskQueue
from distributed_agents.adapters.nats.worker_registry import NatsWorkerRegistry
from distributed_agents.core.ports.backend import Backend, BackendOptions

__all__ = ["NatsBackend", "open_nats_backend"]


class NatsBackend(Backend):
    """A ``Backend`` whose ports share one ``NatsConnection``."""

    def __init__(self, url: str, options: BackendOptions) -> None:
        self.connection = NatsConnection(url, options)
        super().__init__(
            url=url,
            options=options,
            task_queue=NatsTaskQueue(
                self.connection,
                visibility_timeout=options.visibility_timeout,
                max_attempts=options.max_attempts,
                result_ttl=options.result_ttl,
            ),
            state_store=NatsStateStore(self.connection, state_ttl=options.state_ttl),
            worker_registry=NatsWorkerRegistry(self.connection, heartbeat_ttl=options.heartbeat_ttl),
            message_bus=NatsMessageBus(self.connection),
        )

    async def connect(self) -> None:
        await self.connection.connect()

    async def close(self) -> None:
        await super().close()
        await self.connection.close()

    def __repr__(self) -> str:
        return f"<NatsBackend {mask_url(self.url)!r} prefix={self.options.prefix!r}>"


def open_nats_backend(url: str, options: BackendOptions) -> Backend:
    """Backend factory for ``nats://`` and ``tls://`` URLs (not yet connected)."""
    return NatsBackend(url, options)
