"""No-op node functions served by benchmark worker processes."""

from __future__ import annotations

from distributed_agents import NodeRegistry, State

registry = NodeRegistry()


@registry.register("noop")
async def noop(state: State) -> None:
    return None
