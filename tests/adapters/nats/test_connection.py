"""URL parsing, the missing-extra message, error mapping and server restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.aio import connect_failure, run
from support.nats_server import NatsServer, find_nats_server, free_port

from distributed_agents.adapters.nats.connection import NatsSettings
from distributed_agents.adapters.nats.errors import mask_url
from distributed_agents.adapters.nats.naming import Names, token
from distributed_agents.core.errors import BackendConfigError, BackendUnavailableError
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats


def settings(url: str) -> NatsSettings:
    return NatsSettings.from_url(url, BackendOptions.from_url(url))


def test_user_and_password_in_url() -> None:
    parsed = settings("nats://alice:s%40cret@host1:4333?replicas=3&creds=/tmp/x.creds")
    assert parsed.servers == ("nats://host1:4333",)
    assert (parsed.user, parsed.password, parsed.token) == ("alice", "s@cret", None)
    assert parsed.replicas == 3 and parsed.creds == "/tmp/x.creds"
    assert parsed.connect_kwargs()["user_credentials"] == "/tmp/x.creds"


def test_token_and_tls_and_default_port() -> None:
    parsed = settings("tls://T0KEN@a,b:5000")
    assert parsed.token == "T0KEN" and parsed.user is None and parsed.tls
    assert parsed.servers == ("tls://a:4222", "tls://b:5000")


def test_bad_option_is_a_config_error() -> None:
    with pytest.raises(BackendConfigError, match="replicas"):
        settings("nats://host?replicas=many")


@pytest.mark.parametrize("bad", ["0", "6", "-1", "3.0", "three", ""])
def test_replicas_outside_one_to_five_are_refused(bad: str) -> None:
    with pytest.raises(BackendConfigError, match=r"replicas=.*give 1 to 5"):
        settings(f"nats://a:1,b:2,c:3?replicas={bad}")


def test_replicas_default_to_one_and_several_servers_are_kept_in_order() -> None:
    assert settings("nats://a:1").replicas == 1
    parsed = settings("nats://a:1,b:2,c:3?replicas=3")
    assert parsed.replicas == 3 and parsed.servers == ("nats://a:1", "nats://b:2", "nats://c:3")


def test_credentials_are_masked() -> None:
    assert mask_url("nats://alice:secret@h:1") == "nats://alice:***@h:1"
    assert mask_url("nats://tok@h:1") == "nats://***@h:1"


def test_names_are_injective_and_valid() -> None:
    assert token("fetch_data") != token("fetch-data")
    assert token("a.b") == "a_2eb"
    assert Names("a.b").base != Names("a_2eb").base
    assert all(ch.isalnum() or ch in "_-" for ch in Names("weird prefix.*").task_stream)


def test_package_imports_without_nats_and_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "import distributed_agents.adapters.nats as pkg\n"
        "from distributed_agents.core.errors import MissingExtraError\n"
        "from distributed_agents.core.ports.backend import BackendOptions\n"
        "try:\n"
        "    pkg.open_nats_backend('nats://127.0.0.1:1', BackendOptions())\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'distributed-agents[nats]'" in out.stdout


def test_unreachable_server_is_backend_unavailable_with_masked_url() -> None:
    url = f"nats://bob:hunter2@127.0.0.1:{free_port()}?connect_attempts=1&reconnect_wait=0.05"
    with pytest.raises(BackendUnavailableError) as info:
        run(open_nats(url), 30)
    assert "hunter2" not in str(info.value) and "127.0.0.1" in str(info.value)


def test_tasks_survive_a_server_restart_and_outage_is_mapped() -> None:
    binary = find_nats_server()
    assert binary is not None, "nats-server binary missing"
    server = NatsServer(binary)
    server.start()
    try:
        async def before() -> None:
            backend = await open_nats(server.url + "?reconnect_wait=0.1", prefix="durable")
            try:
                assert await backend.task_queue.enqueue(Task("t1", "w", "n", "n", {"x": 1}))
            finally:
                await backend.close()

        run(before())
        server.restart(kill=True)

        async def after() -> None:
            backend = await open_nats(server.url + "?reconnect_wait=0.1", prefix="durable")
            try:
                claimed = await backend.task_queue.claim(["n"], worker_id="w1", wait=2)
                assert [c.task.payload for c in claimed] == [{"x": 1}]
                await backend.task_queue.ack(claimed[0], {"ok": True})
                server.stop(kill=True)
                started = time.monotonic()
                with pytest.raises(BackendUnavailableError):
                    await backend.task_queue.get_result("t1")
                assert time.monotonic() - started < 15
                server.start()
                give_up = time.monotonic() + 15
                while True:  # nats-py reconnects by itself
                    try:
                        result = await backend.task_queue.get_result("t1")
                        break
                    except BackendUnavailableError:
                        assert time.monotonic() < give_up
                        await asyncio.sleep(0.2)
                assert result is not None and result.output == {"ok": True}
            finally:
                await backend.close()

        import asyncio

        run(after(), 60)
    finally:
        server.cleanup()


# -- the first connection: one line naming the URL, the cause and what to check ------------------


class NatsWithoutJetStream(NatsServer):
    """``nats-server`` started without ``-js``."""

    def command(self) -> list[str]:
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]


def connect_error(url: str) -> Exception:
    async def scenario() -> Exception:
        with pytest.raises(Exception) as caught:
            backend = await open_nats(url)
            await backend.close()
        return caught.value

    return run(scenario(), 60)


def test_connection_refused_is_one_unchained_line_naming_url_and_server() -> None:
    port = free_port()
    error = connect_error(f"nats://bob:hunter2@127.0.0.1:{port}?connect_attempts=1&reconnect_wait=0.05")
    assert isinstance(error, BackendUnavailableError)
    message = str(error)
    assert f"nats://bob:***@127.0.0.1:{port}" in message and "hunter2" not in message
    assert "connection refused" in message and "nats-server -js" in message
    assert error.__cause__ is None and error.__suppress_context__  # no chained nats-py tracebacks


def test_an_unknown_host_says_the_name_was_not_found() -> None:
    error = connect_error("nats://no-such-host.invalid:4222?connect_attempts=1&reconnect_wait=0.05")
    assert isinstance(error, BackendUnavailableError) and "was not found (DNS" in str(error)


def test_tls_url_to_a_plain_server_says_tls_failed_before_sending_credentials(nats_url: str) -> None:
    tls_url = nats_url.replace("nats://", "tls://alice:secret@", 1)
    error = connect_error(tls_url)
    assert isinstance(error, BackendConfigError)  # no retry can fix it
    assert "does not offer TLS" in str(error) and "use nats://" in str(error) and "secret" not in str(error)


def test_a_server_without_jetstream_says_to_start_it_with_js() -> None:
    binary = find_nats_server()
    assert binary is not None
    server = NatsWithoutJetStream(binary)
    server.start()
    try:
        error = connect_error(server.url)
    finally:
        server.cleanup()
    assert isinstance(error, BackendConfigError)
    assert "does not have JetStream enabled" in str(error) and "-js" in str(error)


def test_callers_arriving_while_the_first_connect_creates_buckets_wait_for_them(nats_url: str) -> None:
    # The client exists before the streams and buckets do; a second caller let through
    # in that window read a bucket that was not there yet (KeyError from the store).
    import asyncio
    import uuid

    from distributed_agents.adapters.nats import NatsBackend

    async def scenario() -> list[object]:
        results: list[object] = []
        for _ in range(5):
            backend = NatsBackend(nats_url, BackendOptions.from_url(nats_url, prefix=f"race{uuid.uuid4().hex[:8]}"))

            async def read() -> object:
                await backend.connect()
                return await backend.state_store.get("missing")

            try:
                first = asyncio.ensure_future(read())
                others = []
                while not first.done():
                    others.append(asyncio.ensure_future(read()))
                    await asyncio.sleep(0.0005)
                results.extend(await asyncio.gather(first, *others, return_exceptions=True))
            finally:
                await backend.close()
        return results

    results = run(scenario(), 60)
    assert len(results) > 10
    assert all(result is None for result in results), [r for r in results if r is not None][:3]


# -- the probe: refused and non-NATS servers are reported without nats-py's retries ---------------

# So many slow attempts that only the probe can end the connect before the test's timeout.
PATIENT = "connect_attempts=1000&reconnect_wait=30"


@pytest.mark.timeout(60)
def test_a_refused_connection_is_reported_at_once_without_retries() -> None:
    port = free_port()
    error = connect_error(f"nats://127.0.0.1:{port}?{PATIENT}")
    assert isinstance(error, BackendUnavailableError)
    assert f"connection refused by 127.0.0.1:{port}" in str(error) and "nats-server -js" in str(error)


@pytest.mark.timeout(60)
def test_a_nats_url_at_a_redis_port_says_it_is_a_redis_server(redis_url: str) -> None:
    """Redis says nothing until spoken to; the probe's PING makes it answer: a config error (no retry helps)."""
    address = redis_url.split("://", 1)[1].split("/", 1)[0]
    error = connect_error(f"nats://{address}?{PATIENT}")
    assert isinstance(error, BackendConfigError)
    assert f"the server at {address} is a Redis server, not a NATS server" in str(error)
    assert "+PONG" in str(error) and "4222" in str(error)


