"""``InMemorySaver`` / ``MemorySaver`` / ``InMemoryCache``: LangGraph's checkpointer and cache names, so
``compile(checkpointer=MemorySaver(), cache=InMemoryCache())`` ports.

Here every workflow is checkpointed at every step in the orchestrator's backend
(``memory://``, Redis or NATS), whatever ``compile`` is given: a checkpointer object
is accepted and not used. These classes exist only so that ported imports and calls
work; they hold nothing. To keep threads across processes, use a Redis or NATS
backend (``Orchestrator(backend="redis://...")``), not a checkpointer. Likewise the node
cache of ``add_node(cache_policy=)`` is the backend's (``core.cache``), whatever cache
``compile`` is given.
"""

from __future__ import annotations

__all__ = ["InMemoryCache", "InMemorySaver", "MemorySaver"]


class InMemorySaver:
    """A placeholder for LangGraph's ``InMemorySaver``: ``compile(checkpointer=InMemorySaver())`` is accepted.

    It stores nothing: the backend of the orchestrator that runs the graph holds every
    checkpoint (``memory://`` for ``graph.invoke``), readable with ``get_state`` /
    ``get_state_history``.
    """

    def __repr__(self) -> str:
        return "InMemorySaver()"


MemorySaver = InMemorySaver  # LangGraph's older name


class InMemoryCache:
    """A placeholder for LangGraph's ``InMemoryCache``: ``compile(cache=InMemoryCache())`` is accepted.

    It holds nothing: the outputs of nodes with a ``cache_policy`` are cached in the
    backend of the orchestrator that runs the graph (``core.cache``), shared by every
    orchestrator and worker on it, and cleared with ``Orchestrator.clear_cache``.
    """

    def __repr__(self) -> str:
        return "InMemoryCache()"
