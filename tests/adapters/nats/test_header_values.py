"""``replies.header_block`` writes a header value as nats-py's ``publish`` does (stripped, each
CR and LF made a space) whether or not it holds a line break: the common value without one
takes a shorter path, so both kinds, and their mix in one block, are compared with nats-py's
bytes on a real client, and a server delivers what was sent."""

from __future__ import annotations

import nats
import pytest
from support.aio import run

from distributed_agents.adapters.nats import replies

pytestmark = pytest.mark.timeout(60)

_VALUES = ["plain", " padded ", "\tpadded\t", "cr\rinside", "lf\ninside", "crlf\r\ninside", "\r\nat the ends\r\n",
           " \n", "", "\u2028sep", "ünï©ødé", "wf_5a1b:0.29cdb602:0:n"]


@pytest.mark.parametrize("value", _VALUES)
def test_a_header_value_is_written_as_nats_py_writes_it(nats_url: str, value: str) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            for headers in ({"A": value}, {"A": value, "B": "plain", "C": value + "\r"}, {"B": "x", "A": value}):
                await nc.publish("hv.one", b"p", headers=headers)  # no await inside yields
                expected = nc._pending[-1]
                replies.send(nc, "hv.one", b"p", "", replies.header_block(headers))
                assert nc._pending[-1] == expected, headers
            sub = await nc.subscribe("hv.two")
            replies.send(nc, "hv.two", b"data", "", replies.header_block({"A": value, "B": "b"}))
            msg = await sub.next_msg(timeout=5)
            assert msg.data == b"data"
            # What nats-py reads back from the server: the value stripped, line breaks made spaces.
            assert (msg.headers or {}).get("A", "") == value.strip().replace("\r", " ").replace("\n", " ").strip()
            assert (msg.headers or {})["B"] == "b"
        finally:
            await nc.close()

    run(scenario(), 30)
