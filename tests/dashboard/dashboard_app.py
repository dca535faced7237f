"""Graphs and node functions of the dashboard's browser tests, served by real worker processes.

``fragile`` fails while a file ``broken`` exists in ``DA_MARKER_DIR`` (one attempt, so its
task is dead-lettered); the other nodes just write to the state.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from distributed_agents import Graph, NodeRegistry, RetryPolicy, State, interrupt

registry = NodeRegistry()


@registry.register("draft")
def draft(state: State) -> dict[str, Any]:
    return {"text": f"draft about {state['topic']}"}


@registry.register("polish")
def polish(state: State) -> dict[str, Any]:
    return {"text": state["text"] + ", polished", "words": len(state["text"].split())}


@registry.register("ask")
def ask(state: State) -> dict[str, Any]:
    return {"approved": interrupt({"question": f"publish the piece about {state['topic']}?"})}


@registry.register("publish")
def publish(state: State) -> dict[str, Any]:
    return {"published": state["approved"] == "yes"}


@registry.register("fragile")
def fragile(state: State) -> dict[str, Any]:
    if (pathlib.Path(os.environ["DA_MARKER_DIR"]) / "broken").exists():
        raise RuntimeError("the archive is unreachable")
    return {"archived": True}


essay = (Graph("essay").add_node("draft").add_node("polish").set_entry_point("draft").add_edge("draft", "polish")
         .set_finish_point("polish").compile())
approval = (Graph("approval").add_node("draft").add_node("ask").add_node("publish").set_entry_point("draft")
            .add_edge("draft", "ask").add_edge("ask", "publish").set_finish_point("publish").compile())
archive = (Graph("archive").add_node("draft").add_node("fragile", retry=RetryPolicy(max_attempts=1, retry_on=Exception))
           .set_entry_point("draft").add_edge("draft", "fragile").set_finish_point("fragile").compile())
