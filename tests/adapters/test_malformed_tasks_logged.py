"""A malformed task dead-lettered at claim time is logged, on Redis and on NATS.

The example (hostile-input trial): truncated, binary, mismatched and oversized tasks written
into the queues were dead-lettered with exact reasons, but the worker's log had no line for
any of them: an operator watching the logs saw nothing. Now each is logged at ERROR, naming
the task, its node type, the reason and the command that shows the letter.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import open_backend

pytestmark = pytest.mark.timeout(60)

GARBAGE = {"truncated": b'{"id": "t-x", "workflow_id"', "binary": b"\x00\xff\xfe", "an array": b"[1, 2]",
           "another node type": json.dumps({"id": "t-y", "workflow_id": "wf", "node": "n", "node_type": "beta",
                                            "payload": {}}).encode()}


@pytest.fixture(params=["redis", "nats"])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_task_dead_lettered_at_claim_time_is_logged_naming_it(url: str, kind: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        backend = open_backend(url, prefix=f"mt{uuid.uuid4().hex[:8]}")
        await backend.connect()
        queue = backend.task_queue
        try:
            await queue.enqueue_raw("alpha", GARBAGE[kind])  # type: ignore[attr-defined]
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=0.5)
            return claims, await queue.dead_letters("alpha")
        finally:
            await backend.close()

    with caplog.at_level(logging.ERROR, logger="distributed_agents"):
        claims, letters = run(scenario(), 40)
    assert claims == []
    [letter] = letters
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(repr(letter.task_id) in line and "dead-lettered unrun" in line and "'alpha'" in line
               and f"dead-letters show {letter.task_id}" in line for line in logged), logged
