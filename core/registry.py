"""``NodeRegistry``: node functions by node type, for orchestrators and workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from distributed_agents.core.errors import ConfigurationError

__all__ = ["NodeFunction", "NodeRegistry"]

NodeFunction = Callable[..., Any]
F = TypeVar("F", bound=NodeFunction)


class NodeRegistry:
    """Maps node types to the functions that implement them.

    A node function takes the ``State`` (and, if it accepts a second positional
    parameter, a ``NodeContext``) and returns a dict of updates or None; it may be
    ``async def`` (run on the event loop) or a plain function (run in a thread).
    """

    def __init__(self) -> None:
        self._functions: dict[str, NodeFunction] = {}

    @classmethod
    def from_graph(cls, graph: Any, registry: NodeRegistry | None = None) -> NodeRegistry:
        """A registry of every node function given inline to ``graph`` (a ``Graph``), by node type.

        What a worker needs to serve a graph built the LangGraph way (``add_node(name, func)``):
        ``Worker(registry=NodeRegistry.from_graph(graph))``, or ``distributed-agents
        worker --app module:graph``. Nodes of subgraphs (at any depth) are included; nodes
        added without a function (served by a registry) are not. Added to ``registry``
        when given (and returned). ``ConfigurationError`` naming both when two nodes share
        a node type but not a function.
        """
        target = registry if registry is not None else cls()
        for node_type, func, where in _inline_functions(graph, ()):
            existing = target.get(node_type)
            if existing is not None and existing is not func:
                raise ConfigurationError(
                    f"{where}: node type {node_type!r} is already registered to "
                    f"{getattr(existing, '__qualname__', existing)!r}, and this node runs "
                    f"{getattr(func, '__qualname__', func)!r}; give one of them another node type "
                    "(add_node(..., node_type=...)) so a worker can tell them apart")
            target.register_node(node_type, func)
        return target

    def register(self, node_type: str) -> Callable[[F], F]:
        """Decorator: ``@registry.register("researcher")``."""
        # Checked now, not at decoration: a bare ``@registry.register`` would otherwise
        # silently replace the function with the inner decorator.
        _check_node_type(node_type)

        def decorate(func: F) -> F:
            self.register_node(node_type, func)
            return func

        return decorate

    def register_node(self, node_type: str, func: NodeFunction) -> None:
        """Register ``func`` for ``node_type``; replacing an existing one is an error."""
        _check_node_type(node_type)
        if not callable(func):
            raise ConfigurationError(f"node {node_type!r}: {func!r} is not callable")
        existing = self._functions.get(node_type)
        if existing is not None and existing is not func:
            raise ConfigurationError(
                f"node type {node_type!r} is already registered to {getattr(existing, '__qualname__', existing)!r}"
            )
        self._functions[node_type] = func

    def get(self, node_type: str) -> NodeFunction | None:
        """The function for ``node_type``, or None."""
        return self._functions.get(node_type)

    def node_types(self) -> frozenset[str]:
        """Every registered node type."""
        return frozenset(self._functions)

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)


def _inline_functions(graph: Any, path: tuple[str, ...]) -> Iterator[tuple[str, NodeFunction, str]]:
    """(node type, function, where) of each node of ``graph`` and its subgraphs that has a function."""
    for name, spec in graph.nodes.items():
        where = f"graph {graph.name!r}: node {'/'.join((*path, name))!r}"
        subgraph = getattr(spec, "subgraph", None)
        if subgraph is not None:
            yield from _inline_functions(subgraph.graph, (*path, name))
        elif spec.func is not None:
            yield spec.node_type, spec.func, where


def _check_node_type(node_type: object) -> None:
    if not isinstance(node_type, str) or not node_type:
        raise ConfigurationError(f"node type must be a non-empty string, got {node_type!r}")
