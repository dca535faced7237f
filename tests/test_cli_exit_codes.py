"""The CLI's exit status for backend failures is the same on Redis and on NATS (README table).

2: the command's configuration is wrong and running it again cannot help (refused or
missing credentials, a TLS certificate the client does not trust, a credentials file of
the wrong kind, a server list that cannot be one connection); 1: the backend cannot be
reached (running it later may help). Each case is a real ``distributed-agents list``
process against real servers, one line on stderr and no traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from support.nats_server import NatsServer, find_nats_server
from support.redis_server import RedisServer
from support.secure_redis import SecureRedisServer
from support.server_process import free_port
from support.tls import Certificates, make_certificates

pytestmark = pytest.mark.timeout(180)
PASSWORD = f"pw-{uuid.uuid4().hex}"


def cli_list(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL")}
    return subprocess.run([sys.executable, "-m", "distributed_agents", "list", "--backend-url", url],
                          capture_output=True, text=True, timeout=120, env=env)


def one_line(done: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("distributed-agents: error: ")]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert PASSWORD not in done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("exit-codes-tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certificates) -> Iterator[SecureRedisServer]:
    with SecureRedisServer(certs=certs, client_certs="no") as server:
        yield server


@pytest.fixture(scope="module")
def tls_nats(certs: Certificates) -> Iterator[NatsServer]:
    binary = find_nats_server()
    assert binary is not None
    config = f'tls {{\n  cert_file: "{certs.server_cert}"\n  key_file: "{certs.server_key}"\n}}\n'
    with NatsServer(binary, config=config) as server:
        yield server


@pytest.fixture(scope="module")
def password_nats() -> Iterator[NatsServer]:
    binary = find_nats_server()
    assert binary is not None
    with NatsServer(binary, config=f'authorization {{ user: alice, password: "{PASSWORD}" }}\n') as server:
        yield server


def test_an_untrusted_tls_certificate_exits_2_on_both_backends(
        tls_redis: SecureRedisServer, tls_nats: NatsServer, certs: Certificates) -> None:
    redis_line = one_line(cli_list(f"rediss://127.0.0.1:{tls_redis.port}/0?tls_ca={certs.other_ca}"), 2,
                          "certificate is not trusted", "?tls_ca=")
    nats_line = one_line(cli_list(f"tls://127.0.0.1:{tls_nats.port}?tls_ca={certs.other_ca}"), 2,
                         "TLS handshake failed", "?tls_ca=")
    assert "ssl_ca_certs" not in redis_line + nats_line  # the documented name is tls_ca


def test_missing_or_wrong_credentials_exit_2_on_both_backends(password_nats: NatsServer) -> None:
    with RedisServer(password=PASSWORD) as redis_server:
        one_line(cli_list(f"redis://127.0.0.1:{redis_server.port}/0"), 2, "requires a password", "':PASSWORD@'")
        one_line(cli_list(f"redis://:wrong@127.0.0.1:{redis_server.port}/0"), 2, "refused the credentials")
    one_line(cli_list(f"nats://127.0.0.1:{password_nats.port}"), 2, "refused the credentials")
    one_line(cli_list(f"nats://alice:wrong@127.0.0.1:{password_nats.port}"), 2, "refused the credentials")


def test_a_credentials_file_of_the_wrong_kind_and_a_mixed_server_list_exit_2(tmp_path: Path) -> None:
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    one_line(cli_list(f"nats://127.0.0.1:{free_port()}?creds={seed_file}"), 2, "holds an NKey seed", "?nkey=")
    line = one_line(cli_list(f"tls://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}?tls_ca=/ca.pem"), 2,
                    "mix schemes")
    assert not re.search(r"not found|DNS", line), line


def test_an_unreachable_backend_exits_1_on_both_backends() -> None:
    one_line(cli_list(f"redis://127.0.0.1:{free_port()}/0"), 1, "connection refused")
    one_line(cli_list(f"nats://127.0.0.1:{free_port()}"), 1, "connection refused")
