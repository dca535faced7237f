"""Review of the NATS client's message reading by position (``adapters/nats/wire.py``) and the
prebuilt header blocks, against a real server whose bytes reach the client cut anywhere.

A proxy forwards the server's bytes to the client in small pieces of random size (each its
own TCP segment), so control lines, header blocks and payloads of real JetStream traffic
(publish acks, KV writes with expected revisions, direct gets, pulls, status replies) are
cut at every kind of position; the queue's contract must hold as with whole reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import threading
import uuid
from typing import Any

import nats
import pytest
from support.aio import run

from distributed_agents.adapters.nats import replies
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task
from distributed_agents.adapters.nats.message_bus import flush_in_order

pytestmark = pytest.mark.timeout(120)


class _ChoppingProxy:
    """Loopback proxy to ``port``: client bytes go through whole; the server's bytes are written
    to the client in pieces of 1..``largest`` bytes (random), one segment each."""

    def __init__(self, port: int, seed: int, largest: int = 24) -> None:
        self.target = port
        self.rng = random.Random(seed)
        self.largest = largest
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.forwarded = 0
        self.writers: list[asyncio.StreamWriter] = []

    def __enter__(self) -> _ChoppingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        pending: asyncio.Queue[bytes] = asyncio.Queue()

        async def take() -> None:
            # Read the server's bytes as they come (queued here), so that the server never
            # waits on this proxy's slow writing: it would close a slow consumer's connection.
            while data := await up_reader.read(65536):
                pending.put_nowait(data)
            pending.put_nowait(b"")

        async def downstream() -> None:
            while data := await pending.get():
                pos = 0
                while pos < len(data):
                    size = self.rng.randint(1, self.largest) if self.rng.random() < 0.9 else len(data) - pos
                    writer.write(data[pos:pos + size])
                    pos += size
                    self.forwarded += 1
                    await writer.drain()
                    await asyncio.sleep(0)
            writer.close()

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), take(), downstream())


def _raw_publish(url: str, subject: str, blocks: list[bytes]) -> None:
    """HPUB each header block (with a payload) on a raw connection to ``url``, then PING/PONG."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.recv(65536)  # INFO
        out = b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
        for block in blocks:
            out += b"HPUB %s %d %d\r\n%sdata\r\n" % (subject.encode(), len(block), len(block) + 4, block)
        sock.sendall(out + b"PING\r\n")
        seen = b""
        while b"PONG" not in seen and b"-ERR" not in seen:
            seen += sock.recv(65536)
        assert b"-ERR" not in seen, seen


