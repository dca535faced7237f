"""The test launchers never take another process's server for their own.

A launcher chooses a free port and starts its server on it; if something else binds the
port in between (another xdist worker, a second launcher told the same port), the server
exits, and a readiness probe on the port alone would find the *other* server and report
this one ready. A three-server NATS cluster then ran as two and could not place replicated
streams ("no suitable peers for placement", CI). These tests take the port away on purpose.
"""

from __future__ import annotations

import socket

import pytest
from support.nats_server import NatsServer, require_nats_server
from support.redis_server import RedisServer, find_redis_server
from support.server_process import free_port, port_taken

pytestmark = pytest.mark.timeout(60)


def test_free_port_never_hands_out_the_same_port_twice_in_one_process() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_port_taken_reads_both_servers_bind_failures() -> None:
    nats_line = ('[1] 2026/11/30 19:59:02.957204 [FTL] Error listening on port: 127.0.0.1:45111, '
                 '"listen tcp 127.0.0.1:45111: bind: address already in use"')
    redis_line = ("1:M 30 Nov 2026 19:59:02.957 # Warning: Could not create server TCP listening socket "
                  "127.0.0.1:6390: bind: Address already in use")
    assert port_taken(nats_line, 45111) and port_taken(redis_line, 6390)
    assert not port_taken(nats_line, 4511) and not port_taken(redis_line, 45111)


def test_a_nats_server_told_a_port_another_nats_server_holds_moves_to_a_free_one() -> None:
    binary = require_nats_server()
    with NatsServer(binary) as first:
        second = NatsServer(binary)
        taken = second.port
        second.port = first.port  # as if free_port had handed out the same port twice
        try:
            second.start()
            assert second.port != first.port, "ready on a port another server holds"
            assert second.process is not None and second.process.poll() is None
            with socket.create_connection(("127.0.0.1", second.port), timeout=2) as sock:
                assert sock.recv(4) == b"INFO"
        finally:
            second.cleanup()
        assert taken != first.port


def test_a_nats_server_given_a_taken_port_by_the_caller_fails_instead_of_passing_for_ready() -> None:
    binary = require_nats_server()
    with NatsServer(binary) as first:
        second = NatsServer(binary, port=first.port)  # the caller's port: not replaced
        try:
            with pytest.raises(RuntimeError, match="exited"):
                second.start()
        finally:
            second.cleanup()


def test_a_redis_server_told_a_port_another_redis_server_holds_moves_to_a_free_one() -> None:
    if find_redis_server() is None:
        pytest.fail("no redis-server binary (apt-get install redis-server)", pytrace=False)
    with RedisServer() as first:
        second = RedisServer()
        second.port = first.port
        try:
            second.start()
            assert second.port != first.port and second.ping()
            assert second.process is not None and second.process.poll() is None
        finally:
            second.cleanup()


def test_a_restarted_server_comes_back_on_its_port_and_is_judged_on_its_new_log() -> None:
    binary = require_nats_server()
    with NatsServer(binary) as server:
        port = server.port
        server.stop(kill=True)
        server.start()
        assert server.port == port and server.process is not None and server.process.poll() is None
