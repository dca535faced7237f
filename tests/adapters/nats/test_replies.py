"""``replies``: requests on a client's shared inbox time out through one shared sweeper;
pulls share one subscription of their own.

A request nobody answers fails with nats-py's TimeoutError, while a request made at the
same time whose reply comes later than that timeout succeeds; once they
are settled, nothing of theirs is left in the inbox (no waiting handler, no deadline, no
timer running).
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import nats.errors
import nats.js.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents.adapters.nats import replies
from distributed_agents.adapters.nats.message_bus import flush_in_order

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
            await flush_in_order(nc)
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


def test_pulls_share_one_subscription_and_take_only_their_own_status(nats_url: str) -> None:
    """Pulls go one at a time through the client's pull subscription: each gets its messages
    and ends on its own status (an empty pull on its 404), and the subscription is made once."""

    async def scenario() -> None:
        from nats.js import api

        from distributed_agents.adapters.nats.delivery import pull_ready

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        stream = f"PULLS{uuid.uuid4().hex[:8]}"
        try:
            await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream}.>"]))
            await js.add_consumer(stream, api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT))
            for n in range(5):
                await js.publish(f"{stream}.a", str(n).encode())
            first, second, empty = await asyncio.gather(
                pull_ready(nc, stream, "c", 3), pull_ready(nc, stream, "c", 3), pull_ready(nc, stream, "c", 3))
            got = sorted(int(m.data) for m in [*first, *second])
            assert got == [0, 1, 2, 3, 4] and len(first) == 3 and len(second) == 2 and empty == [], (first, second, empty)
            inbox = replies._INBOXES[nc]
            subscription = inbox.pull_sub
            assert await pull_ready(nc, stream, "c", 3) == []
            assert inbox.pull_sub is subscription and inbox.pulling is None
        finally:
            await nc.close()

    run(scenario(), 30)


def test_a_pull_takes_only_deliveries_of_its_own_consumer() -> None:
    """The client's one pull subscription hands a pull only its consumer's deliveries (the ack
    subject names stream and consumer, with or without a domain) and its own status; a late
    delivery of another consumer's pull is left alone (it is redelivered after its AckWait)."""
    from nats.aio.msg import Msg

    async def scenario() -> list[str]:
        inbox = replies._Inbox()
        inbox.pull_prefix = "_INBOX.p."
        taken: list[str] = []
        inbox.pulling = ("7", lambda msg: taken.append(msg.subject), ("TASKS", "beta"))
        for subject, reply in (
            ("tasks.beta", "$JS.ACK.TASKS.beta.1.10.3.1700000000.0"),
            ("tasks.alpha", "$JS.ACK.TASKS.alpha.1.11.4.1700000000.0"),  # another consumer's late delivery
            ("tasks.beta", "$JS.ACK.OTHER.beta.1.5.5.1700000000.0"),  # another stream's
            ("tasks.beta", "$JS.ACK.dom.hash123.TASKS.beta.1.12.6.1700000000.0.tok"),  # with a domain
            ("tasks.alpha", "$JS.ACK.dom.hash123.TASKS.alpha.1.13.7.1700000000.0.tok"),
            ("_INBOX.p.6", ""),  # the status that ended an earlier pull
            ("_INBOX.p.7", ""),  # this pull's status
        ):
            inbox._on_pulled(Msg(None, subject, reply, b"" if not reply else b"x"))  # type: ignore[arg-type]
        return taken

    assert run(scenario(), 10) == ["tasks.beta", "tasks.beta", "_INBOX.p.7"]


_HEADER_BYTES = st.lists(
    st.one_of(st.binary(max_size=12), st.sampled_from([b"Nats-Sequence", b" a b ", b"\x1cx", b"k\xff", b"\t", b"\x85"])),
    max_size=6,
).map(lambda parts: b"".join(p + c for p, c in zip(parts, [b":", b"\r\n", b": ", b"\r\n\r\n", b"", b"\x0b"])))


@given(_HEADER_BYTES)
@settings(max_examples=300, deadline=None)
def test_header_lines_parse_as_nats_py_does(raw: bytes) -> None:
    """The faster header parser installed on our clients gives nats-py's own result for any bytes."""
    from nats.aio.client import Client

    if not hasattr(Client, "_parse_header_lines"):
        pytest.skip("this nats-py parses headers another way (the parser is installed only over this one)")
    assert replies.header_lines(raw) == Client._parse_header_lines(raw)


