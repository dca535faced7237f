"""Translate nats-py exceptions into this framework's errors, in one place.

Every call into nats-py goes through ``nats_errors``: connection trouble (no server,
disconnected, timeouts waiting for the server, JetStream not ready yet after a restart:
503 / no response from stream) becomes ``BackendUnavailableError``
naming the URL with its credentials masked; any other nats-py error becomes
``BackendError``. Both keep the original as ``__cause__``. Errors of this framework pass
through unchanged.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from distributed_agents.core.errors import BackendError, BackendUnavailableError, DistributedAgentsError
from distributed_agents.core.redaction import redact_url

__all__ = ["mask_url", "nats_errors", "note_permission_violation"]

# url -> (time.monotonic(), the server's text) of the last "Permissions Violation" the
# server reported on that URL's connection (asynchronously, through nats-py's error
# callback): a request it refused then times out, and this says why.
_DENIALS: dict[str, tuple[float, str]] = {}


def mask_url(url: str) -> str:
    """``url`` with any password or token masked, safe to log (``core.redaction.redact_url``)."""
    return redact_url(url)


def note_permission_violation(url: str, text: str) -> None:
    """Record that the server refused a subject to ``url``'s user (called by the connection)."""
    _DENIALS[url] = (time.monotonic(), text)


# JetStream API errors that a retry resolves. 10158, "duplicate message id is in process":
# on a cluster, a publish whose Nats-Msg-Id an earlier attempt (timed out at the client
# during a failover) is still proposing; once that lands, the retry is a plain duplicate.
_TRANSIENT_API_ERRORS = frozenset({10158})


def _is_connection_problem(exc: BaseException) -> bool:
    import nats.errors
    import nats.js.errors

    if isinstance(exc, nats.js.errors.APIError) and getattr(exc, "err_code", None) in _TRANSIENT_API_ERRORS:
        return True
    return isinstance(
        exc,
        (
            # JetStream answers 503 / "no response from stream" while a restarted server
            # is still recovering its streams: transient, like a lost connection.
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
            nats.errors.NoServersError,
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionDrainingError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            asyncio.TimeoutError,
            ConnectionError,
            OSError,
        ),
    )


class nats_errors:  # noqa: N801 - a context manager used as the function it was
    """Map nats-py exceptions raised inside the block; ``action`` says what was attempted.

    A timeout after the server reported a permissions violation for this URL's user
    during the block becomes a ``BackendError`` saying so (no retry can fix it).
    (A class rather than ``contextlib.contextmanager``: it wraps every call of a task's
    path, and a generator-based one costs a generator and its wrapper each time.)
    """

    __slots__ = ("action", "started", "url")

    def __init__(self, url: str, action: str) -> None:
        self.url = url
        self.action = action
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, DistributedAgentsError):
            return False  # nothing raised, a cancellation (or other BaseException), or ours: as it is
        url, action = self.url, self.action
        denied = _DENIALS.get(url)
        if denied is not None and denied[0] >= self.started and _is_connection_problem(exc):
            raise BackendError(
                f"NATS at {mask_url(url)} refused to {action}: this user lacks the permission ({denied[1]}); give it "
                "the subjects of this prefix (docs/security.md; adapters.nats.permissions.tenant_permissions), or "
                "check the prefix"
            ) from exc
        if _is_connection_problem(exc):
            raise BackendUnavailableError(
                f"NATS at {mask_url(url)} is unavailable while trying to {action} "
                f"({type(exc).__name__}: {exc or 'no detail'}); check that nats-server is running "
                "with JetStream enabled (-js) and reachable"
            ) from exc
        raise BackendError(f"NATS at {mask_url(url)}: could not {action} ({type(exc).__name__}: {exc})") from exc
