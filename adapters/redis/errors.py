"""The edge between redis-py and the project: lazy import and error translation.

``load_redis()`` imports redis-py on first use, so this package imports cleanly without
the ``[redis]`` extra and says how to install it when it is needed. ``redis_errors()``
is the one place where redis-py exceptions become the project's own:

* ``redis.ConnectionError`` / ``redis.TimeoutError`` (raised after the client's own
  retries with backoff gave up) -> ``BackendUnavailableError`` naming the URL with its
  password masked;
* ``redis.AuthenticationError`` -> ``BackendConfigError`` (a missing password says so);
* other ``redis.RedisError`` -> ``BackendError``;
* ``OSError`` from the socket layer -> ``BackendUnavailableError``;
* a Redis Cluster failing over or moving a slot (``CLUSTERDOWN``, ``TRYAGAIN``, a slot
  no node serves, too many redirections) -> ``BackendUnavailableError``: it passes;
* ``redis.InvalidResponse`` (what came back is not the Redis protocol: the URL points at
  another kind of server, e.g. NATS) -> ``BackendConfigError``, one line without the
  server's raw greeting.

The original exception is always chained (``raise ... from exc``).
"""

from __future__ import annotations

from types import ModuleType, TracebackType

from distributed_agents.core.errors import BackendConfigError, BackendError, BackendUnavailableError, MissingExtraError
from distributed_agents.core.redaction import redact_url

__all__ = ["INSTALL_HINT", "acl_refusal", "load_redis", "mask_url", "redis_errors"]

INSTALL_HINT = "pip install 'distributed-agents[redis]' (from a checkout of the repository: pip install '.[redis]')"


def load_redis() -> ModuleType:
    """The ``redis.asyncio`` module; ``MissingExtraError`` saying what to install if absent."""
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise MissingExtraError(
            f"the Redis backend needs the redis-py client library, which is not installed; run: {INSTALL_HINT}"
        ) from exc
    return redis_asyncio


def mask_url(url: str) -> str:
    """``url`` with its credentials masked, for messages and logs (``core.redaction.redact_url``)."""
    return redact_url(url)


class redis_errors:  # noqa: N801 - used as a function: ``with redis_errors(url, action):``
    """Translate redis-py and socket errors raised inside the block; ``action`` says what was attempted.

    A ``BackendError`` and anything that is not an ``Exception`` (a cancellation) pass
    through unchanged, as does an error ``_translate`` has no translation for.
    (A class rather than a ``contextmanager`` generator: every command enters one.)
    """

    __slots__ = ("url", "action")

    def __init__(self, url: str, action: str) -> None:
        self.url = url
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, BackendError) or not isinstance(exc, Exception):
            return  # nothing raised, or passed through as it is
        translated = _translate(exc, self.url, self.action)
        if translated is not None:
            raise translated from exc


def acl_refusal(exc: BaseException, url: str, action: str) -> BackendError | None:
    """The ``BackendError`` to raise if ``exc`` is the server refusing ``action`` by ACL, else None."""
    import redis.exceptions as rexc

    if isinstance(exc, rexc.NoPermissionError) or (isinstance(exc, rexc.ResponseError) and _is_acl_refusal(str(exc))):
        return _translate(exc, url, action)  # type: ignore[arg-type]
    return None


def _is_acl_refusal(message: str) -> bool:
    """Whether a server error (a script's, say) is an ACL refusal, which redis-py does not type."""
    lowered = message.lower()
    return "noperm" in lowered or "no permissions to" in lowered or "user executing the script can't" in lowered


