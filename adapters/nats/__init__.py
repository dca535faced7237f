"""The NATS JetStream backend (needs the [nats] extra: pip install 'distributed-agents[nats]').

Importing this package never imports nats-py; opening a backend without it raises
``MissingExtraError`` with the install command.
"""

from __future__ import annotations

from distributed_agents.adapters.nats.backend import NatsBackend, open_nats_backend
from distributed_agents.adapters.nats.message_bus import NatsMessageBus
from distributed_agents.adapters.nats.state_store import NatsStateStore
from distributed_agents.adapters.nats.task_queue import NatsTaskQueue
from distributed_agents.adapters.nats.worker_registry import NatsWorkerRegistry

__all__ = [
    "NatsBackend",
    "NatsMessageBus",
    "NatsStateStore",
    "NatsTaskQueue",
    "NatsWorkerRegistry",
    "open_nats_backend",
]
