"""One redis-py asyncio client per backend (or per standalone port), created lazily.

``RedisConnection`` turns a backend URL into a redis-py client: ``redis://``,
``rediss://`` (TLS) and ``unix://`` URLs with username, password and database number
are handled by redis-py's ``from_url``; the query options that are ours
(``BackendOptions`` fields such as ``prefix``) are stripped first because redis-py
would pass unknown query keys to the socket layer.

Query options (and ``BackendOptions.extra``) are checked against a fixed list when the
connection object is made: an unknown one (a typo such as ``ssl_ca_cert``) raises
``BackendConfigError`` naming it and the known ones, instead of being ignored or failing
later. TLS: ``tls_ca`` / ``tls_cert`` / ``tls_key`` are short names for redis-py's
``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile``; a ``rediss://`` URL verifies
the server's certificate and host name by default, whatever the redis-py version
(``ssl_cert_reqs=none`` turns verification off, for tests only); a TLS option on a
plain ``redis://`` URL is refused, since it would otherwise connect unencrypted.

``?cluster=true`` talks to a Redis Cluster: the URL names one node or several
(``redis://h1:6379,h2:6379/0?cluster=true``; the client reads the slot map from the first
that answers and discovers the others) and the client is redis-py's ``RedisCluster``, which
routes each command to the node serving its key's hash slot and follows ``MOVED`` and
``ASK`` redirections and failovers. Every key of one prefix then starts with the hash
tag ``{prefix}:`` (``key_prefix``), so each Lua script's keys, built inside the script
from that prefix, are in one slot; each script call names one key of that slot in
``KEYS`` so that it is routed there. Node-cache entries keep the untagged prefix and
spread over the slots (each cache command touches one key). Pub/sub connections go to
any node (a classic ``PUBLISH`` reaches every node of a cluster) and move to another
known node when theirs stops answering. Scripts are sent one per call (not batched
into pipelines: a cluster pipeline regroups and re-sends commands on redirection).
Cluster mode is chosen explicitly, not detected: the key layout differs, and a
deployment must not change it because of the server it happens to reach.

``?bus_subscribe=prefix`` makes the message bus ``PSUBSCRIBE`` to one glob per prefix,
``<prefix>:bus:*``, instead of one per subscribed pattern (``pattern``, the default):
a Redis ACL allows a ``PSUBSCRIBE`` only to a glob it lists literally, so a user
restricted to its prefix's channels needs the one glob it can list (docs/security.md).

The client retries a command that failed on a broken or refused connection, with
exponential backoff (about 1.5 s in all), then raises; ``redis_errors`` turns that into
``BackendUnavailableError``. Every script and command of this adapter is safe to
repeat after a lost reply (see ``task_queue``), which is what makes that retry sound.

Lua scripts are registered once per connection (redis-py ``Script`` objects compute
the SHA locally and call ``EVALSHA``, loading the script only on ``NOSCRIPT``).

The client binds to the event loop of its first command; ``client()`` makes a new one
when it is used from another loop (test harnesses run one loop per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from distributed_agents.adapters.redis.batching import HeldConnections, ScriptBatcher, execute
from distributed_agents.adapters.redis.errors import load_redis, mask_url, redis_errors
from distributed_agents.core.errors import BackendConfigError, BackendUnavailableError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.timeouts import within

__all__ = ["RedisConnection", "redis_client_url"]

_OUR_OPTIONS = frozenset(f.name for f in fields(BackendOptions))
_SCHEMES = ("redis", "rediss", "unix")
# Options of this adapter (not redis-py's): name -> allowed values.
_ADAPTER_OPTIONS = {"bus_subscribe": ("pattern", "prefix"), "cluster": ("false", "true")}
# Our short TLS option names -> redis-py's.
_TLS_ALIASES = {"tls_ca": "ssl_ca_certs", "tls_cert": "ssl_certfile", "tls_key": "ssl_keyfile"}
# redis-py connection settings accepted in the query string; anything else is refused.
_TLS_OPTIONS = frozenset({
    "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", *_TLS_ALIASES,
})
_CLIENT_OPTIONS = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size", "retry_on_timeout",
    "max_connections", "timeout", "health_check_interval", "client_name", "protocol",
})  # not decode_responses / encoding: the adapter decodes replies itself

# Backoff per retry: 0.05, 0.1, 0.2, 0.4, 0.5, 0.5 s -> gives up after ~1.75 s.
_RETRIES = 6
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 0.5
# Pool defaults; ?max_connections= and ?timeout= in the URL override them.
_MAX_CONNECTIONS = 64
# Cluster: connections per node (redis-py fails a command at once, with MaxConnectionsError,
# past this number instead of queueing it), and script calls under way at once per
# RedisConnection (more wait in the process, as on a blocking pool).
_CLUSTER_MAX_CONNECTIONS = 1024
_CLUSTER_CONCURRENT_SCRIPTS = 64
_POOL_TIMEOUT = 20.0
_CONNECT_TIMEOUT = 5.0
# rediss:// only: after this long without a reply, check whether the server speaks plain Redis.
_TLS_PROBE_AFTER = 1.0


def _connect_problem(where: str, client_url: str, exc: BaseException) -> str:
    """One line: why connecting to ``where`` failed (from the exception chain) and what to check."""
    parts = urlsplit(client_url)
    scheme = parts.scheme.lower()
    address = parts.path if scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(c) for c in causes)
    # The node that failed, as redis-py names it ("Error 111 connecting to h:p."): on a
    # cluster it may be another node than the URL's (one the slot map led to).
    failed = re.search(r"connecting to (\S+?):(\d+)", text)
    if failed and scheme != "unix" and f"{failed.group(1)}:{failed.group(2)}" != address:
        address = f"{failed.group(1)}:{failed.group(2)} (a cluster node the URL's {address} led to)"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return (f"cannot connect to Redis at {where}: host {parts.hostname!r} was not found (DNS lookup failed); "
                "check the host name in the URL")
    if any(isinstance(c, FileNotFoundError) for c in causes) or (scheme == "unix" and "No such file" in text):
        return (f"cannot connect to Redis at {where}: socket file {address} does not exist; check that redis-server "
                "is running with unixsocket set to that path")
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in text.lower():
        return (f"cannot connect to Redis at {where}: connection refused by {address} (nothing listens there); "
                "check that redis-server is running and listening on that address, and the URL's host and port")
    tls_errors = [c for c in causes if isinstance(c, ssl.SSLError)]
    if any(isinstance(c, ssl.SSLCertVerificationError) and "mismatch" in str(c) for c in tls_errors):
        return (f"cannot connect to Redis at {where}: TLS handshake failed: the server's certificate is not for "
                f"{parts.hostname!r} ({tls_errors[-1]}); connect by a name or address the certificate lists "
                "(or ?ssl_check_hostname=false to skip the check, for tests only)")
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in tls_errors):
        return (f"cannot connect to Redis at {where}: TLS handshake failed: the server's certificate is not trusted "
                f"here ({tls_errors[-1]}); pass the CA that signed it as ?tls_ca=/path/ca.pem in the URL "
                "(or ?ssl_cert_reqs=none to skip verification, for tests only)")
    if tls_errors:
        return (f"cannot connect to Redis at {where}: TLS handshake failed ({tls_errors[-1]}); "
                "check that the server has TLS enabled on that port and the certificate settings in the URL "
                "(tls_ca=, tls_cert=, tls_key=, ssl_cert_reqs=)")
    if "closed by server" in text.lower() or any(isinstance(c, ConnectionResetError) for c in causes):
        hint = "; if it only accepts TLS, use rediss://" if scheme == "redis" else ""
        return (f"cannot connect to Redis at {where}: {address} closed the connection at once{hint}; "
                "check that it is a Redis server and the URL's port is right")
    if any(isinstance(c, (TimeoutError, asyncio.TimeoutError)) for c in causes) or "timeout" in text.lower():
        hint = " and that it has TLS enabled on that port" if scheme == "rediss" else ""
        return (f"cannot connect to Redis at {where}: no answer from {address} within {_CONNECT_TIMEOUT:g}s; "
                f"check the host and port, firewalls, that redis-server is running{hint}")
    last = causes[-1]
    return (f"cannot connect to Redis at {where}: {type(last).__name__}: {last}; "
            "check that redis-server is running and the URL is right")


def _tls_refused(exc: BaseException) -> bool:
    """Whether the exception chain holds a TLS handshake failure (certificates, not the network)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def redis_client_url(url: str, extra: Mapping[str, str] | None = None) -> str:
    """``url`` as redis-py's ``from_url`` should see it: our options out, ``extra`` in.

    ``extra`` (``BackendOptions.extra``) adds redis-py settings the URL does not carry.
    The short TLS names become redis-py's; a ``rediss://`` URL gets
    ``ssl_cert_reqs=required`` and ``ssl_check_hostname=true`` unless it says otherwise.
    Raises ``BackendConfigError`` for another scheme, an unknown option, or a TLS option
    on a URL that is not ``rediss://``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise BackendConfigError(f"{mask_url(url)} is not a Redis URL; use redis://, rediss:// or unix://")
    if scheme != "unix":
        try:
            port = parts.port
        except ValueError as exc:  # not a number, or out of range: said the way the rest of this check says it
            raise BackendConfigError(f"{mask_url(url)} has an invalid port ({exc}); write redis://host:port/db, "
                                     "e.g. redis://127.0.0.1:6379/0") from None
        if port == 0:  # redis-py would take it for "no port" and connect to 6379
            raise BackendConfigError(
                f"{mask_url(url)} names port 0, which no server listens on (0 asks the system for any free port "
                "when a server binds); write the server's port, e.g. redis://127.0.0.1:6379/0")
    settings: dict[str, str] = {}
    database = parts.path.strip("/") if scheme != "unix" else ""  # a unix URL's path is the socket's
    database = dict(parse_qsl(parts.query, keep_blank_values=True)).get("db", "") if not database else database
    if database and not (database.isascii() and database.isdigit() and len(database) <= 9):
        raise BackendConfigError(
            f"database {database[:40]!r} in {mask_url(url)} is not a database number; Redis numbers its databases "
            "from 0 (redis://host:6379/0, the default); separate deployments with ?prefix=")
    for key, value in [*parse_qsl(parts.query, keep_blank_values=True), *(extra or {}).items()]:
        if key in _OUR_OPTIONS or key in _ADAPTER_OPTIONS:
            continue
        if key not in _CLIENT_OPTIONS and key not in _TLS_OPTIONS:
            raise BackendConfigError(
                f"unknown Redis option {key!r} in {mask_url(url)}; known options: "
                f"{', '.join(sorted(_OUR_OPTIONS - {'extra'} | set(_ADAPTER_OPTIONS)))} (ours), "
                f"{', '.join(sorted(_TLS_OPTIONS))} (TLS), "
                f"{', '.join(sorted(_CLIENT_OPTIONS))} (connection)"
            )
        if key in _TLS_OPTIONS and scheme != "rediss":
            raise BackendConfigError(
                f"TLS option {key!r} in {mask_url(url)} needs a rediss:// URL: redis:// and unix:// connect "
                "unencrypted; use rediss://host:port (the server's tls-port)"
            )
        settings[_TLS_ALIASES.get(key, key)] = value
    if scheme == "rediss":
        # Secure whatever the redis-py version (before 6.0 it did not check host names).
        settings.setdefault("ssl_cert_reqs", "required")
        verify = settings["ssl_cert_reqs"].lower() not in ("none", "cert_none")
        settings.setdefault("ssl_check_hostname", "true" if verify else "false")
    return urlunsplit(parts._replace(query=urlencode(list(settings.items()))))


def _adapter_option(url: str, extra: Mapping[str, str] | None, name: str) -> str:
    """The value of one of ``_ADAPTER_OPTIONS`` (``extra`` winning over the URL), checked."""
    allowed = _ADAPTER_OPTIONS[name]
    value = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)).get(name, allowed[0])
    value = (extra or {}).get(name, value)
    if value not in allowed:
        raise BackendConfigError(
            f"Redis option {name}={value!r} in {mask_url(url)} is not one of {', '.join(allowed)}"
        )
    return value


_pool_class: Any = None


class _CredentialsRefused(Exception):
    """Carries a redis-py ``AuthenticationError`` past the client's retry (it is not retried)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _retry_policy() -> Any:
    """redis-py's retry with backoff (``_RETRIES`` tries) of connection errors and timeouts,
    except a refused password or user: redis-py types that as a ``ConnectionError`` too,
    and retrying it (with every health check retrying its reconnect) took ~20 s to say
    what was clear from the first reply."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import AuthenticationError

    class NoRetryOfCredentials(Retry):  # type: ignore[misc]
        async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
            async def attempt() -> Any:
                try:
                    return await do()
                except AuthenticationError as exc:
                    raise _CredentialsRefused(exc) from exc

            try:
                return await super().call_with_retry(attempt, fail, *args, **kwargs)
            except _CredentialsRefused as refused:
                raise refused.error from None

    return NoRetryOfCredentials(ExponentialBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), _RETRIES)


def _closing_pool_class() -> Any:
    """redis-py's ``BlockingConnectionPool`` that, once closed, closes what is given back.

    A command still under way when the pool is closed (a ``BLPOP`` of a waiting claim,
    a publish, a pub/sub read) fails on its closed socket, and redis-py's retry then
    connects that connection again and hands it back to the pool: with nobody left to
    close the pool, the new socket stayed open until garbage collection found it.
    """
    global _pool_class
    if _pool_class is None:
        redis_asyncio = load_redis()

        class ClosingPool(redis_asyncio.BlockingConnectionPool):  # type: ignore[misc, name-defined]
            closed = False  # set by RedisConnection.close

            async def release(self, connection: Any) -> None:
                await super().release(connection)
                if self.closed:
                    await connection.disconnect()

        _pool_class = ClosingPool
    return _pool_class


def _seed_nodes(url: str, cluster: bool) -> tuple[str, list[tuple[str, int]]]:
    """``url`` with only its first host, and the (host, port) of the others (``h1:1,h2:2``).

    Several hosts are a cluster's startup nodes: the client reads the slot map from the
    first that answers, so a process can start while some of them are down. Without
    ``?cluster=true`` a second host is refused (one server has one address).
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url, []
    if not cluster:
        raise BackendConfigError(
            f"{mask_url(url)} lists several hosts, which only a Redis Cluster has; add ?cluster=true for a cluster, "
            "or name one server"
        )
    names = [host for host in hosts.split(",") if host]
    seeds = []
    for host in names[1:]:
        address = urlsplit(f"//{host}")
        try:
            port = address.port if address.port is not None else 6379
            if port == 0:
                raise ValueError("port 0")
        except ValueError:
            raise BackendConfigError(f"host {host!r} in {mask_url(url)} has an invalid port") from None
        seeds.append((address.hostname or "localhost", port))
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{names[0]}")), seeds


