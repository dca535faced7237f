"""Requests whose replies come to one shared inbox subscription per client.

nats-py's ``request`` (and so ``js.publish``) spends more CPU per call than the round
trip itself on a busy client: a random token, a ``wait_for`` and, for replies read with
``next_msg``, a subscription and a task per message. A worker settling hundreds of tasks
a second does several per task. Here a client gets one wildcard subscription
(``<inbox>.*``, made once); a request publishes with reply ``<inbox>.<n>`` and waits on
a future that the subscription's callback completes. A request may take one reply
(``request``, ``js_publish``) or a stream of them ended by a status message
(``collect``: a pull's messages, a batched direct get). Counts and ordering are
nats-py's own: every request is one ``publish`` with a reply subject on the client.

Timeouts are kept per client too: a request notes its deadline, and one timer, running
only while requests wait, times out those past it every ``_SWEEP`` seconds (a request
so waits at most ``timeout + _SWEEP``), instead of a timer per request, which cost a
heap push and a cancellation per round trip.

Errors are nats-py's, so ``nats_errors`` maps them as before: ``nats.errors.TimeoutError``
when no (final) reply came in time, ``NoRespondersError`` / ``NoStreamResponseError``
for a 503 status, ``nats.js.errors.APIError`` for a JetStream error reply.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from distributed_agents.adapters.nats import wire

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["Direct", "PubAck", "header_block", "Started", "chain_answers", "chain_now", "chain_ready", "collect", "header_lines", "js_publish", "js_publish_chain", "js_publish_many",
           "pub_ack_of", "read_directly", "request", "send", "start"]

log = logging.getLogger("distributed_agents.adapters.nats")

# A JetStream publish's answer names its stream sequence so (stream names hold no quotes).
_SEQ = re.compile(rb'"seq":\s*(\d+)')
_DUPLICATE = re.compile(rb'"duplicate":\s*true')
# Seconds between two looks for requests past their deadline (while any wait).
_SWEEP = 0.1


class PubAck:
    """A JetStream publish acknowledgement: the stream sequence, and whether it was a duplicate."""

    __slots__ = ("duplicate", "seq")

    def __init__(self, seq: int, duplicate: bool) -> None:
        self.seq = seq
        self.duplicate = duplicate


class _Inbox:
    """The shared reply subscription of one client and the requests waiting on it."""

    def __init__(self) -> None:
        self.prefix = ""
        self.sub: Any = None
        self.waiting: dict[str, Callable[[Msg], None] | _Slot] = {}
        self.counter = itertools.count(1)
        self.lock = asyncio.Lock()
        # token -> (loop time after which it times out, the future that then fails).
        self.deadlines: dict[str, tuple[float, asyncio.Future[Any] | _Slot]] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        # Pulls (see ``collect``): a subscription of their own, one pull at a time.
        self.pull_prefix = ""
        self.pull_sub: Any = None
        self.pull_lock = asyncio.Lock()
        # The pull under way: its reply token, its handler, and its (stream, consumer).
        self.pulling: tuple[str, Callable[[Msg], None], tuple[str, str]] | None = None

    async def ensure(self, nc: Client) -> None:
        if self.sub is not None:
            return
        async with self.lock:
            if self.sub is None:
                # Every JetStream answer read on this client carries headers (a direct get
                # seven): parse them the same way, faster (see ``header_lines``).
                if getattr(type(nc), "_parse_header_lines", None) is not None:
                    nc._parse_header_lines = header_lines  # type: ignore[method-assign]
                    read_directly(nc)
                prefix = nc.new_inbox()
                self.prefix = prefix + "."
                self.sub = await nc.subscribe(f"{prefix}.*", future=Direct(self._on_reply, self._on_answer))

    async def ensure_pulls(self, nc: Client) -> None:
        if self.pull_sub is not None:
            return
        async with self.lock:
            if self.pull_sub is None:
                prefix = nc.new_inbox()
                self.pull_sub = await nc.subscribe(f"{prefix}.*", future=Direct(self._on_pulled))
                self.pull_prefix = prefix + "."

    def _on_pulled(self, msg: Msg) -> None:
        pulling = self.pulling
        if pulling is None:
            return  # late, after its pull gave up: undelivered, it comes again after AckWait
        token, handler, ours = pulling
        if msg.subject.startswith(self.pull_prefix) and msg.subject[len(self.pull_prefix):] != token:
            return  # the status that ends an earlier pull
        if msg.reply and msg.reply.startswith("$JS.ACK.") and _delivered_by(msg.reply) != ours:
            # A delivery of another consumer, whose pull gave up before it came (a stalled
            # server): not this pull's. Left unacknowledged, it comes again after its AckWait.
            return
        handler(msg)

    def _on_reply(self, msg: Msg) -> None:
        handler = self.waiting.get(msg.subject[len(self.prefix):])
        if handler is not None:
            handler(msg)

    def _on_answer(self, subject: bytes, data: bytes) -> bool:
        """A reply without headers, as the reader read it (``Direct.answer``): the first
        answer of a ``_Slot`` (a JetStream publish's: the common reply of a task's path) is
        handed over as its bytes, no message built; False for any other (``_on_reply``
        then gets it as a message)."""
        try:
            token = subject.decode()[len(self.prefix):]
        except UnicodeDecodeError:
            return False
        handler = self.waiting.get(token)
        if type(handler) is _Slot and not handler.following:
            handler.on_answer(data)
            return True
        return False

    def open(self, handler: Callable[[Msg], None] | _Slot) -> tuple[str, str]:
        token = str(next(self.counter))
        self.waiting[token] = handler
        return token, self.prefix + token

    def expire(self, token: str, future: asyncio.Future[Any] | _Slot, timeout: float) -> None:
        """Fail ``future`` with nats-py's TimeoutError once ``timeout`` seconds passed (give
        or take ``_SWEEP``) unless ``close(token)`` came first."""
        loop = future.get_loop()
        self.deadlines[token] = (loop.time() + timeout, future)
        if self.sweeper is None:
            self.sweeper = loop.call_later(min(_SWEEP, timeout), self._sweep, loop)

    def close(self, token: str) -> None:
        self.waiting.pop(token, None)
        self.deadlines.pop(token, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweeper = None
        now = loop.time()
        for token, (deadline, future) in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[token]
                _time_out(future)
        if self.deadlines:
            self.sweeper = loop.call_later(_SWEEP, self._sweep, loop)


_CRLF = b"\r\n"
_SPACE = re.compile(r"\s")


def header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's ``Client._parse_header_lines`` (2.x), same result, a fraction of its CPU:
    ``Name: Value`` per line; a line without a colon, a name that is not ASCII or holds
    whitespace (``str.isspace``, as nats-py checks it character by character) is skipped;
    values stripped and decoded as UTF-8 with replacement characters."""
    out: dict[str, str] = {}
    names = _HEADER_NAMES
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = names[name] if name in names else _header_name(name)
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


