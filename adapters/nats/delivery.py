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
                       timeout: float = 5.0, first: list[Msg] | None = None) -> list[Msg]:
    """``pull_ready``, asked again (for up to ``patience`` seconds) while messages wait that the
    consumer has not delivered, after an answer of none. Under load the server has answered a
    ``no_wait`` pull "404 No Messages" right after a message was stored, and its consumer did
    not count that message yet either (nats-server signals consumers of a new message after it
    answers the publish): so besides the consumer's count of undelivered messages, the last
    message stored on its filter subject is compared with the last one it delivered. Per
    empty answer a consumer-info request, and when that counts none pending a read of the
    last message's sequence (the stream's leader answers both); none when messages come. ``first``: the answer of a pull already made (checked the same way)."""
    messages = await pull_ready(nc, stream, consumer, batch, timeout=timeout) if first is None else first
    give_up = time.monotonic() + patience
    while not messages and time.monotonic() < give_up:
        if not await _undelivered(nc, stream, consumer, timeout):
            return []  # the answer was right (or the consumer is gone)
        await asyncio.sleep(0.005)
        messages = await pull_ready(nc, stream, consumer, batch, timeout=timeout)
    return messages


async def _undelivered(nc: Client, stream: str, consumer: str, timeout: float) -> bool:
    """Whether the stream holds a message on ``consumer``'s filter subject that it has not delivered:
    it counts one pending, or the last message stored there is newer than the last it delivered."""
    info = await replies.request(nc, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=timeout)
    try:
        state = json.loads(info.data or b"{}")
    except ValueError:
        return False
    pending, delivered = state.get("num_pending"), (state.get("delivered") or {}).get("stream_seq")
    subject = (state.get("config") or {}).get("filter_subject")
    if isinstance(pending, int) and pending > 0:
        return True
    if not isinstance(delivered, int) or not isinstance(subject, str) or not subject:
        return False
    last = await replies.request(nc, f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"last_by_subj": subject}).encode(),
                                 timeout=timeout)
    try:
        seq = (json.loads(last.data or b"{}").get("message") or {}).get("seq")
    except ValueError:
        return False
    return isinstance(seq, int) and seq > delivered


def stream_sequence(reply: str) -> int:
    """The stream sequence named by a delivery's reply subject."""
    return int(reply.split(".")[5])


def delivery_count(reply: str) -> int:
    """How many times the server has delivered this message (this delivery included)."""
    return int(reply.split(".")[4])


async def send_ack(nc: Client, reply: str, kind: str, *, delay: float = 0.0, timeout: float = 5.0,
                   confirmed: bool = False) -> None:
    """Settle a delivery: ``ack`` (waits for the server), ``nak`` (optional delay; with ``confirmed``,
    waits for the server to have taken it: it queues acks and serves pulls apart, so a pull sent
    right after an unconfirmed NAK may not find the message yet), ``progress``, ``term``."""
    if kind == "ack":
        await replies.request(nc, reply, b"+ACK", timeout=timeout)
    elif kind == "nak":
        payload = b"-NAK" if delay <= 0 else b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
        if confirmed:
            await replies.request(nc, reply, payload, timeout=timeout)
        else:
            replies.send(nc, reply, payload)
    elif kind == "progress":
        replies.send(nc, reply, b"+WPI")
    elif kind == "term":
        replies.send(nc, reply, b"+TERM")
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
