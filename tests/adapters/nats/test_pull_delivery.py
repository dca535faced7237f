"""A client's pulls share one subscription: each pull takes only its own consumer's deliveries.

A pull that gave up on a stalled server may get its messages later, while a pull of
another consumer runs: they must not be taken as that consumer's (a worker would claim a
task of a node type it does not serve). The stall makes it a race the fault loses about
one run in three; ``test_replies`` checks the filter itself deterministically.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator

import nats
import pytest
from support.aio import run
from support.nats_server import NatsServer, find_nats_server

from distributed_agents.adapters.nats.delivery import pull_ready

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    """A nats-server of this test's own (it is stopped with SIGSTOP, which others must not see)."""
    binary = find_nats_server()
    assert binary is not None
    server = NatsServer(binary)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.cleanup()


def _stall(server: NatsServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def _resume(server: NatsServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


def test_a_pull_that_timed_out_on_a_stalled_server_does_not_hand_its_late_message_to_the_next_pull(
    own_server: NatsServer,
) -> None:
    """Consumer A has a message, consumer B fifty. The server stalls (SIGSTOP): a pull of A
    times out; a pull of B is sent; the server resumes and answers both. B's pull must
    return only B's messages: A's late message is A's delivery (handed to B's claimer it
    would be claimed as a task of B's node type, with B's AckWait)."""

    async def scenario() -> tuple[list[str], list[str]]:
        from nats.js import api

        nc = await nats.connect(own_server.url)
        js = nc.jetstream()
        stream = f"PULLS{uuid.uuid4().hex[:8]}"
        try:
            await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream}.>"]))
            for name in ("a", "b"):
                await js.add_consumer(stream, api.ConsumerConfig(
                    durable_name=name, filter_subject=f"{stream}.{name}", ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=2.0))
            await js.publish(f"{stream}.a", b"for-a")
            for n in range(50):
                await js.publish(f"{stream}.b", b"for-b %d" % n)
            _stall(own_server)
            try:
                try:  # times out (an error, or nothing returned): the server is stopped
                    assert await pull_ready(nc, stream, "a", 1, timeout=0.5) == []
                except nats.errors.TimeoutError:
                    pass
                second = asyncio.ensure_future(pull_ready(nc, stream, "b", 100, timeout=5.0))
                await asyncio.sleep(0.2)  # its request is written (and held) before the server resumes
            finally:
                _resume(own_server)
            got_b = [m.subject for m in await second]
            got_a: list[str] = []  # A's message is A's: delivered again to a pull of A after its AckWait
            for _ in range(40):
                got_a = [m.subject for m in await pull_ready(nc, stream, "a", 1)]
                if got_a:
                    break
                await asyncio.sleep(0.25)
            return got_b, got_a
        finally:
            await nc.close()

    got_b, got_a = run(scenario(), 55)
    assert [s for s in got_b if not s.endswith(".b")] == [], f"a pull of consumer b returned {got_b}"
    assert len(got_b) == 50 and len(got_a) == 1