@pytest.mark.parametrize("seed", [3, 11])
def test_the_queue_works_when_the_servers_bytes_come_cut_anywhere(nats_server: Any, seed: int) -> None:
    """Tasks (unicode, empty, and payloads of hundreds of kilobytes that span many reads)
    enqueued, claimed, acked, nacked and waited on through a client reading the server's
    bytes in random small pieces: each result is the one stored, nothing is lost or doubled."""
    rng = random.Random(seed)

    async def scenario(url: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"cut{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        try:
            payloads: dict[str, Any] = {}
            for i in range(8):
                text = rng.choice(["", "é☃ \r\n MSG a 1 2\r\n", "x" * rng.choice([10, 40_000, 300_000])])
                payloads[f"t{i}"] = {"text": text, "i": i}
            tasks = [Task(tid, "wf", "n", "alpha", payload) for tid, payload in payloads.items()]
            await queue.enqueue_many(tasks[:4])
            for task in tasks[4:]:
                await queue.enqueue(task)
            await queue.enqueue(tasks[0])  # idempotent: the same id again adds nothing
            outputs: dict[str, Any] = {}
            nacked = False
            while len(outputs) < len(tasks):
                claims = await queue.claim(["alpha"], worker_id="w", max_tasks=3, wait=2)
                for claim in claims:
                    if not nacked:
                        nacked = True
                        await queue.nack(claim, "once more")
                        continue
                    assert claim.task.payload == payloads[claim.task.id]
                    await queue.ack(claim, {"echo": claim.task.payload["text"], "attempt": claim.attempt})
                    outputs[claim.task.id] = claim.attempt
            found: dict[str, Any] = {}
            while len(found) < len(tasks):
                found.update(await queue.wait_results([t.id for t in tasks if t.id not in found], timeout=5))
            return outputs, {k: (r.status, r.output) for k, r in found.items()}, await queue.stats("alpha")
        finally:
            await backend.close()

    with _ChoppingProxy(nats_server.port, seed) as proxy:
        outputs, found, stats = run(scenario(f"nats://127.0.0.1:{proxy.port}"), 100)
        assert proxy.forwarded > 200  # the bytes really came in pieces
    assert sorted(outputs) == sorted(found) and len(found) == 8
    assert sorted(outputs.values()).count(2) == 1  # the nacked one ran again, once
    for task_id, (status, output) in found.items():
        assert status == "succeeded" and output["attempt"] == outputs[task_id]
    assert (stats.queued, stats.in_flight) == (0, 0)


def test_direct_replies_through_cut_bytes_match_a_plain_subscription(nats_server: Any) -> None:
    """Messages with header blocks (plain and with a status line), reply subjects, unicode and
    protocol text in payloads, sized up to the server's limit, reach a ``Direct`` subscription
    of a client reading cut bytes exactly as a plain nats-py client reading whole ones sees
    them; the client's counters count each once."""

    async def scenario(proxied: str, direct_url: str) -> tuple[list[Any], list[Any], int, int]:
        fast = await nats.connect(proxied)
        plain = await nats.connect(direct_url)
        try:
            replies.read_directly(fast)
            fast._parse_header_lines = replies.header_lines  # type: ignore[method-assign]
            got: list[Any] = []
            await fast.subscribe("rv.>", future=replies.Direct(got.append))
            expected = await plain.subscribe("rv.>")
            await flush_in_order(fast)
            await flush_in_order(plain)
            limit = fast.max_payload
            sent = [
                (b"", None, ""),
                (b"MSG rv.x 1 5\r\nhello\r\n", {"A": "b"}, "r.1"),
                ("é☃".encode() * 100, {"Nats-Expected-Last-Subject-Sequence": "0", "Value": "Ü ☃"}, ""),
                (b"y" * (limit - 200), {"K": "v" * 50}, "r.2"),
                (b"z" * 70_000, None, ""),
                (b"", {"Status": "ignored"}, ""),
            ]
            for data, headers, reply in sent:
                await plain.publish("rv.a", data, reply=reply, headers=headers)
            # A prebuilt block, sent as it is.
            replies.send(plain, "rv.b", b"block", "", replies.header_block({"X": "1", "Y": " 2 "}))
            await flush_in_order(plain)
            # Header blocks nats-py would not write: names not ASCII or holding spaces, lines
            # without a colon, values not UTF-8, the same name twice (a raw client's HPUB).
            odd = [b"NATS/1.0\r\n\xc3\x9cber: 1\r\nA B: 2\r\nnocolon\r\nV: \xff\xfe\r\nV: again\r\n :x\r\n\r\n",
                   b"NATS/1.0\r\n\xc3\x9cber: 3\r\n\tT\t:\t4\r\n\r\n",
                   b"NATS/1.0 503\r\n\r\n"]
            await asyncio.get_running_loop().run_in_executor(None, _raw_publish, direct_url, "rv.c", odd)
            wanted = [await expected.next_msg(timeout=10) for _ in range(len(sent) + 1 + len(odd))]
            while len(got) < len(wanted):  # (bounded by run()'s timeout)
                await asyncio.sleep(0.025)
            assert fast.stats["reconnects"] == 0
            def summary(m: Any) -> tuple[Any, ...]:  # (readable when they differ)
                return m.subject, m.reply, len(m.data), hashlib.sha1(m.data).hexdigest()[:12], m.headers

            return [summary(m) for m in got], [summary(m) for m in wanted], fast.stats["in_msgs"], len(wanted)
        finally:
            await fast.close()
            await plain.close()

    with _ChoppingProxy(nats_server.port, 5, largest=300) as proxy:
        got, wanted, in_msgs, count = run(scenario(f"nats://127.0.0.1:{proxy.port}", nats_server.url), 60)
    # (The server keeps each publisher's order, not an order across publishers: rv.a and rv.b
    # come from one client, rv.c from another.)
    assert len(got) == len(wanted)
    for subject in ("rv.a", "rv.b", "rv.c"):
        assert [m for m in got if m[0] == subject] == [m for m in wanted if m[0] == subject]
    assert in_msgs == count


def test_connections_reset_mid_traffic_lose_no_task_and_mix_no_bytes(nats_server: Any) -> None:
    """The client's connection is reset (TCP RST, mid-read: a message may be cut) three times
    while tasks are enqueued, claimed and acked through it with hundreds-of-kilobyte
    payloads: after each reconnect the reading starts clean (no bytes of the old connection
    read with the new one's), every task ends succeeded with its own output, and the
    queue is empty. Calls failing while the connection is down are retried, as a worker does."""
    from distributed_agents.core.errors import BackendUnavailableError, LeaseLostError
    from support.fault_proxy import FaultProxy

    async def retried(call: Any) -> Any:
        for _ in range(200):
            try:
                return await call()
            except BackendUnavailableError:
                await asyncio.sleep(0.05)
        raise AssertionError("the backend never came back")

    async def scenario(proxy: FaultProxy) -> tuple[dict[str, Any], Any, int]:
        url = proxy.url("nats")
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"rst{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        rng = random.Random(7)
        try:
            ids = [f"t{i}" for i in range(24)]
            payloads = {i: {"blob": i * (50_000 if n % 3 == 0 else 3), "n": n} for n, i in enumerate(ids)}
            resets = 0
            for i in ids:
                await retried(lambda i=i: queue.enqueue(Task(i, "wf", "n", "alpha", payloads[i])))
            done: set[str] = set()
            while len(done) < len(ids):
                claims = await retried(lambda: queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1))
                for claim in claims:
                    assert claim.task.payload == payloads[claim.task.id]  # never bytes of another message
                    if resets < 3 and rng.random() < 0.2:
                        proxy.reset()
                        resets += 1
                    try:
                        await retried(lambda c=claim: queue.ack(c, {"n": c.task.payload["n"]}))
                    except LeaseLostError:
                        continue  # its lease ran out meanwhile: delivered again
                    done.add(claim.task.id)
            found: dict[str, Any] = {}
            while len(found) < len(ids):
                found.update(await retried(lambda: queue.wait_results([i for i in ids if i not in found], timeout=5)))
            return ({k: (r.status, r.output) for k, r in found.items()}, await retried(lambda: queue.stats("alpha")),
                    resets)
        finally:
            await backend.close()

    with FaultProxy(nats_server.port) as proxy:
        found, stats, resets = run(scenario(proxy), 110)
    assert resets >= 1
    assert found == {f"t{n}": ("succeeded", {"n": n}) for n in range(24)}
    assert (stats.queued, stats.in_flight) == (0, 0)


