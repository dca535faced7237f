"""Node functions for the managed-value tests, served by real worker processes: each notes the
managed values its input holds (the workers know nothing of the graph's state schema)."""

from __future__ import annotations

from typing import Any

from distributed_agents import NodeRegistry, State

registry = NodeRegistry()


@registry.register("agent")
def agent(state: State) -> dict[str, Any]:
    if state["remaining_steps"] < 2:
        return {"log": [["done", state["remaining_steps"], state["is_last_step"]]]}
    return {"log": [["think", state["remaining_steps"], state["is_last_step"]]]}


@registry.register("tagged")
def tagged(state: State, config: Any) -> dict[str, Any]:
    """Notes its node's own metadata, as its config shows it."""
    return {"log": [{k: v for k, v in config["metadata"].items() if k in ("team", "n", "langgraph_node")}]}