# Raw header name (as it stands before its colon) -> the name ``header_lines`` keeps, None for
# one it skips: a server sends the same few names on every message.
_HEADER_NAMES: dict[bytes, str | None] = {}


def _header_name(name: bytes) -> str | None:
    """``header_lines``' reading of one name: stripped ASCII without whitespace, else None (remembered, for up to 256 names)."""
    try:
        key: str | None = name.strip().decode("ascii")
    except UnicodeDecodeError:
        key = None
    if key is not None and _SPACE.search(key) is not None:
        key = None
    if len(_HEADER_NAMES) < 256:
        _HEADER_NAMES[name] = key
    return key


def _errors() -> Any:
    """``nats.errors``, imported where an error is raised (the adapter imports without nats-py;
    an import statement on every message of a hot path costs more than the message's checks)."""
    import nats.errors

    return nats.errors


def _has_whitespace(subject: str) -> bool:
    """Whether ``subject`` holds a space, tab, CR or LF (what nats-py refuses): four substring
    tests, a fraction of a regex search's cost on the long subjects of every request
    (about 3% of a worker's CPU per task)."""
    return " " in subject or "\t" in subject or "\r" in subject or "\n" in subject
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


# Header name -> the start of its line (``Name: ``): names are checked once, as nats-py checks them.
_HEADER_STARTS: dict[str, str] = {}


def _header_start(name: str) -> str:
    """``"<name>: "`` for a header name nats-py accepts (stripped); "" for one it skips (blank);
    ``BadHeaderError`` otherwise. Remembered (for the few names a process uses)."""
    stripped = name.strip()
    if not stripped:
        return ""
    if not _HEADER_KEY.fullmatch(stripped):
        raise _errors().BadHeaderError(stripped)
    if len(_HEADER_STARTS) < 1024:
        _HEADER_STARTS[name] = f"{stripped}: "
    return f"{stripped}: "