def test_jetstream_publishes_sent_together_answer_each_in_order(nats_url: str) -> None:
    """``js_publish_many``: a PubAck per stored message, in order, and an API error (here a
    failed expected-sequence check) returned in its place rather than raised."""
    async def scenario() -> list[object]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            stream = f"MANY{uuid.uuid4().hex[:8]}"
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            await replies.js_publish(nc, f"{stream}.z", b"0")  # the inbox made
            await js.purge_stream(stream)
            inbox = replies._INBOXES[nc]
            received, counted = inbox.sub._received, nc.stats["in_msgs"]
            answers = await replies.js_publish_many(nc, [
                (f"{stream}.a", b"1", None),
                (f"{stream}.b", b"2", {"Nats-Expected-Last-Subject-Sequence": "7"}),
                (f"{stream}.c", b"3", {"Nats-Msg-Id": "x"}),
                (f"{stream}.c", b"3", {"Nats-Msg-Id": "x"}),
            ])
            # The answers (read as bytes, no message built: ``Direct.answer``) are counted as nats-py counts them.
            assert inbox.sub._received - received == 4 and nc.stats["in_msgs"] - counted >= 4
            assert inbox.waiting == {} and inbox.deadlines == {}
            await js.delete_stream(stream)
            return answers
        finally:
            await nc.close()

    first, wrong, third, duplicate = run(scenario(), 30)
    assert isinstance(first, replies.PubAck) and first.seq == 2 and not first.duplicate
    assert isinstance(wrong, nats.js.errors.APIError) and wrong.err_code in (10071, 10164)
    assert isinstance(third, replies.PubAck) and third.seq == 3
    assert isinstance(duplicate, replies.PubAck) and duplicate.duplicate and duplicate.seq == 3


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 2**63), duplicate=st.sampled_from([None, True, False]), domain=st.booleans(),
       spaced=st.booleans(), stream=st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                                          blacklist_characters='"\\.*>'), min_size=1, max_size=20))
def test_a_publish_answer_reads_as_json_reads_it(seq: int, duplicate: bool | None, domain: bool, spaced: bool,
                                                 stream: str) -> None:
    """``_ack_of`` reads the common answer without ``json.loads``: the same sequence and
    duplicate flag as the JSON, whatever the spacing and fields; an error is still raised."""
    import json

    from nats.aio.msg import Msg

    body: dict[str, object] = {"stream": stream, "seq": seq}
    if domain:
        body["domain"] = "hub"
    if duplicate is not None:
        body["duplicate"] = duplicate
    raw = json.dumps(body, separators=(", ", ": ") if spaced else (",", ":")).encode()
    ack = replies._ack_of(Msg(None, data=raw))  # type: ignore[arg-type]
    assert (ack.seq, ack.duplicate) == (seq, bool(duplicate))
    as_bytes = replies._pub_ack_of_data(raw)  # the reader's path for an answer without headers
    assert isinstance(as_bytes, replies.PubAck) and (as_bytes.seq, as_bytes.duplicate) == (seq, bool(duplicate))
    error = json.dumps({"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 5"},
                        "stream": stream, "seq": 0}).encode()
    with pytest.raises(nats.js.errors.APIError):
        replies._ack_of(Msg(None, data=error))  # type: ignore[arg-type]
    assert isinstance(replies._pub_ack_of_data(error), nats.js.errors.APIError)
    assert isinstance(replies._pub_ack_of_data(b"not json"), ValueError)


_TOKENS = st.text(alphabet="abcXYZ09-_$", min_size=1, max_size=8)
_SUBJECTS = st.lists(_TOKENS, min_size=1, max_size=4).map(".".join)
_HEADERS = st.none() | st.dictionaries(
    st.text(alphabet="abcXYZ-09_.", min_size=1, max_size=10),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=3)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(_SUBJECTS, st.sampled_from(["", "_INBOX.x.1"]), st.binary(max_size=40), _HEADERS),
                min_size=1, max_size=8))
def test_send_queues_the_bytes_publish_queues(nats_url: str, messages: list) -> None:  # type: ignore[type-arg]
    """``send`` puts on the client's pending buffer exactly the command nats-py's ``publish``
    puts there (subjects, reply, header values with line breaks, empty payloads), and the
    server delivers what it sent."""
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            for subject, reply, payload, headers in messages:
                await nc.publish(subject, payload, reply=reply, headers=headers)  # no await inside yields
                expected = nc._pending[-1]
                replies.send(nc, subject, payload, reply, headers)
                assert nc._pending[-1] == expected
                if headers is not None:  # the same headers as a block built beforehand
                    replies.send(nc, subject, payload, reply, replies.header_block(headers))
                    assert nc._pending[-1] == expected
            sub = await nc.subscribe("sent.one")
            replies.send(nc, "sent.one", b"data", "", {"A": "b\r\nc"})
            msg = await sub.next_msg(timeout=5)
            assert msg.data == b"data" and msg.headers == {"A": "b  c"}
        finally:
            await nc.close()

    run(scenario(), 30)


