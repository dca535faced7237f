"""``InMemorySaver`` / ``MemorySaver``: LangGraph's checkpointer names, so ``compile(checkpointer=MemorySaver())`` ports.

Here every workflow is checkpointed at every step in the orchestrator's backend
(``memory://``, Redis or NATS), whatever ``compile`` is given: a checkpointer object
is accepted and not used. These classes exist only so that ported imports and calls
work; they hold nothing. To keep threads across processes, use a Redis or NATS
backend (``Orchestrator(backend="redis://...")``), not a checkpointer.
"""

from __future__ import annotations

__all__ = ["InMemorySaver", "MemorySaver"]


class InMemorySaver:
    """A placeholder for LangGraph's ``InMemorySaver``: ``compile(checkpointer=InMemorySaver())`` is accepted.

    It stores nothing: the backend of the orchestrator that runs the graph holds every
    checkpoint (``memory://`` for ``graph.invoke``), readable with ``get_state`` /
    ``get_state_history``.
    """

    def __repr__(self) -> str:
        return "InMemorySaver()"


MemorySaver = InMemorySaver  # LangGraph's older name
