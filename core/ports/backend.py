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

__all__ = ["MAX_ATTEMPTS_LIMIT", "MAX_DURATION", "Backend", "BackendOptions", "check_duration", "split_backend_url"]

MAX_DURATION = 10 * 365 * 24 * 3600.0  # seconds: the longest TTL, lease or timeout any option takes (10 years)
MAX_ATTEMPTS_LIMIT = 1_000_000  # the largest max_attempts: a delivery count every engine stores exactly


def check_duration(name: str, value: object, where: str = "", *, optional: bool = False,
                   error: type[Exception] = BackendConfigError) -> None:
    """Raise ``error`` unless ``value`` is a number of seconds > 0 and <= ``MAX_DURATION``.

    ``name`` and ``where`` (e.g. `` in 'redis://h/0'``) go into the message; ``optional``
    also accepts None; ``error`` is ``BackendConfigError`` for backend options,
    ``ConfigurationError`` for a constructor's argument. The bound keeps every TTL and lease within what Redis (``PX``,
    milliseconds) and NATS (nanoseconds in an int64) can express after adding the
    current time; longer would overflow there (an ``OverflowError`` or a claim that
    never succeeds) instead of failing here.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name}{where} must be a number of seconds, got {type(value).__name__} {value!r}")
    if not 0 < value <= MAX_DURATION:  # NaN fails both comparisons
        unset = " or unset (None: forever)" if optional else ""
        raise error(f"{name}{where} must be > 0 and at most {MAX_DURATION:,.0f} seconds (10 years)"
                                 f"{unset}, got {value!r}")


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
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
        given = [key for key, _ in pairs]
        twice = sorted({key for key in given if given.count(key) > 1})
        if twice:  # which one was meant? (parse_qsl would keep the last without a word)
            raise BackendConfigError(f"backend option(s) {', '.join(map(repr, twice))} given more than once in "
                                     f"{redact_url(url)!r}; give each once")
        for key, raw in pairs:
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
            check_duration(name, getattr(self, name), where)
        check_duration("state_ttl", self.state_ttl, where, optional=True)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            shown = f"{float(self.max_attempts):g}" if isinstance(self.max_attempts, int) else repr(self.max_attempts)
            raise BackendConfigError(f"max_attempts{where} must be an integer from 1 to {MAX_ATTEMPTS_LIMIT:,}, "
                                     f"got {shown}")
        if self.max_payload_bytes is not None and (
                isinstance(self.max_payload_bytes, bool) or not isinstance(self.max_payload_bytes, int)):
            raise BackendConfigError(f"max_payload_bytes{where} must be an integer number of bytes or unset, "
                                     f"got {self.max_payload_bytes!r}")
        if self.max_payload_bytes is not None and self.max_payload_bytes < 1:
            raise BackendConfigError(f"max_payload_bytes{where} must be >= 1 or unset, got {self.max_payload_bytes!r}")


def _whole(raw: str) -> int | float:
    """``raw`` as an int; a float written for a whole number (``1e3``) counts, so that the range check names it."""
    try:
        return int(raw)
    except ValueError:
        value = float(raw)
        if value.is_integer():
            return int(value)
        raise


def _coerce(url: str, key: str, raw: str) -> Any:
    try:
        if key == "prefix":
            return raw
        if key in ("max_attempts", "max_payload_bytes"):
            if key == "max_payload_bytes" and raw.lower() in ("", "none"):
                return None
            return _whole(raw)
        if key == "state_ttl" and raw.lower() in ("", "none"):
            return None
        return float(raw)
    except ValueError:
        kind = "a whole number" if key in ("max_attempts", "max_payload_bytes") else "a number"
        raise BackendConfigError(f"backend option {key}={raw!r} in {redact_url(url)!r} is not {kind}") from None


def split_backend_url(url: str) -> tuple[str, str]:
    """Return ``(scheme, rest)``; ``BackendConfigError`` if the URL has no scheme or cannot be parsed."""
    try:
        urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL": a bracket not closed
        raise BackendConfigError(
            f"backend URL {redact_url(url)!r} cannot be parsed ({exc}); check its brackets and ports (an IPv6 "
            "host goes in brackets: redis://[::1]:6379/0)") from None
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
