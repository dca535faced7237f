"""``StallWatch``: notices when something blocked a worker's event loop, and says what ran then.

A worker renews its leases, heartbeats and reads its backend on one event loop. An
``async def`` node that makes a blocking call (``time.sleep``, a synchronous HTTP or LLM
client) stops all of that while it blocks: its own lease and those of the other running
nodes are not renewed, so a block longer than what is left of a lease makes the task run
again on another worker (and, every attempt blocking alike, end dead-lettered with "lease
expired"), although nothing died. Locally the same node just runs slowly, so the mistake
shows only in production. (Python's asyncio debug mode reports such callbacks too, but
is not meant to stay on in production; this costs one timer a quarter of a second.)

The watch is a timer every ``TICK`` seconds; a tick that comes ``WARN_AFTER`` seconds or
more late means the loop was blocked that long: it is logged as a warning naming the nodes
that were running (``async def`` ones first: a plain function runs in a thread and blocks
nothing) and what to do, and kept (``longest_since``) so a lease lost afterwards can say why.
A node that blocks in its last step has ended by the time the tick comes: the worker tells the
watch when an ``async def`` node ends (``ended_step``), which then names that node.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence

__all__ = ["TICK", "WARN_AFTER", "Stall", "StallWatch"]

log = logging.getLogger("distributed_agents.worker")

TICK = 0.25
"""Seconds between two looks at the loop's clock."""
WARN_AFTER = 0.75
"""Seconds a tick may come late before the block is reported: a tick comes up to ``TICK`` after
a block began, so every block of a second or more is reported (a loop busy with many quick
nodes is late by milliseconds, never by this much)."""


class Stall:
    """One block of the loop: it ended at ``ended`` (loop time, seconds) and lasted ``seconds``."""

    __slots__ = ("ended", "seconds")

    def __init__(self, ended: float, seconds: float) -> None:
        self.ended, self.seconds = ended, seconds


class StallWatch:
    """Looks at the loop's clock every ``TICK`` seconds from ``start()`` to ``close()``.

    ``running`` is called when a block is found: the nodes running then, as ``(description,
    blocks_the_loop)`` pairs (an ``async def`` node's ``blocks_the_loop`` is True), for the
    warning. ``who`` names the worker in it.
    """

    def __init__(self, who: str, running: Callable[[], Sequence[tuple[str, bool]]],
                 warn_after: float = WARN_AFTER) -> None:
        self.who = who
        self.running = running
        self.warn_after = warn_after
        self.stalls: list[Stall] = []  # the last few, newest last
        self._timer: asyncio.TimerHandle | None = None
        # Loop time (``time.monotonic()`` on asyncio's loops) the next tick is due at; infinite
        # while stopped, so that ``time.monotonic() - due`` is never late then.
        self.due = math.inf
        self._reported = -1.0  # the ``due`` of the block reported last (each is reported once)

    def start(self) -> None:
        """Start looking (on the running loop)."""
        loop = asyncio.get_running_loop()
        self.due = loop.time() + TICK
        self._timer = loop.call_at(self.due, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.due = math.inf

    def longest_since(self, since: float) -> float:
        """Seconds of the longest block that ended after loop time ``since``, or of the one
        under way (the tick is overdue now: a caller in the callback that blocked); 0 if none."""
        overdue = self._overdue()
        return max((stall.seconds for stall in self.stalls if stall.ended > since),
                   default=overdue if overdue >= self.warn_after else 0.0)

    def ended_step(self, what: str) -> None:
        """Called as ``what`` (a node running on the loop) ends a step (it returned, raised or
        awaits): a tick overdue by ``WARN_AFTER`` now means the loop was blocked while that step
        ran, and the block is reported naming it (the tick would come after the node ended)."""
        late = self._overdue()
        if late >= self.warn_after and self._reported != self.due:
            self._report(asyncio.get_running_loop().time(), late, [what])

    def _overdue(self) -> float:
        if self._timer is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.due

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self.due
        if late >= self.warn_after and self._reported != self.due:
            self._report(now, late)
        self.due = now + TICK
        self._timer = loop.call_at(self.due, self._tick)

    def _report(self, now: float, late: float, suspects: Sequence[str] | None = None) -> None:
        self._reported = self.due
        self.stalls = [*self.stalls[-7:], Stall(now, late)]
        if suspects is None:
            running = list(self.running())
            suspects = [what for what, blocks in running if blocks] or [what for what, _ in running]
        named = ", ".join(suspects[:3]) + (f" and {len(suspects) - 3} more" if len(suspects) > 3 else "")
        log.warning(
            "worker %s: its event loop was blocked for at least %.1fs%s; an async def node must not make blocking "
            "calls (time.sleep, a synchronous HTTP or LLM client) or compute for long: await them (asyncio.to_thread "
            "for a blocking library) or make the node a plain def, which runs in a thread (a result of many "
            "megabytes also holds the loop while the worker checks and encodes it). While the loop is blocked no "
            "lease is renewed: a task whose lease runs out meanwhile is delivered again",
            self.who, late, f" while running {named}" if named else "")
