"""Riding out backend outages: retry with exponential backoff, log each outage once.

A backend that is restarting (Redis reloading its AOF, NATS recovering its file store)
makes calls raise ``BackendUnavailableError`` for a while. The engine, the orchestrator
and the worker do not give up on a workflow or a task for that: they call
``until_available``, which repeats the call with exponential backoff until the backend
answers (or ``give_up_after`` seconds passed), logging a warning when the outage starts
and one line when it ends, not one per attempt.

Retried calls must be safe to repeat after a lost reply; every port operation the core
retries this way is (idempotent by task id, or fenced and compare-and-set, with the
caller checking whether its own write landed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from distributed_agents.core.errors import BackendUnavailableError

__all__ = ["Outage", "retry_after", "until_available"]

T = TypeVar("T")

INITIAL_DELAY = 0.1
MAX_DELAY = 2.0


class Outage:
    """Logs the start of a backend outage once and its end once, per ``who``."""

    def __init__(self, log: logging.Logger, who: str) -> None:
        self._log = log
        self._who = who
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        """Whether a failure was reported and no success since."""
        return self._since is not None

    def failed(self, what: str, exc: BaseException, retry_in: float | None = None) -> None:
        """Report a failed call; only the first of an outage is logged."""
        if self._since is None:
            self._since = time.monotonic()
            again = "" if retry_in is None else f"; retrying with backoff (first retry in {retry_in:.1f}s)"
            self._log.warning("%s: backend unavailable while trying to %s (%s)%s", self._who, what, exc, again)

    def succeeded(self) -> None:
        """Report a successful call; ends (and logs the end of) an outage."""
        if self._since is not None:
            self._log.warning("%s: backend reachable again after %.1fs", self._who, time.monotonic() - self._since)
            self._since = None


def until_available(
    call: Callable[..., Awaitable[T]],
    *args: Any,
    what: str,
    outage: Outage,
    give_up_after: float | None = None,
) -> Coroutine[Any, Any, T]:
    """``await call(*args)``, repeated with exponential backoff while it raises ``BackendUnavailableError``.

    Re-raises the last ``BackendUnavailableError`` after ``give_up_after`` seconds (never
    when it is None). Any other exception propagates at once. (``args`` rather than a
    closure or ``functools.partial`` on hot paths: fewer GC-tracked objects per call.)
    """
    return _retried(call, args, what, outage, give_up_after, INITIAL_DELAY, time.monotonic())


async def retry_after(
    error: BackendUnavailableError,
    call: Callable[..., Awaitable[T]],
    *args: Any,
    what: str,
    outage: Outage,
) -> T:
    """``until_available(call, *args)`` for a caller whose own first attempt raised ``error``.

    Hot paths make the first attempt themselves (``await call(*args)`` in a ``try``,
    then ``outage.succeeded()``): no coroutine of this module per call while the
    backend answers. The retries go on exactly as ``until_available``'s would.
    """
    started = time.monotonic()
    outage.failed(what, error, INITIAL_DELAY)
    await asyncio.sleep(INITIAL_DELAY)
    return await _retried(call, args, what, outage, None, min(INITIAL_DELAY * 2, MAX_DELAY), started)


async def _retried(
    call: Callable[..., Awaitable[T]], args: tuple[Any, ...], what: str, outage: Outage,
    give_up_after: float | None, delay: float, started: float,
) -> T:
    while True:
        try:
            result = await call(*args)
        except BackendUnavailableError as exc:
            if give_up_after is not None and time.monotonic() - started >= give_up_after:
                raise
            outage.failed(what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        outage.succeeded()
        return result