def test_send_refuses_what_publish_refuses(nats_url: str) -> None:
    """A bad subject or reply, a bad header name, a payload over the server's limit, a closed
    client: the same nats-py errors, and nothing queued."""
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            cases = [
                (("a b", b""), {}, nats.errors.BadSubjectError),
                (("", b""), {}, nats.errors.BadSubjectError),
                (("a", b""), {"reply": "x\r\ny"}, nats.errors.BadSubjectError),
                (("a", b""), {"headers": {"bad name": "v"}}, nats.errors.BadHeaderError),
                (("a", b"x" * (nc.max_payload + 1)), {}, nats.errors.MaxPayloadError),
            ]
            # Within max_payload without its header block, over it with: nats-py sends it (and the
            # server closes the connection); send refuses it, nothing queued.
            pending = list(nc._pending)
            with pytest.raises(nats.errors.MaxPayloadError):
                replies.send(nc, "a", b"x" * (nc.max_payload - 10), "", {"Name": "a value"})
            assert nc._pending == pending
            for (subject, payload), extra, error in cases:
                pending = list(nc._pending)
                with pytest.raises(error):
                    await nc.publish(subject, payload, **extra)
                with pytest.raises(error):
                    replies.send(nc, subject, payload, extra.get("reply", ""), extra.get("headers"))
                assert nc._pending == pending
        finally:
            await nc.close()
        with pytest.raises(nats.errors.ConnectionClosedError):
            await nc.publish("a", b"")
        with pytest.raises(nats.errors.ConnectionClosedError):
            replies.send(nc, "a", b"")

    run(scenario(), 30)


def test_chained_requests_follow_their_publish_and_answer_in_order(nats_url: str) -> None:
    """``js_publish_chain``: a follow-up goes out only for a stored publish (not for one the
    server refused), after it (it sees the stored sequence), and its reply is the item's
    second answer; an item ``follow`` declines has None; what ``follow`` raises is that
    item's second answer; a follow-up nobody answers times out alone; nothing of the
    chain is left in the inbox."""
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            stream = f"CHAIN{uuid.uuid4().hex[:8]}"
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])

            async def silent(msg: object) -> None:  # receives, never answers
                pass

            await nc.subscribe("chain.silent", cb=silent)
            await flush_in_order(nc)
            seen: list[tuple[int, int]] = []

            def follow(index: int, ack: replies.PubAck) -> tuple[str, bytes, None] | None:
                seen.append((index, ack.seq))
                if index == 2:
                    return None
                if index == 3:
                    raise ValueError("no follow-up")
                if index == 4:
                    return "chain.silent", b"", None
                # A second write to the stream, expecting the first one's sequence: it is stored.
                return f"{stream}.two", str(ack.seq).encode(), None

            answers = await replies.js_publish_chain(nc, [
                (f"{stream}.a", b"1", None),
                (f"{stream}.b", b"2", {"Nats-Expected-Last-Subject-Sequence": "7"}),
                (f"{stream}.c", b"3", None),
                (f"{stream}.d", b"4", None),
                (f"{stream}.e", b"5", None),
            ], follow, timeout=0.5)
            (a, a2), (b, b2), (c, c2), (d, d2), (e, e2) = answers
            assert isinstance(a, replies.PubAck) and isinstance(a2, nats.aio.msg.Msg)
            assert replies.pub_ack_of(a2).seq > a.seq  # type: ignore[union-attr]
            assert isinstance(b, nats.js.errors.APIError) and b2 is None
            assert isinstance(c, replies.PubAck) and c2 is None
            assert isinstance(d, replies.PubAck) and isinstance(d2, ValueError)
            assert isinstance(e, replies.PubAck) and isinstance(e2, nats.errors.TimeoutError)
            assert sorted(index for index, _ in seen) == [0, 2, 3, 4]  # not the refused publish
            stored = await js.get_last_msg(stream, f"{stream}.two")
            assert stored.data == str(a.seq).encode()  # type: ignore[union-attr]
            inbox = replies._INBOXES[nc]
            assert inbox.waiting == {} and inbox.deadlines == {}
            assert await replies.js_publish_chain(nc, [], follow) == []
            await js.delete_stream(stream)
        finally:
            await nc.close()

    run(scenario(), 30)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), _HEADERS, st.sampled_from(["", "r.1"])), min_size=1, max_size=6))
