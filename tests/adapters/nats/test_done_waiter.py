"""``done_events._Waiter``: a wait ends when an event of its ids fires (before or during it),
reports False when none came within its timeout, and a cancelled wait leaves nothing armed."""

from __future__ import annotations

import asyncio

import pytest
from support.aio import run

from distributed_agents.adapters.nats.done_events import _Waiter
from distributed_agents.core.ports.task_queue import TaskResult

pytestmark = pytest.mark.timeout(30)


def test_a_wait_ends_on_an_event_and_times_out_without_one() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(["a", "b"])
        assert await waiter.wait(0.01) is False and await waiter.wait(0) is False
        result = TaskResult("a", "succeeded", output={"x": 1})
        waiter.fire("a", result)
        assert await waiter.wait(0) is True and await waiter.wait(10) is True  # fired before: at once
        assert waiter.take_fired() == [("a", result)] and waiter.take_fired() == []
        loop.call_later(0.05, waiter.fire, "b", None)
        # Woken by the event (a missed wake-up would hang here until the test's timeout).
        assert await waiter.wait(1000) is True
        assert waiter.take_fired() == [("b", None)]
        # A cancelled wait: nothing left armed, the next wait works as before.
        waiting = asyncio.ensure_future(waiter.wait(10))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert waiter._future is None
        waiter.fire("a", None)
        assert await waiter.wait(10) is True

    run(scenario(), 20)


def test_an_event_carrying_another_tasks_result_gives_no_inline_result() -> None:
    """As on Redis (tests/adapters/redis/test_hostile_results.py): an event naming task t-1 with
    t-2's result was not published by an ack; its id is kept (the waiter reads t-1's record)."""
    import json

    from distributed_agents.adapters.nats.done_events import done_payload, parse_done, parse_done_events

    other = TaskResult("t-2", "succeeded", output={"forged": True})
    forged = json.dumps({"id": "t-1", "result": other.to_dict()}).encode()
    assert parse_done(forged) == ("t-1", None)
    assert parse_done_events(b"[" + forged + b"]") == [("t-1", None)]
    own = TaskResult("t-1", "succeeded", output={"real": True})
    assert parse_done(done_payload("t-1", own)) == ("t-1", own)
    assert parse_done_events(b"[" + done_payload("t-1", own) + b"," + forged + b"]") == [("t-1", own), ("t-1", None)]
