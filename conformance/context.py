"""How checks get backends: a factory of fresh, isolated, connected backends, and profiles.

Every check opens its backends through a ``BackendFactory``: each ``open()`` returns a
connected ``Backend`` on a fresh unique prefix (so checks never see each other's data,
even on a shared Redis or NATS server) unless a prefix is passed to share one. Short
timeouts are passed as ``BackendOptions`` so time-based checks run against real
servers in well under a second each.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from distributed_agents.conformance.requirements import Requirements
from distributed_agents.core.ports.backend import Backend

__all__ = [
    "PROFILES",
    "BackendFactory",
    "CheckContext",
    "Opener",
    "Profile",
    "Session",
    "Window",
    "current_profile",
    "run_in_loop",
]

T = TypeVar("T")
Opener = Callable[..., Backend]
"""``opener(url, **options) -> Backend`` (unconnected), like ``distributed_agents.plugins.open_backend``."""

# Long enough never to expire inside one check, short enough that a leak is not forever.
LONG_TIMEOUT = 60.0


@dataclass(frozen=True)
class Profile:
    """How hard the suite tries: Hypothesis examples and steps, sizes of concurrent runs."""

    name: str
    max_examples: int
    step_count: int
    concurrent_tasks: int
    concurrent_workers: int
    cas_rounds: int


PROFILES: Mapping[str, Profile] = {
    "default": Profile("default", max_examples=40, step_count=40, concurrent_tasks=60, concurrent_workers=6, cas_rounds=20),
    "thorough": Profile("thorough", max_examples=200, step_count=60, concurrent_tasks=400, concurrent_workers=12, cas_rounds=200),
}


def current_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$DA_TEST_PROFILE``, else ``default``."""
    chosen = name or os.environ.get("DA_TEST_PROFILE") or "default"
    if chosen not in PROFILES:
        raise ValueError(f"unknown conformance profile {chosen!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[chosen]


class BackendFactory:
    """Opens connected backends of one URL, each on a fresh prefix unless one is given.

    ``opener`` defaults to ``distributed_agents.plugins.open_backend`` (resolution by URL
    scheme through the entry points); ``defaults`` are options applied to every open.
    """

    _counter = itertools.count()

    def __init__(self, url: str, *, opener: Opener | None = None, defaults: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self._opener = opener
        self.defaults: dict[str, Any] = {
            "visibility_timeout": LONG_TIMEOUT,
            "heartbeat_ttl": LONG_TIMEOUT,
            "result_ttl": LONG_TIMEOUT * 10,
            "max_attempts": 3,
            **(defaults or {}),
        }
        self._run = uuid.uuid4().hex[:8]

    def fresh_prefix(self) -> str:
        """A prefix no other check of this process (or any other process) uses."""
        return f"daconf-{self._run}-{next(self._counter)}"

    async def open(self, *, prefix: str | None = None, **options: Any) -> Backend:
        """A connected backend on ``prefix`` (fresh if None) with ``options`` over the defaults."""
        opener = self._opener
        if opener is None:
            from distributed_agents.plugins import open_backend

            opener = open_backend
        merged = {**self.defaults, **options, "prefix": prefix or self.fresh_prefix()}
        backend = opener(self.url, **merged)
        await backend.connect()
        return backend


@dataclass
class CheckContext:
    """Everything a check needs: the backend factory, its declared requirements, a profile.

    ``hypothesis_overrides`` are extra ``hypothesis.settings`` keywords (the suite's own
    tests use them to skip shrinking when a failure is expected).
    """

    factory: BackendFactory
    requirements: Requirements = field(default_factory=Requirements)
    profile: Profile = field(default_factory=current_profile)
    hypothesis_overrides: Mapping[str, Any] = field(default_factory=dict)


class Session:
    """The backends one async check opened; all closed when the check ends."""

    def __init__(self, context: CheckContext) -> None:
        self.context = context
        self.requirements = context.requirements
        self.profile = context.profile
        self.slack = context.requirements.timing_slack
        self.short = context.requirements.short_timeout
        self._backends: list[Backend] = []

    async def open(self, *, prefix: str | None = None, **options: Any) -> Backend:
        """A connected backend (fresh prefix unless given), closed with the session."""
        backend = await self.context.factory.open(prefix=prefix, **options)
        self._backends.append(backend)
        return backend

    async def close(self) -> None:
        """Close every backend this session opened."""
        for backend in reversed(self._backends):
            await backend.close()
        self._backends.clear()


@dataclass(frozen=True)
class Window:
    """When a deadline set ``duration`` after an operation may fire, on the monotonic clock.

    The operation ran somewhere in ``[started, finished]`` and the engine may be
    ``slack`` early or late, so the deadline is certainly in the future before
    ``earliest`` and certainly past after ``latest``.
    """

    earliest: float
    latest: float

    @classmethod
    def after(cls, started: float, finished: float, duration: float, slack: float) -> Window:
        """The window of a deadline ``duration`` seconds after an operation."""
        return cls(started + duration - slack, finished + duration + slack)

    def state(self, now: float, guard: float) -> str:
        """``"pending"``, ``"due"`` (certainly past) or ``"uncertain"`` at ``now``.

        ``guard`` is how long the next operation may take: a deadline that may fire
        during it is uncertain too.
        """
        if now >= self.latest:
            return "due"
        if now + guard >= self.earliest:
            return "uncertain"
        return "pending"


def run_in_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on ``loop`` (not running), failing after ``timeout`` seconds instead of hanging."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def monotonic() -> float:
    """The clock the suite measures windows with."""
    return time.monotonic()
