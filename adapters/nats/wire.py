"""A faster reading of the messages a NATS client receives: nats-py's parser, its common case first.

nats-py's ``Parser.parse`` reads a message in two passes of its loop (control line, then
payload), trying a regular expression per protocol operation on the control line, copying
the payload out of its buffer and awaiting a coroutine per message. A worker receives five
messages per task (a pulled task, its record, two write confirmations, an ack's), an
orchestrator six per workflow; that parsing was about a tenth of their CPU.

``install`` puts ``parse`` in front of a client's parser: when nothing is left over from an
earlier read, the whole ``MSG``/``HMSG`` messages at the start of the bytes read are taken
by position (one ``find`` and one ``split`` per message), handed to ``deliver`` (which
takes those of subscriptions it serves at once and returns True) or else to the client's
``_process_msg``, in order. At the first thing it does not take (another operation:
``PING``, ``PONG``, ``INFO``, ``+OK``, ``-ERR``; a control line it does not read; a message
cut by the end of the read) the rest goes to nats-py's own parser, unchanged: what it
reads, how, and the errors it raises are nats-py's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["install"]

# nats-py's parser state between messages (``nats.protocol.parser.AWAITING_CONTROL_LINE``).
_AWAITING_CONTROL_LINE = 1
_CRLF = b"\r\n"

Deliver = Callable[[int, bytes, bytes, bytes, "bytes | None"], bool]


def install(nc: Any, deliver: Deliver, process: Callable[[int, bytes, bytes, bytes, bytes | None], Awaitable[None]]) -> bool:
    """Read ``nc``'s messages with ``parse`` (see the module docstring); False, changing nothing,
    if its parser is not the nats-py one this reads for (no ``buf``/``state``/``parse``)."""
    ps = getattr(nc, "_ps", None)
    original = getattr(ps, "parse", None)
    if ps is None or original is None or not hasattr(ps, "buf") or not hasattr(ps, "state") \
            or getattr(ps, "_da_wire", False):
        return False

    async def parse(data: bytes = b"") -> None:
        buf = ps.buf
        if buf or ps.state != _AWAITING_CONTROL_LINE or not data:
            await original(data)  # a message cut by the last read: nats-py's parser holds it
            return
        data = bytes(data)
        end = len(data)
        pos = 0
        while pos < end:
            eol = data.find(_CRLF, pos)
            if eol < 0:
                break
            op = data[pos:pos + 4]
            if op == b"MSG ":
                args = data[pos + 4:eol].split(b" ")
                if len(args) == 3:
                    subject, sid, size = args
                    reply = b""
                elif len(args) == 4:
                    subject, sid, reply, size = args
                else:
                    break
                header_size = 0
                hsize = b"0"
            elif op == b"HMSG" and data[pos + 4:pos + 5] == b" ":
                args = data[pos + 5:eol].split(b" ")
                if len(args) == 4:
                    subject, sid, hsize, size = args
                    reply = b""
                elif len(args) == 5:
                    subject, sid, reply, hsize, size = args
                else:
                    break
                header_size = -1
            else:
                break
            # (bytes.isdigit is ASCII digits only; an empty token means a doubled space: nats-py's reading)
            if not (size.isdigit() and sid.isdigit() and hsize.isdigit()) or not subject or b"" in args:
                break
            if header_size < 0:
                header_size = int(hsize)
            start = eol + 2
            stop = start + int(size)
            if stop + 2 > end or header_size > stop - start:
                break  # cut by the end of this read (or not a message this reads)
            if header_size:
                headers: bytes | None = data[start:start + header_size]
                payload = data[start + header_size:stop]
            else:
                headers, payload = None, data[start:stop]
            pos = stop + 2
            number = int(sid)
            if not deliver(number, subject, reply, payload, headers):
                await process(number, subject, reply, payload, headers)
                if ps.buf is not buf:
                    return  # the client reset its parser meanwhile (a reconnect): nats-py drops the rest too
        if pos < end:
            await original(data[pos:])

    ps.parse = parse
    ps._da_wire = True
    return True
