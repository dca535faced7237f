"""``wire.install``: a client's bytes read as nats-py's parser reads them, however they are cut."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.parser import Parser

from distributed_agents.adapters.nats import wire
from distributed_agents.adapters.nats.message_bus import flush_in_order

_TOKEN = st.text("abcXYZ019_-$>*", min_size=1, max_size=8)
_SUBJECT = st.lists(_TOKEN, min_size=1, max_size=4).map(".".join)
_PAYLOAD = st.binary(max_size=40) | st.sampled_from([b"", b"\r\n", b"MSG a 1 2\r\n", b"PING\r\n"])
_HEADERS = st.sampled_from([
    b"NATS/1.0\r\n\r\n",
    b"NATS/1.0\r\nNats-Sequence: 12\r\nNats-Subject: a.b\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\n\r\n",
])


@st.composite
def _operation(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["msg", "msg", "hmsg", "hmsg", "ping", "pong", "ok", "info", "odd"]))
    subject, sid = draw(_SUBJECT).encode(), draw(st.integers(1, 4))
    reply = draw(st.sampled_from([b"", b"_INBOX.x.1", b"$JS.ACK.S.C.1.2.3.4.0"]))
    payload = draw(_PAYLOAD)
    middle = b" " + reply if reply else b""
    if kind == "msg":
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, middle, len(payload), payload)
    if kind == "hmsg":
        headers = draw(_HEADERS)
        return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (subject, sid, middle, len(headers), len(headers) + len(payload),
                                                  headers, payload)
    if kind == "odd":  # spacing nats-py's expressions allow, and the fast reading leaves to them
        return b"MSG  %s\t%d %d\r\n%s\r\n" % (subject, sid, len(payload), payload)
    return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n", "info": b'INFO {"max_payload":1048576}\r\n'}[kind]


class _Client:
    """What nats-py's parser calls on its client, each call logged."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self._ps = Parser(self)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.log.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), None if headers is None else bytes(headers)))

    async def _process_ping(self) -> None:
        self.log.append(("ping",))

    async def _process_pong(self) -> None:
        self.log.append(("pong",))

    async def _process_info(self, info: Any) -> None:
        self.log.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.log.append(("err", err))


async def _read(chunks: list[bytes], fast: bool, taken: set[int]) -> tuple[list[tuple[Any, ...]], bytes, int]:
    log: list[tuple[Any, ...]] = []
    client = _Client(log)
    if fast:
        def deliver(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            if sid not in taken:
                return False
            log.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), None if headers is None else bytes(headers)))
            return True

        assert wire.install(client, deliver, client._process_msg)
        assert not wire.install(client, deliver, client._process_msg)  # once
    for chunk in chunks:
        await client._ps.parse(chunk)
    return log, bytes(client._ps.buf), client._ps.state


@settings(max_examples=300, deadline=None)
@given(st.lists(_operation(), max_size=12), st.lists(st.integers(0, 400), max_size=6), st.sets(st.integers(1, 4)))
def test_messages_are_read_as_nats_py_reads_them_however_the_bytes_are_cut(
        operations: list[bytes], cuts: list[int], taken: set[int]) -> None:
    """Messages (with and without reply subjects, headers, status lines, payloads holding protocol
    text), pings, pongs, infos and +OKs, in one read or cut anywhere: the same calls in the same
    order as nats-py's parser alone makes, the messages of the subscriptions ``deliver`` takes
    among them, and the same bytes left over for the next read."""
    stream = b"".join(operations)
    points = sorted({min(cut, len(stream)) for cut in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    plain = asyncio.run(_read(chunks, False, taken))
    fast = asyncio.run(_read(chunks, True, taken))
    assert fast == plain


def test_a_parser_reset_while_a_message_is_processed_drops_the_rest_of_the_read_as_nats_py_does() -> None:
    """A reconnect resets the client's parser; the bytes of the old connection still unread are dropped."""
    async def scenario() -> list[tuple[Any, ...]]:
        log: list[tuple[Any, ...]] = []
        client = _Client(log)

        async def process(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            log.append(("msg", sid, bytes(data)))
            client._ps.reset()

        wire.install(client, lambda *_: False, process)
        await client._ps.parse(b"MSG a 1 1\r\nx\r\nMSG a 1 1\r\ny\r\n")
        return log

    assert asyncio.run(scenario()) == [("msg", 1, b"x")]



def test_a_backend_connection_reads_through_the_fast_path(nats_url: str) -> None:
    """A connected backend's client (this nats-py) has ``wire``'s parse installed, and its
    requests are answered through it (guards the install against a nats-py change that
    would silently drop it: ``install`` then leaves nats-py's parser in place)."""
    from support.aio import run

    from distributed_agents.adapters.nats import kv

    from .conftest import open_nats

    async def scenario() -> None:
        backend = await open_nats(nats_url)
        try:
            nc = backend.connection.nc
            bucket = backend.connection.bucket(backend.connection.names.task_bucket)
            await kv.put(backend.connection.js, bucket, "k", b"v")
            assert getattr(nc._ps, "_da_wire", False)
            assert (await kv.get(bucket, "k")).value == b"v"  # type: ignore[union-attr]
        finally:
            await backend.close()

    run(scenario(), 30)


def test_a_subject_that_is_not_utf8_is_dropped_on_nats_pys_path_too(nats_url: str) -> None:
    """A raw client's message whose subject is not UTF-8, on a plain (nats-py) subscription, is
    dropped with a warning; the client's reader goes on (the next message and flush arrive)."""
    import socket

    import nats
    from support.aio import run

    from distributed_agents.adapters.nats import replies

    async def scenario() -> bytes:
        nc = await nats.connect(nats_url)
        try:
            replies.read_directly(nc)
            sub = await nc.subscribe("u8.>")
            await flush_in_order(nc)
            host, port = nats_url.rsplit("/", 1)[-1].split(":")
            with socket.create_connection((host, int(port))) as raw:
                raw.recv(4096)
                raw.sendall(b'CONNECT {"verbose":false}\r\nPUB u8.\xff\xfe 1\r\nx\r\nPUB u8.ok 2\r\nok\r\nPING\r\n')
                raw.recv(4096)
            await flush_in_order(nc)
            return (await sub.next_msg(timeout=5)).data
        finally:
            await nc.close()

    assert run(scenario(), 30) == b"ok"