def _check_cluster_url(url: str, client_url: str) -> None:
    """Refuse what a Redis Cluster cannot do: a unix socket, a database other than 0."""
    parts = urlsplit(client_url)
    if parts.scheme.lower() == "unix":
        raise BackendConfigError(
            f"?cluster=true in {mask_url(url)} needs a redis:// or rediss:// URL naming one node of the cluster "
            "(host:port); a unix socket cannot reach the other nodes"
        )
    database = parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db", "0")
    if database not in ("", "0"):
        raise BackendConfigError(
            f"?cluster=true in {mask_url(url)} selects database {database}, but a Redis Cluster has only database 0; "
            "drop the database number from the URL (or use /0) and separate deployments with ?prefix="
        )


class RedisConnection:
    """A lazily created redis-py client for one URL, shared by the ports that use it."""

    def __init__(self, url: str, extra: Mapping[str, str] | None = None) -> None:
        load_redis()  # MissingExtraError with the install command, before anything else
        self.url = url
        self.bus_subscribe = _adapter_option(url, extra, "bus_subscribe")
        self.cluster = _adapter_option(url, extra, "cluster") == "true"
        first, self._seeds = _seed_nodes(url, self.cluster)
        self._client_url = redis_client_url(first, extra)
        if self.cluster:
            _check_cluster_url(url, self._client_url)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._batcher: ScriptBatcher | None = None
        # Calls no step waits on (the event publisher's batches): a write of their own (``lane="bus"``).
        self._bus_batcher: ScriptBatcher | None = None
        self._blocking: HeldConnections | None = None  # the connection run_blocking keeps
        self._blocking_client: Any = None
        self._cluster_gate: asyncio.Semaphore | None = None
        self._home_key: str | None = None

    def key_prefix(self, prefix: str) -> str:
        """What every key (and channel) name of ``prefix`` starts with: ``{prefix}`` on a cluster.

        The braces make the prefix a hash tag, so that all the keys of one prefix are in
        one hash slot (one node) and a Lua script may touch any of them.
        """
        if not self.cluster:
            return prefix
        self._home_key = f"{{{prefix}}}:q:seq"  # pub/sub goes to this slot's primary (see cluster.py)
        return f"{{{prefix}}}"

    @property
    def masked_url(self) -> str:
        """The URL with its password masked."""
        return mask_url(self.url)

    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client of the running loop (created on first use)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            redis_asyncio = load_redis()
            from redis.exceptions import ConnectionError, TimeoutError

            try:
                # A client of a previous, now finished, loop is dropped, not closed:
                # its sockets belong to that loop and cannot be closed from this one.
                # A blocking pool makes a burst of concurrent calls queue for a
                # connection instead of failing with "Too many connections".
                # Keyword defaults; settings in the URL's query string take precedence.
                if self.cluster:
                    self._client = self._cluster_client(ConnectionError, TimeoutError)
                    self._cluster_gate = asyncio.Semaphore(_CLUSTER_CONCURRENT_SCRIPTS)
                    self._loop = loop
                    self._scripts.clear()
                    return self._client
                pool = _closing_pool_class().from_url(
                    self._client_url,
                    max_connections=_MAX_CONNECTIONS,
                    timeout=_POOL_TIMEOUT,
                    socket_connect_timeout=_CONNECT_TIMEOUT,
                    socket_timeout=10,
                    health_check_interval=30,
                    retry=_retry_policy(),
                    retry_on_error=[ConnectionError, TimeoutError],
                )
                # Building (not connecting) one connection object rejects unknown query
                # options now, instead of on the first command.
                pool.connection_class(**pool.connection_kwargs)
                self._client = redis_asyncio.Redis.from_pool(pool)
            except (TypeError, ValueError) as exc:
                raise BackendConfigError(
                    f"invalid Redis URL {self.masked_url}: {exc}; query options are ours "
                    f"({', '.join(sorted(_OUR_OPTIONS - {'extra'}))}) or redis-py connection settings"
                ) from exc
            self._loop = loop
            self._scripts.clear()
        return self._client

    def _cluster_client(self, *retry_on: type[Exception]) -> Any:
        from redis.asyncio.cluster import ClusterNode

        from distributed_agents.adapters.redis.cluster import open_cluster_client

        return open_cluster_client(
            self._client_url,
            home_key=self._home_key,
            startup_nodes=[ClusterNode(host, port) for host, port in self._seeds],
            max_connections=_CLUSTER_MAX_CONNECTIONS,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=10,
            health_check_interval=30,
            retry=_retry_policy(),
            retry_on_error=list(retry_on),
        )

    def script(self, name: str, source: str) -> Any:
        """The registered redis-py ``AsyncScript`` for ``source`` (registered once per client)."""
        client = self.client()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script

    async def run_script(self, name: str, source: str, keys: list[str], args: list[Any], action: str, *,
                         now: bool = False, lane: str = "steps") -> Any:
        """Run a Lua script with ``EVALSHA`` (one round trip once the server knows it).

        Calls made in the same event-loop tick (many workflows committing at once) go out
        as one pipeline (``batching``); each still gets its own reply or error. ``now``: a
        call that needs no order with the others of its tick is written at once when
        nothing else is being sent (``ScriptBatcher.run_now``).

        ``lane``: ``"steps"`` (the default) for the queue's and the store's scripts;
        ``"bus"`` for calls that need no order with those and that no step waits on (the
        event publisher's batches, ``message_bus``): they are batched among themselves
        and written on a connection of their own, so that a batch of a few hundred
        publishes is never in the write of a tick's commits and enqueues, nor ahead of
        their replies. (Measured with ``benchmarks/distributed_benchmark.py``: single-node
        workflows/s +13-20% on Redis, the same CPU per workflow.)
        """
        script = self.script(name, source)
        if self.cluster:
            # One EVALSHA per call: redis-py routes it by its first key and follows
            # redirections (see the module docstring for why no pipelines).
            client = self.client()
            assert self._cluster_gate is not None
            async with self._cluster_gate:
                with redis_errors(self.url, action):
                    return await script(keys=keys, args=args, client=client)
        batcher = self._lane(lane)
        try:
            if now:
                return await batcher.run_now(script, keys, args)
            return await batcher.run(script, keys, args)
        except Exception:  # translated here only: a context manager round every call costs as much
            with redis_errors(self.url, action):
                raise

    def _lane(self, lane: str) -> ScriptBatcher:
        """The batcher of ``lane`` (``run_script``), made on first use."""
        if lane == "bus":
            if self._bus_batcher is None:
                self._bus_batcher = ScriptBatcher(self.client)
            return self._bus_batcher
        if lane != "steps":
            raise ValueError(f"unknown lane {lane!r}: expected 'steps' or 'bus'")
        if self._batcher is None:
            self._batcher = ScriptBatcher(self.client)
        return self._batcher

    async def run_commands(self, commands: list[list[Any]], action: str, *, lane: str = "steps") -> list[Any]:
        """Run plain commands (each name first) in order, with this tick's other calls of
        ``lane`` (``batching``, ``run_script``); raw replies.

        Raises the first command's error, as ``BackendError``, after all have run.
        """
        if self.cluster:
            with redis_errors(self.url, action):
                async with self.client().pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    return list(await pipe.execute())
        batcher = self._lane(lane)
        futures = [batcher.submit(None, [], command) for command in commands]
        with redis_errors(self.url, action):
            replies = await asyncio.gather(*futures, return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies

    async def run_blocking(self, command: list[Any], action: str) -> Any:
        """One blocking command (``BLMPOP``, name first) on a connection of its own; its raw reply.

        Not batched (it would hold up the calls of its tick). The connection is kept
        between calls (``batching.HeldConnections``), as a claimer blocks again and again;
        the block must end before the connection's read timeout (10 s). Raises
        ``BackendError`` (or ``BackendUnavailableError``) naming ``action`` and the URL.
        """
        client = self.client()
        try:
            if self.cluster:
                return await client.execute_command(*command)
            if self._blocking is None or self._blocking_client is not client:
                self._blocking, self._blocking_client = HeldConnections(keep=1), client
            reply = (await execute(client, [command], self._blocking))[0]
            if isinstance(reply, Exception):
                raise reply
            return reply
        except Exception:
            with redis_errors(self.url, action):
                raise

    async def ping(self) -> None:
        """Round trip to the server, as the backend's ``connect``.

        Raises ``BackendUnavailableError`` with one line naming the URL, the cause
        (connection refused, unknown host, no answer, ...) and what to check, with no
        chained redis-py/socket exceptions; ``BackendConfigError``, which no retry can
        fix, when a ``rediss://`` URL points at a server that speaks plain (non-TLS)
        Redis or the TLS handshake fails (an untrusted server certificate, a client
        certificate missing or refused).
        """
        ping = asyncio.ensure_future(self._ping())
        try:
            if self._tls_host() is not None:
                # A TLS client talking to a plain server waits for a handshake reply that
                # never comes, through every retry; a plain probe tells much sooner.
                done, _ = await asyncio.wait({ping}, timeout=_TLS_PROBE_AFTER)
                if not done and await self._answers_plain_redis():
                    raise self._plain_server_error()
            await ping
        except BackendUnavailableError as exc:
            if self._tls_host() is not None and await self._answers_plain_redis():
                raise self._plain_server_error() from None
            problem = _connect_problem(self.masked_url, self._client_url, exc)
            if _tls_refused(exc):
                # An untrusted certificate or a refused client certificate: no retry can fix
                # it, so a worker exits saying so instead of waiting for the server.
                raise BackendConfigError(problem) from None
            raise BackendUnavailableError(problem) from None
        finally:
            if not ping.done():
                ping.cancel()
                with contextlib.suppress(BaseException):
                    await ping

    async def _ping(self) -> None:
        try:
            with redis_errors(self.url, "connect"):
                client = self.client()
                if self.cluster:
                    # One node is enough (redis-py's cluster PING asks every node, and one of
                    # them may be down while its replica serves its slots).
                    await client.initialize()
                    await client.ping(target_nodes=client.RANDOM)
                else:
                    await client.ping()
        except Exception as exc:
            # Answers no retry changes: the URL asks the server for something it does not offer.
            text = f"{exc} {exc.__cause__}"
            if "DB index is out of range" in text:
                database = urlsplit(self._client_url).path.strip("/") or "?"
                raise BackendConfigError(
                    f"Redis at {self.masked_url} has no database {database}: the server's 'databases' setting "
                    "(16 by default: 0-15) bounds the number; use one below it (/0), and separate deployments "
                    "with ?prefix=") from None
            if "cluster support disabled" in text or "Cluster mode is not enabled" in text:
                raise BackendConfigError(
                    f"?cluster=true in {self.masked_url}, but the Redis server there is not a cluster node "
                    f"({exc.__cause__ or exc}); drop ?cluster=true for a single server, or point the URL at a "
                    "node of the cluster") from None
            raise

    def _tls_host(self) -> tuple[str, int] | None:
        parts = urlsplit(self._client_url)
        if parts.scheme.lower() != "rediss":
            return None
        return parts.hostname or "localhost", parts.port or 6379

    async def _answers_plain_redis(self) -> bool:
        """Whether the TLS URL's host:port answers a plain-text ``PING`` as Redis does."""
        address = self._tls_host()
        if address is None:
            return False
        try:
            reader, writer = await within(asyncio.open_connection(*address), _TLS_PROBE_AFTER)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            reply = await within(reader.readline(), _TLS_PROBE_AFTER)
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # +PONG, or an error such as -NOAUTH: either way a Redis server speaking plain text.
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS"))

    def _plain_server_error(self) -> BackendConfigError:
        host, port = self._tls_host() or ("", 0)
        return BackendConfigError(
            f"TLS handshake with Redis at {self.masked_url} failed: the server at {host}:{port} speaks plain "
            "(non-TLS) Redis; use redis:// instead of rediss:// for it, or enable TLS on the server (tls-port) "
            "and point the rediss:// URL at that port"
        )

    async def close(self) -> None:
        """Close the client and its pool. Idempotent."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            # Script calls already issued finish on the client they were issued on: a send
            # left running would otherwise reopen a client (and a socket) after this close.
            for batcher in (self._batcher, self._bus_batcher):
                if batcher is not None:
                    await batcher.drain()
        self._batcher = self._bus_batcher = None
        blocking, self._blocking = self._blocking, None
        if blocking is not None and running is not None and running is self._loop:
            await blocking.release_all()
        client, self._client = self._client, None
        loop, self._loop = self._loop, None
        self._scripts.clear()
        if client is None:
            return
        if self.cluster:
            if running is loop:
                with redis_errors(self.url, "close the connection"):
                    await client.aclose()
            return
        # From now on a connection given back (after a retry connected it again) is closed.
        client.connection_pool.closed = True
        if running is loop:
            with redis_errors(self.url, "close the connection"):
                await client.aclose()

    def __repr__(self) -> str:
        return f"<RedisConnection {self.masked_url}>"
