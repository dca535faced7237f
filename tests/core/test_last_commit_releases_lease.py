"""A run's last commit releases the workflow's lease (``StateStore.save_releasing``)."""

from __future__ import annotations

import asyncio
import uuid

from support.aio import run

from distributed_agents import Graph, State
from distributed_agents.core.orchestrator import Orchestrator, _LeaseRun


def _graph() -> Graph:
    async def node(state: State) -> dict[str, int]:
        return {"x": 1}

    return Graph("rel").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()


def test_the_last_commit_frees_the_lease_and_no_release_follows() -> None:
    """After execute the lease is free for anyone; the orchestrator made no separate release call."""

    async def scenario() -> tuple[bool, int]:
        orchestrator = Orchestrator(backend=f"memory://rel-{uuid.uuid4().hex[:8]}")
        store = orchestrator.backend.state_store
        calls = 0
        release = store.release_lease

        async def counting(lease):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await release(lease)

        store.release_lease = counting  # type: ignore[method-assign]
        try:
            result = await orchestrator.execute(_graph(), {}, workflow_id="w1")
            assert result["x"] == 1
            free = await store.acquire_lease("w1", "someone-else", 30.0) is not None
            return free, calls
        finally:
            await orchestrator.close()

    free, calls = run(scenario(), 30)
    assert free
    assert calls == 1  # the port's default save_releasing releases once; the driver does not again


def test_a_renewal_after_the_release_does_not_stop_the_run() -> None:
    """The renewer may wake between the last commit (which freed the lease) and the end of the
    run: it stops instead of reporting the lease lost and cancelling the run."""

    async def scenario() -> tuple[bool, bool]:
        orchestrator = Orchestrator(backend=f"memory://rel-{uuid.uuid4().hex[:8]}", lease_ttl=0.06)
        store = orchestrator.backend.state_store
        try:
            await orchestrator.connect()
            lease = await store.acquire_lease("w2", orchestrator.orchestrator_id, 0.06)
            assert lease is not None
            await store.release_lease(lease)  # as save_releasing does
            drive: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            answers = iter([False])  # not released when the renewal starts, released when it comes back

            def released() -> bool:
                return next(answers, True)

            run = _LeaseRun(lease, drive, released, asyncio.get_running_loop(), 0.0)
            await asyncio.wait_for(orchestrator._renew(run), 5)
            return run.lost, drive.cancelled()
        finally:
            await orchestrator.close()

    assert run(scenario(), 30) == (False, False)