def _translate(exc: Exception, url: str, action: str) -> BackendError | None:
    import redis.exceptions as rexc  # only reached after redis-py raised, so it is installed

    where = mask_url(url)
    if isinstance(exc, rexc.AuthenticationError):
        return _credentials_refused(exc, url, action)
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
        return BackendUnavailableError(
            f"Redis at {where} is unreachable while trying to {action} ({type(exc).__name__}: {exc}); "
            "retries with backoff gave up. Check that redis-server is running and the URL is right"
        )
    if _cluster_in_transition(exc):
        return BackendUnavailableError(
            f"the Redis Cluster at {where} cannot serve the slot while trying to {action} ({type(exc).__name__}: "
            f"{exc}): a failover or resharding is under way, or no node serves the slot; retrying"
        )
    if isinstance(exc, rexc.NoPermissionError) or (isinstance(exc, rexc.ResponseError) and _is_acl_refusal(str(exc))):
        return BackendError(
            f"Redis at {where} refused to {action}: this user lacks the permission ({exc}); give it the keys, "
            "channels and commands of this prefix (docs/security.md has the ACL rule), or check the prefix"
        )
    if isinstance(exc, rexc.InvalidResponse):
        return _not_redis(exc, url)
    if isinstance(exc, rexc.NoScriptError):
        # redis-py reloads a missing script once; missing again means the server lost its
        # script cache in between (it restarted): an outage that a retry rides out.
        return BackendUnavailableError(
            f"Redis at {where} lost its Lua scripts while trying to {action} (it restarted?); retrying reloads them"
        )
    if isinstance(exc, rexc.RedisError):
        return BackendError(f"Redis at {where} failed to {action}: {type(exc).__name__}: {exc}")
    return None


_NEEDS_PASSWORD = ("noauth", "authentication required", "hello must be called with the client already authenticated")


def _credentials_refused(exc: Exception, url: str, action: str) -> BackendConfigError:
    """The server refused the URL's credentials (or their absence): a configuration error
    (exit status 2 in the CLI), since trying again with the same URL cannot help."""
    from urllib.parse import urlsplit

    where = mask_url(url)
    parts = urlsplit(url)
    if parts.password is None and parts.username is None and any(s in str(exc).lower() for s in _NEEDS_PASSWORD):
        host = parts.path if parts.scheme.lower() == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        # Said in words: a URL with a placeholder password in it would be masked in the message.
        return BackendConfigError(
            f"Redis at {where} requires a password (the server has requirepass or ACL users) and the URL gives "
            f"none, while trying to {action}; add it to the URL between '{parts.scheme}://' and '{host}' as "
            "':PASSWORD@' (or 'USER:PASSWORD@' for an ACL user; percent-encode @, : and / in it)")
    return BackendConfigError(
        f"Redis at {where} refused the credentials while trying to {action} ({exc}); check the username and "
        "password in the URL (a password with @, : or / must be percent-encoded, e.g. %40 for @)")


def _cluster_in_transition(exc: Exception) -> bool:
    """Whether ``exc`` is a Redis Cluster moving a slot or electing a primary (passing, unlike a bug)."""
    import redis.exceptions as rexc

    passing = tuple(getattr(rexc, name) for name in ("ClusterDownError", "TryAgainError", "MasterDownError",
                                                      "SlotNotCoveredError", "ClusterError") if hasattr(rexc, name))
    if isinstance(exc, passing):
        return True
    text = str(exc)
    # A command blocked on a primary that has just become a replica (its clients are unblocked).
    if isinstance(exc, rexc.ResponseError) and text.startswith(("UNBLOCKED", "MASTERDOWN")):
        return True
    # Too many MOVED/ASK in a row, or no node reachable to read the slot map from.
    return isinstance(exc, rexc.RedisClusterException) and ("TTL exhausted" in text or "cannot be connected" in text)


def _not_redis(exc: Exception, url: str) -> BackendConfigError:
    """The server at ``url`` spoke something other than the Redis protocol: say so in one line.

    Its reply is not quoted (a NATS server's greeting is a long JSON blob of server
    details); only what kind of server it looks like.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    address = parts.path if parts.scheme.lower() == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    # Every NATS server greets a new connection with INFO {json}: redis-py's own parser quotes
    # it, hiredis's says the reply began with "I", which no Redis reply type does.
    if "INFO {" in str(exc) or 'got "I" as reply type byte' in str(exc):
        return BackendConfigError(
            f"the server at {address} ({mask_url(url)}) did not answer as Redis: it greets like a NATS server; "
            f"use nats://{address} for it, or point the redis:// URL at the Redis server's port")
    return BackendConfigError(
        f"the server at {address} ({mask_url(url)}) did not answer as Redis (its reply is not the Redis protocol); "
        "check the URL's host and port: is another kind of server (NATS, HTTP) listening there?")
