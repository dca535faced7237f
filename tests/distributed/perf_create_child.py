"""Starts a new workflow (its record, lease and first tasks stored), prints its id and stops there.

Usage: python perf_create_child.py BACKEND_URL PREFIX WORKFLOW_ID. The far side of the
test that SIGKILLs an orchestrator right after a create that queued the first step's tasks
(tests/distributed/test_perf_regressions.py); the nodes run on the test's worker.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from distributed_agents import Graph, Orchestrator, Send


def fan_graph() -> Graph:
    """A first step of five Sends to ``count`` (on workers), then END; ``done`` sums their outputs."""
    return (Graph("perf_fan_first", reducers={"done": lambda a, b: (a or 0) + (b or 0)})
            .add_node("count", node_type="count")
            .set_conditional_entry_point(lambda state: [Send("count", {"i": i}) for i in range(5)])
            .set_finish_point("count").compile())


async def main(url: str, prefix: str, workflow_id: str) -> None:
    separator = "&" if "?" in url else "?"
    orchestrator = Orchestrator(backend=f"{url}{separator}prefix={prefix}", local_nodes=False, wait_for_workers=True,
                                lease_ttl=1.0, recover=False)
    enqueued: dict[str, Any] = {}
    # What execute does up to the drive: the create, its lease and (on Redis) the first step's tasks.
    await orchestrator._start(fan_graph(), {}, workflow_id=workflow_id, step_limit=None, priority=0,
                              from_checkpoint=None, enqueued=enqueued)
    print(f"{workflow_id} {len(enqueued)}", flush=True)
    await asyncio.Event().wait()  # killed here, before driving the workflow


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
