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
from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.limits import DEFAULT_MAX_PAYLOAD_BYTES, limit_below, task_bytes_limit
from distributed_agents.core.ports.backend import Backend, BackendOptions

__all__ = ["NatsBackend", "open_nats_backend"]


class NatsBackend(Backend):
    """A ``Backend`` whose ports share one ``NatsConnection``."""

    def __init__(self, url: str, options: BackendOptions) -> None:
        self.connection = NatsConnection(url, options)
        self._max_payload: int | None = None
        super().__init__(
            url=url,
            options=options,
            task_queue=NatsTaskQueue(
                self.connection,
                visibility_timeout=options.visibility_timeout,
                max_attempts=options.max_attempts,
                result_ttl=options.result_ttl,
                max_payload_bytes=options.max_payload_bytes,
            ),
            state_store=NatsStateStore(self.connection, state_ttl=options.state_ttl),
            worker_registry=NatsWorkerRegistry(self.connection, heartbeat_ttl=options.heartbeat_ttl),
            message_bus=NatsMessageBus(self.connection),
        )

    async def connect(self) -> None:
        await self.connection.connect()
        # The server says in its INFO how large a message it accepts (max_payload,
        # 1 MiB by default); task records, results, records and checkpoints are each one
        # message, so the core's size limit must leave room for their envelope under it.
        server_max = int(self.connection.nc.max_payload or 0)
        if server_max <= 0:
            return
        fits = limit_below(server_max)
        configured = self.options.max_payload_bytes
        if configured is not None and configured > fits:
            await self.connection.close()
            raise BackendConfigError(
                f"max_payload_bytes={configured} is more than NATS at {mask_url(self.url)} can store: the server "
                f"accepts messages of up to {server_max} bytes (its max_payload), which leaves {fits} bytes for a "
                f"result or state; lower max_payload_bytes to at most {fits}, or raise max_payload in the "
                "nats-server configuration"
            )
        self._max_payload = min(configured or DEFAULT_MAX_PAYLOAD_BYTES, fits)
        if isinstance(self.task_queue, NatsTaskQueue):
            self.task_queue.max_task_bytes = task_bytes_limit(self._max_payload)

    @property
    def max_payload_bytes(self) -> int:
        """The configured limit, lowered (once connected) to what the server's max_payload leaves room for."""
        return self._max_payload if self._max_payload is not None else super().max_payload_bytes

    async def close(self) -> None:
        await super().close()
        await self.connection.close()

    def __repr__(self) -> str:
        return f"<NatsBackend {mask_url(self.url)!r} prefix={self.options.prefix!r}>"


def open_nats_backend(url: str, options: BackendOptions) -> Backend:
    """Backend factory for ``nats://`` and ``tls://`` URLs (not yet connected)."""
    return NatsBackend(url, options)
