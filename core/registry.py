"""``NodeRegistry``: node functions by node type, for orchestrators and workers."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from distributed_agents.core.errors import ConfigurationError

__all__ = ["NodeFunction", "NodeRegistry", "function_name"]

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
        # Node type -> the graphs its function was taken from (``from_graph``); a type not here
        # was registered by node type (``register``/``register_node``) and serves any graph.
        self._graphs: dict[str, frozenset[str]] = {}

    @classmethod
    def from_graph(cls, graph: Any, registry: NodeRegistry | None = None) -> NodeRegistry:
        """A registry of every node function given inline to ``graph`` (a ``Graph``), by node type.

        What a worker needs to serve a graph built the LangGraph way (``add_node(name, func)``):
        ``Worker(registry=NodeRegistry.from_graph(graph))``, or ``distributed-agents
        worker --app module:graph``. Nodes of subgraphs (at any depth) are included; nodes
        added without a function (served by a registry) are not. Added to ``registry``
        when given (and returned). ``ConfigurationError`` naming both when two nodes share
        a node type but not a function.

        A function taken from a graph is bound to it (``graphs_of``): node types are shared by
        every graph on a deployment's key prefix (a node's type is its name unless given), so a
        worker serving graph ``billing`` must not run the node ``work`` of graph ``faq`` with
        ``billing``'s function; a task naming another function (``function_name``) is
        dead-lettered, saying so (``Worker``).
        """
        target = registry if registry is not None else cls()
        first: dict[str, str] = {}  # node type -> where this graph's first node of it is
        for node_type, func, where, graphs in _inline_functions(graph, ()):
            existing = target.get(node_type)
            if existing is not None and existing is not func:
                other = (f"and {first[node_type]} has it too, with {function_name(existing)!r}" if node_type in first
                         else f"which the registry runs with {function_name(existing)!r} already")
                raise ConfigurationError(
                    f"{where} (function {function_name(func)!r}) has node type {node_type!r}, {other}: a worker "
                    "runs one function per node type, so give one of them another node type "
                    "(add_node(..., node_type=...))")
            first.setdefault(node_type, where)
            bound = existing is None or node_type in target._graphs
            target._add(node_type, func)
            if bound:
                target._graphs[node_type] = target._graphs.get(node_type, frozenset()) | graphs
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
        """Register ``func`` for ``node_type``, for the tasks of any graph; replacing an existing one is an error."""
        self._add(node_type, func)
        self._graphs.pop(node_type, None)

    def _add(self, node_type: str, func: NodeFunction) -> None:
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

    def graphs_of(self, node_type: str) -> frozenset[str] | None:
        """The names of the graphs ``node_type``'s function was taken from (``from_graph``: the
        graph holding the node and every graph above it): a worker runs with it only the tasks
        that name the same function or none; None when it was registered by node type
        (``register``, ``register_node``): then it runs every task of the type."""
        return self._graphs.get(node_type)

    def node_types(self) -> frozenset[str]:
        """Every registered node type."""
        return frozenset(self._functions)

    def __contains__(self, node_type: object) -> bool:
        return node_type in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)


def function_name(func: Any) -> str:
    """``file:qualname`` of a node function: the file that defines it (its base name, under its
    package's directory when it is in a package: ``faq/agents.py``) and its qualified name; of
    the function a decorator wrapped (``functools.wraps``) or a ``functools.partial`` wraps, of
    its class for another callable object. What a task names its node's function by
    (``task_payload``'s ``function``), so that a worker can tell another graph's function of the
    same node type. The file, not the module: one file is imported under other module names in
    other processes (``__main__`` in a script, ``pkg.agents`` in one and ``agents`` in another),
    and a top-level module's directory differs between machines."""
    try:
        return _cached_name(func)
    except TypeError:  # an unhashable callable object: named each time
        return _name_of(func)


def _name_of(func: Any) -> str:
    """``function_name``, worked out (``_cached_name`` keeps it per function)."""
    for _ in range(8):  # (a partial of a decorated function of a partial...)
        try:
            func = inspect.unwrap(func)
        except ValueError:  # a __wrapped__ cycle
            break
        if not isinstance(func, functools.partial):
            break
        func = func.func
    code = getattr(func, "__code__", None)
    qualname = getattr(func, "__qualname__", None)
    if code is None or not isinstance(qualname, str):
        cls = type(func) if not isinstance(func, type) else func
        module = sys.modules.get(cls.__module__)
        where = getattr(module, "__file__", None)
        return f"{_file_label(where) if isinstance(where, str) else cls.__module__}:{cls.__qualname__}"
    return f"{_file_label(code.co_filename)}:{qualname}"


# A queued node task names its function (core.engine): once per function, not per task.
_cached_name = functools.lru_cache(maxsize=1024)(_name_of)


@functools.lru_cache(maxsize=1024)
def _file_label(path: str) -> str:
    """``path``'s base name, under its directory's name when that directory is a package."""
    path = os.path.normpath(path)
    folder = os.path.dirname(path)
    if folder and os.path.isfile(os.path.join(folder, "__init__.py")):
        return f"{os.path.basename(folder)}/{os.path.basename(path)}"
    return os.path.basename(path)


def _inline_functions(graph: Any, path: tuple[str, ...],
                      above: frozenset[str] = frozenset()) -> Iterator[tuple[str, NodeFunction, str, frozenset[str]]]:
    """(node type, function, where, graph names) of each node of ``graph`` and its subgraphs that
    has a function; the names are those of the graph holding the node and of the graphs above it
    (``above``): a subgraph's task may name either."""
    graphs = above | {graph.name}
    for name, spec in graph.nodes.items():
        where = f"graph {graph.name!r}: node {'/'.join((*path, name))!r}"
        subgraph = getattr(spec, "subgraph", None)
        if subgraph is not None:
            yield from _inline_functions(subgraph.graph, (*path, name), graphs)
        elif spec.func is not None:
            yield spec.node_type, spec.func, where, graphs


def _check_node_type(node_type: object) -> None:
    if not isinstance(node_type, str) or not node_type:
        raise ConfigurationError(f"node type must be a non-empty string, got {node_type!r}")
