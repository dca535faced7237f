"""Two orchestrators, one workflow: the stalled one loses the lease and backs off.

Each orchestrator runs its own event loop in its own thread over the shared in-process
backend. Orchestrator A's event loop is blocked (as by a long GC pause or a frozen VM)
while it runs a step, so it cannot renew its workflow lease; orchestrator B's recovery
loop takes the workflow over, re-runs the unfinished step and completes the workflow.
When A wakes, its commit is refused (fencing + compare-and-set), and its ``execute``
returns B's result instead of committing a second time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from distributed_agents import Graph, Orchestrator, State

pytestmark = pytest.mark.timeout(30)


def test_stalled_orchestrator_is_taken_over_and_backs_off() -> None:
    runs: list[tuple[str, str]] = []
    b_ready = threading.Event()

    def graph() -> Graph:
        async def first(state: State) -> dict[str, Any]:
            runs.append(("first", threading.current_thread().name))
            return {"first": 1}

        async def stall(state: State) -> dict[str, Any]:
            runs.append(("stall", threading.current_thread().name))
            if threading.current_thread().name == "A":
                time.sleep(1.5)  # blocks A's whole event loop: no lease renewal
            return {"stall": state["first"] + 1}

        async def last(state: State) -> dict[str, Any]:
            runs.append(("last", threading.current_thread().name))
            return {"last": state["stall"] + 1}

        g = Graph("takeover")
        g.add_node("first", first).add_node("stall", stall).add_node("last", last)
        return g.set_entry_point("first").add_edge("first", "stall").add_edge("stall", "last") \
            .set_finish_point("last").compile()

    outcome: dict[str, Any] = {}

    def orchestrator_a() -> None:
        async def main() -> None:
            b_ready.wait(10)
            orchestrator = Orchestrator(lease_ttl=0.3)
            outcome["a"] = dict(await orchestrator.execute(graph(), {}, workflow_id="wf-takeover"))
            outcome["checkpoints"] = [
                cp.step for cp in await orchestrator.backend.state_store.list_checkpoints("wf-takeover")
            ]
            await orchestrator.close()
        asyncio.run(main())

    def orchestrator_b() -> None:
        async def main() -> None:
            orchestrator = Orchestrator(lease_ttl=0.3, recover=True, recovery_interval=0.05)
            orchestrator.register_graph(graph())
            await orchestrator.connect()
            b_ready.set()
            while await orchestrator.backend.state_store.get("wf-takeover") is None:
                await asyncio.sleep(0.01)
            outcome["b"] = dict(await orchestrator.wait("wf-takeover", timeout=20))
            await orchestrator.close()
        asyncio.run(main())

    threads = [threading.Thread(target=orchestrator_a, name="A", daemon=True),
               threading.Thread(target=orchestrator_b, name="B", daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(25)
    assert not any(thread.is_alive() for thread in threads), "an orchestrator did not finish"
    assert outcome["a"] == outcome["b"] == {"first": 1, "stall": 2, "last": 3}
    # One checkpoint per step: nothing was committed twice.
    assert outcome["checkpoints"] == [3, 2, 1, 0]
    # The stalled step ran on A (never committed) and again on B, which finished the workflow.
    assert runs == [("first", "A"), ("stall", "A"), ("stall", "B"), ("last", "B")]
