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

import json
from typing import TYPE_CHECKING

from distributed_agents.adapters.nats import replies

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["delivery_count", "pull_ready", "send_ack", "stream_sequence"]


async def pull_ready(nc: Client, stream: str, consumer: str, batch: int, *, timeout: float = 5.0) -> list[Msg]:
    """Up to ``batch`` messages that are deliverable now (possibly none)."""
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    # A status (404 No Messages, 408) ends the answer early: nothing more is ready.
    messages, _ = await replies.collect(nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request,
                                        limit=batch, timeout=timeout, partial_on_timeout=True, own_inbox=True)
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
