"""Helpers for NATS adapter tests: connected backends on fresh prefixes."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions

T = TypeVar("T")


async def open_nats(url: str, **options: Any) -> NatsBackend:
    """A connected NATS backend on a fresh prefix unless ``prefix`` is given."""
    options.setdefault("prefix", f"t{uuid.uuid4().hex[:10]}")
    backend = NatsBackend(url, BackendOptions.from_url(url, **options))
    await backend.connect()
    return backend


# -- a cluster electing leaders: after a stream or consumer is made, or a server is killed ---------
#
# On a three-server cluster a call made right after a stream or consumer was created (on a loaded
# machine), or right after a server was SIGKILLed that led a stream, a consumer or the meta group,
# may go unanswered until a leader is elected (5-8 s measured here, longer than the 5 s of a
# JetStream API request). The adapter then raises BackendUnavailableError, as its contract says
# (a worker's loop retries it); tests wait for the cluster to settle, or retry such calls, and
# judge a retried call that may have landed by what it left, not by its second answer.

def _election_errors() -> tuple[type[BaseException], ...]:
    import asyncio

    import nats.errors

    from distributed_agents.core.errors import BackendUnavailableError

    return BackendUnavailableError, nats.errors.Error, asyncio.TimeoutError


async def through_elections(call: Callable[[], Awaitable[T]], seconds: float = 60.0, *,
                             landed: tuple[type[BaseException], ...] = ()) -> tuple[T | None, bool]:
    """``call()`` again while it raises as an election under way makes calls raise (not any other
    backend error: a lost lease or a conflict is an answer); its answer, and whether an earlier try
    raised (that try may have landed: a retried enqueue or requeue may then answer False). After an
    earlier try raised, ``landed`` (e.g. ``LeaseLostError`` for a retried ack, nack or release: the
    first one took the lease) answers None: what the test checks afterwards tells whether it did."""
    import asyncio

    give_up = asyncio.get_running_loop().time() + seconds
    retried = False
    while True:
        try:
            return await call(), retried
        except landed:
            if not retried:
                raise
            return None, True
        except _election_errors():
            if asyncio.get_running_loop().time() > give_up:
                raise
            retried = True
            await asyncio.sleep(0.3)


async def settle(backend: NatsBackend, node_types: tuple[str, ...] = ("alpha",), seconds: float = 90.0) -> None:
    """Until ``backend``'s streams answer through it: the task consumer of each of ``node_types``
    (priority 0, made as the first enqueue makes it) and its consumer info, a read of the task
    records, a dead-letter scan (a short-lived consumer of its own each time) and the state
    bucket. Nothing is written but the consumers and the levels keys an enqueue writes anyway."""
    from distributed_agents.adapters.nats import kv

    queue: Any = backend.task_queue
    js = backend.connection.js
    names = backend.connection.names
    state = backend.connection.bucket(names.state_bucket)
    for node_type in node_types:
        await through_elections(lambda: queue._ensure_consumer(node_type, 0), seconds)  # noqa: SLF001, B023
        await through_elections(lambda: js.consumer_info(names.task_stream, names.task_consumer(node_type, 0),  # noqa: B023
                                                         timeout=2), seconds)
    await through_elections(lambda: kv.get(queue._tasks, "settle-probe"), seconds)  # noqa: SLF001
    await through_elections(lambda: kv.scan(js, queue._dead, "*.settle-probe"), seconds)  # noqa: SLF001
    await through_elections(lambda: kv.get(state, "settle-probe"), seconds)