class _Kick:
    """What ``send`` puts on the client's flush queue: nats-py's flusher only asks ``done()``
    of what it takes (to complete a ``flush``'s future), and this one is done already."""

    __slots__ = ()

    def done(self) -> bool:
        return True


_KICK = _Kick()


def header_block(headers: dict[str, str]) -> bytes:
    """The header block ``send`` writes for ``headers`` (``NATS/1.0``, ``Name: value`` lines, a
    blank line; names checked as nats-py checks them: ``BadHeaderError``; a blank name
    skipped; line breaks in values made spaces). ``send`` takes such a block, built once by
    the caller (here, or by a writer of a few fixed names such as ``kv.cas_headers``), as it
    is in place of a headers dict."""
    lines = ["NATS/1.0\r\n"]
    for name, value in headers.items():
        start = _HEADER_STARTS.get(name)
        if start is None:
            start = _header_start(name)
            if not start:
                continue
        value = value.strip()
        if "\r" in value or "\n" in value:  # rare: str.translate costs more than the rest of the block
            value = value.translate(_HEADER_VALUE_NEWLINES)
        lines.append(f"{start}{value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


def send(nc: Client, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | bytes | None = None) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)`` without its coroutines:
    the same protocol bytes, checks and errors (``BadSubjectError``, ``BadHeaderError``,
    ``MaxPayloadError`` - also for a payload that fits only without its header block, which
    the server counts and nats-py does not -, ``ConnectionClosedError``, ``ConnectionDrainingError``,
    ``OutboundBufferLimitError`` while reconnecting with a full buffer), queued on the
    client's pending buffer and its flusher woken, as ``publish`` does. ``publish`` builds
    three coroutines, checks the client's state through five properties and builds the
    header block byte by byte: about a fifth of the client's CPU per message here. Callable
    from a reply handler (it never waits)."""
    if not subject or _has_whitespace(subject) or (reply and _has_whitespace(reply)):
        raise _errors().BadSubjectError
    status = nc._status  # noqa: SLF001 - nats-py has no non-awaiting publish
    if status == nc.CLOSED:
        raise _errors().ConnectionClosedError
    if status == nc.DRAINING_PUBS:
        raise _errors().ConnectionDrainingError
    size = len(payload)
    connected = status in (nc.CONNECTED, nc.DRAINING_SUBS)
    if not connected and (nc._max_pending_size <= 0  # noqa: SLF001
                          or size + nc._pending_data_size > nc._max_pending_size):  # noqa: SLF001
        raise _errors().OutboundBufferLimitError
    if size > nc._max_payload:  # noqa: SLF001
        raise _errors().MaxPayloadError
    if headers is None:
        command = f"PUB {subject} {reply} {size}\r\n".encode() + payload + b"\r\n"
    else:
        block = headers if type(headers) is bytes else header_block(headers)  # type: ignore[arg-type]
        if size + len(block) > nc._max_payload:  # noqa: SLF001
            # The server counts the header block too (nats-py does not): over it, the server
            # would answer "Maximum Payload Violation" and close the connection.
            raise _errors().MaxPayloadError
        command = f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n".encode() + block + payload + b"\r\n"
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    nc._pending.append(command)  # noqa: SLF001
    nc._pending_data_size += len(command)  # noqa: SLF001
    if not connected:
        return  # sent by nats-py once reconnected, with the rest of its buffer
    flusher, queue = nc._flusher_task, nc._flush_queue  # noqa: SLF001
    if flusher is None or flusher.done() or queue is None:
        # nats-py writes inline then too (its flusher was cancelled from outside).
        nc._transport.writelines(nc._pending[:])  # type: ignore[union-attr]  # noqa: SLF001
        nc._pending = []  # noqa: SLF001
        nc._pending_data_size = 0  # noqa: SLF001
    elif queue.empty():
        queue.put_nowait(_KICK)  # type: ignore[arg-type]


class Direct:
    """Stands in for the future of nats-py's single-reply subscriptions (``subscribe(future=)``):
    the client's reader hands every message to it at once (``set_result``), and it calls
    ``handler``. A callback subscription (``cb=``) would queue each message for a task of
    its own to pick up: an event-loop pass and a task switch per reply, a third of the
    client's CPU per round trip on a busy worker. ``handler`` runs inside the reader, so it
    must not block; an error it raises is logged rather than stopping the reader."""

    __slots__ = ("answer", "handler")

    def __init__(self, handler: Callable[[Msg], None], answer: Callable[[bytes, bytes], bool] | None = None) -> None:
        self.handler = handler
        # Offered a message without headers first, as (subject, payload) bytes, by the reader
        # (``read_directly``): True when it took it (no message is built then).
        self.answer = answer

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        try:
            self.handler(msg)
        except Exception:  # a bug here must not stop the client's reader
            log.exception("handling a reply on %s failed", msg.subject)


def read_directly(nc: Client) -> None:
    """Hand the messages of ``nc``'s ``Direct`` subscriptions to their handlers from the reader
    without nats-py's message processing around them (a coroutine for the headers, a
    builder, the future's checks: a few calls per message on the hot path of every reply).
    The same message object, headers and counters: a message with plain headers (no
    status line) has them read by ``header_lines``, as nats-py reads them on this client;
    any other header block goes through nats-py's own ``_process_headers``. Other
    subscriptions (callbacks, iterators, JetStream's) keep nats-py's path. Once per client,
    and only where nats-py parses headers itself (no ``fast_mail_parser``)."""
    import nats.aio.client

    if getattr(nc, "_da_direct", False) or getattr(nats.aio.client, "parse_email", None) is not None:
        return
    original = nc._process_msg  # noqa: SLF001
    subs = nc._subs  # noqa: SLF001
    stats = nc.stats
    make = nc.msg_class
    # Built with positional arguments where the class is nats-py's dataclass with the fields in
    # the order this knows (keywords cost a dict per message, half of building it).
    positional = _positional_msg(make)

    def direct(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """Hand a message of a ``Direct`` subscription to it now; False if it is not for one, or
        its headers carry a status line (``process_msg`` reads those, awaiting nats-py's reading)."""
        sub = subs.get(sid)
        future = None if sub is None else sub._future  # noqa: SLF001
        if type(future) is not Direct or sub._jsi is not None or sub._max_msgs:  # noqa: SLF001
            return False
        if not headers:
            parsed = None
            answer = future.answer
            if answer is not None and not reply:  # (an answer to a request carries no reply subject)
                try:
                    taken = answer(subject, data)
                except Exception:  # a bug here must not stop the client's reader
                    log.exception("handling a reply on %r failed", subject)
                    taken = True
                if taken:
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(data)
                    sub._received += 1  # noqa: SLF001
                    return True
        elif headers.startswith(_PLAIN_HEADERS):
            parsed = header_lines(headers[len(_PLAIN_HEADERS):]) or None
        else:
            return False
        try:
            text, answer = subject.decode(), reply.decode()
        except UnicodeDecodeError:
            _undecodable(subject, reply)
            return True
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sub._received += 1  # noqa: SLF001
        future.set_result(make(nc, text, answer, data, parsed, None, False, sid) if positional else
                          make(subject=text, reply=answer, data=data, headers=parsed, _client=nc, _sid=sid))
        return True

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        try:
            await read(sid, subject, reply, data, headers)
        except UnicodeDecodeError:
            # A subject (or reply subject, or header block) that is not UTF-8, which a raw
            # client can publish to any subject we listen on: nats-py's reading raises, and
            # raised here it would end the client's read loop (every request then times out).
            _undecodable(subject, reply)

    async def read(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        sub = subs.get(sid)
        future = None if sub is None else sub._future  # noqa: SLF001
        if type(future) is not Direct or sub._jsi is not None or sub._max_msgs:  # noqa: SLF001
            await original(sid, subject, reply, data, headers)
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sub._received += 1  # noqa: SLF001
        if not headers:
            parsed = None
        elif headers.startswith(_PLAIN_HEADERS):
            parsed = header_lines(headers[len(_PLAIN_HEADERS):]) or None
        else:
            parsed = await nc._process_headers(headers)  # noqa: SLF001 - a status line: nats-py's reading
        future.set_result(make(subject=subject.decode(), reply=reply.decode(), data=data, headers=parsed,
                               _client=nc, _sid=sid))

    nc._process_msg = process_msg  # type: ignore[method-assign]
    nc._da_direct = True  # type: ignore[attr-defined]
    # Whole messages read by position, those of Direct subscriptions handed over without a coroutine.
    wire.install(nc, direct, process_msg)


# nats-py's ``Msg`` fields, in order (its dataclass ``__init__`` takes them so).
_MSG_FIELDS = ("_client", "subject", "reply", "data", "headers", "_metadata", "_ackd", "_sid")


def _positional_msg(make: Any) -> bool:
    """Whether ``make(client, subject, reply, data, headers, None, False, sid)`` builds the message
    ``make(subject=, reply=, data=, headers=, _client=, _sid=)`` does: a dataclass with
    ``_MSG_FIELDS`` as its fields, in that order, the two left at their defaults None and False."""
    import dataclasses

    if not dataclasses.is_dataclass(make):
        return False
    fields = dataclasses.fields(make)
    return (tuple(f.name for f in fields) == _MSG_FIELDS and fields[5].default is None and fields[6].default is False
            and all(f.init for f in fields))


def _undecodable(subject: bytes, reply: bytes) -> None:
    log.warning("NATS: dropped a message whose subject %r (reply %r) is not UTF-8 (not one this library sends)",
                bytes(subject)[:120], bytes(reply)[:120])


# A header block without a status line starts so.
_PLAIN_HEADERS = b"NATS/1.0\r\n"

_INBOXES: weakref.WeakKeyDictionary[Any, _Inbox] = weakref.WeakKeyDictionary()


async def _inbox(nc: Client) -> _Inbox:
    # Kept on the client too: a weak-keyed lookup makes a weak reference per call.
    inbox: _Inbox | None = getattr(nc, "_da_inbox", None)
    if inbox is None:
        inbox = _INBOXES.get(nc)
        if inbox is None:
            inbox = _INBOXES[nc] = _Inbox()
        nc._da_inbox = inbox  # type: ignore[attr-defined]
    if inbox.sub is None:
        await inbox.ensure(nc)
    return inbox


def _time_out(future: asyncio.Future[Any] | _Slot) -> None:
    import nats.errors

    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


async def request(nc: Client, subject: str, payload: bytes = b"", *, headers: dict[str, str] | bytes | None = None,
                  timeout: float = 5.0) -> Msg:
    """Publish with a reply subject and wait up to ``timeout`` seconds for the one reply."""
    inbox = await _inbox(nc)
    future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    def on_reply(msg: Msg) -> None:
        if not future.done():
            future.set_result(msg)

    token, reply = inbox.open(on_reply)
    # The inbox's shared sweeper rather than wait_for or a timer per request: the same bound.
    inbox.expire(token, future, timeout)
    try:
        send(nc, subject, payload, reply, headers)
        msg = await future
    finally:
        inbox.close(token)
    if msg.headers and msg.headers.get("Status") == "503":
        raise _errors().NoRespondersError
    return msg


class Started:
    """A request sent by ``start``, its reply awaited later by ``reply`` (once)."""

    __slots__ = ("_future", "_inbox", "_no_responders", "_token")

    def __init__(self, inbox: _Inbox, token: str, future: asyncio.Future[Msg],
                 no_responders: Callable[[], Awaitable[Msg]] | None = None) -> None:
        self._inbox, self._token, self._future = inbox, token, future
        self._no_responders = no_responders

    async def reply(self) -> Msg:
        """``request``'s result (and errors) for this request; with ``start``'s ``no_responders``,
        what that returns (or raises) in place of ``NoRespondersError``."""
        try:
            msg = await self._future
        finally:
            self._inbox.close(self._token)
        if msg.headers and msg.headers.get("Status") == "503":
            if self._no_responders is not None:
                return await self._no_responders()
            raise _errors().NoRespondersError
        return msg

    def drop(self) -> None:
        """Stop waiting for the reply (it is ignored when it comes)."""
        self._inbox.close(self._token)


async def start(nc: Client, subject: str, payload: bytes = b"", *, timeout: float = 5.0,
                no_responders: Callable[[], Awaitable[Msg]] | None = None) -> Started:
    """``request``, sent now, its reply awaited later (``Started.reply``), so that other
    requests go out meanwhile and their round trips overlap; ``drop`` it if not awaited.
    ``no_responders``: asked for the reply when nobody answered the request (a 503 status)."""
    inbox = await _inbox(nc)
    future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
    token, reply = inbox.open(functools.partial(_answer, future))
    inbox.expire(token, future, timeout)
    try:
        send(nc, subject, payload, reply)
    except BaseException:
        inbox.close(token)
        raise
    return Started(inbox, token, future, no_responders)


async def js_publish(nc: Client, subject: str, payload: bytes, *, headers: dict[str, str] | bytes | None = None,
                     timeout: float = 5.0) -> PubAck:
    """A JetStream publish: stored when this returns (``js.publish``'s contract and errors)."""
    try:
        msg = await request(nc, subject, payload, headers=headers, timeout=timeout)
    except Exception as exc:
        import nats.js.errors

        if isinstance(exc, _errors().NoRespondersError):
            raise nats.js.errors.NoStreamResponseError from None
        raise
    return _ack_of(msg)


def _ack_of(msg: Msg) -> PubAck:
    """The ``PubAck`` a JetStream publish's answer ``msg`` carries; raises its ``APIError`` subclass."""
    return _ack_of_data(msg.data)


def _pub_ack_of_data(data: bytes) -> PubAck | Exception:
    """``pub_ack_of`` for the payload of an answer without headers."""
    try:
        return _ack_of_data(data)
    except Exception as error:  # an API error, or an answer that is not one
        return error


def _ack_of_data(data: bytes) -> PubAck:
    """``_ack_of`` of an answer's payload ``data``."""
    found = _SEQ.search(data) if b'"error"' not in data else None
    if found is not None:
        # The common answer, {"stream":..,"seq":N[,"duplicate":true]}, read without json.loads.
        return PubAck(int(found.group(1)), _DUPLICATE.search(data) is not None)
    body = json.loads(data)
    if "error" in body:
        import nats.js.errors

        raise nats.js.errors.APIError.from_error(body["error"])
    return PubAck(int(body["seq"]), bool(body.get("duplicate")))


async def js_publish_many(nc: Client, items: Sequence[tuple[str, bytes, dict[str, str] | bytes | None]], *,
                          timeout: float = 5.0) -> list[PubAck | Exception]:
    """JetStream publishes of ``items`` (subject, payload, headers), all sent before any
    answer is awaited: for each item, in order, its ``PubAck`` or the exception
    ``js_publish`` would raise for it (a timeout, an API error). The same round trips as
    gathering ``js_publish`` calls, without a task per publish. An error sending (the
    connection closed) is raised: then some items may have been sent, as with gather.
    """
    return [first for first, _ in await js_publish_chain(nc, items, timeout=timeout)]


async def js_publish_chain(
    nc: Client, items: Sequence[tuple[str, bytes, dict[str, str] | bytes | None]],
    follow: Callable[[int, PubAck], Any] | None = None, *, timeout: float = 5.0,
) -> list[tuple[PubAck | Exception, Msg | Exception | None]]:
    """``js_publish_many``, each publish optionally followed by a second request sent as soon
    as its answer comes, from the client's reader (no task woken in between): for item
    ``i`` whose publish was stored, ``follow(i, ack)`` returns the request to send next
    (subject, payload, headers) or None. Returns, per item, in order: the publish's
    ``PubAck`` (or the exception ``js_publish`` would raise) and the follow-up's reply
    (a message, the exception ``request`` would raise for it - a timeout, no responders -
    or what ``follow`` raised), None when none was sent. The caller wakes once, when every
    answer is in. ``follow`` runs in the reader: it must not block.
    """
    inbox = await _inbox(nc)
    batch = _Batch(asyncio.get_running_loop().create_future(), len(items), follow)
    try:
        for index, (subject, payload, headers) in enumerate(items):
            send(nc, subject, payload, _open_slot(batch, index, nc, inbox, timeout).reply, headers)
        if batch.left:
            await batch.waiter
    finally:
        for slot in batch.slots:
            inbox.close(slot.token)
    return [(slot.first, slot.second) for slot in batch.slots]  # type: ignore[misc]


def _open_slot(batch: _Batch, index: int, nc: Client, inbox: _Inbox, timeout: float) -> _Slot:
    """Item ``index``'s slot in ``batch``: its reply subject opened in ``inbox`` (``slot.reply``), expiring after ``timeout`` s."""
    slot = _Slot(batch, index, nc, inbox, timeout)
    batch.slots.append(slot)
    slot.token, slot.reply = inbox.open(slot)
    inbox.expire(slot.token, slot, timeout)
    return slot


def chain_ready(nc: Client) -> bool:
    """Whether ``chain_now`` can send on ``nc`` now (its reply inbox is made)."""
    inbox: _Inbox | None = getattr(nc, "_da_inbox", None)
    return inbox is not None and inbox.sub is not None


def chain_now(nc: Client, items: Sequence[tuple[str, bytes, dict[str, str] | bytes | None]],
              follow: Callable[[int, PubAck], Any] | None, waiter: asyncio.Future[None], *,
              timeout: float = 5.0) -> _Batch | None:
    """``js_publish_chain``'s requests, sent now, without a coroutine: for callers that gather
    the publishes of several waiters (who then share one ``waiter``). None, sending nothing,
    if the client's reply inbox is not made yet (``js_publish_chain`` makes it). ``waiter``
    completes once every item is answered (or timed out); then ``chain_answers`` gives the
    answers, as ``js_publish_chain`` returns them. An item whose send raises (a payload over
    the server's limit, say) has that exception as its first answer; the others are sent."""
    inbox: _Inbox | None = getattr(nc, "_da_inbox", None)
    if inbox is None or inbox.sub is None:
        return None
    batch = _Batch(waiter, len(items), follow)
    for index, (subject, payload, headers) in enumerate(items):
        slot = _open_slot(batch, index, nc, inbox, timeout)
        try:
            send(nc, subject, payload, slot.reply, headers)
        except Exception as error:
            inbox.close(slot.token)
            slot.first = error
            slot._settle()
    if not items and not waiter.done():
        waiter.set_result(None)
    return batch


def chain_answers(batch: _Batch) -> list[tuple[PubAck | Exception, Msg | Exception | None]]:
    """The answers of a ``chain_now`` batch whose waiter completed (its reply tokens closed)."""
    inbox = batch.slots[0].inbox if batch.slots else None
    if inbox is not None:
        for slot in batch.slots:
            inbox.close(slot.token)
    return [(slot.first, slot.second) for slot in batch.slots]  # type: ignore[misc]


class _Batch:
    """The requests of one ``js_publish_chain`` call: ``waiter`` completes when ``left`` is 0."""

    __slots__ = ("follow", "left", "slots", "waiter")

    def __init__(self, waiter: asyncio.Future[None], left: int, follow: Callable[[int, PubAck], Any] | None) -> None:
        self.waiter, self.left, self.follow = waiter, left, follow
        self.slots: list[_Slot] = []

    def settled(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.waiter.done():
            self.waiter.set_result(None)


class _Slot:
    """One item of a ``_Batch``: stands in for a request's future in the inbox (its handler
    and its deadline: ``done``, ``set_exception``, ``get_loop``)."""

    __slots__ = ("batch", "first", "following", "inbox", "index", "is_done", "nc", "reply", "second", "timeout", "token")

    def __init__(self, batch: _Batch, index: int, nc: Client, inbox: _Inbox, timeout: float) -> None:
        self.batch: _Batch | None = batch
        self.index, self.nc, self.inbox, self.timeout = index, nc, inbox, timeout
        self.first: PubAck | Exception | None = None
        self.second: Msg | Exception | None = None
        self.following = self.is_done = False
        self.token = ""
        self.reply = ""  # the subject its answer comes back on (set by _open_slot)

    def done(self) -> bool:
        return self.is_done

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self.batch is not None, "a settled slot has no deadline to keep"
        return self.batch.waiter.get_loop()

    def set_exception(self, error: BaseException) -> None:
        """A deadline passed (the inbox's sweeper): the request waited for fails with ``error``."""
        if self.is_done:
            return
        if self.following:
            self.second = error if isinstance(error, Exception) else Exception(str(error))
        else:
            self.first = error if isinstance(error, Exception) else Exception(str(error))
        self._settle()

    def _settle(self) -> None:
        # Its batch let go of here: slots and their batch would otherwise form a reference
        # cycle, left to the garbage collector with everything they hold (a worker's GC passes
        # were a tenth of its CPU per task). Nothing asks a settled slot for its batch.
        batch, self.batch = self.batch, None
        self.is_done = True
        batch.settled()

    def on_reply(self, msg: Msg) -> None:
        if self.is_done:
            return
        if self.following:
            self.second = _errors().NoRespondersError() if msg.headers and msg.headers.get("Status") == "503" else msg
            self._settle()
            return
        self._answered(pub_ack_of(msg))

    __call__ = on_reply  # the inbox's handler of its reply subject (``_Inbox.open``)

    def on_answer(self, data: bytes) -> None:
        """``on_reply`` for the publish's answer read as bytes (no headers: not a status)."""
        if not self.is_done:
            self._answered(_pub_ack_of_data(data))

    def _answered(self, first: PubAck | Exception) -> None:
        self.first = first
        assert self.batch is not None  # (not settled: answered once)
        follow = self.batch.follow
        if follow is None or not isinstance(self.first, PubAck):
            self._settle()
            return
        try:
            request = follow(self.index, self.first)
            if request is None:
                self._settle()
                return
            subject, payload, headers = request
            # The follow-up's answer comes on the same reply subject (the publish is answered
            # once, and this token serves only this slot): its deadline starts now.
            self.following = True
            self.inbox.expire(self.token, self, self.timeout)
            send(self.nc, subject, payload, self.reply, headers)
        except Exception as error:  # what follow (or sending) raised is this item's second answer
            self.second = error
            self._settle()


def _answer(future: asyncio.Future[Msg], msg: Msg) -> None:
    if not future.done():
        future.set_result(msg)


def pub_ack_of(msg: Msg) -> PubAck | Exception:
    """What ``js_publish`` returns (or raises) for its reply ``msg``."""
    if msg.headers and msg.headers.get("Status") == "503":
        import nats.js.errors

        return nats.js.errors.NoStreamResponseError()
    return _pub_ack_of_data(msg.data)


async def collect(nc: Client, subject: str, payload: bytes, *, limit: int, timeout: float = 5.0,
                  partial_on_timeout: bool = False, own_inbox: bool = False) -> tuple[list[Msg], Msg | None]:
    """Publish a request answered by up to ``limit`` messages, or fewer ended by a status
    message (a header ``Status``, no data). Returns the messages and the status message
    (None if ``limit`` messages came). ``nats.errors.TimeoutError`` if no reply ends it
    within ``timeout`` seconds, unless ``partial_on_timeout`` and some messages came.

    ``own_inbox``: a pull (``subject`` ``...CONSUMER.MSG.NEXT.<stream>.<consumer>``), whose
    messages keep their stream subject, so the shared inbox cannot tell whose they are:
    they come to the client's pull subscription (made once), which serves one pull at a
    time and takes only deliveries of that pull's consumer (their ack subject names it; a
    late one of an earlier pull of another consumer is left to be redelivered); its status
    message (a 404, 408) comes on the pull's own reply subject. Otherwise the replies come
    to the shared inbox.
    """
    inbox = None if own_inbox else await _inbox(nc)
    future: asyncio.Future[Msg | None] = asyncio.get_running_loop().create_future()
    messages: list[Msg] = []

    def on_reply(msg: Msg) -> None:
        if future.done():
            return
        if msg.headers and msg.headers.get("Status") and not msg.data:
            future.set_result(msg)
            return
        messages.append(msg)
        if len(messages) >= limit:
            future.set_result(None)

    if inbox is None:
        pulls = await _inbox(nc)
        await pulls.ensure_pulls(nc)
        async with pulls.pull_lock:
            token = str(next(pulls.counter))
            stream, consumer = subject.rsplit(".", 2)[1:]
            pulls.pulling = (token, on_reply, (stream, consumer))
            timer = future.get_loop().call_later(timeout, _time_out, future)
            try:
                return await _collected(nc, subject, payload, pulls.pull_prefix + token, future, messages,
                                        partial_on_timeout)
            finally:
                timer.cancel()
                pulls.pulling = None
    token, reply = inbox.open(on_reply)
    inbox.expire(token, future, timeout)
    try:
        return await _collected(nc, subject, payload, reply, future, messages, partial_on_timeout)
    finally:
        inbox.close(token)


def _delivered_by(ack_subject: str) -> tuple[str, str]:
    """The (stream, consumer) a delivery's ack subject names: ``$JS.ACK.<stream>.<consumer>...``,
    or with a domain ``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>...`` (12 tokens or more)."""
    tokens = ack_subject.split(".")
    return (tokens[4], tokens[5]) if len(tokens) >= 12 else (tokens[2], tokens[3]) if len(tokens) > 3 else ("", "")


async def _collected(nc: Client, subject: str, payload: bytes, reply: str, future: asyncio.Future[Msg | None],
                     messages: list[Msg], partial_on_timeout: bool) -> tuple[list[Msg], Msg | None]:
    import nats.errors

    send(nc, subject, payload, reply)
    try:
        status = await future
    except asyncio.TimeoutError:  # nats-py's TimeoutError is one
        if partial_on_timeout and messages:
            return list(messages), None
        raise nats.errors.TimeoutError from None
    return list(messages), status
