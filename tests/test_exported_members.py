"""The public facade exports exactly what it documents, sorted."""

from __future__ import annotations

import distributed_agents
from distributed_agents.core import errors, graph


def test_all_is_sorted_and_complete() -> None:
    exported = distributed_agents.__all__
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(distributed_agents, name), name
    for name in ("Graph", "State", "Orchestrator", "NodeRegistry", "Worker"):
        assert name in exported


def test_seed_imports() -> None:
    from distributed_agents.core.graph import END, START

    assert (START, END) == ("__start__", "__end__")
    assert graph.END is distributed_agents.END


def test_every_error_derives_from_the_one_base_and_is_drawn_in_the_tree() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DistributedAgentsError), name
        assert name in errors.__doc__, f"{name} is missing from the tree in errors.py's docstring"
    assert errors.__all__ == sorted(errors.__all__)
