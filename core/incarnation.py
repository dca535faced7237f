"""A workflow's incarnation: a token stamped when its record is created, unique per creation.

A workflow id can be reused: a workflow deleted (``StateStore.delete``) or expired
(``state_ttl``) and created again under its id starts over. What the task queue keeps per
task id (results, enqueue dedup markers, done events, dead letters) and the child
workflows of subgraph tasks are not part of the record and outlive its deletion. Task ids
are deterministic (``engine.task_id_for``) so that a resumed or taken-over step reuses its
finished tasks; the incarnation in them (as LangGraph's task ids derive from a checkpoint
id that is unique per run) keeps a new workflow of an old id from reusing the old one's
results instead of running its nodes. Child workflows record the incarnation of the parent
that created them (``PARENT_INCARNATION_KEY``); a child left by an earlier incarnation is
stale and is replaced.

Records written before incarnations existed have none (``""``): their task ids keep the
form they had, so workflows in flight across an upgrade still find their tasks.
"""

from __future__ import annotations

from distributed_agents.core.ports.state_store import WorkflowRecord
from distributed_agents.core.random_ids import random_hex

__all__ = ["INCARNATION_KEY", "PARENT_INCARNATION_KEY", "incarnation_of", "new_incarnation"]

INCARNATION_KEY = "incarnation"  # in a record's metadata: stamped once, when the record is created
PARENT_INCARNATION_KEY = "parent_incarnation"  # in a child workflow's metadata: its parent's incarnation


def new_incarnation() -> str:
    """A fresh incarnation token: 8 lowercase hex digits (one chance in 4 billion that two collide)."""
    return random_hex(4)


def incarnation_of(record: WorkflowRecord) -> str:
    """``record``'s incarnation token; ``""`` for a record created before incarnations were stamped."""
    value = record.metadata.get(INCARNATION_KEY)
    return value if isinstance(value, str) else ""
