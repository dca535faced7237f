"""The streaming node served by the stream-latency benchmark's worker processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from distributed_agents import NodeRegistry, State, get_stream_writer

registry = NodeRegistry()


@registry.register("tokens")
async def tokens(state: State) -> dict[str, Any]:
    """Stream ``state["count"]`` tokens, ``state["interval"]`` seconds apart (0: a burst), each stamped."""
    writer = get_stream_writer()
    interval = float(state.get("interval", 0.0))
    for i in range(int(state["count"])):
        writer.message({"i": i, "sent": time.time()})
        if interval:
            await asyncio.sleep(interval)
    return {"sent": int(state["count"])}
