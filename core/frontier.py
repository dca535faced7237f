"""The frontier: what a workflow's next step runs, as stored with every commit.

Shape (JSON; every key but ``next`` optional, so frontiers of older versions read the same)::

    {"next": [node, ...],                     # triggered by edges, in declaration order
     "sends": [{"node": n, "arg": {...}}, ...],  # Send tasks, in the order they were sent
                                              # (an error handler's also has "handles": task, and
                                              # "state_ref" when its input's state is large, see
                                              # engine._route_failure)
     "joins": {join_key: [sources seen]},     # see core.joins
     "pending_writes": {task: output},        # tasks of this step that already finished
     "task_runs": {task: run},                # task ids pinned to an earlier run (resume)
     "interrupts": [Interrupt.to_dict(), ...],# pending pauses (status "interrupted")
     "resume": {task: [answer, ...]},         # answers to a task's interrupt() calls
     "breakpoint_passed": true,               # a pause at this point was resumed: no interrupt_before pause
     "state_edited": true,                    # the state was edited since this step's checkpoint (a
                                              # resume's Command(update=)): its tasks carry it, see
                                              # engine._state_reference
     "subgraphs": {task: child workflow id},  # the step's subgraph tasks (core.subgraphs)
     "subgraph_resume": {task: {id: answer}}} # answers for pauses inside those subgraphs

Each entry of the step is a ``TaskEntry``: a node plus its own input (``arg`` for a
Send, None for the shared state). Its ``key`` names it in ``pending_writes``,
``task_runs``, ``resume``, checkpoint ``writes`` and its task id: the node name for an
edge-triggered entry, ``node#i`` for the i-th Send to ``node`` in the step, so ids are
deterministic and a resumed or taken-over step reuses finished tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distributed_agents.core.quick_init import quick_init

__all__ = ["STATE_EDITED_KEY", "TaskEntry", "frontier_nodes", "make_frontier", "read_entries"]

# Set by a resume whose Command(update=) edited the state after the step's checkpoint was written.
STATE_EDITED_KEY = "state_edited"


@quick_init  # made every step (a Send's)
@dataclass(frozen=True)
class TaskEntry:
    """One task of a step: ``node`` run on the shared state, or on ``arg`` (the ``index``-th Send to it).

    ``handles`` is set on an error handler's task: the key of the failed task it handles.
    ``state_ref`` (a ``core.task_state`` reference) is set on a handler's task whose input's
    ``"state"`` (the failed task's, over ``INLINE_STATE_LIMIT``) is not in ``arg`` but in the
    checkpoint it names: the node's input is ``{**arg, "state": <that state>}``.
    """

    node: str
    index: int | None = None
    arg: Mapping[str, Any] | None = None
    handles: str | None = None
    state_ref: Mapping[str, Any] | None = None

    @functools.cached_property  # the step loop asks for it many times per step
    def key(self) -> str:
        """The entry's name in the frontier and in its task id."""
        return self.node if self.index is None else f"{self.node}#{self.index}"

    @property
    def is_send(self) -> bool:
        """Whether the entry runs on its own argument."""
        return self.index is not None


@functools.lru_cache(maxsize=4096)
def _edge_entry(node: str) -> TaskEntry:
    """The entry of edge-triggered ``node``: one shared object per name (entries never change)."""
    return TaskEntry(node)


def read_entries(frontier: Mapping[str, Any], order: Mapping[str, int]) -> list[TaskEntry]:
    """The step's entries in merge order: node declaration order (``order``), then Send index.

    An edge-triggered entry of a node comes before its Sends; nodes not in ``order``
    (a graph that changed) come last, in the order stored.
    """
    entries = [_edge_entry(str(name)) for name in frontier.get("next", ())]
    sends = frontier.get("sends")
    if not sends and len(entries) < 2:
        return entries  # one node per step (a chain), the common case: nothing to number or sort
    counts: dict[str, int] = {}
    for send in sends or ():
        node = str(send["node"])
        index = counts.get(node, 0)
        counts[node] = index + 1
        handles = send.get("handles")
        ref = send.get("state_ref")
        entries.append(TaskEntry(node, index, dict(send.get("arg") or {}),
                                 None if handles is None else str(handles), dict(ref) if ref else None))
    if len(entries) < 2:  # one node per step (a chain) is the common case
        return entries
    last = len(order)
    positions = {entry.key: i for i, entry in enumerate(entries)}
    return sorted(entries, key=lambda e: (order.get(e.node, last), -1 if e.index is None else e.index,
                                          positions[e.key]))


def frontier_nodes(frontier: Mapping[str, Any]) -> list[str]:
    """Every node the frontier's step runs, each once: edge-triggered ones, then Send targets."""
    sends = frontier.get("sends")
    if not sends:
        nexts = frontier.get("next", ())
        if len(nexts) == 1:  # one node per step (a chain): no dedup to do
            return [str(nexts[0])]
        return list(dict.fromkeys([str(name) for name in nexts]))
    names = [str(name) for name in frontier.get("next", ())]
    names.extend(str(send["node"]) for send in sends)
    return list(dict.fromkeys(names))


def make_frontier(next_nodes: Sequence[str], sends: Iterable[Mapping[str, Any]],
                  joins: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A fresh frontier; ``sends`` only when there are some, so plain frontiers keep their old shape."""
    frontier: dict[str, Any] = {"next": list(next_nodes), "joins": {k: list(v) for k, v in joins.items()}}
    sends = [dict(send) for send in sends]
    if sends:
        frontier["sends"] = sends
    return frontier
