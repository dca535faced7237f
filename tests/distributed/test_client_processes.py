"""A workflow submitted in one process is watched, awaited and cancelled by id from another."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Orchestrator
from distributed_agents.core.errors import ExecutionError, WorkflowCancelledError

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_ids_from_submit_in_another_process_work_for_status_state_wait_result_and_cancel(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    url = str(request.getfixturevalue(backend))
    prefix = f"proc{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "open"
    with subprocess.Popen([sys.executable, str(HERE / "submit_app.py"), url, prefix, str(marker)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            scenario(child, url, prefix, marker)
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=30)


def scenario(child: subprocess.Popen[str], url: str, prefix: str, marker: pathlib.Path) -> None:
    """While the child drives both workflows: read, cancel the second, open the gate, await the first."""
    assert child.stdout is not None
    first, second = child.stdout.readline().strip(), child.stdout.readline().strip()
    assert first and second, child.stderr.read() if child.stderr else ""

    async def watch() -> tuple[str, str, tuple[str, ...], str, str]:
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}) as here:
            running = (await here.get_workflow_status(first)).status
            state = await here.get_state(first)
            assert await here.cancel_workflow(second) is True
            marker.touch()
            result = await here.wait(first, timeout=60)
            assert (await here.get_result(first)) == result
            with pytest.raises(WorkflowCancelledError):
                await here.wait(second, timeout=60)
            listed = [info.workflow_id for info in await here.list_workflows(graph="gated")]
            assert listed == [first, second]
            return running, str(result["opened"]), state.next, state.checkpoint_id, \
                (await here.get_state(first)).checkpoint_id

    running, opened, pending, before, after = run(watch(), timeout=90)
    assert (running, opened, pending) == ("running", "first", ("gate",))
    assert (before, after) == (f"{first}:0", f"{first}:1")
    assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""


@pytest.mark.parametrize("backend", ["redis_url", "nats_url"])
def test_update_state_on_a_workflow_whose_orchestrator_died_is_continued_by_recovery(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """The driving process is SIGKILLed mid-step; once its lease lapses update_state is accepted,
    the workflow stays running, and an orchestrator with recover runs it on from the update."""
    url = str(request.getfixturevalue(backend))
    prefix = f"orph{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "open"
    sys.path.insert(0, str(HERE))
    try:
        from submit_app import gated_graph  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(HERE))
    with subprocess.Popen([sys.executable, str(HERE / "submit_app.py"), url, prefix, str(marker), "1.0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        first = child.stdout.readline().strip()
        assert first, child.stderr.read() if child.stderr else ""
        child.kill()
        child.communicate(timeout=30)

    async def patch_and_recover() -> tuple[list[str], str, str, Any]:
        refusals: list[str] = []
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}) as editor:
            while True:  # refused while the dead process's lease lives on
                try:
                    snapshot = await editor.update_state(first, {"name": "patched"}, graph=gated_graph())
                    break
                except ExecutionError as exc:
                    refusals.append(str(exc))
                    await asyncio.sleep(0.2)
        async with Orchestrator(backend=url, backend_options={"prefix": prefix}, recover=True,
                                recovery_interval=0.1, lease_ttl=1.0) as rescuer:
            rescuer.register_graph(gated_graph())
            marker.touch()
            result = await rescuer.wait(first, timeout=60)
        return refusals, snapshot.status, snapshot.metadata["as_node"], result

    refusals, status, as_node, result = run(patch_and_recover(), timeout=90)
    assert all("being run by another orchestrator" in text for text in refusals)
    assert (status, as_node) == ("running", "__start__")
    assert result["opened"] == "patched"