@pytest.mark.timeout(60)
def test_a_server_that_stays_silent_is_unavailable_not_misnamed() -> None:
    """A listener that accepts and never answers (a NATS server not ready, a hung service) may come
    right: BackendUnavailableError, naming the address."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        error = connect_error(f"nats://{address}?{PATIENT}")
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()
    assert isinstance(error, BackendUnavailableError)
    assert f"{address} accepted the connection but sent no NATS INFO line" in str(error)


@pytest.mark.timeout(60)
def test_a_server_answering_something_else_is_a_config_error() -> None:
    import asyncio

    async def scenario() -> Exception:
        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(Exception) as caught:
                await open_nats(f"nats://127.0.0.1:{port}?{PATIENT}")
            return caught.value
        finally:
            server.close()
            await server.wait_closed()

    error = run(scenario(), 30)
    assert isinstance(error, BackendConfigError)  # no retry can fix it
    assert "is not a NATS server" in str(error) and "SSH-2.0" in str(error)


def test_one_refused_server_of_a_cluster_does_not_stop_the_connect(nats_url: str) -> None:
    """The probe fails only when no server can be used; nats-py picks a live one."""
    live = nats_url.split("://", 1)[1].split("?", 1)[0]

    async def scenario() -> None:
        backend = await open_nats(f"nats://127.0.0.1:{free_port()},{live}")
        await backend.close()

    run(scenario(), 60)


@pytest.mark.timeout(60)
def test_a_flush_given_up_on_a_stalled_connection_leaves_the_client_reading(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """nats-py's flush leaves the PONG waiter it gave up on queued; the late PONG (the
    stall over) must not stop its read loop (InvalidStateError, logged with a traceback)."""
    import nats
    from support.fault_proxy import FaultProxy

    from distributed_agents.adapters.nats.message_bus import flush_in_order

    async def scenario(proxy: FaultProxy) -> None:
        nc = await nats.connect(proxy.url("nats"), allow_reconnect=False)
        try:
            proxy.stall()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(flush_in_order(nc), 0.5)  # given up: its PONG comes late
            proxy.resume()
            await flush_in_order(nc)  # the late PONG and this one both arrive
            got = await nc.subscribe("late.pong")
            await nc.publish("late.pong", b"x")
            assert (await got.next_msg(timeout=5)).data == b"x"  # still reading
        finally:
            await nc.close()

    with FaultProxy(nats_server.port) as proxy, caplog.at_level(logging.DEBUG, logger="nats"):
        run(scenario(proxy))
    assert not [r for r in caplog.records if r.name.startswith("nats") and r.levelno >= logging.WARNING], \
        caplog.text


def test_an_error_nats_py_logs_with_a_traceback_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    import distributed_agents.adapters.nats.connection  # noqa: F401  (installs the filter)

    try:
        raise asyncio.InvalidStateError("invalid state")
    except asyncio.InvalidStateError as exc:
        with caplog.at_level(logging.DEBUG, logger="nats.aio.client"):
            logging.getLogger("nats.aio.client").error("nats: encountered error", exc_info=exc)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.exc_info is None
    assert record.getMessage().startswith("nats: encountered error (InvalidStateError: invalid state)")
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("url", "servers"), [
    ("tls://127.0.0.1:14299,tls://127.0.0.1:14225?tls_ca=/ca.pem", ("tls://127.0.0.1:14299", "tls://127.0.0.1:14225")),
    ("nats://a:1,nats://b:2,c", ("nats://a:1", "nats://b:2", "nats://c:4222")),
    ("NATS://a:1,nats://b:2/", ("nats://a:1", "nats://b:2")),
])
def test_each_server_of_a_list_may_repeat_the_scheme(url: str, servers: tuple[str, ...]) -> None:
    assert settings(url).servers == servers


def test_credentials_before_the_first_of_several_servers_with_schemes_are_kept() -> None:
    parsed = settings("nats://alice:pw@a:1,nats://b:2")
    assert parsed.servers == ("nats://a:1", "nats://b:2") and (parsed.user, parsed.password) == ("alice", "pw")


@pytest.mark.parametrize(("url", "words"), [
    # The breaker's example: it was a DNS failure of "a host in 127.0.0.1:14299, nats:".
    ("tls://127.0.0.1:14299,nats://127.0.0.1:14225?tls_ca=/ca.pem", ["mix schemes", "tls://", "nats://", "server 2"]),
    ("nats://a:1,tls://b:2", ["mix schemes", "server 2"]),
    ("nats://a:1,b:2/path", ["path", "server 2"]),
    ("nats://a:1,,b:2", ["empty server"]),
])
def test_a_server_list_that_cannot_be_one_connection_is_refused_saying_why(url: str, words: list[str]) -> None:
    with pytest.raises(BackendConfigError) as caught:
        settings(url)
    for word in words:
        assert word in str(caught.value)
    assert "not found" not in str(caught.value)


def test_an_nkey_seed_given_as_creds_and_a_creds_file_given_as_nkey_say_what_they_are(tmp_path: Path) -> None:
    """It was ``TypeError: object of type 'NoneType' has no len()`` from inside nats-py."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    seed_file, creds_file, other = tmp_path / "user.nk", tmp_path / "user.creds", tmp_path / "notes.txt"
    seed_file.write_bytes(seed + b"\n")
    creds_file.write_bytes(b"-----BEGIN NATS USER JWT-----\neyJ0eXAi.x.y\n------END NATS USER JWT------\n\n"
                           b"-----BEGIN USER NKEY SEED-----\n" + seed + b"\n------END USER NKEY SEED------\n")
    other.write_text("hello")
    port = free_port()  # nothing listens: the file is checked before any connection
    cases = [(f"creds={seed_file}", "holds an NKey seed", "?nkey= instead"),
             (f"nkey={creds_file}", "is a credentials file", "?creds= instead"),
             (f"creds={other}", "is not a NATS credentials file", ".creds file"),
             (f"nkey={other}", "does not hold a user NKey seed", "SU")]
    for query, what, hint in cases:
        error = connect_failure(f"nats://127.0.0.1:{port}?{query}")
        assert isinstance(error, BackendConfigError), repr(error)
        assert what in str(error) and hint in str(error) and str(query.split("=")[1]) in str(error), str(error)
        assert seed.decode() not in str(error)
