"""The base of the suite's Hypothesis state machines: one event loop and backend per example.

The backend comes from the ``CheckContext`` bound to the machine class (the factory is
on the class, not a pytest fixture), each example on a fresh prefix, so examples never
see each other's data and a failing sequence replays exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from distributed_agents.conformance.clauses import ContractViolation, observing
from distributed_agents.conformance.context import CheckContext, monotonic, run_in_loop
from distributed_agents.core.ports.backend import Backend

__all__ = ["BackendMachine", "run_machine"]

T = TypeVar("T")


class BackendMachine(RuleBasedStateMachine):
    """Owns an event loop and a backend for one example; ``call`` runs a coroutine on it."""

    context: ClassVar[CheckContext]
    backend_options: ClassVar[dict[str, Any]] = {}
    # Seconds of real waiting one example may ask for (nominal, so that replays agree).
    wait_budget: ClassVar[float] = float("inf")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._peers: list[Backend] = []
        self.waited = 0.0
        self.backend: Backend = self.call(self.context.factory.open(**self.open_options()))

    def open_options(self) -> dict[str, Any]:
        """Options of every backend this example opens; override to derive them from ``context``."""
        return dict(self.backend_options)

    def open_peer(self) -> Backend:
        """Another connection on this example's prefix (closed at teardown), or ``backend``
        itself when the backend declares ``shared_prefix`` unsupported."""
        if not self.context.requirements.supports("shared_prefix"):
            return self.backend
        peer = self.call(self.context.factory.open(prefix=self.backend.options.prefix, **self.open_options()))
        self._peers.append(peer)
        return peer

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on this example's loop, bounded in time."""
        return run_in_loop(self.loop, coro, 30.0)

    def sleep_until(self, when: float) -> None:
        """Let real time pass until monotonic ``when``, running the loop (background tasks of
        the backend, such as lease keepers, keep working meanwhile)."""
        delay = when - monotonic()
        if delay > 0:
            self.call(asyncio.sleep(delay))

    def may_wait(self, seconds: float) -> bool:
        """Whether this example may still wait ``seconds`` within ``wait_budget`` (a precondition).

        Rules charge the nominal ``seconds`` (``charge``), not the measured time, so a
        replayed example takes the same rules.
        """
        return self.waited + seconds <= self.wait_budget

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of waiting against this example's ``wait_budget``."""
        self.waited += seconds

    def teardown(self) -> None:
        try:
            for peer in reversed(self._peers):
                self.call(peer.close())
            self.call(self.backend.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def run_machine(
    machine: type[BackendMachine], context: CheckContext, *, examples: float = 1.0, steps: float = 1.0, wait: float | None = None
) -> None:
    """Run ``machine`` against ``context``'s backend with the profile's example budget.

    ``examples`` and ``steps`` scale the profile's budget down for machines whose rules
    let real time pass (at least 3 examples of 8 steps either way). ``wait`` bounds the
    seconds of waiting one example may ask for (``may_wait``/``charge``), so the run
    time is bounded whatever Hypothesis draws.
    """
    budget = float("inf") if wait is None else wait
    bound = type(machine.__name__, (machine,), {"context": context, "wait_budget": budget})
    options: dict[str, Any] = {
        "max_examples": max(3, round(context.profile.max_examples * examples)),
        "stateful_step_count": max(8, round(context.profile.step_count * steps)),
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "print_blob": False,
    }
    options.update(context.hypothesis_overrides)
    seen: list[ContractViolation] = []
    try:
        with observing(seen):
            run_state_machine_as_test(bound, settings=settings(**options))
    except Flaky as flaky:
        # Rules that let real time pass may replay a failing example differently; the
        # violation the first run found is the backend's fault all the same.
        if seen:
            raise seen[0] from flaky
        raise
