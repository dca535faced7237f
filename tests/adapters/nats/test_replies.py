"""``replies``: requests on a client's shared inbox time out through one shared sweeper.

A request nobody answers fails with nats-py's TimeoutError, while a request made at the
same time whose reply comes later than that timeout succeeds; once they
are settled, nothing of theirs is left in the inbox (no waiting handler, no deadline, no
timer running).
"""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from support.aio import run

from distributed_agents.adapters.nats import replies

pytestmark = pytest.mark.timeout(60)


def test_unanswered_requests_time_out_and_answered_ones_do_not(nats_url: str) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            async def silent(msg: object) -> None:  # receives, never answers
                pass

            async def echo(msg: nats.aio.msg.Msg) -> None:
                await asyncio.sleep(0.3)
                await msg.respond(msg.data)

            await nc.subscribe("replies.silent", cb=silent)
            await nc.subscribe("replies.echo", cb=echo)
            await nc.flush()
            outcomes = await asyncio.gather(
                replies.request(nc, "replies.silent", b"a", timeout=0.2),
                replies.collect(nc, "replies.silent", b"b", limit=2, timeout=0.2),
                replies.request(nc, "replies.echo", b"c", timeout=5.0),
                return_exceptions=True,
            )
            assert isinstance(outcomes[0], nats.errors.TimeoutError), outcomes
            assert isinstance(outcomes[1], nats.errors.TimeoutError), outcomes
            assert not isinstance(outcomes[2], BaseException) and outcomes[2].data == b"c", outcomes
            inbox = replies._INBOXES[nc]
            assert inbox.waiting == {} and inbox.deadlines == {}
            await asyncio.sleep(2 * replies._SWEEP)
            assert inbox.sweeper is None  # no timer while nothing waits
        finally:
            await nc.close()

    run(scenario(), 30)
