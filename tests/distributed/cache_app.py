"""Node functions for the node-cache tests, served by real worker processes.

``summarise`` leaves one marker file per run in ``$DA_MARKER_DIR``, so a test counts how
often it really ran, whichever process ran it.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from distributed_agents import CachePolicy, Graph, NodeContext, NodeRegistry, State

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