@pytest.mark.parametrize("room", [0, 40, 90, 160, 400])
def test_tasks_and_results_sized_at_the_servers_limit_fail_cleanly_or_go_through(nats_server: Any, room: int) -> None:
    """A task payload, and then a result, whose bytes come within ``room`` bytes of the
    server's max_payload (where the header blocks written beside them - message ids, expected
    revisions - decide whether the message fits): each call either works (the task reads back
    the same) or raises one of the library's errors; the connection is never closed by the
    server for it (the next small call works, no reconnect)."""
    from distributed_agents.core.errors import DistributedAgentsError

    async def scenario(url: str) -> list[str]:
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"big{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        outcomes = []
        try:
            nc = queue._conn.nc  # noqa: SLF001
            limit = nc.max_payload
            reconnects = nc.stats["reconnects"]
            filler = "x" * (limit - room - 80)
            try:
                await queue.enqueue(Task("big", "wf", "n", "alpha", {"f": filler}))
                outcomes.append("enqueued")
            except DistributedAgentsError as exc:
                outcomes.append(f"refused {type(exc).__name__}")
            await queue.enqueue(Task("small", "wf", "n", "alpha", {}))
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=2)
            for claim in claims:
                if claim.task.id == "big":
                    assert claim.task.payload == {"f": filler}
                try:
                    await queue.ack(claim, {"f": filler})
                    outcomes.append(f"acked {claim.task.id}")
                except DistributedAgentsError as exc:
                    outcomes.append(f"ack refused {type(exc).__name__}")
            await queue.enqueue(Task("after", "wf", "n", "alpha", {}))
            assert [c.task.id for c in await queue.claim(["alpha"], worker_id="w")] == ["after"]
            assert nc.stats["reconnects"] == reconnects, outcomes
            return outcomes
        finally:
            await backend.close()

    outcomes = run(scenario(nats_server.url), 60)
    assert outcomes, outcomes


