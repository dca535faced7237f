"""An orchestrator whose backend cannot be reached says so in one clear first line.

The script below is what a user writes; its output starts with one line naming the URL
and what to check (logged before the error propagates), and the error that ends the
script is a single traceback, not redis-py's or nats-py's chained ones.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from support.server_process import free_port

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from distributed_agents.distributed import DistributedOrchestrator

    async def main():
        orchestrator = DistributedOrchestrator(backend_url=sys.argv[1])
        await orchestrator.connect()

    asyncio.run(main())
""")


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("url", "needles"), [
    ("redis://127.0.0.1:{port}/0", ["cannot connect to Redis at redis://127.0.0.1:{port}/0", "connection refused",
                                    "redis-server is running"]),
    ("nats://127.0.0.1:{port}?connect_attempts=1&reconnect_wait=0.05",
     ["cannot connect to NATS at nats://127.0.0.1:{port}", "connection refused", "nats-server -js"]),
])
def test_orchestrator_prints_one_clear_line_first_and_one_traceback(url: str, needles: list[str]) -> None:
    port = free_port()
    done = subprocess.run([sys.executable, "-c", SCRIPT, url.format(port=port)], capture_output=True, text=True,
                          timeout=80)
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    for needle in needles:
        assert needle.format(port=port) in first, done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert "direct cause" not in done.stderr and "During handling" not in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].endswith(first.split(": ", 1)[1])


@pytest.mark.timeout(90)
def test_orchestrator_on_rediss_to_a_plain_redis_says_tls_failed(redis_url: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, redis_url.replace("redis://", "rediss://", 1)],
                          capture_output=True, text=True, timeout=80)
    first = done.stderr.splitlines()[0]
    assert "TLS handshake" in first and "plain (non-TLS) Redis" in first, done.stderr
    assert "redis-server is running" not in done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr


RETRYING = textwrap.dedent("""
    import asyncio, sys
    from distributed_agents.core.errors import BackendUnavailableError
    from distributed_agents.distributed import DistributedOrchestrator

    async def main():
        orchestrator = DistributedOrchestrator(backend_url=sys.argv[1])
        for _ in range(3):  # a caller retrying through an outage
            try:
                await orchestrator.connect()
            except BackendUnavailableError:
                pass

    asyncio.run(main())
""")


@pytest.mark.timeout(90)
def test_a_retrying_caller_gets_the_line_once() -> None:
    port = free_port()
    done = subprocess.run([sys.executable, "-c", RETRYING, f"redis://127.0.0.1:{port}/0"], capture_output=True,
                          text=True, timeout=80)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("cannot connect to Redis") == 1, done.stderr
