"""Node functions for the subgraph tests, served by worker processes (or an in-process Worker).

``review`` is a subgraph (``draft`` -> ``tick`` looping ``rounds`` times -> ``ask``,
which pauses with ``interrupt()`` unless ``auto`` is set) used as node ``review`` of
``pipeline`` (``prepare`` -> ``review`` -> ``publish``), with shared keys; ``escalation``
routes from inside its subgraph with ``Command.PARENT``. ``tick``
marks one file per run (under ``DA_MARKER_DIR``, when ``mark`` is set) so a test sees
that a taken-over subgraph ran each of its steps once. The graphs have no functions:
every node, the subgraph's included, runs on a worker.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from typing import Any

from distributed_agents import END, START, Command, Graph, NodeRegistry, State, interrupt

registry = NodeRegistry()


@registry.register("prepare")
def prepare(state: State) -> dict[str, Any]:
    return {"log": ["prepare"], "count": 0}


@registry.register("draft")
def draft(state: State) -> dict[str, Any]:
    return {"log": ["draft"]}


@registry.register("tick")
def tick(state: State) -> dict[str, Any]:
    time.sleep(state.get("pause", 0))
    if state.get("mark"):
        (pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"tick-{state['count']}-{uuid.uuid4().hex}").touch()
    return {"count": state["count"] + 1, "log": [f"tick{state['count']}"]}


@registry.register("ask")
def ask(state: State) -> dict[str, Any]:
    verdict = "auto" if state.get("auto") else interrupt({"question": "publish?", "count": state["count"]})
    return {"verdict": verdict, "log": ["ask"]}


@registry.register("publish")
def publish(state: State) -> dict[str, Any]:
    return {"log": [*state["log"], f"publish:{state['verdict']}"]}


@registry.register("route_up")
def route_up(state: State) -> Command[str]:
    return Command(graph=Command.PARENT, goto="publish", update={"verdict": "escalated"})


def escalation() -> Graph:
    """``prepare`` -> subgraph ``triage`` (``draft`` -> ``route_up``, which returns
    ``Command(graph=Command.PARENT, goto="publish")``) -> ``publish``."""
    triage = Graph("triage", reducers={"log": "append"})
    triage.add_node("draft").add_node("route_up")
    triage.add_edge(START, "draft").add_edge("draft", "route_up").add_edge("route_up", END).compile()
    graph = Graph("escalation")
    graph.add_node("prepare").add_node("triage", triage, destinations=["publish"]).add_node("publish")
    graph.add_edge(START, "prepare").add_edge("prepare", "triage")
    return graph.add_edge("publish", END).compile()


def review() -> Graph:
    graph = Graph("review", reducers={"log": "append"})
    graph.add_node("draft").add_node("tick").add_node("ask")
    graph.add_edge(START, "draft").add_edge("draft", "tick")
    graph.add_conditional_edge("tick", lambda s: "tick" if s["count"] < s.get("rounds", 1) else "ask", ["tick", "ask"])
    return graph.add_edge("ask", END).compile()


def pipeline() -> Graph:
    # No reducer here: the subgraph's final "log" (it appends, starting from ours) replaces ours.
    graph = Graph("pipeline")
    graph.add_node("prepare").add_node("review", review()).add_node("publish")
    graph.add_edge(START, "prepare").add_edge("prepare", "review").add_edge("review", "publish")
    return graph.add_edge("publish", END).compile()
