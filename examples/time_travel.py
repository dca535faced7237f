"""Time travel: read a workflow's history, fork it at a past step, change the fork, run it on.

A plain script (no async): ``Orchestrator.invoke`` and ``orchestrator.sync`` run the
async API in their own event loop. Run with ``python examples/time_travel.py``.
"""

from __future__ import annotations

from typing import Any

from distributed_agents import END, Graph, Orchestrator, State


def plan(state: State) -> dict[str, Any]:
    return {"stops": [state["start"], "Lyon"], "log": "planned"}


def extend(state: State) -> dict[str, Any]:
    nearby = {"Lyon": "Turin", "Turin": "Milan", "Geneva": "Milan"}
    return {"stops": state["stops"] + [nearby[state["stops"][-1]]], "log": f"extended to {nearby[state['stops'][-1]]}"}


def far_enough(state: State) -> str:
    return "done" if state["stops"][-1] == "Milan" else "more"


def build() -> Graph:
    graph = Graph("trip", reducers={"log": "append"})
    graph.add_node("plan", plan).add_node("extend", extend)
    graph.set_entry_point("plan").add_edge("plan", "extend")
    graph.add_conditional_edge("extend", far_enough, {"more": "extend", "done": END})
    return graph.compile()


def main() -> None:
    graph = build()
    orchestrator = Orchestrator()
    trip = orchestrator.invoke(graph, {"start": "Paris"}, workflow_id="trip-1")
    print("trip-1:", " -> ".join(trip["stops"]))

    history = orchestrator.sync.get_state_history("trip-1")
    print("history:", ", ".join(f"{s.checkpoint_id} next={list(s.next)}" for s in history))

    # After "plan" (step 1): go through Geneva instead, on a fork; trip-1 stays as it was.
    fork = orchestrator.sync.fork("trip-1:1", workflow_id="trip-2")
    orchestrator.sync.update_state(fork, {"stops": ["Paris", "Geneva"], "log": "rerouted"}, as_node="plan")
    detour = orchestrator.sync.resume(fork)
    print("trip-2:", " -> ".join(detour["stops"]), "| log:", "; ".join(detour["log"]))
    origin = orchestrator.sync.get_state_history(fork)[-1]
    original = orchestrator.sync.get_state("trip-1").values["stops"]
    print(f"trip-2 forked from {origin.parent_checkpoint_id}; trip-1 is still {' -> '.join(original)}")
    print(graph.draw_ascii(), end="")


if __name__ == "__main__":
    main()