def test_a_task_near_the_servers_limit_can_be_dead_lettered(nats_server: Any) -> None:
    """A task whose dead letter could be over the server's max_payload is refused at enqueue
    (``PayloadTooLargeError`` with its id, node type, size and limit; nothing stored). A task
    just at that limit fails for good after 9 failed attempts, each with a 1 MB error text:
    ``nack`` dead-letters it (False), its letter is listed with the whole task, the stats
    count it dead, not in flight, and ``requeue_dead_letter`` brings it back."""
    from distributed_agents.core.codec import encode
    from distributed_agents.core.errors import PayloadTooLargeError
    from distributed_agents.core.ports.task_queue import task_to_dict

    async def scenario(url: str) -> tuple[Any, ...]:
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"dl{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        try:
            filler = "x" * (queue._conn.nc.max_payload - 300)  # noqa: SLF001
            try:
                await queue.enqueue(Task("big", "wf", "n", "alpha", {"f": filler}))
                refused: Any = None
            except PayloadTooLargeError as exc:
                refused = exc
            after_refusal = await queue.stats("alpha"), await queue.get_result("big")
            base = len(encode(task_to_dict(Task("big", "wf", "n", "alpha", {"f": ""}, max_attempts=9, created_at=1.0))))
            task = Task("big", "wf", "n", "alpha", {"f": "x" * (refused.limit - base)}, max_attempts=9, created_at=1.0)
            assert len(encode(task_to_dict(task))) == refused.limit
            assert await queue.enqueue(task)
            flags = []
            for attempt in range(9):
                [claim] = await queue.claim(["alpha"], worker_id="w")
                flags.append(await queue.nack(claim, f"attempt {attempt} " + "e" * 1_000_000))
            letters = await queue.dead_letters("alpha")
            dead_stats = await queue.stats("alpha")
            requeued = await queue.requeue_dead_letter("big")
            return refused, after_refusal, flags, letters, dead_stats, requeued, await queue.stats("alpha"), task
        finally:
            await backend.close()

    refused, after_refusal, flags, letters, stats, requeued, requeued_stats, task = run(scenario(nats_server.url), 90)
    assert isinstance(refused, Exception), "a task whose dead letter cannot fit was accepted"
    assert "'big'" in str(refused) and "'alpha'" in str(refused) and "max_payload" in str(refused), refused
    assert refused.size > refused.limit, (refused.size, refused.limit)
    assert (after_refusal[0].queued, after_refusal[0].in_flight, after_refusal[0].dead) == (0, 0, 0)
    assert after_refusal[1] is None
    assert flags == [True] * 8 + [False]
    assert [(letter.task_id, letter.attempts, letter.task) for letter in letters] == [("big", 9, task)]
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
    assert requeued is True
    assert (requeued_stats.queued, requeued_stats.in_flight, requeued_stats.dead) == (1, 0, 0)


def test_a_message_with_a_non_utf8_subject_does_not_stop_the_clients_reader(nats_server: Any) -> None:
    """A stray message on a client's reply inbox with a subject of bytes that are not UTF-8 (a
    raw client may publish one) is dropped (or logged), and the client's next request works."""

    async def scenario(url: str) -> Any:
        backend = NatsBackend(url, BackendOptions.from_url(url, prefix=f"u8{uuid.uuid4().hex[:8]}"))
        await backend.connect()
        queue = backend.task_queue
        try:
            await queue.enqueue(Task("a", "wf", "n", "alpha", {}))  # the reply inbox is made
            inbox = queue._conn.nc._da_inbox  # noqa: SLF001
            raw = b"PUB " + inbox.prefix.encode() + b"\xff\xfe 1\r\nx\r\n"
            host, port = url.rsplit("/", 1)[-1].split(":")
            await asyncio.get_running_loop().run_in_executor(None, _raw_send, host, int(port), raw)
            await asyncio.sleep(0.2)
            await asyncio.wait_for(queue.enqueue(Task("b", "wf", "n", "alpha", {})), 4)
            return await queue.stats("alpha")
        finally:
            await backend.close()

    assert run(scenario(nats_server.url), 60).queued == 2


def _raw_send(host: str, port: int, data: bytes) -> None:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.recv(65536)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n' + data + b"PING\r\n")
        seen = b""
        while b"PONG" not in seen and b"-ERR" not in seen:
            seen += sock.recv(65536)


@pytest.mark.parametrize("text", ["e" * 1_000_000, "\x01" * 50_000, "é☃" * 20_000, "x" * 6_145, ""])
def test_error_texts_of_any_length_are_shortened_at_once(text: str) -> None:
    """``error_history.shortened`` and ``with_error`` (every nack and dead letter runs them) end
    for texts far over what is kept (long ASCII, control characters JSON escapes, long UTF-8),
    keep their start and end, and stay bounded. Run in a child process: a loop that never
    ends fails here instead of hanging the suite."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from distributed_agents.adapters.nats import error_history as e\n"
        "text = sys.stdin.read()\n"
        "short = e.shortened(text)\n"
        "kept = e.with_error(['earlier'], text)\n"
        "assert short == text or (short[:10] == text[:10] and short[-10:] == text[-10:]), short[:80]\n"
        "assert len(short) <= 7 * 1024, len(short)\n"
        "assert kept[-1] == text or kept[-1][:10] == text[:10], kept[-1][:80]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=60,
                          encoding="utf-8")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
