"""Distributed execution: the same engine, with every node run by remote workers.

``DistributedOrchestrator`` is an ``Orchestrator`` whose nodes all become tasks on a
shared backend (Redis, NATS JetStream, or any installed backend), and which waits for
workers instead of failing when none is up yet. ``DistributedWorker`` is a ``Worker``
on such a backend that drains on SIGTERM/SIGINT. Both take ``redis_url=`` as in the
README, ``backend_url=`` for any backend, or ``backend=`` as ``Orchestrator`` and
``Worker`` do (a URL or an opened ``Backend``); two of them naming different backends
are a ``ConfigurationError``. With none, ``BACKEND_URL``, ``REDIS_URL`` or ``NATS_URL``
from the environment is used. An in-process backend (``memory://``) is refused with the
reason: other processes could never see its work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from distributed_agents.core.backend_resolver import check_backend_argument
from distributed_agents.core.errors import BackendError, ConfigurationError
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.redaction import redact_url
from distributed_agents.core.registry import NodeRegistry
from distributed_agents.core.worker import Worker

__all__ = ["DistributedOrchestrator", "DistributedWorker", "backend_from", "backend_url_from", "require_shared_backend"]

log = logging.getLogger("distributed_agents.orchestrator")

BACKEND_OPTION_NAMES = ("prefix", "visibility_timeout", "max_attempts", "result_ttl", "state_ttl", "heartbeat_ttl",
                        "max_payload_bytes")
# Backends whose data lives inside one process: another process never sees their tasks.
IN_PROCESS_SCHEMES = frozenset({"memory"})


def backend_url_from(redis_url: str | None, backend_url: str | None) -> str:
    """The backend URL from the arguments or the environment; a clear error if there is none."""
    backend = backend_from(redis_url, backend_url, None, "DistributedOrchestrator")
    assert isinstance(backend, str)  # (no Backend given, so a URL comes back)
    return backend


def backend_from(redis_url: str | None, backend_url: str | None, backend: str | Backend | None,
                 who: str) -> str | Backend:
    """The backend ``who`` is given (a URL or an opened ``Backend``), else the environment's URL.

    ``redis_url=``, ``backend_url=`` and ``backend=`` all name the backend; giving more
    than one is fine when they are the same URL, a ``ConfigurationError`` naming both
    otherwise. The environment (``BACKEND_URL``, ``REDIS_URL``, ``NATS_URL``) is read
    only when none is given.
    """
    check_backend_argument(backend, f"{who}(backend=...)")
    for name, value in (("redis_url", redis_url), ("backend_url", backend_url)):
        if value is not None and not isinstance(value, str):
            # DistributedOrchestrator(registry) / DistributedWorker(registry): the first argument is the URL.
            hint = ("pass an opened Backend as backend=" if isinstance(value, Backend)
                    else "pass a NodeRegistry as registry=")
            raise ConfigurationError(
                f"{who}: {name} must be a backend URL str such as 'redis://host:6379/0', got "
                f"{type(value).__name__}; {hint}")
    given: list[tuple[str, str | Backend]] = [
        (name, value) for name, value in (("redis_url", redis_url), ("backend_url", backend_url), ("backend", backend))
        if value is not None and value != ""]
    for (name, first), (other, second) in zip(given, given[1:]):
        if not (isinstance(first, str) and isinstance(second, str) and first == second):
            raise ConfigurationError(
                f"{who}: {name}={_shown(first)} and {other}={_shown(second)} name different backends; "
                "give the backend once, as backend= (a URL or an opened Backend), backend_url= or redis_url=")
    if given:
        return given[-1][1]
    url = os.environ.get("BACKEND_URL") or os.environ.get("REDIS_URL") or os.environ.get("NATS_URL")
    if not url:
        raise ConfigurationError(
            f"{who}: no backend: pass backend='redis://host:6379/0' or 'nats://host:4222' (or an opened Backend; "
            "redis_url= and backend_url= are also accepted), or set BACKEND_URL, REDIS_URL or NATS_URL"
        )
    return url


def _shown(backend: str | Backend) -> str:
    return repr(redact_url(backend)) if isinstance(backend, str) else repr(backend)


def require_shared_backend(backend: str | Backend, who: str) -> str | Backend:
    """Return ``backend`` (a URL or an opened ``Backend``) unless it is an in-process one, which ``who`` cannot work with."""
    url = backend if isinstance(backend, str) else backend.url
    scheme = url.partition("://")[0].lower()
    if scheme in IN_PROCESS_SCHEMES:
        raise ConfigurationError(
            f"{who} cannot use {redact_url(url)!r}: the {scheme}:// backend lives inside one process, so workers and "
            "orchestrators in other processes never see its tasks or workflows. Use a shared backend "
            "(redis://host:6379/0 or nats://host:4222), or, to run everything in this process, the local "
            "Orchestrator (with Worker if you want workers) instead"
        )
    return backend


def _split_options(options: dict[str, Any], backend: str | Backend, who: str) -> dict[str, Any]:
    """The backend options given as keywords (``prefix=``, ...) and in ``backend_options=``, taken out of ``options``."""
    given = options.pop("backend_options", None)
    if given is not None and not isinstance(given, Mapping):
        raise ConfigurationError(
            f"{who}(backend_options=...) takes a dict of backend options such as {{'prefix': 'myapp'}}, got "
            f"{type(given).__name__}")
    backend_options = dict(given or {})
    for name in BACKEND_OPTION_NAMES:
        if name in options:
            value = options.pop(name)
            if name in backend_options and backend_options[name] != value:
                raise ConfigurationError(
                    f"{who}: {name}={value!r} and backend_options={{{name!r}: {backend_options[name]!r}}} differ; "
                    "give it once")
            backend_options[name] = value
    if backend_options and isinstance(backend, Backend):
        raise ConfigurationError(
            f"{who}: backend options ({', '.join(sorted(backend_options))}) cannot apply to an opened Backend "
            f"({backend!r}), which has its own; give them when opening it (open_backend(url, prefix=...)), or pass "
            "the URL as backend= instead")
    return backend_options


def _fixed(options: dict[str, Any], name: str, value: bool, why: str, who: str) -> None:
    """Refuse ``name=`` in ``options`` unless it is ``value``, which ``who`` always uses (``why``)."""
    if name in options and options.pop(name) is not value:
        raise ConfigurationError(f"{who} always runs with {name}={value} ({why}); use Orchestrator(backend=url) "
                                 f"to choose {name}")


class DistributedOrchestrator(Orchestrator):
    """Runs workflows whose nodes execute on ``DistributedWorker``s.

    ``worker_timeout``: fail a node after waiting that long for a live worker of its
    type (0: at once; default: wait, reporting "waiting for a worker of type ..." in the
    status). A bad argument (``worker_timeout="x"``, a negative one) is ``ConfigurationError`` at once.
    The backend is ``backend=`` (a URL or an opened ``Backend``, as for ``Orchestrator``),
    or ``redis_url=``/``backend_url=``, else the environment's (see the module).
    Backend options (``prefix``, ``visibility_timeout``, ``max_attempts``,
    ``result_ttl``, ``state_ttl``, ``heartbeat_ttl``) may be given as keywords or as
    ``backend_options=`` (for a URL: an opened Backend has its own).
    ``recover`` (on by default) takes over workflows of orchestrators that died,
    for every graph this one has executed or registered (``register_graph``).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        backend_url: str | None = None,
        backend: str | Backend | None = None,
        registry: NodeRegistry | None = None,
        worker_timeout: float | None = None,
        recover: bool = True,
        **options: Any,
    ) -> None:
        who = type(self).__name__
        chosen = require_shared_backend(backend_from(redis_url, backend_url, backend, who), who)
        backend_options = _split_options(options, chosen, who)
        _fixed(options, "wait_for_workers", True, "a node waits for a worker of its type to come up", who)
        _fixed(options, "local_nodes", False, "every node runs on a worker", who)
        super().__init__(
            registry,
            backend=chosen,
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
    """A worker on a shared backend; SIGTERM/SIGINT make it drain, then stop.

    The backend is given as to ``DistributedOrchestrator``: ``backend=`` (a URL or an
    opened ``Backend``, as for ``Worker``), ``redis_url=`` or ``backend_url=``.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        backend_url: str | None = None,
        backend: str | Backend | None = None,
        worker_id: str | None = None,
        node_types: Iterable[str] | None = None,
        capacity: int = 1,
        heartbeat_interval: float = 10.0,
        **options: Any,
    ) -> None:
        who = type(self).__name__
        chosen = require_shared_backend(backend_from(redis_url, backend_url, backend, who), who)
        backend_options = _split_options(options, chosen, who)
        options.setdefault("handle_signals", True)
        super().__init__(
            node_types,
            capacity,
            backend=chosen,
            worker_id=worker_id,
            heartbeat_interval=heartbeat_interval,
            backend_options=backend_options,
            **options,
        )
