"""Helpers for NATS adapter tests: connected backends on fresh prefixes."""

from __future__ import annotations

import uuid
from typing import Any

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions


async def open_nats(url: str, **options: Any) -> NatsBackend:
    """A connected NATS backend on a fresh prefix unless ``prefix`` is given."""
    options.setdefault("prefix", f"t{uuid.uuid4().hex[:10]}")
    backend = NatsBackend(url, BackendOptions.from_url(url, **options))
    await backend.connect()
    return backend
