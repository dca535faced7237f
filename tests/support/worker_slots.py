"""What a worker holds, seen through its task queue: the helpers of the slot reviews
(``tests/core/test_review_s15_slots.py`` on memory, ``tests/distributed/test_review_s15_slots.py``
on Redis and NATS). ``Leases`` wraps the worker's own queue object in-process (the backend
under it is real): tasks claimed and not yet settled, node functions running (the tests'
nodes report in and out), and the settling calls held back (``gate``) or failing as in an
outage (``failing``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from distributed_agents import NodeContext, State, Worker, get_stream_writer
from distributed_agents.core.errors import BackendUnavailableError


class Leases:
    """Counts what one worker holds, by wrapping its queue: tasks claimed and not yet settled
    (ack, nack, release), and node functions running (``node_in`` / ``node_out``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.queue = worker.backend.task_queue
        self.held: set[str] = set()
        self.returned: set[str] = set()  # tasks claim() returned to the worker
        self.peak_held = 0
        self.claims: list[int] = []  # max_tasks of each claim call
        self.nodes = 0
        self.peak_nodes = 0
        self.peak_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False  # settling calls raise BackendUnavailableError
        self.waiting_settles = 0
        self.settled: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        claim, ack, nack, release = self.queue.claim, self.queue.ack, self.queue.nack, self.queue.release

        async def claimed(*args: Any, **kwargs: Any) -> Any:
            self.claims.append(kwargs.get("max_tasks", 1))
            got = await claim(*args, **kwargs)
            assert len(got) <= kwargs.get("max_tasks", 1)
            for c in got:
                self.held.add(c.task.id)
                self.returned.add(c.task.id)
            self.peak_held = max(self.peak_held, len(self.held))
            return got

        def settling(kind: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(c: Any, *args: Any, **kwargs: Any) -> Any:
                internal = c.task.id not in self.held  # the adapter's own (a hand-over it gives back)
                if not internal:
                    self.waiting_settles += 1
                    try:
                        await self.gate.wait()
                    finally:
                        self.waiting_settles -= 1
                    if self.failing:
                        raise BackendUnavailableError("review s15: backend down for settling calls")
                out = await call(c, *args, **kwargs)
                self.held.discard(c.task.id)
                self.settled.append((kind if not internal else f"adapter-{kind}", c.task.id))
                return out
            return wrapped

        self.queue.claim = claimed  # type: ignore[method-assign]
        self.queue.ack = settling("ack", ack)  # type: ignore[method-assign]
        self.queue.nack = settling("nack", nack)  # type: ignore[method-assign]
        self.queue.release = settling("release", release)  # type: ignore[method-assign]

    def node_in(self) -> None:
        with self._lock:
            self.nodes += 1
            self.peak_nodes = max(self.peak_nodes, self.nodes)
        self.peak_in_flight = max(self.peak_in_flight, self.worker.slot_usage()["in_flight"])

    def node_out(self) -> None:
        with self._lock:
            self.nodes -= 1


async def until(condition: Callable[[], bool], bound: float = 30.0) -> bool:
    """Poll ``condition`` up to ``bound`` seconds (a generous bound: only a fault reaches it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + bound
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def serving(worker: Worker) -> asyncio.Future[None]:
    """``worker.start()`` as a task, once the worker serves (its stream publisher made)."""
    task = asyncio.ensure_future(worker.start())
    assert await until(lambda: worker._serving and worker._stream is not None)
    return task


def register_mixed_nodes(worker: Worker, leases: Leases) -> None:
    """Node types ``a`` (async), ``t`` (a plain function in a thread), ``f`` (raises on its
    first attempt: retried) and ``s`` (streams three chunks), each reporting to ``leases``."""
    failed_once: set[str] = set()

    async def async_node(state: State) -> dict[str, Any]:
        leases.node_in()
        await asyncio.sleep(0.005)
        leases.node_out()
        return {"v": state["i"]}

    def thread_node(state: State) -> dict[str, Any]:
        leases.node_in()
        threading.Event().wait(0.005)
        leases.node_out()
        return {"v": state["i"]}

    async def flaky_node(state: State, context: NodeContext) -> dict[str, Any]:
        leases.node_in()
        try:
            await asyncio.sleep(0.005)
            if context.idempotency_key not in failed_once:
                failed_once.add(context.idempotency_key)
                raise RuntimeError("first attempt fails")
        finally:
            leases.node_out()
        return {"v": state["i"]}

    async def streaming_node(state: State) -> dict[str, Any]:
        leases.node_in()
        writer = get_stream_writer()
        for k in range(3):
            writer({"k": k})
            await asyncio.sleep(0)
        leases.node_out()
        return {"v": state["i"]}

    for name, func in (("a", async_node), ("t", thread_node), ("f", flaky_node), ("s", streaming_node)):
        worker.register_node(name, func)
