"""Task messages published on subjects outside the queue's layout are refused or dead-lettered, never kept unseen.

The example (hostile-input trial): messages published by hand on ``da.tasks.echo.zzz``,
``da.tasks.echo`` and ``da.tasks.echo.p0.extra`` were stored in the task stream (it took
``da.tasks.>``), served by no consumer, and stayed there for ever with no trace. Now the
stream takes exactly ``<base>.tasks.<type>.<priority>``: a JetStream publish of another
depth is refused by the server (the publisher hears it); one of the right depth whose
priority token is none the queue writes is dead-lettered (its bytes kept, the reason
naming the subject) by the next claim of that type, and logged. Tasks on the layout's
subjects around them run as before.
"""

from __future__ import annotations

import logging
import uuid

import nats.errors
import nats.js.errors
import pytest
from support.aio import run

from distributed_agents.core.codec import encode
from distributed_agents.core.ports.task_queue import Task, task_to_dict

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)

OFF_DEPTH = ["{base}.tasks.echo", "{base}.tasks.echo.p0.extra", "{base}.tasks.echo.p0.a.b"]
BAD_PRIORITY = ["{base}.tasks.echo.zzz", "{base}.tasks.echo.p", "{base}.tasks.echo.p-1", "{base}.tasks.echo.P3",
                "{base}.tasks.echo.p00", "{base}.tasks.echo.m0", "{base}.tasks.echo.p01"]  # a level, spelled otherwise


def _task(task_id: str) -> Task:
    return Task(task_id, "wf", "n", "echo", {"id": task_id})


def test_off_layout_task_messages_are_refused_or_dead_lettered(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str], list[str], list[str]]:
        backend = await open_nats(nats_url, prefix=f"ol{uuid.uuid4().hex[:8]}")
        queue, js, names = backend.task_queue, backend.connection.js, backend.connection.names
        try:
            assert await queue.enqueue(_task("before")) is True
            refused = []
            for pattern in OFF_DEPTH:
                subject = pattern.format(base=names.base)
                try:
                    await js.publish(subject, encode(task_to_dict(_task(f"x-{subject}"))), timeout=2)
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
                    refused.append(subject)
            swept = []
            for i, pattern in enumerate(BAD_PRIORITY):
                subject = pattern.format(base=names.base)
                ack = await js.publish(subject, encode(task_to_dict(_task(f"bad-{i}"))),
                                       headers={"Da-Task-Id": f"bad-{i}"})
                assert ack.stream == names.task_stream  # stored: the right depth
                swept.append(subject)
            assert await queue.enqueue(_task("after")) is True
            ran = []
            for _ in range(10):
                claims = await queue.claim(["echo"], worker_id="w", max_tasks=10, wait=0.3)
                if not claims and len(ran) >= 2:
                    break
                for claim in claims:
                    ran.append(claim.task.id)
                    await queue.ack(claim, None)
            letters = await queue.dead_letters("echo")
            reasons = [letter.reason for letter in letters]
            info = await js.stream_info(names.task_stream, subjects_filter=f"{names.base}.tasks.>")
            left = sorted(subject for subject, count in (info.state.subjects or {}).items() if count)
            return refused, ran, reasons, left, swept
        finally:
            await backend.close()

    with caplog.at_level(logging.ERROR, logger="distributed_agents.adapters.nats"):
        refused, ran, reasons, left, swept = run(scenario(), 50)
    assert len(refused) == len(OFF_DEPTH), refused  # the publisher is told: no stream takes it
    assert sorted(ran) == ["after", "before"]
    assert len(reasons) == len(BAD_PRIORITY)
    for subject in swept:
        assert sum(repr(subject) in reason for reason in reasons) == 1, (subject, reasons)
        assert any(repr(subject) in r.getMessage() for r in caplog.records)
    assert all("outside this queue's layout" in reason for reason in reasons)
    assert left == []  # nothing stays in the stream unseen
