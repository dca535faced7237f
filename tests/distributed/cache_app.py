"""Node functions for the node-cache tests, served by real worker processes.

``summarise`` leaves one marker file per run in ``$DA_MARKER_DIR``, so a test counts how
often it really ran, whichever process ran it.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from distributed_agents import END, CachePolicy, Graph, NodeContext, NodeRegistry, Send, State

registry = NodeRegistry()


@registry.register("summarise")
def summarise(state: State, context: NodeContext) -> dict[str, Any]:
    (pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"summarise-{uuid.uuid4().hex}").touch()
    return {"summary": f"summary of {state['doc']}", "summarised_by": context.worker_id}


def cache_graph() -> Graph:
    """summarise (on a worker, cached by doc) -> END."""
    return (Graph("cached_summaries")
            .add_node("summarise", node_type="summarise",
                      cache_policy=CachePolicy(key_func=lambda value: str(value["doc"]), ttl=3600))
            .set_entry_point("summarise").set_finish_point("summarise").compile())



@registry.register("fan")
def fan(state: State) -> None:
    return None


def collect(old: Any, new: Any) -> list[Any]:
    return [*(old or []), new]


def map_graph() -> Graph:
    """fan -> one summarise task per doc (Send, on a worker, cached by doc) -> END; summaries collect in order."""
    return (Graph("cached_summary_map", reducers={"summary": collect, "summarised_by": collect})
            .add_node("fan", node_type="fan")
            .add_node("summarise", node_type="summarise", cache_policy=CachePolicy(key_func=lambda v: str(v["doc"])))
            .set_entry_point("fan")
            .add_conditional_edge("fan", lambda state: [Send("summarise", {"doc": doc}) for doc in state["docs"]],
                                  ["summarise"])
            .add_edge("summarise", END).compile())
