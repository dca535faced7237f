"""core.incarnation: task ids are unique per creation of a workflow id, and read back by the dead-letter tools."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.dead_letters import _run_and_step
from distributed_agents.core.engine import node_task_id, task_id_for
from distributed_agents.core.incarnation import INCARNATION_KEY, incarnation_of, new_incarnation
from distributed_agents.core.ports.task_queue import DeadLetter, Task

workflow_ids = st.text(st.characters(blacklist_characters=" \t\n\r.*>/\\", blacklist_categories=("Cs",)),
                       min_size=1, max_size=20)
nodes = st.text(st.characters(blacklist_characters="#", blacklist_categories=("Cs",)), min_size=1, max_size=12)
incarnations = st.one_of(st.just(""), st.from_regex(r"[0-9a-f]{8}", fullmatch=True))


@settings(max_examples=60, deadline=None)
@given(workflow_ids, st.integers(0, 10**6), st.integers(0, 10**6), nodes, st.one_of(st.none(), st.integers(0, 999)),
       incarnations, incarnations)
def test_task_ids_differ_per_incarnation_and_parse_back(
    workflow_id: str, run_number: int, step: int, node: str, index: int | None, incarnation: str, other: str,
) -> None:
    key = node if index is None else f"{node}#{index}"
    task_id = task_id_for(workflow_id, run_number, step, key, incarnation)
    assert (task_id == task_id_for(workflow_id, run_number, step, key, other)) == (incarnation == other)
    letter = DeadLetter(task_id, "t", "failed", [], 1, task=Task(task_id, workflow_id, node, "t", {}))
    assert _run_and_step(letter) == (run_number, step, incarnation)


def test_every_created_workflow_gets_its_own_incarnation_and_its_task_ids_name_it() -> None:
    graph = Graph("inc").add_node("n", lambda s: {}).set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> list[tuple[str, str]]:
        async with Orchestrator(backend="memory://") as orchestrator:
            seen = []
            for _ in range(3):
                await orchestrator.execute(graph, {}, workflow_id="wf-inc")
                record = await orchestrator.backend.state_store.get("wf-inc")
                assert record is not None
                seen.append((incarnation_of(record), node_task_id(record, "n")))
                await orchestrator.backend.state_store.delete("wf-inc")
            forked = await orchestrator.execute(graph, {}, workflow_id="wf-src")
            assert forked is not None
            fork_id = await orchestrator.fork("wf-src:0")
            fork = await orchestrator.backend.state_store.get(fork_id)
            source = await orchestrator.backend.state_store.get("wf-src")
            assert fork is not None and source is not None
            seen.append((incarnation_of(fork), incarnation_of(source)))
            return seen

    seen = run(scenario())
    tokens = [token for token, _ in seen[:3]]
    assert len(set(tokens)) == 3 and all(len(token) == 8 for token in tokens)
    assert [task for _, task in seen[:3]] == [f"wf-inc:0.{token}:1:n" for token in tokens]  # at the completed step
    assert seen[3][0] != seen[3][1] and seen[3][0]  # a fork is a new workflow: an incarnation of its own
    assert INCARNATION_KEY == "incarnation" and len(new_incarnation()) == 8
