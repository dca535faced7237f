"""A two-node chain for the CLI outage tests (``tests/test_cli_outage.py``), run by real
``distributed-agents worker`` and ``distributed-agents run`` processes.

``DA_MARKER_DIR``: ``gate`` writes ``started`` there, then waits until ``go`` exists
(so the test can take the backend away while the workflow is mid-run); ``double``
doubles ``n``. ``graph`` is ``gate -> double`` on workers.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

from distributed_agents import Graph, NodeRegistry, State

registry = NodeRegistry()


@registry.register("gate")
async def gate(state: State) -> dict[str, Any]:
    markers = pathlib.Path(os.environ["DA_MARKER_DIR"])
    (markers / "started").write_text(str(os.getpid()))
    while not (markers / "go").exists():
        await asyncio.sleep(0.05)
    return {"n": state["n"] + 1}


@registry.register("double")
def double(state: State) -> dict[str, Any]:
    return {"n": state["n"] * 2}


graph = Graph("outage_chain")
graph.add_node("gate").add_node("double")
graph.set_entry_point("gate").add_edge("gate", "double").set_finish_point("double")
graph.compile()
