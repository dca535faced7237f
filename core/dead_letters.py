"""Re-driving a dead letter: the requeued task continues the workflow it failed.

A node task that failed its last attempt is dead-lettered, and the step waiting for it
fails the workflow. Once the cause is fixed, ``requeue_dead_letter`` puts the task back
on the queue *and* reopens that workflow: a FAILED workflow whose failed step is the
task's step (same run) goes back to RUNNING under the same run, with no lease. Any
orchestrator that recovers workflows (``DistributedOrchestrator`` does by default) or
an explicit ``Orchestrator.resume(workflow_id)`` then drives that step again. Task ids
are deterministic, so the step finds the requeued task (queued, running or finished)
under its id and uses its result: the node runs once after the fix, and the other
nodes of the step keep their results.

A task of a workflow that has moved on (completed, cancelled, resumed into a new run,
or past that step) is not requeued: running it would do the node's work for nobody.
The outcome says so and points to ``resume`` (for a completed workflow, to ``purge``). A task of no stored workflow (enqueued
by other tooling) is simply requeued.
"""

from __future__ import annotations

from dataclasses import dataclass

from distributed_agents.core.engine import node_run
from distributed_agents.core.errors import VersionConflictError
from distributed_agents.core.frontier import read_entries
from distributed_agents.core.incarnation import incarnation_of
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.state_store import WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import DeadLetter

__all__ = ["RequeueOutcome", "find_dead_letter", "requeue_dead_letter"]

_PAGE = 1000
_CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class RequeueOutcome:
    """What ``requeue_dead_letter`` did: ``requeued`` or not, and one line saying why."""

    task_id: str
    requeued: bool
    message: str
    workflow_id: str | None = None
    reopened: bool = False


async def find_dead_letter(backend: Backend, task_id: str) -> DeadLetter | None:
    """The dead letter of ``task_id``, or None (the port lists them; we page through)."""
    limit = _PAGE
    while True:
        letters = await backend.task_queue.dead_letters(None, limit=limit)
        for letter in letters:
            if letter.task_id == task_id:
                return letter
        if len(letters) < limit:
            return None
        limit += _PAGE


def _run_and_step(letter: DeadLetter) -> tuple[int, int, str] | None:
    """The (run, step, incarnation) of an engine task id ``<workflow>:<run>[.<incarnation>]:<step>:<node>``
    (``engine.task_id_for``; incarnation ``""`` when absent); None for other ids."""
    task = letter.task
    if task is None or not letter.task_id.startswith(f"{task.workflow_id}:"):
        return None
    run_text, _, rest = letter.task_id[len(task.workflow_id) + 1:].partition(":")
    run, _, incarnation = run_text.partition(".")
    step, _, key = rest.partition(":")
    node, _, index = key.rpartition("#") if "#" in key else (key, "", "")
    # ``node`` or, for the i-th Send to it, ``node#i`` (see core.frontier).
    if node != task.node or (index and not index.isdigit()) or not run.isdigit() or not step.isdigit():
        return None
    return int(run), int(step), incarnation


async def requeue_dead_letter(backend: Backend, task_id: str) -> RequeueOutcome:
    """Requeue ``task_id``'s dead letter and reopen the workflow it failed (see module docstring).

    Never raises for an unknown, undecodable or stale task: the outcome says what
    happened. Backend errors propagate.
    """
    letter = await find_dead_letter(backend, task_id)
    if letter is None:
        return RequeueOutcome(task_id, False, f"{task_id}: not found among the dead letters "
                                              "(see 'distributed-agents dead-letters list')")
    if letter.task is None:
        return RequeueOutcome(task_id, False, f"{task_id}: its payload does not decode as a task, so it cannot be "
                                              "requeued; inspect it with 'dead-letters show', then purge it")
    workflow_id = letter.task.workflow_id
    store = backend.state_store
    record = await store.get(workflow_id)
    position = _run_and_step(letter)
    if record is None or position is None:
        ok = await backend.task_queue.requeue_dead_letter(task_id)
        return RequeueOutcome(task_id, ok, f"{task_id}: {'requeued' if ok else 'could not be requeued'}",
                              workflow_id)
    run, step, incarnation = position
    stale = _stale(record, letter, run, step, incarnation)
    if stale is not None:
        return RequeueOutcome(task_id, False, f"{task_id}: not requeued: {stale}", workflow_id)
    # Requeue first: a reopened step that finds the old dead letter would fail at once.
    if not await backend.task_queue.requeue_dead_letter(task_id):
        return RequeueOutcome(task_id, False, f"{task_id}: could not be requeued (it left the dead letters)",
                              workflow_id)
    if record.status == WorkflowStatus.RUNNING:
        return RequeueOutcome(task_id, True, f"{task_id}: requeued; workflow {workflow_id!r} is running and "
                                             "uses its result", workflow_id)
    for _ in range(_CAS_ATTEMPTS):
        try:
            await store.save(_reopened(record, task_id), expected_version=record.version)
            break
        except VersionConflictError:
            current = await store.get(workflow_id)
            if current is None or _stale(current, letter, run, step, incarnation) is not None:
                return RequeueOutcome(task_id, True, f"{task_id}: requeued, but workflow {workflow_id!r} changed "
                                                     "meanwhile; use Orchestrator.resume() if it did not continue",
                                      workflow_id)
            if current.status == WorkflowStatus.RUNNING:
                break
            record = current
    return RequeueOutcome(
        task_id, True,
        f"{task_id}: requeued; workflow {workflow_id!r} (failed at step {step}) is running again and continues "
        "with this task's result when an orchestrator that recovers workflows (DistributedOrchestrator does) "
        f"or Orchestrator.resume({workflow_id!r}) drives it",
        workflow_id, reopened=True,
    )


def _stale(record: WorkflowRecord, letter: DeadLetter, run: int, step: int, incarnation: str) -> str | None:
    """Why requeueing ``letter`` would not continue ``record``'s workflow; None if it would."""
    assert letter.task is not None
    node = letter.task.node
    if incarnation != incarnation_of(record):
        return (f"workflow {record.workflow_id!r} was deleted and created again since this task failed in it, so "
                f"its result would be used by nobody; delete this dead letter with "
                f"'distributed-agents dead-letters purge {letter.task_id}'")
    # The frontier entry the task ran: node, or node#i for a Send (after "<workflow>:<run>[.<incarnation>]:<step>:").
    key = letter.task_id[len(letter.task.workflow_id) + 1:].split(":", 2)[-1]
    current_run = node_run(record, key)
    if (record.status in (WorkflowStatus.FAILED, WorkflowStatus.RUNNING) and current_run == run
            and record.step == step and key in {e.key for e in read_entries(record.frontier, {})}):
        return None
    if record.status == WorkflowStatus.COMPLETED:
        return (f"workflow {record.workflow_id!r} completed (at step {record.step}), so nothing needs re-running; "
                f"delete this dead letter with 'distributed-agents dead-letters purge {letter.task_id}'")
    return (f"workflow {record.workflow_id!r} is {record.status} at step {record.step} (run {current_run}), "
            f"and this task ran node {node!r} in step {step} of run {run}, so its result would be used by "
            f"nobody; to retry the workflow, call Orchestrator.resume({record.workflow_id!r})")


def _reopened(record: WorkflowRecord, task_id: str) -> WorkflowRecord:
    """``record`` back to RUNNING in the same run (same task ids), no error, noting the requeue."""
    requeued = [*record.metadata.get("requeued", ()), task_id]
    return record.evolve(status=WorkflowStatus.RUNNING, error=None,
                         metadata={**record.metadata, "requeued": requeued[-20:]})
