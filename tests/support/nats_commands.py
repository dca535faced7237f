"""The protocol commands a NATS client writes to its socket, read where every path meets.

The NATS adapter queues some commands without nats-py's ``publish`` (``replies.send``), so
tests that count what a client sends read its transport's writes: ``watch_commands`` calls
``seen(op, subject, reply, payload)`` for each ``PUB``/``HPUB`` (``reply`` "" when there is
none; ``payload`` with its header block) and ``seen("PING", "", "", b"")`` for a flush."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Seen = Callable[[str, str, str, bytes], None]


def watch_commands(nc: Any, seen: Seen) -> None:
    """Have ``seen`` told of every command ``nc`` writes from now on (whole commands: the
    client writes no partial ones)."""
    transport = nc._transport
    write, writelines = transport.write, transport.writelines

    def read(data: bytes) -> None:
        while data:
            line, _, data = data.partition(b"\r\n")
            op, *args = line.decode().split()
            if op == "PING":
                seen(op, "", "", b"")
            elif op in ("PUB", "HPUB"):
                # PUB <subject> [reply] <size>; HPUB <subject> [reply] <header size> <total size>
                sizes = 1 if op == "PUB" else 2
                subject, reply = args[0], (args[1] if len(args) == sizes + 2 else "")
                size = int(args[-1])
                seen(op, subject, reply, data[:size])
                data = data[size + 2:]

    def counted_write(data: bytes) -> Any:
        read(bytes(data))
        return write(data)

    def counted_writelines(chunks: list[bytes]) -> Any:
        read(b"".join(bytes(chunk) for chunk in chunks))
        return writelines(chunks)

    transport.write = counted_write
    transport.writelines = counted_writelines
