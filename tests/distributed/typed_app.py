"""Node functions for the typed-state tests, served by real worker processes.

The workers know nothing of the graph's state schema: they read the state as a mapping
and return plain JSON updates; the orchestrator merges them through the schema's
reducers. ``review_b`` fails while a file ``broken`` exists in ``DA_MARKER_DIR``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from distributed_agents import NodeRegistry, State

registry = NodeRegistry()


@registry.register("draft")
def draft(state: State) -> dict[str, Any]:
    return {"messages": {"role": "assistant", "content": f"draft about {state['topic']}"}, "score": 1}


@registry.register("review_a")
def review_a(state: State) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "review a"}], "score": 10}


@registry.register("review_b")
def review_b(state: State) -> dict[str, Any]:
    if (pathlib.Path(os.environ["DA_MARKER_DIR"]) / "broken").exists():
        raise RuntimeError("reviewer b is away")
    # Rewrites the draft in place (same id) and adds a review.
    first = dict(state["messages"][0], content=state["messages"][0]["content"] + " (edited)")
    return {"messages": [first, {"role": "user", "content": "review b"}], "score": 100}


@registry.register("tally")
def tally(state: State) -> dict[str, Any]:
    return {"summary": f"{len(state['messages'])} messages, score {state['score']}"}


@registry.register("sloppy")
def sloppy(state: State) -> dict[str, Any]:
    return {"summary": ["not", "text"]}