def test_direct_subscriptions_read_messages_as_nats_py_does(nats_url: str, messages: list) -> None:  # type: ignore[type-arg]
    """``read_directly``: a ``Direct`` subscription's messages (payloads, header blocks of any
    names and values, reply subjects, and status replies such as a direct get's 404) arrive
    as nats-py delivers them to a subscription of its own on another client; other
    subscriptions of the client keep nats-py's path."""
    async def scenario() -> None:
        fast, plain = await nats.connect(nats_url), await nats.connect(nats_url)
        try:
            replies.read_directly(fast)
            fast._parse_header_lines = replies.header_lines
            got: list[nats.aio.msg.Msg] = []
            await fast.subscribe("direct.>", future=replies.Direct(got.append))
            kept = await fast.subscribe("direct.>")  # an iterator: nats-py's own path
            expected = await plain.subscribe("direct.>")
            await flush_in_order(fast)
            await flush_in_order(plain)
            for data, headers, reply in messages:
                await plain.publish("direct.x", data, reply=reply, headers=headers)
            # A status reply: a direct get of a subject the stream does not hold answers 404.
            js = plain.jetstream()
            stream = f"DIRECT{uuid.uuid4().hex[:8]}"
            await js.add_stream(name=stream, subjects=[f"{stream}.>"], allow_direct=True)
            await plain.publish(f"$JS.API.DIRECT.GET.{stream}.{stream}.none", b"", reply="direct.status")
            await flush_in_order(plain)
            wanted = [await expected.next_msg(timeout=5) for _ in messages]
            others = [await kept.next_msg(timeout=5) for _ in messages]
            for _ in range(100):
                if len(got) > len(messages):
                    break
                await asyncio.sleep(0.05)
            assert [(m.subject, m.reply, m.data, m.headers) for m in got[:len(messages)]] == \
                [(m.subject, m.reply, m.data, m.headers) for m in wanted] == \
                [(m.subject, m.reply, m.data, m.headers) for m in others]
            assert len(got) == len(messages) + 1 and (got[-1].headers or {}).get("Status") == "404", got[-1]
            status = await expected.next_msg(timeout=5)
            assert (got[-1].subject, got[-1].data, got[-1].headers) == (status.subject, status.data, status.headers)
            await js.delete_stream(stream)
        finally:
            await fast.close()
            await plain.close()

    run(scenario(), 30)


@given(st.integers(0, 2**63), st.one_of(st.none(), st.floats(0.001, 1e7)))
@settings(max_examples=200, deadline=None)
def test_a_write_expecting_a_revision_sends_the_header_block_of_its_headers_dict(last: int, ttl: float | None) -> None:
    """``kv.cas_headers`` (built without a dict, on every write of a task's path) is the block
    ``send`` writes for the headers dict it stands for, and ``send`` writes a block as it is."""
    from distributed_agents.adapters.nats import kv
    from distributed_agents.adapters.nats.connection import ttl_header

    headers = {"Nats-Expected-Last-Subject-Sequence": str(last), **ttl_header(ttl)}
    assert kv.cas_headers(last, ttl) == replies.header_block(headers)
    assert type(kv.cas_headers(last, ttl)) is bytes


def test_an_answer_with_an_undecodable_reply_subject_is_dropped_as_nats_py_drops_it(nats_url: str) -> None:
    """A publish's answer read as bytes (``Direct.answer``) is taken only without a reply
    subject (no server answer carries one): a forged answer whose reply subject is not UTF-8
    is dropped as the message path drops it (uncounted; the request times out), and one
    with a readable reply subject is an answer like any other."""
    from urllib.parse import urlsplit

    async def scenario() -> dict[str, tuple[str, int | None, int]]:
        nc = await nats.connect(nats_url)
        address = urlsplit(nats_url)
        try:
            async def quiet(msg: object) -> None:
                pass

            await nc.subscribe("answers.silent", cb=quiet)
            inbox = await replies._inbox(nc)
            loop = asyncio.get_running_loop()
            out: dict[str, tuple[str, int | None, int]] = {}
            for label, reply in (("readable", b"some.reply"), ("undecodable", b"bad.\xff\xfe")):
                waiter = loop.create_future()
                batch = replies.chain_now(nc, [("answers.silent", b"x", None)], None, waiter, timeout=1.0)
                assert batch is not None
                slot = batch.slots[0]
                received = inbox.sub._received
                reader, writer = await asyncio.open_connection(address.hostname, address.port)
                await reader.readline()  # INFO
                body = b'{"stream":"S","seq":7}'
                writer.write(b'CONNECT {"verbose":false}\r\nPUB ' + slot.reply.encode() + b" " + reply
                             + b" %d\r\n" % len(body) + body + b"\r\nPING\r\n")
                await writer.drain()
                await reader.readline()  # PONG: the server routed it
                await asyncio.wait_for(asyncio.shield(waiter), 5)
                first = slot.first
                out[label] = (type(first).__name__, getattr(first, "seq", None), inbox.sub._received - received)
                replies.chain_answers(batch)
                writer.close()
            assert inbox.waiting == {} and inbox.deadlines == {}
            return out
        finally:
            await nc.close()

    out = run(scenario(), 30)
    assert out["readable"] == ("PubAck", 7, 1), out
    assert out["undecodable"][0] == "TimeoutError" and out["undecodable"][2] == 0, out
