"""Blocking calls for code that is not async: ``Orchestrator.invoke``, ``stream`` and ``sync``.

Each call runs its own event loop (``asyncio.run``) and closes the orchestrator's
connections before returning: backend clients belong to the loop that opened them, so
the next call opens fresh ones. Data lives in the backend, so nothing is lost between
calls (``memory://`` keeps its data for the whole process). Inside a running loop (an
``async def``, a Jupyter cell) a blocking call would stall that loop; it is refused.

A plain-function node that timed out (or was cancelled) keeps running in its thread,
which Python cannot stop: a blocking call returns (or raises) without waiting for it,
as ``await execute(...)`` does; the thread finishes on its own, its result discarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from distributed_agents.core.errors import ConfigurationError, ExecutionError

if TYPE_CHECKING:
    from distributed_agents.core.orchestrator import Orchestrator

__all__ = ["SyncOrchestrator", "iterate_sync", "run_sync"]

T = TypeVar("T")

# Methods that only make sense while a loop keeps running after they return.
_BACKGROUND_ONLY = frozenset({"submit", "connect", "close", "recover_workflows"})


class _UnjoinedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The default executor of a blocking call's event loop: shutting it down never waits.

    ``asyncio.run`` ends by shutting its loop's default executor down and waiting for its
    threads; a plain-function node abandoned on a timeout would then hold the caller until
    the function returned (as long as it likes). Its thread is let go instead: idle
    threads exit at once, a busy one when its function returns (the interpreter still
    waits for it at exit, as for any thread).
    """

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)


def run_sync(orchestrator: Orchestrator, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call()`` to completion in a new event loop, then close ``orchestrator``'s connections.

    Returns (or raises) without waiting for threads of plain-function nodes it abandoned
    (timed out, cancelled): they finish on their own. ``ExecutionError`` when an event
    loop is already running in this thread; ``ConfigurationError`` when the orchestrator
    was given an opened ``Backend`` (its connections belong to another loop) instead of a URL.
    """
    _check_blocking(orchestrator, what)

    async def main() -> T:
        # Plain-function nodes run in the loop's default executor: one that asyncio.run's
        # ending does not wait for (see _UnjoinedExecutor).
        asyncio.get_running_loop().set_default_executor(_UnjoinedExecutor(thread_name_prefix="asyncio"))
        try:
            return await call()
        finally:
            await orchestrator.close()
            orchestrator._backend = None  # the next call opens fresh connections in its own loop

    return asyncio.run(main())


def iterate_sync(orchestrator: Orchestrator, what: str, stream: AsyncIterator[T]) -> Iterator[T]:
    """``stream`` as a plain iterator: each ``next()`` runs a private event loop until the next item.

    The loop exists while the iteration lasts; when it ends (exhausted, raised, or the
    iterator is closed or collected) the stream is closed, then ``orchestrator``'s
    connections, then the loop. Between two ``next()`` calls nothing of this
    orchestrator runs (in-process nodes wait; workers elsewhere do not). Closing the
    orchestrator stops driving a workflow the stream started before its end: it is left
    ``running`` with its lease released at once, so ``resume`` (or an orchestrator with
    ``recover``) continues it immediately from its last committed step. Raises like
    ``run_sync`` when a loop is running here or the orchestrator has an opened Backend.
    """
    _check_blocking(orchestrator, what)
    return _iterate(orchestrator, stream)


def _iterate(orchestrator: Orchestrator, stream: AsyncIterator[T]) -> Iterator[T]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                item = loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            closing = getattr(stream, "aclose", None)
            if closing is not None:
                loop.run_until_complete(closing())
            loop.run_until_complete(orchestrator.close())
            orchestrator._backend = None  # the next call opens fresh connections in its own loop
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _check_blocking(orchestrator: Orchestrator, what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ExecutionError(
            f"Orchestrator.{what} blocks until it is done, so it cannot run inside a running event loop (an async "
            "function, or a Jupyter notebook cell); await the async method there instead, e.g. "
            "`await orchestrator.execute(graph, state)`"
        )
    if not orchestrator._owns_backend:
        raise ConfigurationError(
            f"Orchestrator.{what}: this orchestrator was given an opened Backend, whose connections belong to the "
            "event loop that opened them; give it a backend URL (backend='redis://host:6379/0') to call it "
            "without async"
        )


class SyncOrchestrator:
    """An ``Orchestrator``'s async methods as blocking calls: ``orchestrator.sync.get_state(id)``.

    Every method takes the same arguments as its async original (``execute``,
    ``resume``, ``wait``, ``get_result``, ``get_state``, ``get_state_history``,
    ``update_state``, ``fork``, ``list_workflows``, ``cancel_workflow``, ...) and
    returns what it returns. ``submit`` is refused: a background workflow needs a loop
    that keeps running (use ``invoke``/``execute`` instead).
    """

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._orchestrator, name)
        if name in _BACKGROUND_ONLY or name.startswith("_") or not inspect.iscoroutinefunction(method):
            raise AttributeError(
                f"Orchestrator.sync has no {name!r}: only the orchestrator's public async methods that finish "
                "their work before returning are offered (submit needs a running loop: use invoke)"
            )

        def call(*args: Any, **kwargs: Any) -> Any:
            return run_sync(self._orchestrator, f"sync.{name}()", lambda: method(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call
