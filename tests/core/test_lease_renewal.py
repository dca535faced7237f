"""One task renews the leases of every workflow an orchestrator drives (``orchestrator._Renewer``)."""

from __future__ import annotations

import asyncio
import uuid

from support.aio import run

from distributed_agents import Graph, State
from distributed_agents.core.orchestrator import Orchestrator


def test_concurrent_runs_longer_than_their_lease_keep_it_and_finish() -> None:
    """Three runs whose node outlasts the lease several times over: each lease is renewed
    (its deadline moves on while the node runs), no run loses it, and once they end the
    renewer has nothing left to renew and stops."""
    release = asyncio.Event()

    async def slow(state: State) -> dict[str, int]:
        await release.wait()
        return {"x": 1}

    graph = Graph("renew").add_node("n", slow).set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> tuple[list[bool], list[int], bool]:
        orchestrator = Orchestrator(backend=f"memory://renew-{uuid.uuid4().hex[:8]}", lease_ttl=0.3)
        store = orchestrator.backend.state_store
        try:
            runs = [asyncio.ensure_future(orchestrator.execute(graph, {}, workflow_id=f"r{i}")) for i in range(3)]
            first: dict[str, float] = {}
            moved: set[str] = set()
            # Until every lease was seen renewed (its deadline later than when first seen).
            while len(moved) < 3:
                await asyncio.sleep(0.05)
                for i in range(3):
                    holder = await store.lease_holder(f"r{i}")
                    if holder is None:
                        continue
                    first.setdefault(holder.workflow_id, holder.deadline)
                    if holder.deadline > first[holder.workflow_id]:
                        moved.add(holder.workflow_id)
            release.set()
            results = await asyncio.gather(*runs)
            records = [await store.get(f"r{i}") for i in range(3)]
            for _ in range(100):  # the renewer's task ends at its next tick
                if orchestrator._renewer._task is None:
                    break
                await asyncio.sleep(0.05)
            return ([r["x"] == 1 for r in results], [0 if r is None else r.version for r in records],
                    orchestrator._renewer._task is None)
        finally:
            await orchestrator.close()

    finished, versions, stopped = run(scenario(), 60)
    assert finished == [True, True, True]
    assert versions == [2, 2, 2]  # created and committed once each: no takeover, no second run
    assert stopped
