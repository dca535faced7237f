"""Distributed execution: the same engine, with every node run by remote workers.

``DistributedOrchestrator`` is an ``Orchestrator`` whose nodes all become tasks on a
shared backend (Redis, NATS JetStream, or any installed backend), and which waits for
workers instead of failing when none is up yet. ``DistributedWorker`` is a ``Worker``
on such a backend that drains on SIGTERM/SIGINT. Both take ``redis_url=`` as in the
README, or ``backend_url=`` for any backend; with neither, ``BACKEND_URL``,
``REDIS_URL`` or ``NATS_URL`` from the environment is used. An in-process backend
(``memory://``) is refused with the reason: other processes could never see its work.
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

__all__ = ["DistributedOrchestrator", "DistributedWorker", "backend_url_from", "require_shared_backend"]

log = logging.getLogger("distributed_agents.orchestrator")

BACKEND_OPTION_NAMES = ("prefix", "visibility_timeout", "max_attempts", "result_ttl", "state_ttl", "heartbeat_ttl",
                        "max_payload_bytes")
# Backends whose data lives inside one process: another process never sees their tasks.
IN_PROCESS_SCHEMES = frozenset({"memory"})


def backend_url_from(redis_url: str | None, backend_url: str | None) -> str:
    """The backend URL from the arguments or the environment; a clear error if there is none."""
    for name, given in (("redis_url", redis_url), ("backend_url", backend_url)):
        if given is not None and not isinstance(given, str):
            # DistributedOrchestrator(registry) / DistributedWorker(registry): the first argument is the URL.
            raise ConfigurationError(
                f"{name} must be a backend URL str such as 'redis://host:6379/0', got {type(given).__name__}; "
                "pass a NodeRegistry as registry=")
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


def require_shared_backend(url: str, who: str) -> str:
    """Return ``url`` unless it names an in-process backend, which ``who`` cannot work with."""
    scheme = url.partition("://")[0].lower()
    if scheme in IN_PROCESS_SCHEMES:
        raise ConfigurationError(
            f"{who} cannot use {url!r}: the {scheme}:// backend lives inside one process, so workers and "
            "orchestrators in other processes never see its tasks or workflows. Use a shared backend "
            "(redis://host:6379/0 or nats://host:4222), or, to run everything in this process, the local "
            "Orchestrator (with Worker if you want workers) instead"
        )
    return url


def _split_options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options.pop(name) for name in BACKEND_OPTION_NAMES if name in options}


class DistributedOrchestrator(Orchestrator):
    """Runs workflows whose nodes execute on ``DistributedWorker``s.

    ``worker_timeout``: fail a node after waiting that long for a live worker of its
    type (0: at once; default: wait, reporting "waiting for a worker of type ..." in the
    status). A bad argument (``worker_timeout="x"``, a negative one) is ``ConfigurationError`` at once.
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
            backend=require_shared_backend(backend_url_from(redis_url, backend_url), "DistributedOrchestrator"),
            backend_options=backend_options,
            wait_for_workers=True,
            worker_timeout=worker_timeout,
            local_nodes=False,
            recover=recover,
            **options,
        )
        self._connect_error_logged: str | None = None  # the last connect failure logged

    async def connect(self) -> None:
        """Connect to the backend (idempotent; every operation calls it).

        A backend that cannot be reached (or is misconfigured) is logged first, as one
        line naming the URL and what to check, then the ``BackendError`` is raised. A
        caller retrying through an outage gets the line once, not once per attempt.
        """
        try:
            await super().connect()
        except BackendError as exc:
            if str(exc) != self._connect_error_logged:
                self._connect_error_logged = str(exc)
                log.error("orchestrator %s: %s", self.orchestrator_id, exc)
            raise
        self._connect_error_logged = None


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
            backend=require_shared_backend(backend_url_from(redis_url, backend_url), "DistributedWorker"),
            worker_id=worker_id,
            heartbeat_interval=heartbeat_interval,
            backend_options=backend_options,
            **options,
        )
