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
from collections.abc import Iterator
from contextlib import contextmanager

from distributed_agents.core.errors import BackendError, BackendUnavailableError, DistributedAgentsError
from distributed_agents.core.redaction import redact_url

__all__ = ["mask_url", "nats_errors"]


def mask_url(url: str) -> str:
    """``url`` with any password or token masked, safe to log (``core.redaction.redact_url``)."""
    return redact_url(url)


def _is_connection_problem(exc: BaseException) -> bool:
    import nats.errors
    import nats.js.errors

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


@contextmanager
def nats_errors(url: str, action: str) -> Iterator[None]:
    """Map nats-py exceptions raised inside the block; ``action`` says what was attempted."""
    try:
        yield
    except DistributedAgentsError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _is_connection_problem(exc):
            raise BackendUnavailableError(
                f"NATS at {mask_url(url)} is unavailable while trying to {action} "
                f"({type(exc).__name__}: {exc or 'no detail'}); check that nats-server is running "
                "with JetStream enabled (-js) and reachable"
            ) from exc
        raise BackendError(f"NATS at {mask_url(url)}: could not {action} ({type(exc).__name__}: {exc})") from exc
