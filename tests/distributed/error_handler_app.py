"""Node functions for the error-handler tests, served by real worker processes.

``fetch`` always fails (so its retry policy runs out on the worker), ``recover`` is
its handler and reports the error it got and which worker ran it; ``bad_recover`` is a
handler that fails too.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from distributed_agents import Graph, NodeContext, NodeRegistry, RetryPolicy, State

registry = NodeRegistry()


@registry.register("fetch")
def fetch(state: State, context: NodeContext) -> dict[str, Any]:
    (pathlib.Path(os.environ["DA_MARKER_DIR"]) / f"fetch-{uuid.uuid4().hex}").touch()  # one file per attempt
    raise ConnectionError(f"upstream {state['url']} is down")


@registry.register("recover")
def recover(state: State, context: NodeContext) -> dict[str, Any]:
    error = state["error"]
    return {"handled": f"{error['node']}: {error['error_type']}: {error['message']} ({error['attempts']} attempts)",
            "input": state["state"], "handled_on": context.worker_id}


@registry.register("recover_size")
def recover_size(state: State, context: NodeContext) -> dict[str, Any]:
    """A handler that reports the size of the state the failed node got (not the state: it may be large)."""
    return {"handled": f"{state['error']['node']}: {state['error']['message']}",
            "input_keys": sorted(state["state"]), "input_doc": len(state["state"].get("doc", "")),
            "handled_on": context.worker_id}


@registry.register("bad_recover")
def bad_recover(state: State) -> dict[str, Any]:
    raise ValueError("cannot recover")


def error_graph(handler: str = "recover") -> Graph:
    """fetch (2 attempts) -> END; fetch's failure -> the handler -> END; every node runs on a worker."""
    return (Graph(f"error_handling_{handler}")
            .add_node("fetch", node_type="fetch", retry=RetryPolicy(max_attempts=2, initial_interval=0.0,
                                                                    jitter=False, retry_on=Exception), on_error="handler")
            .add_node("handler", node_type=handler)
            .set_entry_point("fetch").set_finish_point("fetch").set_finish_point("handler").compile())
