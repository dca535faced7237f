"""Backend URLs whose port names no server: refused at once, on both backends, exit status 2.

The examples (hostile-input trial): ``redis://127.0.0.1:0/0`` connected to port 6379 (redis-py
reads port 0 as "no port"), so a Redis listening there would have been used;
``nats://127.0.0.1:99999`` and ``nats://127.0.0.1:abc`` ended the CLI with a Python traceback
(an OverflowError from the socket, an assertion inside nats-py). Now each is a one-line
``BackendConfigError`` naming the URL, the server and what to write.
"""

from __future__ import annotations

import pytest

from support.aio import run

from distributed_agents import open_backend
from distributed_agents.core.errors import BackendConfigError

from .test_cli import assert_one_line_error, cli

pytestmark = pytest.mark.timeout(60)

BAD = [("nats://127.0.0.1:0", "port 0"), ("nats://127.0.0.1:99999", "not a number from 1 to 65535"),
       ("nats://127.0.0.1:abc", "not a number from 1 to 65535"), ("nats://u:p@127.0.0.1:4222,h:-1", "server 2"),
       ("tls://127.0.0.1:70000", "1 to 65535"),
       ("redis://127.0.0.1:0/0", "port 0"), ("redis://127.0.0.1:99999/0", "invalid port"),
       ("redis://127.0.0.1:abc/0", "invalid port"), ("rediss://:pw@127.0.0.1:0/0", "port 0"),
       ("redis://127.0.0.1:7000,127.0.0.1:0/0?cluster=true", "invalid port")]


@pytest.mark.parametrize("url,needle", BAD)
def test_a_url_whose_port_names_no_server_is_refused_before_connecting(url: str, needle: str) -> None:
    async def scenario() -> None:
        backend = open_backend(url)
        try:
            await backend.connect()
        finally:
            await backend.close()

    with pytest.raises(BackendConfigError) as caught:
        run(scenario(), 30)
    assert needle in str(caught.value) and ("p@" not in str(caught.value)), str(caught.value)


@pytest.mark.parametrize("url,needle", [BAD[1], BAD[2], BAD[5]])
def test_the_cli_says_so_in_one_line_and_exits_2(url: str, needle: str) -> None:
    done = cli("workers", "--backend-url", url)
    assert_one_line_error(done.returncode, done.stderr, needle, code=2)


@pytest.mark.parametrize("url", ["nats://[::1]:1", "nats://127.0.0.1:1,127.0.0.1:2", "redis://[::1]:1/0",
                                 "redis://127.0.0.1:1/0"])
def test_a_url_with_a_real_port_still_only_fails_to_connect(url: str) -> None:
    """(Port 1: nothing listens there; a URL without a port would reach a server that may run here.)"""
    async def scenario() -> None:
        backend = open_backend(url)
        try:
            await backend.connect()
        finally:
            await backend.close()

    with pytest.raises(Exception) as caught:
        run(scenario(), 45)
    assert not isinstance(caught.value, BackendConfigError), caught.value
