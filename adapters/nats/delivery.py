"""Pulling ready messages without lingering requests, and JetStream's ack protocol.

``pull_ready`` asks a durable pull consumer for up to ``batch`` messages with
``no_wait``: the server answers at once with what is ready and never keeps the request
open, so no orphaned pull can capture a message that nobody reads (a known pitfall of
``fetch()`` with timeouts). Waiting is done by the caller on a wake-up subject instead.

A delivery's reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``)
identifies it and is all that is needed to settle it, from any connection; it is the
adapter's lease id.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from distributed_agents.adapters.nats import replies

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["delivery_count", "pull_pending", "pull_ready", "send_ack", "stream_sequence"]


async def pull_ready(nc: Client, stream: str, consumer: str, batch: int, *, timeout: float = 5.0) -> list[Msg]:
    """Up to ``batch`` messages that are deliverable now (possibly none)."""
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    # A status (404 No Messages, 408) ends the answer early: nothing more is ready.
    messages, _ = await replies.collect(nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request,
                                        limit=batch, timeout=timeout, partial_on_timeout=True, own_inbox=True)
    return messages


async def pull_pending(nc: Client, stream: str, consumer: str, batch: int, *, patience: float = 1.0,
                       timeout: float = 5.0) -> list[Msg]:
    """``pull_ready``, asked again (for up to ``patience`` seconds) while the consumer still
    counts undelivered messages after an answer of none: under load the server has answered
    a ``no_wait`` pull "404 No Messages" right after a message was stored and counted. One
    consumer-info request per empty answer; none when messages come."""
    messages = await pull_ready(nc, stream, consumer, batch, timeout=timeout)
    give_up = time.monotonic() + patience
    while not messages and time.monotonic() < give_up:
        reply = await replies.request(nc, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=timeout)
        try:
            pending = json.loads(reply.data or b"{}").get("num_pending")
        except ValueError:
            return []
        if not isinstance(pending, int) or pending <= 0:
            return []  # the answer was right (or the consumer is gone)
        await asyncio.sleep(0.005)
        messages = await pull_ready(nc, stream, consumer, batch, timeout=timeout)
    return messages


def stream_sequence(reply: str) -> int:
    """The stream sequence named by a delivery's reply subject."""
    return int(reply.split(".")[5])


def delivery_count(reply: str) -> int:
    """How many times the server has delivered this message (this delivery included)."""
    return int(reply.split(".")[4])


async def send_ack(nc: Client, reply: str, kind: str, *, delay: float = 0.0, timeout: float = 5.0) -> None:
    """Settle a delivery: ``ack`` (waits for the server), ``nak`` (optional delay), ``progress``, ``term``."""
    if kind == "ack":
        await replies.request(nc, reply, b"+ACK", timeout=timeout)
    elif kind == "nak":
        payload = b"-NAK" if delay <= 0 else b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
        replies.send(nc, reply, payload)
    elif kind == "progress":
        replies.send(nc, reply, b"+WPI")
    elif kind == "term":
        replies.send(nc, reply, b"+TERM")
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
