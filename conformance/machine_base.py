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
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from distributed_agents.conformance.context import CheckContext, run_in_loop
from distributed_agents.core.ports.backend import Backend

__all__ = ["BackendMachine", "run_machine"]

T = TypeVar("T")


class BackendMachine(RuleBasedStateMachine):
    """Owns an event loop and a backend for one example; ``call`` runs a coroutine on it."""

    context: ClassVar[CheckContext]
    backend_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend: Backend = self.call(self.context.factory.open(**self.backend_options))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on this example's loop, bounded in time."""
        return run_in_loop(self.loop, coro, 30.0)

    def teardown(self) -> None:
        try:
            self.call(self.backend.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def run_machine(machine: type[BackendMachine], context: CheckContext) -> None:
    """Run ``machine`` against ``context``'s backend with the profile's example budget."""
    bound = type(machine.__name__, (machine,), {"context": context})
    options: dict[str, Any] = {
        "max_examples": context.profile.max_examples,
        "stateful_step_count": context.profile.step_count,
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "print_blob": False,
    }
    options.update(context.hypothesis_overrides)
    run_state_machine_as_test(bound, settings=settings(**options))
