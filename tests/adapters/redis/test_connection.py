"""URLs: scheme, credentials, database number, TLS, unix sockets, and our own query options."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from support.aio import run
from support.redis_server import RedisServer

from distributed_agents import open_backend
from distributed_agents.adapters.redis.backend import RedisBackend
from distributed_agents.adapters.redis.connection import RedisConnection, redis_client_url
from distributed_agents.core.errors import BackendConfigError, BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowRecord


def test_our_query_options_are_stripped_and_redis_py_ones_kept() -> None:
    url = "redis://u:p@h:6379/2?prefix=app&max_attempts=5&socket_timeout=3&state_ttl=none"
    assert redis_client_url(url) == "redis://u:p@h:6379/2?socket_timeout=3"


def test_a_non_redis_scheme_is_a_config_error() -> None:
    with pytest.raises(BackendConfigError, match="not a Redis URL"):
        redis_client_url("http://:pw@h:6379/0")


def test_options_come_from_the_query_string_and_keywords() -> None:
    backend = open_backend("redis://127.0.0.1:1/0?prefix=app&max_attempts=5&visibility_timeout=7", result_ttl=9)
    assert isinstance(backend, RedisBackend)
    assert backend.task_queue.prefix == "app"  # type: ignore[attr-defined]
    assert (backend.task_queue.max_attempts, backend.task_queue.visibility_timeout) == (5, 7.0)
    assert backend.task_queue.result_ttl == 9.0


def test_rediss_selects_tls_and_unix_selects_a_socket_connection() -> None:
    async def classes() -> tuple[type, type, dict[str, object]]:
        tls = RedisConnection("rediss://user:pw@example.invalid:6380/4?prefix=x&ssl_cert_reqs=none")
        unix = RedisConnection("unix://:pw@/tmp/nowhere.sock?db=3")
        try:
            tls_pool = tls.client().connection_pool
            unix_pool = unix.client().connection_pool
            return tls_pool.connection_class, unix_pool.connection_class, dict(tls_pool.connection_kwargs)
        finally:
            await tls.close()
            await unix.close()

    tls_class, unix_class, tls_kwargs = run(classes(), 10)
    assert issubclass(tls_class, SSLConnection)
    assert issubclass(unix_class, UnixDomainSocketConnection)
    assert tls_kwargs["username"] == "user" and tls_kwargs["password"] == "pw" and tls_kwargs["db"] == 4
    assert tls_kwargs["ssl_cert_reqs"] == "none" and "prefix" not in tls_kwargs


def test_password_and_database_number_come_from_the_url() -> None:
    with RedisServer(password="pa55") as server:
        url = f"redis://:pa55@127.0.0.1:{server.port}/3?prefix=dbtest"

        async def scenario() -> tuple[int, int]:
            backend = open_backend(url)
            await backend.connect()
            try:
                await backend.state_store.save(WorkflowRecord("w1", "g", "running", {}), expected_version=0)
            finally:
                await backend.close()
            probe = redis_asyncio.Redis.from_url(f"redis://:pa55@127.0.0.1:{server.port}/0")
            try:
                in_db0 = await probe.exists("dbtest:wf:r:w1")
            finally:
                await probe.aclose()
            probe3 = redis_asyncio.Redis.from_url(f"redis://:pa55@127.0.0.1:{server.port}/3")
            try:
                in_db3 = await probe3.exists("dbtest:wf:r:w1")
            finally:
                await probe3.aclose()
            return in_db0, in_db3

        assert run(scenario(), 30) == (0, 1)


def test_a_unix_socket_url_reaches_the_server() -> None:
    with RedisServer(unix_socket=True, password="sock") as server:
        prefix = f"u{uuid.uuid4().hex[:6]}"

        async def scenario() -> str | None:
            backend = open_backend(server.unix_url + f"&prefix={prefix}")
            await backend.connect()
            try:
                await backend.state_store.save(WorkflowRecord("w1", "g", "completed", {"x": 1}), expected_version=0)
                [record] = await backend.state_store.list_workflows("completed")
                return record.workflow_id
            finally:
                await backend.close()

        assert run(scenario(), 30) == "w1"


def test_an_unknown_query_option_is_a_config_error_naming_it() -> None:
    # Refused when the backend is opened, before any connection is tried.
    with pytest.raises(BackendConfigError) as caught:
        RedisConnection("redis://:pw@127.0.0.1:1/0?prefix=x&bogus_option=1")
    message = str(caught.value)
    assert "bogus_option" in message and "pw@" not in message and "ssl_ca_certs" in message


# -- the first connection: one line naming the URL, the cause and what to check ------------------


def connect_error(url: str) -> Exception:
    async def scenario() -> Exception:
        backend = open_backend(url)
        try:
            with pytest.raises(Exception) as caught:
                await backend.connect()
            return caught.value
        finally:
            await backend.close()

    return run(scenario(), 90)


def test_connection_refused_is_one_unchained_line_naming_url_and_server() -> None:
    from support.server_process import free_port

    port = free_port()
    error = connect_error(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert isinstance(error, BackendUnavailableError)
    message = str(error)
    assert f"redis://:***@127.0.0.1:{port}/0" in message and "hunter2" not in message
    assert f"connection refused by 127.0.0.1:{port}" in message and "redis-server is running" in message
    assert error.__cause__ is None and error.__suppress_context__  # no chained redis-py/socket tracebacks


def test_an_unknown_host_says_the_name_was_not_found() -> None:
    error = connect_error("redis://no-such-host.invalid:6379/0")
    assert isinstance(error, BackendUnavailableError) and "'no-such-host.invalid' was not found" in str(error)


def test_a_missing_unix_socket_names_the_path() -> None:
    error = connect_error("unix:///tmp/da-no-such-redis.sock")
    assert isinstance(error, BackendUnavailableError)
    assert "/tmp/da-no-such-redis.sock does not exist" in str(error)


def test_rediss_to_a_plain_redis_says_tls_failed_not_is_redis_running(redis_url: str) -> None:
    error = connect_error(redis_url.replace("redis://", "rediss://", 1))
    assert isinstance(error, BackendConfigError)  # no retry can fix it: the worker exits instead of waiting
    message = str(error)
    assert "TLS handshake" in message and "plain (non-TLS) Redis" in message and "use redis://" in message
    assert "redis-server is running" not in message


def test_rediss_to_a_plain_redis_with_a_password_is_still_recognised() -> None:
    with RedisServer(password="pw") as server:
        error = connect_error(server.url.replace("redis://", "rediss://", 1))
    assert isinstance(error, BackendConfigError) and "plain (non-TLS)" in str(error)


class TlsRedisServer(RedisServer):
    """``redis-server`` listening with TLS only (a self-signed certificate made with openssl)."""

    def command(self) -> list[str]:
        cert, key = f"{self.data_dir}/cert.pem", f"{self.data_dir}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
        plain = super().command()
        at = plain.index("--port")
        return [*plain[:at], "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                "--tls-key-file", key, "--tls-auth-clients", "no", *plain[at + 2:]]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedisServer]:
    with TlsRedisServer() as server:
        yield server


def test_rediss_to_a_tls_redis_works_and_an_untrusted_certificate_says_so(tls_redis: TlsRedisServer) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    error = connect_error(url)
    assert isinstance(error, BackendConfigError)  # no retry can fix it: a worker exits instead of waiting
    assert "certificate is not trusted" in str(error) and "?tls_ca=" in str(error)

    async def trusted() -> None:
        backend = open_backend(url + "?ssl_cert_reqs=none&prefix=tls")
        try:
            await backend.connect()
            await backend.state_store.save(WorkflowRecord("w1", "g", "completed", {}), expected_version=0)
        finally:
            await backend.close()

    run(trusted(), 60)


def test_redis_to_a_tls_only_port_suggests_rediss(tls_redis: TlsRedisServer) -> None:
    error = connect_error(f"redis://127.0.0.1:{tls_redis.port}/0")
    assert isinstance(error, BackendUnavailableError) and "use rediss://" in str(error)


async def _named_clients(probe: object, name: str) -> list[dict[str, str]]:
    return [c for c in await probe.client_list() if c.get("name") == name]  # type: ignore[attr-defined]


async def _until_named_clients(probe: object, name: str, want: int, command: str | None = None) -> int:
    """Poll ``CLIENT LIST`` until ``want`` clients named ``name`` (busy with ``command``) are seen.

    Returns the last count seen; gives up after a while (the caller asserts on the count).
    """
    count = -1
    for _ in range(200):
        clients = await _named_clients(probe, name)
        count = len([c for c in clients if command is None or c.get("cmd") == command])
        if count == want:
            break
        await asyncio.sleep(0.05)
    return count


@pytest.mark.parametrize("via", ["client", "parked claim"])
def test_a_command_under_way_when_the_connection_closes_leaves_no_connection_open(redis_url: str, via: str) -> None:
    # The BLOCKing command fails on its closed socket, redis-py's retry connects again and
    # hands the connection back to the closed pool: that socket must be closed too, not
    # left for the garbage collector (an unclosed-socket warning in whichever test runs then).
    name = f"closing-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?client_name={name}"

    async def scenario() -> tuple[int, int]:
        probe = redis_asyncio.Redis.from_url(redis_url)
        try:
            if via == "client":
                connection = RedisConnection(url)
                await connection.ping()
                waiting = asyncio.ensure_future(connection.client().blpop([f"{name}:nothing"], timeout=1))
                closing = connection.close
            else:
                backend = open_backend(url, prefix=name)
                await backend.connect()
                waiting = asyncio.ensure_future(backend.task_queue.claim(["alpha"], worker_id="w", wait=1.0))
                closing = backend.close
            busy = await _until_named_clients(probe, name, 1, "blpop" if via == "client" else "blmpop")
            await closing()
            with contextlib.suppress(Exception):
                await waiting
            return busy, await _until_named_clients(probe, name, 0)
        finally:
            await probe.aclose()

    busy, left_open = run(scenario(), 60)
    assert busy == 1
    assert left_open == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("path", "problem"), [
    ("/99", r"has no database 99: the server's 'databases' setting"),  # the example: exit 1, redis-py's words
    ("/0?cluster=true", r"\?cluster=true in .* but the Redis server there is not a cluster node"),  # hinted a dead server
])
def test_what_the_server_does_not_offer_is_a_config_error_saying_what_to_change(redis_url: str, path: str,
                                                                                problem: str) -> None:
    """Answers no retry changes (a worker would wait for ever): BackendConfigError, exit 2 on the command line."""
    base = redis_url.rsplit("/", 1)[0]

    async def connect() -> None:
        backend = open_backend(base + path)
        try:
            await backend.connect()
        finally:
            await backend.close()

    with pytest.raises(BackendConfigError, match=problem):
        run(connect(), 20)
    done = subprocess.run([sys.executable, "-m", "distributed_agents", "list", "--backend-url", base + path],
                          capture_output=True, text=True, timeout=25)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
