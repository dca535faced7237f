"""No password ever shows on Redis: workflows, CLI commands and failures with secret-bearing URLs, all grepped.

``support.secret_scan.exercise`` runs a CLI worker logging JSON at debug level, streams a
workflow, runs CLI commands and fails to connect with a wrong password, to a port where
nothing listens and with an unknown option; this test adds the log records captured in
this process and everything stored in Redis, and searches it all for each secret.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import Iterator

import pytest
from support.secret_scan import described, exercise
from support.secure_redis import SecureRedisServer
from support.server_process import free_port

pytestmark = pytest.mark.timeout(120)

PASSWORD = f"pw-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def server() -> Iterator[SecureRedisServer]:
    with SecureRedisServer(acl=[f"user app on >{PASSWORD} allkeys allchannels +@all -@dangerous"]) as redis:
        yield redis


def stored(server: SecureRedisServer) -> str:
    """Every key and value in the server, as text."""
    import redis

    client = redis.Redis.from_url(server.admin_url)
    try:
        dump = []
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                     "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                     "stream": lambda k: client.xrange(k)}[kind](key)
            dump.append(f"{key!r} {kind} {value!r}")
        assert dump, "nothing stored: the scenario did not run"
        return "\n".join(dump)
    finally:
        client.close()


def test_no_secret_appears_in_logs_output_events_errors_or_stored_records(
        server: SecureRedisServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.url_for("app", PASSWORD)
    bad_urls = [server.url_for("app", WRONG), f"redis://app:{PASSWORD}@127.0.0.1:{free_port()}/0",
                f"{url}?bogus_option={PASSWORD}"]
    captured = exercise(url, bad_urls, f"sec{uuid.uuid4().hex[:6]}", tmp_path)
    captured += [caplog.text, stored(server)]
    captured += [described(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    everything = "\n".join(captured)
    assert "app:***@" in everything  # the URLs were shown, masked
    for secret in (PASSWORD, WRONG):
        assert secret not in everything, next(chunk for chunk in captured if secret in chunk)[-2000:]
