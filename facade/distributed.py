"""Distributed execution: the same engine, with every node run by remote workers.

``DistributedOrchestrator`` is an ``Orchestrator`` whose nodes all become tasks on a
shared backend (Redis, NATS JetStream, or any installed backend), and which waits for
workers instead of failing when none is up yet. ``DistributedWorker`` is a ``Worker``
on such a backend that drains on SIGTERM/SIGINT. Both take ``redis_url=`` as in the
README, or ``backend_url=`` for any backend; with neither, ``BACKEND_URL``,
``REDIS_URL`` or ``NATS_URL`` from the environment is used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from distributed_agents.core.errors import BackendError, ConfigurationError
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.registry import NodeRegistry
from distributed_agents.core.worker import Worker

__all__ = ["DistributedOrchestrator", "DistributedWorker", "backend_url_from"]

log = logging.getLogger("distributed_agents.orchestrator")

BACKEND_OPTION_NAMES = ("prefix", "visibility_timeout", "max_attempts", "result_ttl", "state_ttl", "heartbeat_ttl")


def backend_url_from(redis_url: str | None, backend_url: str | None) -> str:
    """The backend URL from the arguments or the environment; a clear error if there is none."""
    if redis_url and backend_url and redis_url != backend_url:
        raise ConfigurationError("pass either redis_url= or backend_url=, not both")
    url = backend_url or redis_url or os.environ.get("BACKEND_URL") or os.environ.get("REDIS_URL") \
        or os.environ.get("NATS_URL")
    if not url:
        raise ConfigurationError(
            "no backend URL: pass redis_url='redis://host:6379/0' or backend_url='nats://host:4222', "
            "or set BACKEND_URL, REDIS_URL or NATS_URL"
        )
    return url


def _split_options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options.pop(name) for name in BACKEND_OPTION_NAMES if name in options}


class DistributedOrchestrator(Orchestrator):
    """Runs workflows whose nodes execute on ``DistributedWorker``s.

    ``worker_timeout``: fail a node after waiting that long for a live worker of its
    type (default: wait, reporting "waiting for a worker of type ..." in the status).
    Backend options (``prefix``, ``visibility_timeout``, ``max_attempts``,
    ``result_ttl``, ``state_ttl``, ``heartbeat_ttl``) may be given as keywords.
    ``recover`` (on by default) takes over workflows of orchestrators that died,
    for every graph this one has executed or registered (``register_graph``).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        backend_url: str | None = None,
        registry: NodeRegistry | None = None,
        worker_timeout: float | None = None,
        recover: bool = True,
        **options: Any,
    ) -> None:
        backend_options = _split_options(options)
        super().__init__(
            registry,
            backend=backend_url_from(redis_url, backend_url),
            backend_options=backend_options,
            wait_for_workers=True,
            worker_timeout=worker_timeout,
            local_nodes=False,
            recover=recover,
            **options,
        )


    async def connect(self) -> None:
        """Connect to the backend (idempotent; every operation calls it).

        A backend that cannot be reached (or is misconfigured) is logged first, as one
        line naming the URL and what to check, then the ``BackendError`` is raised.
        """
        try:
            await super().connect()
        except BackendError as exc:
            log.error("orchestrator %s: %s", self.orchestrator_id, exc)
            raise


class DistributedWorker(Worker):
    """A worker on a shared backend; SIGTERM/SIGINT make it drain, then stop."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        backend_url: str | None = None,
        worker_id: str | None = None,
        node_types: Iterable[str] | None = None,
        capacity: int = 1,
        heartbeat_interval: float = 10.0,
        **options: Any,
    ) -> None:
        backend_options = _split_options(options)
        options.setdefault("handle_signals", True)
        super().__init__(
            node_types,
            capacity,
            backend=backend_url_from(redis_url, backend_url),
            worker_id=worker_id,
            heartbeat_interval=heartbeat_interval,
            backend_options=backend_options,
            **options,
        )
