"""A backend: the four ports of one coordination engine, opened from one URL.

``BackendOptions`` are the settings every backend understands; they come from keyword
arguments or from the URL's query string (``redis://host/0?prefix=app&max_attempts=5``),
keyword arguments winning. Adapters may accept more options of their own through
``BackendOptions.extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from distributed_agents.core.errors import BackendConfigError
from distributed_agents.core.limits import DEFAULT_MAX_PAYLOAD_BYTES
from distributed_agents.core.ports.message_bus import MessageBus
from distributed_agents.core.ports.state_store import StateStore
from distributed_agents.core.ports.task_queue import TaskQueue
from distributed_agents.core.ports.worker_registry import WorkerRegistry
from distributed_agents.core.redaction import redact_url

__all__ = ["Backend", "BackendOptions", "split_backend_url"]


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by all backends (seconds for every duration).

    ``prefix`` isolates deployments sharing one engine; ``visibility_timeout`` is the
    default task lease; ``max_attempts`` the default delivery limit before a task is
    dead-lettered; ``result_ttl`` how long task results are kept; ``state_ttl`` how long
    workflow records live after their last save (None: forever); ``heartbeat_ttl`` after
    how long without a heartbeat a worker is considered gone; ``max_payload_bytes`` the
    largest node result or workflow state (UTF-8 JSON bytes) the core will write (None:
    ``DEFAULT_MAX_PAYLOAD_BYTES``, or less if the server accepts less; see
    ``distributed_agents.core.limits``).
    """

    prefix: str = "da"
    visibility_timeout: float = 30.0
    max_attempts: int = 3
    result_ttl: float = 3600.0
    state_ttl: float | None = None
    heartbeat_ttl: float = 30.0
    max_payload_bytes: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> BackendOptions:
        """Options from the URL's query string, then ``overrides`` (None values ignored).

        ``extra={...}`` adds adapter options (e.g. ``{"tls_ca": "/path/ca.pem"}``) to the
        ones the query string carries, winning over them; the adapter refuses any it
        does not know.
        """
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if key in known:
                values[key] = _coerce(url, key, raw)
            else:
                extra[key] = raw
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "extra":
                extra.update({str(k): str(v) for k, v in dict(value).items()})
                continue
            if key not in known:
                raise BackendConfigError(
                    f"unknown backend option {key!r} for {redact_url(url)!r}; known options: {', '.join(sorted(known))}"
                )
            values[key] = value
        options = replace(cls(), **values, extra=extra)
        options.validate(url)
        return options

    def validate(self, url: str = "") -> None:
        """Raise ``BackendConfigError`` naming the first invalid option."""
        where = f" in {redact_url(url)!r}" if url else ""
        if not self.prefix or any(ch in self.prefix for ch in " \t\n*>"):
            raise BackendConfigError(f"prefix {self.prefix!r}{where} must be non-empty without spaces, '*' or '>'")
        for name in ("visibility_timeout", "result_ttl", "heartbeat_ttl"):
            if getattr(self, name) <= 0:
                raise BackendConfigError(f"{name}{where} must be > 0, got {getattr(self, name)!r}")
        if self.state_ttl is not None and self.state_ttl <= 0:
            raise BackendConfigError(f"state_ttl{where} must be > 0 or unset, got {self.state_ttl!r}")
        if self.max_attempts < 1:
            raise BackendConfigError(f"max_attempts{where} must be >= 1, got {self.max_attempts!r}")
        if self.max_payload_bytes is not None and self.max_payload_bytes < 1:
            raise BackendConfigError(f"max_payload_bytes{where} must be >= 1 or unset, got {self.max_payload_bytes!r}")


def _coerce(url: str, key: str, raw: str) -> Any:
    try:
        if key == "prefix":
            return raw
        if key == "max_attempts":
            return int(raw)
        if key == "max_payload_bytes":
            return None if raw.lower() in ("", "none") else int(raw)
        if key == "state_ttl" and raw.lower() in ("", "none"):
            return None
        return float(raw)
    except ValueError:
        raise BackendConfigError(f"backend option {key}={raw!r} in {redact_url(url)!r} is not a number") from None


def split_backend_url(url: str) -> tuple[str, str]:
    """Return ``(scheme, rest)``; ``BackendConfigError`` if the URL has no scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise BackendConfigError(
            f"backend URL {redact_url(url)!r} has no scheme; use e.g. 'memory://', 'redis://host:6379/0' or 'nats://host:4222'"
        )
    return scheme.lower(), rest


class Backend:
    """The four ports of one engine, opened together and closed together.

    Adapters construct it with their port objects and may subclass it to share one
    connection: ``connect`` must be called (and awaited) before first use, ``close``
    releases everything and is idempotent.
    """

    def __init__(
        self,
        *,
        url: str,
        options: BackendOptions,
        task_queue: TaskQueue,
        state_store: StateStore,
        worker_registry: WorkerRegistry,
        message_bus: MessageBus,
    ) -> None:
        self.url = url
        self.options = options
        self.task_queue = task_queue
        self.state_store = state_store
        self.worker_registry = worker_registry
        self.message_bus = message_bus

    @property
    def redacted_url(self) -> str:
        """``url`` with its credentials masked: the form every message, log and output shows.

        Worked out once per ``url`` and kept on this backend (every workflow run names it),
        not in a process-wide cache that would keep credential-bearing URLs after the backend.
        """
        kept: tuple[str, str] | None = getattr(self, "_redacted", None)
        if kept is None or kept[0] != self.url:
            kept = (self.url, redact_url(self.url))
            self._redacted = kept
        return kept[1]

    @property
    def max_payload_bytes(self) -> int:
        """The size limit the core checks before writing a node result or a workflow state.

        ``options.max_payload_bytes`` or ``DEFAULT_MAX_PAYLOAD_BYTES``; an adapter whose
        server accepts less overrides this (after ``connect``) with what it accepts.
        """
        return self.options.max_payload_bytes or DEFAULT_MAX_PAYLOAD_BYTES

    async def connect(self) -> None:
        """Open connections and create engine-side structures. Idempotent."""

    async def close(self) -> None:
        """Close every port. Idempotent."""
        await self.task_queue.close()
        await self.state_store.close()
        await self.worker_registry.close()
        await self.message_bus.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.redacted_url!r} prefix={self.options.prefix!r}>"
