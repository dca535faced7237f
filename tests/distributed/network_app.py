"""Nodes for the network-fault tests, served by real worker processes via the CLI.

``DA_MARKER_DIR``: each attempt of ``effect`` writes ``<worker>.attempt<N>`` there and
records its side effect through its idempotency key: ``effects/<key>`` is created only
if absent (``O_EXCL``), so a re-run with the same key finds it and does not commit it
again; ``effects.log`` gets one line per attempt, ``applied`` or ``already``. With
``DA_WAIT_FOR=<name>`` a worker's ``effect`` waits, after its marker, until that file
exists in the marker directory (so the test can fault the network first).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()


@registry.register("prepare")
async def prepare(state: State) -> dict[str, Any]:
    return {"prepared": f"prepared {state['query']}"}


@registry.register("effect")
async def effect(state: State, context: NodeContext) -> dict[str, Any]:
    markers = pathlib.Path(os.environ["DA_MARKER_DIR"])
    (markers / f"{context.worker_id}.attempt{context.attempt}").write_text(str(os.getpid()))
    wait_for = os.environ.get("DA_WAIT_FOR")
    if wait_for:
        while not (markers / wait_for).exists():
            await asyncio.sleep(0.05)
    effects = markers / "effects"
    effects.mkdir(exist_ok=True)
    try:
        fd = os.open(effects / context.idempotency_key, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        outcome = "already"
    else:
        os.write(fd, context.worker_id.encode())
        os.close(fd)
        outcome = "applied"
    with open(markers / "effects.log", "a") as log:
        log.write(f"{context.worker_id} {context.idempotency_key} {context.attempt} {outcome}\n")
    return {"effect": f"charged {state['prepared']}"}


@registry.register("finish")
def finish(state: State) -> dict[str, Any]:
    return {"report": f"report on {state['effect']}"}
