"""``Graph``: a workflow's nodes, edges, conditional routes and state reducers.

Build a graph, then ``compile()`` it: compiling validates the structure (every problem
is a ``GraphValidationError`` naming the node or edge at fault) and freezes the graph.
Only compiled graphs run. ``spec()`` describes a compiled graph as JSON for the
distributed side (functions stay in the process that defined them).

Routing happens after each step, on the merged state: a static edge ``a -> b``
triggers ``b`` whenever ``a`` ran; a join ``add_edge(["a", "b"], "c")`` triggers ``c``
once both ``a`` and ``b`` have run since the join last fired (a barrier advanced once
per step, see ``joins``); a conditional edge calls its condition, which returns one key
or a list of keys (fan-out), each mapped to a node or ``END``. Conditions receive a
read-only view of the state (``ReadOnlyState``): a write raises ``ExecutionError``.
A conditional edge from ``START`` routes the input state when the workflow starts.
The nodes a step triggers always run, and their updates merge, in node declaration
order. A condition may also return ``Send(node, arg)``s (map-reduce): each runs ``node``
on its own ``arg`` in the next step, as its own task; and a node may return
``Command(update=, goto=)`` to route in addition to its edges (see ``core.types``).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import typing
from types import MappingProxyType
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, TypeVar

from distributed_agents.core.cache import CachePolicy
from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import (
    ConfigurationError,
    DistributedAgentsError,
    ExecutionError,
    GraphFrozenError,
    GraphNotCompiledError,
    GraphValidationError,
    RoutingError,
    StateNotSerializableError,
)
from distributed_agents.core.frontier import make_frontier
from distributed_agents.core.joins import Join, advance_joins, join_key
from distributed_agents.core.managed import managed_inputs
from distributed_agents.core.node_runner import (
    CONTEXT_KEY,
    RETURNS_TO_CALLER_KEY,
    NodeContext,
    RunContext,
    cancel_requested,
    condition_runtime,
    context_values,
    current_context,
    run_context_of,
    visible_configurable,
    wants_context,
)
from distributed_agents.core.reducers import Reducer, reducer_name, resolve_reducer
from distributed_agents.core.registry import NodeFunction
from distributed_agents.core.retry import NodeRetry, RetryChain, RetryPolicy, node_retry
from distributed_agents.core.schema import StateSchema
from distributed_agents.core.state import check_values
from distributed_agents.core.state_view import ReadOnlyState
from distributed_agents.core.subgraphs import Subgraph
from distributed_agents.core.types import Command, Send, send_dict

__all__ = ["END", "START", "Command", "ConditionalEdge", "Graph", "NodeSpec", "Send", "StateGraph", "join_key",
           "with_context_schema"]

START = "__start__"
END = "__end__"
RESERVED_NAMES = frozenset({START, END})
MAX_PRIORITY = 1_000_000  # |priority| bound: exact in every backend's ordering (e.g. a Redis score)

Condition = Callable[..., Any]


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name, the function (if given here) and how it runs."""

    name: str
    func: NodeFunction | None
    node_type: str
    retry: NodeRetry | None = None  # a RetryPolicy, or a RetryChain of several
    timeout: float | None = None
    priority: int = 0
    destinations: tuple[str, ...] | None = None  # where its Command(goto=) may go; None: anywhere
    defer: bool = False
    on_error: str | None = None  # the node a final failure of this one is routed to; None: the workflow fails
    subgraph: Subgraph | None = None  # a compiled Graph run as this node (see core.subgraphs)
    cache_policy: CachePolicy | None = None  # see core.cache; not in spec(): caching never changes results
    # add_node(metadata=): JSON the node reads in config["metadata"]; not in spec(): it never changes results.
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ConditionalEdge:
    """A route out of ``source`` (a node, or ``START``) chosen at run time by ``condition(state)``.

    ``mapping`` maps the condition's keys to node names (or END); None means the
    condition returns node names itself, restricted to ``allowed`` when that is set.
    The condition gets a read-only view of the merged state (of the input state for
    ``START``); writing to it raises ``ExecutionError`` naming the condition, graph and key,
    and fails the workflow even if the condition catches that error and returns.
    """

    source: str
    condition: Condition
    mapping: Mapping[Hashable, str] | None
    allowed: frozenset[str] | None
    # ``condition(state, config)`` (LangGraph's path function taking a config), read once: ``Graph._follow``.
    with_config: bool = False

    def possible_targets(self, all_nodes: Iterable[str]) -> set[str]:
        """Every node (or END) this edge may route to."""
        if self.mapping is not None:
            return set(self.mapping.values())
        if self.allowed is not None:
            return set(self.allowed)
        return set(all_nodes) | {END}


@dataclass
class _Routing:
    """What compile() derives for fast routing at run time."""

    order: dict[str, int] = field(default_factory=dict)
    static: dict[str, list[str]] = field(default_factory=dict)
    joins: list[Join] = field(default_factory=list)  # distinct joins, in declaration order
    conditional: dict[str, list[ConditionalEdge]] = field(default_factory=dict)
    entry: list[str] = field(default_factory=list)
    message_keys: tuple[str, ...] = ()  # see Graph.message_keys
    managed: Mapping[str, str] | None = None  # see Graph.managed_keys
    # Per node with only plain edges (no conditional edge, no deferred target): the next
    # step's nodes after a step that ran it alone, in declaration order.
    plain_next: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Made once, read every run (each is a GC-tracked object a run would otherwise make):
    # read-only views of the nodes and of ``order``, and the first step's frontier when no
    # conditional edge leaves START (every workflow then starts with the same one).
    nodes_view: Mapping[str, NodeSpec] | None = None
    order_view: Mapping[str, int] | None = None
    start: dict[str, Any] | None = None
    subgraphs: bool = False  # whether any node is a subgraph


def literal_targets(condition: Any) -> list[str] | None:
    """The node names a condition's ``Literal`` return annotation lists (``-> Literal["tools", END]``),
    or None when it has none (or one naming anything but strings): LangGraph's path map then.
    A ``functools.partial``'s is its function's; the return annotation is read by itself, so a
    parameter's annotation naming a type only a type checker imports does not hide it."""
    while isinstance(condition, functools.partial):
        condition = condition.func
    func = condition if inspect.isfunction(condition) or inspect.ismethod(condition) else \
        getattr(condition, "__call__", condition)
    try:
        returned = typing.get_type_hints(func).get("return")
    except Exception:  # another annotation does not resolve: the return's alone, read without evaluating it
        returned = getattr(func, "__annotations__", {}).get("return")
        if isinstance(returned, str):
            return _literal_names(returned, getattr(func, "__globals__", {}))
    if typing.get_origin(returned) is not typing.Literal:
        return None
    names = list(typing.get_args(returned))
    return names if names and all(isinstance(name, str) for name in names) else None


def _literal_names(annotation: str, names: Mapping[str, Any]) -> list[str] | None:
    """The strings of a ``Literal[...]`` annotation written as text (``from __future__ import
    annotations``), its items string constants or names bound to strings in ``names`` (``END``),
    parsed, not evaluated; None for any other annotation."""
    import ast

    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Subscript):
        return None
    head = tree.value
    if not ((isinstance(head, ast.Name) and head.id == "Literal") or
            (isinstance(head, ast.Attribute) and head.attr == "Literal")):
        return None
    items = tree.slice.elts if isinstance(tree.slice, ast.Tuple) else [tree.slice]
    found: list[str] = []
    for item in items:
        value = item.value if isinstance(item, ast.Constant) else \
            names.get(item.id) if isinstance(item, ast.Name) else None
        if not isinstance(value, str):
            return None
        found.append(value)
    return found or None


class Graph:
    """A workflow graph. Build it with the ``add_*``/``set_*`` methods, then ``compile()``."""

    # Static breakpoints (see compile()); class-level defaults so every constructor path has them.
    _interrupt_before: tuple[str, ...] = ()
    _interrupt_after: tuple[str, ...] = ()
    _declared_breakpoints: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # the constructor's

    def __init__(
        self,
        name: str,
        description: str = "",
        *,
        reducers: Mapping[str, str | Reducer] | None = None,
        state_schema: type | None = None,
        input_schema: type | None = None,
        output_schema: type | None = None,
        interrupt_before: Sequence[str] | None = None,
        interrupt_after: Sequence[str] | None = None,
    ) -> None:
        """``reducers`` maps state keys to reducers (built-in names or callables).

        ``state_schema`` (a TypedDict, dataclass or Pydantic model) declares the state's
        keys, types, reducers (``Annotated[list, operator.add]``) and defaults;
        ``input_schema``/``output_schema`` filter what ``execute`` takes and returns
        (see ``schema``). Without a schema the state is an untyped dict. A key given a
        reducer both here and in the schema must name the same one
        (``ConfigurationError`` otherwise).

        ``interrupt_before`` / ``interrupt_after`` are static breakpoints, as
        ``compile()`` takes them (checked when the graph compiles).
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Graph name must be a non-empty string, got {name!r}")
        self.name = name
        self.description = description
        self._nodes: dict[str, NodeSpec] = {}
        self._edges: list[tuple[tuple[str, ...], str]] = []
        self._conditional: list[ConditionalEdge] = []
        self._reducers: dict[str, Reducer] = {}
        self._reducer_names: dict[str, str] = {}
        self._compiled = False
        self._routing = _Routing()
        self._interrupt_before = () if interrupt_before is None else _breakpoints(interrupt_before)
        self._interrupt_after = () if interrupt_after is None else _breakpoints(interrupt_after)
        self._declared_breakpoints = (self._interrupt_before, self._interrupt_after)
        if state_schema is None and (input_schema is not None or output_schema is not None):
            raise ConfigurationError(f"graph {name!r}: input_schema and output_schema need a state_schema too; "
                                     "pass Graph(name, state_schema=...)")
        self._schema = None if state_schema is None else StateSchema(name, state_schema, input_schema, output_schema)
        for key, (schema_reducer, label) in (self._schema.reducers() if self._schema else {}).items():
            self._reducers[key] = schema_reducer
            self._reducer_names[key] = label
        if reducers is not None and (not isinstance(reducers, Mapping)
                                     or not all(isinstance(key, str) for key in reducers)):
            raise ConfigurationError(
                f"graph {name!r}: reducers must map state keys (strings) to reducers (a dict like "
                f"{{'messages': 'append'}}), got {type(reducers).__name__} {repr(reducers)[:80]}")
        for key, reducer in (reducers or {}).items():
            self.add_reducer(key, reducer)

    # -- building -----------------------------------------------------------------------

    def _mutable(self) -> None:
        if self._compiled:
            raise GraphFrozenError(
                f"graph {self.name!r} is compiled and can no longer change; build a new Graph instead"
            )

    def add_node(
        self,
        name: str | NodeFunction,
        func: NodeFunction | Graph | None = None,
        node_type: str | None = None,
        *,
        retry: RetryPolicy | Sequence[RetryPolicy] | None = None,
        retry_policy: RetryPolicy | Sequence[RetryPolicy] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        destinations: Sequence[str] | None = None,
        defer: bool = False,
        on_error: str | None = None,
        cache_policy: CachePolicy | None = None,
        input: Callable[..., Any] | None = None,
        output: Callable[..., Any] | None = None,
        input_schema: type | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Graph:
        """Add node ``name``, run by ``func`` or by whatever serves ``node_type`` (default: ``name``).

        ``func`` may be a compiled ``Graph``: the node then runs it as a subgraph (see
        ``core.subgraphs``), on the keys it shares with this graph, or on what
        ``input(state)`` returns with ``output(subgraph_state)`` mapping its final state
        back to this graph's updates. ``input``/``output`` are for subgraph nodes only.

        ``func(state)`` returns a dict of updates, a ``Command`` or None (``async def``
        or plain). It is called ``func(state, context)`` with its ``NodeContext`` when
        its second positional parameter has no default, or is annotated
        ``NodeContext``, or it takes ``*args``; a second parameter with a default
        (``lambda state, i=i: ...``) keeps it. ``timeout`` is a finite number of
        seconds > 0 (or None).

        ``priority`` (an int in -1,000,000..1,000,000, default 0) orders this node's tasks
        on the queue: workers claim higher priorities first. It adds to the workflow's
        priority (``execute(..., priority=)``).

        ``destinations`` lists the nodes (or END) a ``Command(goto=...)`` returned by the
        node may go to: compile checks they exist and counts them as edges for
        reachability and drawing, and a ``goto`` elsewhere fails the step. Without it, a
        function annotated ``-> Command[Literal["a", "b"]]`` declares them (as in
        LangGraph); otherwise ``goto`` may name any node, but nodes reached only that
        way fail compile's reachability check.

        ``defer=True`` makes the node wait, once triggered, until no other node is
        pending: it runs in a step of its own after every other branch finished (for
        branches of uneven length that end in one node).

        ``on_error`` names a handler node: when this node fails finally (its retry
        policy exhausted, or timed out) the step still commits, this node's edges do
        not fire, and the handler runs in the next step as a task of its own whose
        input is ``{"error": {"node", "error_type", "message", "traceback",
        "attempts", "timed_out"}, "state": <the input the failed node got>}``. Its
        return value merges like any node's and its own edges continue. A failing
        handler fails the workflow. Compile checks the handler is another node of
        this graph and counts it as reachable from this node.

        ``cache_policy`` (a ``CachePolicy``, LangGraph's) caches the node's outputs in
        the backend by a key of its input: a task whose key is cached is not run, its
        cached output is used (see ``core.cache`` for what is cached and how keys are
        made). ``Orchestrator.clear_cache`` removes a graph's entries.

        As in LangGraph, ``add_node(func)`` names the node after the function
        (``func.__name__``), and ``retry_policy=`` is another name for ``retry=``; either takes a
        ``RetryPolicy`` or a list of them, the first whose ``retry_on`` matches an error deciding
        whether and when to retry (``core.retry.RetryChain``). The keys
        (and reducers) of the node's input schema - ``input_schema=``, else the class its
        state parameter is annotated with - are state keys too (LangGraph's private state;
        the node still gets the whole state). ``ConfigurationError`` for a key declared with
        another reducer than the state's.

        ``metadata`` (a dict with string keys and JSON values, LangGraph's) is the node's
        own: its function reads it in ``config["metadata"]`` (beside ``langgraph_step``
        and the others, which win a clash), also on workers, and ``get_graph().nodes[name]
        .metadata`` shows it. It never changes what the node does or the graph's fingerprint.
        """
        self._mutable()
        if not isinstance(name, str):
            if not callable(name) or isinstance(name, Graph) or func is not None:
                raise GraphValidationError(f"graph {self.name!r}: node name must be a non-empty string, got {name!r}",
                                           graph=self.name, culprit=repr(name))
            func = name
            name = str(getattr(func, "__name__", ""))
        if retry_policy is not None:
            if retry is not None and retry is not retry_policy:
                raise GraphValidationError(f"graph {self.name!r}: node {name!r}: pass retry= or retry_policy= "
                                           "(the same thing, LangGraph's name), not both", graph=self.name,
                                           culprit=str(name))
            retry = retry_policy
        subgraph = None
        if isinstance(func, Graph) or input is not None or output is not None:
            subgraph = Subgraph.of(self.name, name, func, input, output, timeout)
            func = None
        if not isinstance(name, str) or not name:
            raise GraphValidationError(f"graph {self.name!r}: node name must be a non-empty string, got {name!r}",
                                       graph=self.name, culprit=repr(name))
        if name in RESERVED_NAMES or name.startswith("__"):
            raise GraphValidationError(
                f"graph {self.name!r}: {name!r} is a reserved name (names starting with '__' are reserved); rename the node",
                graph=self.name, culprit=name,
            )
        if name in self._nodes:
            raise GraphValidationError(f"graph {self.name!r}: duplicate node {name!r}; node names must be unique",
                                       graph=self.name, culprit=name)
        if func is not None and not callable(func):
            raise GraphValidationError(f"graph {self.name!r}: node {name!r}: func {func!r} is not callable",
                                       graph=self.name, culprit=name)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            # NaN compares False with everything and inf cannot travel as JSON with a task.
            raise GraphValidationError(
                f"graph {self.name!r}: node {name!r}: timeout must be a finite number of seconds > 0 (or None for "
                f"no timeout), got {timeout!r}", graph=self.name, culprit=name)
        try:
            node_retries = node_retry(retry, f"graph {self.name!r}: node {name!r}")
        except ConfigurationError as exc:
            raise GraphValidationError(str(exc), graph=self.name, culprit=name) from None
        if subgraph is not None and isinstance(node_retries, RetryChain):
            # Its retry_on is not consulted (core.subgraphs): which policy would rule is undecidable.
            raise GraphValidationError(
                f"graph {self.name!r}: node {name!r}: a subgraph node takes one RetryPolicy (its max_attempts resumes "
                "the failed child; retry_on is not consulted), got a list of several; give the subgraph's own nodes "
                "the policies that differ by exception", graph=self.name, culprit=name)
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
            raise GraphValidationError(
                f"graph {self.name!r}: node {name!r}: priority must be an int between {-MAX_PRIORITY} and "
                f"{MAX_PRIORITY}, got {priority!r}", graph=self.name, culprit=name)
        if on_error is not None and (not isinstance(on_error, str) or not on_error or on_error == name):
            raise GraphValidationError(
                f"graph {self.name!r}: node {name!r}: on_error must name another node (the error handler), got "
                f"{on_error!r}", graph=self.name, culprit=name)
        if cache_policy is not None and not isinstance(cache_policy, CachePolicy):
            raise GraphValidationError(
                f"graph {self.name!r}: node {name!r}: cache_policy must be a CachePolicy(key_func=..., ttl=...) (or "
                f"None), got {cache_policy!r}", graph=self.name, culprit=name)
        if metadata is not None:
            metadata = _checked_node_metadata(self.name, name, metadata)
        if destinations is None and func is not None:
            destinations = _annotated_destinations(func)
        if self._schema is not None and (input_schema is not None or func is not None):
            # LangGraph's private state: the keys of a node's own input schema are state keys too.
            schema = input_schema if input_schema is not None else _input_annotation(func)
            if schema is not None:
                self._schema.add_node_schema(schema)
                for key, (schema_reducer, label) in self._schema.reducers().items():
                    if key not in self._reducers:  # (a private key's reducer, declared there)
                        self._reducers[key] = schema_reducer
                        self._reducer_names[key] = label
        if destinations is not None:
            if isinstance(destinations, str) or not all(isinstance(d, str) for d in destinations):
                raise GraphValidationError(
                    f"graph {self.name!r}: node {name!r}: destinations must be a list of node names, got "
                    f"{destinations!r}", graph=self.name, culprit=name)
            destinations = tuple(destinations)
        self._nodes[name] = NodeSpec(name, func, node_type or name, node_retries, timeout, priority,
                                     None if destinations is None else tuple(destinations), bool(defer), on_error,
                                     subgraph)
        if cache_policy is not None or metadata:
            self._nodes[name] = replace(self._nodes[name], cache_policy=cache_policy, metadata=metadata or None)
        return self

    def add_edge(self, source: str | Sequence[str], target: str) -> Graph:
        """``source -> target``; a list of sources is a join: ``target`` waits for all of them."""
        self._mutable()
        sources = (source,) if isinstance(source, str) else tuple(source)
        if not sources:
            raise GraphValidationError(f"graph {self.name!r}: add_edge needs at least one source",
                                       graph=self.name, culprit=f"-> {target}")
        if END in sources:
            raise GraphValidationError(f"graph {self.name!r}: END cannot be the source of an edge",
                                       graph=self.name, culprit=f"{END} -> {target}")
        if target == START:
            raise GraphValidationError(f"graph {self.name!r}: START cannot be the target of an edge",
                                       graph=self.name, culprit=f"{source} -> {START}")
        if len(sources) > 1 and START in sources:
            raise GraphValidationError(f"graph {self.name!r}: START cannot be part of a join",
                                       graph=self.name, culprit=f"{list(sources)} -> {target}")
        self._edges.append((sources, target))
        return self

    def add_conditional_edge(
        self,
        source: str,
        condition: Condition,
        targets: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> Graph:
        """Route out of ``source`` by ``condition(state)``; ``source`` may be ``START``.

        ``targets`` is a dict from the condition's return values to node names (or
        END), a list of the node names the condition may return, or omitted (the
        condition returns node names). Omitted, a condition annotated ``-> Literal["a",
        "b"]`` gives the list: its names are the targets, as LangGraph reads them (drawings
        show only those edges; another name returned is a ``RoutingError``). The condition
        may return one value or a list.
        It is called in the orchestrator with a read-only view of the state merged
        after ``source``'s step (``ReadOnlyState``; writing to it raises
        ``ExecutionError``); from ``START`` it routes the input state before the first
        step, alongside any ``set_entry_point`` nodes.
        """
        self._mutable()
        if not callable(condition):
            raise GraphValidationError(f"graph {self.name!r}: condition for {source!r} is not callable",
                                       graph=self.name, culprit=source)
        mapping: dict[Hashable, str] | None = None
        allowed: frozenset[str] | None = None
        if isinstance(targets, Mapping):
            mapping = dict(targets)
            if not mapping:
                raise GraphValidationError(
                    f"graph {self.name!r}: conditional edge from {source!r} has an empty targets mapping; "
                    "map each value the condition returns to a node or END",
                    graph=self.name, culprit=source,
                )
            for value, target in mapping.items():
                if not isinstance(target, str):
                    self._bad_path_map(source, f"maps {repr(value)[:80]} to {type(target).__name__} "
                                               f"{repr(target)[:80]}, which is not a node name")
        elif targets is None:
            annotated = literal_targets(condition)
            allowed = None if annotated is None else frozenset(annotated)
        else:
            if isinstance(targets, str):
                targets = [targets]
            if isinstance(targets, (bytes, bytearray)) or not isinstance(targets, Iterable):
                self._bad_path_map(source, f"is {type(targets).__name__} {repr(targets)[:80]}")
            names = list(targets)
            for target in names:
                if not isinstance(target, str):
                    self._bad_path_map(source, f"lists {type(target).__name__} {repr(target)[:80]}, "
                                               "which is not a node name")
            allowed = frozenset(names)
            if not allowed:
                raise GraphValidationError(
                    f"graph {self.name!r}: conditional edge from {source!r} has an empty targets list",
                    graph=self.name, culprit=source,
                )
        self._conditional.append(ConditionalEdge(source, condition, mapping, allowed, wants_context(condition)))
        return self

    def _bad_path_map(self, source: str, detail: str) -> NoReturn:
        raise GraphValidationError(
            f"graph {self.name!r}: conditional edge from {source!r}: the path map (targets) {detail}; it must be a "
            "dict from the values the condition returns to node names or END (e.g. {'yes': 'publish', 'no': END}), "
            "a list of the node names the condition may return, or omitted (the condition returns node names)",
            graph=self.name, culprit=source,
        )

    def add_conditional_edges(
        self, source: str, path: Condition, path_map: Mapping[Hashable, str] | Sequence[str] | None = None
    ) -> Graph:
        """LangGraph's name and argument names for ``add_conditional_edge(source, condition, targets)``."""
        return self.add_conditional_edge(source, path, path_map)

    def add_reducer(self, key: str, reducer: str | Reducer) -> Graph:
        """Merge writes to state ``key`` with ``reducer`` (built-in name or callable).

        With a state schema, ``key`` must be declared in it, and a reducer the schema
        declares for it (``Annotated``) must be this one: ``ConfigurationError`` names the key.
        """
        self._mutable()
        resolved = resolve_reducer(key, reducer)
        if self._schema is not None:
            spec = self._schema.keys.get(key)
            if spec is None:
                raise ConfigurationError(
                    f"graph {self.name!r}: reducer for state key {key!r}, which state schema {self._schema.name} "
                    f"does not declare; declare the key in {self._schema.name}")
            if spec.reducer is not None and spec.reducer is not resolved:
                raise ConfigurationError(
                    f"graph {self.name!r}: state key {key!r} has reducer {spec.reducer_label!r} in "
                    f"{spec.owner} (Annotated) and {reducer_name(reducer)!r} in reducers=/add_reducer; "
                    "declare it in one place")
            if spec.reducer is not None:
                return self  # the same reducer, declared twice
        self._reducers[key] = resolved
        self._reducer_names[key] = reducer_name(reducer)
        return self

    def add_sequence(self, nodes: Sequence[str | NodeFunction | tuple[str, NodeFunction]]) -> Graph:
        """Add ``nodes`` and chain them with edges, in order (as LangGraph's ``add_sequence``).

        Each item is a node name (run by whatever serves that node type), a
        ``(name, func)`` pair, or a function (named by its ``__name__``). Nothing is
        connected to START or END: add those edges yourself. Raises
        ``GraphValidationError`` for an empty sequence, a duplicate or an invalid item.
        """
        self._mutable()
        if isinstance(nodes, (str, tuple)) or not isinstance(nodes, Sequence) or not nodes:
            raise GraphValidationError(
                f"graph {self.name!r}: add_sequence needs a non-empty list of node names, (name, func) pairs or "
                f"functions, got {nodes!r}", graph=self.name, culprit=repr(nodes))
        names = []
        for item in nodes:
            if isinstance(item, str):
                name, func = item, None
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, func = item
            elif callable(item) and isinstance(getattr(item, "__name__", None), str) and item.__name__ != "<lambda>":
                name, func = item.__name__, item
            else:
                raise GraphValidationError(
                    f"graph {self.name!r}: add_sequence item {item!r} is not a node name, a (name, func) pair or a "
                    "named function (a lambda needs a name: pass ('name', func))",
                    graph=self.name, culprit=repr(item))
            self.add_node(name, func)
            names.append(name)
        for source, target in zip(names, names[1:]):
            self.add_edge(source, target)
        return self

    def set_entry_point(self, node: str) -> Graph:
        """Start the workflow at ``node`` (an edge ``START -> node``; several entry points run together)."""
        return self.add_edge(START, node)

    def set_conditional_entry_point(
        self, path: Condition, path_map: Mapping[Hashable, str] | Sequence[str] | None = None
    ) -> Graph:
        """Route the input state to the first node(s): LangGraph's name for ``add_conditional_edge(START, ...)``."""
        return self.add_conditional_edge(START, path, path_map)

    def set_finish_point(self, node: str) -> Graph:
        """Finish a branch after ``node`` (an edge ``node -> END``)."""
        return self.add_edge(node, END)

    # -- compiling ----------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """Whether ``compile()`` succeeded."""
        return self._compiled

    def compile(
        self, *, interrupt_before: Sequence[str] | None = None, interrupt_after: Sequence[str] | None = None,
        checkpointer: Any = None, cache: Any = None,
    ) -> Graph:
        """Validate and freeze the graph; returns the compiled graph. Raises ``GraphValidationError``.

        The first call freezes this graph and returns it. As in LangGraph, where every
        ``builder.compile(...)`` makes a new compiled graph, a later call never changes
        what an earlier one returned: with the same breakpoints it returns this graph
        again, with others a copy that differs only in them. Breakpoints are not part of
        the fingerprint: a workflow started by one compile continues under another (its
        breakpoints then apply), as a LangGraph thread does.

        ``checkpointer`` is accepted so LangGraph code ports as is, and ignored: every
        workflow is checkpointed at each step in the backend of the orchestrator that
        runs it (``memory://`` by default), whatever is passed. So is ``cache`` (LangGraph's
        ``compile(cache=InMemoryCache())``): the node cache of ``add_node(cache_policy=)``
        is the backend's, shared by every orchestrator and worker on it (see ``core.cache``).

        ``interrupt_before`` / ``interrupt_after`` are static breakpoints: node names
        (or ``"*"`` for all) before whose step, or after whose step, every workflow of
        the graph pauses as ``interrupted``; ``Orchestrator.resume(workflow_id)``
        continues it. ``execute(..., interrupt_before=, interrupt_after=)`` sets them per
        workflow instead. ``None`` (not given) means the breakpoints given to the
        constructor (none by default), not those of an earlier ``compile``.
        """
        declared_before, declared_after = self._declared_breakpoints
        before = declared_before if interrupt_before is None else _breakpoints(interrupt_before)
        after = declared_after if interrupt_after is None else _breakpoints(interrupt_after)
        for name in (*before, *after):
            if name != "*" and name not in self._nodes:
                raise self._fail(f"breakpoint on unknown node {name!r}; interrupt_before/interrupt_after take node "
                                 "names or '*'", name)
        if self._compiled:
            if (before, after) == (self._interrupt_before, self._interrupt_after):
                return self
            other = copy.copy(self)  # compiled graphs are frozen: the copy shares nodes, edges and routing
            other._interrupt_before, other._interrupt_after = before, after
            other.__dict__.pop("_fingerprint", None)  # breakpoints are part of the spec it hashes
            return other
        self._interrupt_before, self._interrupt_after = before, after
        self._validate()
        routing = _Routing(order={name: i for i, name in enumerate(self._nodes)})
        entry = set()
        for sources, target in self._edges:
            if sources == (START,):
                # START -> END runs nothing; END is not a node the engine could run.
                if target != END:
                    entry.add(target)
            elif len(sources) == 1:
                routing.static.setdefault(sources[0], []).append(target)
            else:
                join = Join(target, frozenset(sources))
                if join not in routing.joins:  # declared twice, in any source order: still one join
                    routing.joins.append(join)
        routing.entry = sorted(entry, key=routing.order.__getitem__)
        for edge in self._conditional:
            routing.conditional.setdefault(edge.source, []).append(edge)
        routing.message_keys = self._message_keys()
        routing.managed = self._managed_keys()
        for name in self._nodes:
            targets = [t for t in routing.static.get(name, ()) if t != END]
            if name not in routing.conditional and not any(self._nodes[t].defer for t in targets):
                routing.plain_next[name] = tuple(sorted(set(targets), key=routing.order.__getitem__))
        routing.nodes_view = MappingProxyType(self._nodes)
        routing.order_view = MappingProxyType(routing.order)
        self._routing = routing
        self._compiled = True
        if START not in routing.conditional:
            routing.start = self._frontier(list(routing.entry), [], {}, ())
        routing.subgraphs = any(spec.subgraph is not None for spec in self._nodes.values())
        return self

    def _fail(self, message: str, culprit: str) -> GraphValidationError:
        return GraphValidationError(f"graph {self.name!r}: {message}", graph=self.name, culprit=culprit)

    def _validate(self) -> None:
        nodes = set(self._nodes)
        if not any(sources == (START,) for sources, _ in self._edges) and not any(
            edge.source == START for edge in self._conditional
        ):
            raise self._fail("no entry point; call set_entry_point(node) or add_conditional_edge(START, ...)", START)
        for sources, target in self._edges:
            for src in sources:
                if src != START and src not in nodes:
                    raise self._fail(f"edge {src!r} -> {target!r} starts at unknown node {src!r}; add_node it first", src)
            if target != END and target not in nodes:
                raise self._fail(f"edge {sources[0] if len(sources) == 1 else list(sources)!r} -> {target!r} "
                                 f"targets unknown node {target!r}", target)
        for edge in self._conditional:
            if edge.source != START and edge.source not in nodes:
                raise self._fail(f"conditional edge starts at unknown node {edge.source!r}", edge.source)
            for target in edge.possible_targets(nodes):
                if target != END and target not in nodes:
                    raise self._fail(f"conditional edge from {edge.source!r} targets unknown node {target!r}", target)
        for spec in self._nodes.values():
            for target in spec.destinations or ():
                if target != END and target not in nodes:
                    raise self._fail(f"node {spec.name!r} declares destination {target!r}, which is not a node; "
                                     "destinations name nodes of this graph or END", target)
            if spec.on_error is not None and spec.on_error not in nodes:
                raise self._fail(f"node {spec.name!r} routes its failures to on_error={spec.on_error!r}, which is not "
                                 "a node; add_node the handler or fix the name", spec.on_error)
            base, sep, index = spec.name.rpartition("#")
            if sep and index.isdigit() and base in nodes:
                raise self._fail(f"node name {spec.name!r} is how the Sends to node {base!r} are named; rename it",
                                 spec.name)
        successors: dict[str, set[str]] = {name: set() for name in [START, *nodes]}
        for sources, target in self._edges:
            for src in sources:
                successors[src].add(target)
        for spec in self._nodes.values():
            successors[spec.name] |= set(spec.destinations or ())
            if spec.on_error is not None:
                successors[spec.name].add(spec.on_error)
        for edge in self._conditional:
            successors[edge.source] |= edge.possible_targets(nodes)
        reachable = _closure(START, successors)
        for name in self._nodes:
            if name not in reachable:
                raise self._fail(f"node {name!r} is unreachable from the entry point; connect it, declare it in "
                                 "add_node(..., destinations=[...]) of a node whose Command(goto=) goes there, "
                                 "or remove it", name)
        predecessors: dict[str, set[str]] = {END: set(), **{name: set() for name in nodes}}
        for src, targets in successors.items():
            for target in targets:
                predecessors.setdefault(target, set()).add(src)
        finishing = _closure(END, predecessors)
        for name in self._nodes:
            if name not in finishing:
                raise self._fail(
                    f"node {name!r} has no path to END; add set_finish_point({name!r}), an edge onward, or "
                    f"add_node({name!r}, ..., destinations=[...]) if it routes with Command(goto=)", name
                )

    # -- reading ------------------------------------------------------------------------

    def _require_compiled(self) -> None:
        if not self._compiled:
            raise GraphNotCompiledError(f"graph {self.name!r} is not compiled; call graph.compile() before running it")

    @property
    def interrupt_before(self) -> tuple[str, ...]:
        """Nodes (or ``"*"``) before whose step workflows pause (``compile(interrupt_before=)``)."""
        return self._interrupt_before

    @property
    def interrupt_after(self) -> tuple[str, ...]:
        """Nodes (or ``"*"``) after whose step workflows pause (``compile(interrupt_after=)``)."""
        return self._interrupt_after

    @property
    def nodes(self) -> Mapping[str, NodeSpec]:
        """Nodes by name, in declaration order (a read-only view: the step loop reads it every step)."""
        view = self._routing.nodes_view if self._compiled else None
        return view if view is not None else MappingProxyType(self._nodes)

    @property
    def node_order(self) -> Mapping[str, int]:
        """Each node's position in declaration order, by name (read-only; ``GraphNotCompiledError`` before compile)."""
        self._require_compiled()
        view = self._routing.order_view
        return view if view is not None else MappingProxyType(self._routing.order)

    @property
    def schema(self) -> StateSchema | None:
        """The state schema (keys, types, reducers, defaults), or None for an untyped state."""
        return self._schema

    def prepare_input(self, values: Mapping[str, Any], *, present: Collection[str] = ()) -> dict[str, Any]:
        """The initial state for input ``values``: unchanged without a schema, else ``StateSchema.prepare_input``
        (``present``: keys the state already holds, a thread's next run: its required keys need not be given)."""
        return dict(values) if self._schema is None else self._schema.prepare_input(values, present=present)

    def check_writes(self, writes: Sequence[tuple[str, Mapping[str, Any]]], merged: Mapping[str, Any]) -> None:
        """With a schema, ``StateSchema.check_writes`` on one step's writes and merged state."""
        if self._schema is not None:
            self._schema.check_writes(writes, merged)

    @property
    def reducers(self) -> Mapping[str, Reducer]:
        """Reducers by state key."""
        return dict(self._reducers)

    @property
    def message_keys(self) -> tuple[str, ...]:
        """The state keys whose reducer is ``add_messages``: they take LangGraph's message shorthands."""
        if self._compiled:  # reducers are fixed once compiled; every step asks
            return self._routing.message_keys
        return self._message_keys()

    @property
    def managed_keys(self) -> Mapping[str, str] | None:
        """The schema's managed values (``core.managed``: ``RemainingSteps``, ``IsLastStep``), key ->
        kind, read-only; None when it declares none (or the state is untyped)."""
        if self._compiled:
            return self._routing.managed
        return self._managed_keys()

    def _managed_keys(self) -> Mapping[str, str] | None:
        return MappingProxyType(dict(self._schema.managed)) if self._schema is not None and self._schema.managed else None

    def _message_keys(self) -> tuple[str, ...]:
        from distributed_agents.core.messages import add_messages  # messages imports nothing of graphs

        return tuple(key for key, reducer in self._reducers.items() if reducer is add_messages)

    def node(self, name: str) -> NodeSpec:
        """The node called ``name``."""
        try:
            return self._nodes[name]
        except KeyError:
            raise ExecutionError(f"graph {self.name!r} has no node {name!r}") from None

    def entry_nodes(self) -> list[str]:
        """Nodes every workflow starts with (``set_entry_point``), in node declaration order.

        Conditional edges from ``START`` add nodes chosen by the input state: ``start()``.
        """
        self._require_compiled()
        return list(self._routing.entry)

    async def start(self, state: Any) -> list[str]:
        """The first step's nodes for input ``state``, in node declaration order.

        The ``set_entry_point`` nodes plus those chosen by conditional edges from
        ``START`` (called with a read-only view of ``state``). Raises ``ExecutionError``
        if such a condition raises, writes to the state or returns an unknown route
        (or Sends: use ``start_frontier``).
        """
        return _plain(await self.start_frontier(state), "start_frontier")

    async def start_frontier(self, state: Any, *, configurable: Mapping[str, Any] | None = None,
                             remaining_steps: int | None = None) -> dict[str, Any]:
        """The first step's frontier for input ``state`` (see ``core.frontier``).

        As ``start``, plus the ``Send``s conditions from ``START`` return. ``configurable``:
        the run's ``config["configurable"]`` values, for conditions taking a config (``_follow``);
        ``remaining_steps``: the first step's, for the managed values conditions read (``_follow``).
        """
        fixed = self.fixed_start()  # no condition to run: a copy of the one every workflow starts with
        if fixed is not None:
            return fixed
        triggered: list[str] = list(self._routing.entry)
        sends: list[dict[str, Any]] = []
        for edge in self._routing.conditional.get(START, ()):
            self._split(await self._follow(edge, state, configurable, remaining_steps), triggered, sends)
        return self._frontier(triggered, sends, {}, ())

    def fixed_start(self) -> dict[str, Any] | None:
        """``start_frontier``'s answer when no conditional edge leaves START (the same for every
        input: a fresh copy each call), else None. Synchronous, for the hot path of a new workflow.
        """
        self._require_compiled()
        start = self._routing.start
        return None if start is None else _copy_frontier(start)

    @property
    def has_subgraphs(self) -> bool:
        """Whether any node runs a subgraph (``GraphNotCompiledError`` before compile)."""
        self._require_compiled()
        return self._routing.subgraphs

    def order(self, names: Iterable[str]) -> list[str]:
        """``names`` without duplicates, in node declaration order."""
        return sorted(set(names), key=self._routing.order.__getitem__)

    async def route(
        self, ran: Sequence[str], state: Any, joins: Mapping[str, Sequence[str]]
    ) -> tuple[list[str], dict[str, list[str]]]:
        """Nodes triggered after the step that ran ``ran`` merged ``state``, and the new join progress.

        Triggered nodes come in node declaration order, each once. ``joins`` is the
        join progress stored in the checkpoint's frontier: ``join_key(target,
        sources)`` -> the sources that ran since that join last fired. Every join
        advances once per step by the set of its sources in ``ran`` (see ``joins``); a
        join declared twice is one join. Conditions run here, in the orchestrator, each
        on a read-only view of ``state``. A condition returning Sends raises
        ``ExecutionError``: ``next_frontier`` returns those.
        """
        frontier = await self.next_frontier(ran, state, joins)
        return _plain(frontier, "next_frontier"), frontier["joins"]

    async def next_frontier(
        self, ran: Sequence[str], state: Any, joins: Mapping[str, Sequence[str]],
        gotos: Sequence[tuple[str, Sequence[str | Send]]] = (), deferred: Sequence[str] = (),
        handlers: Sequence[Mapping[str, Any]] = (), *, configurable: Mapping[str, Any] | None = None,
        remaining_steps: int | None = None,
    ) -> dict[str, Any]:
        """The frontier after a step that ran the nodes ``ran`` (see ``route``) and merged ``state``.

        ``gotos`` are ``(node, targets)`` of the ``Command(goto=...)``s the step's nodes
        returned: they run in addition to the nodes' edges (each checked against the
        node's declared destinations). Sends from conditions and gotos come in order:
        ``ran``'s nodes' conditions, then the gotos. ``deferred`` are ``defer=True``
        nodes already waiting (the previous frontier's ``"deferred"``): they, and
        deferred nodes triggered now, wait while any other node is pending.
        ``handlers`` are the error-handler tasks of nodes of ``ran`` that failed (frontier
        sends ``{"node": handler, "arg": {"error": ..., "state": ...}, "handles": task}``,
        see ``add_node(on_error=)``): they come after every other Send; the failed
        nodes themselves are not in ``ran``.
        ``configurable``: the run's ``config["configurable"]`` values, for conditions taking a
        config (``_follow``); ``remaining_steps``: the step's that ran ``ran`` (its nodes'), for
        the managed values conditions read (``_follow``).
        Raises ``ExecutionError`` naming the condition or node for a bad route.
        """
        plain = self.plain_frontier(ran, gotos, deferred, handlers)
        if plain is not None:
            return plain
        triggered: list[str] = []
        sends: list[dict[str, Any]] = []
        ran = list(dict.fromkeys(ran))  # a node run by several Sends routes once
        for node in ran:
            triggered.extend(self._routing.static.get(node, ()))
            for edge in self._routing.conditional.get(node, ()):
                self._split(await self._follow(edge, state, configurable, remaining_steps), triggered, sends)
        for source, targets in gotos:
            self._split(self._check_goto(source, targets), triggered, sends)
        fired, progress = advance_joins(self._routing.joins, ran, joins)
        triggered.extend(fired)
        sends.extend(dict(handler) for handler in handlers)
        return self._frontier(triggered, sends, progress, deferred)

    def plain_frontier(
        self, ran: Sequence[str], gotos: Sequence[tuple[str, Sequence[str | Send]]] = (), deferred: Sequence[str] = (),
        handlers: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any] | None:
        """``next_frontier``'s answer when it needs no condition run (one node ran, with plain edges
        only, and nothing else pending), without a coroutine; else None (await ``next_frontier``).

        ``GraphNotCompiledError`` before compile.
        """
        self._require_compiled()
        if len(ran) == 1 and not gotos and not deferred and not handlers and not self._routing.joins:
            # One node with plain edges only (a chain's step): what the general path of
            # next_frontier returns, looked up (without joins, the stored join progress has
            # nothing to keep).
            plain = self._routing.plain_next.get(ran[0])
            if plain is not None:
                return make_frontier(plain, (), {})
        return None

    def _frontier(self, triggered: list[str], sends: list[dict[str, Any]], joins: Mapping[str, Sequence[str]],
                  deferred: Sequence[str]) -> dict[str, Any]:
        names = [t for t in triggered if t != END]
        waiting = [*deferred, *(n for n in names if self._nodes[n].defer)]
        now = [n for n in names if not self._nodes[n].defer]
        if not now and not sends:  # nothing else pending: the deferred nodes run
            now, waiting = [*now, *waiting], []
        frontier = make_frontier(self.order(now), sends, joins)
        if waiting:
            frontier["deferred"] = self.order(waiting)
        return frontier

    @staticmethod
    def _split(targets: Sequence[str | Send], triggered: list[str], sends: list[dict[str, Any]]) -> None:
        for target in targets:
            if isinstance(target, Send):
                sends.append({"node": target.node, "arg": target.arg})
            else:
                triggered.append(target)

    def _check_goto(self, source: str, targets: Sequence[str | Send]) -> list[str | Send]:
        spec = self._nodes.get(source)
        allowed = None if spec is None or spec.destinations is None else set(spec.destinations) | {END}
        checked: list[str | Send] = []
        for target in targets:
            name = target.node if isinstance(target, Send) else target
            where = f"graph {self.name!r}: node {source!r} returned Command(goto={name!r})"
            if name == END and not isinstance(target, Send):
                continue
            if name not in self._nodes:
                raise ExecutionError(f"{where}, which is not a node of the graph; use one of "
                                     f"{sorted(self._nodes)} or END")
            if allowed is not None and name not in allowed:
                raise ExecutionError(f"{where}, which is not among its declared destinations {sorted(allowed - {END})}; "
                                     f"add it to add_node({source!r}, ..., destinations=[...])")
            checked.append(Send(name, target.arg) if isinstance(target, Send) else name)
        return checked

    def _condition_label(self, edge: ConditionalEdge) -> str:
        where = "at START" if edge.source == START else f"after node {edge.source!r}"
        return f"condition {_callable_name(edge.condition)} {where}"

    async def _follow(self, edge: ConditionalEdge, state: Any, configurable: Mapping[str, Any] | None = None,
                      remaining_steps: int | None = None) -> list[str | Send]:
        """The routes ``edge``'s condition chooses on ``state``; ``RoutingError`` naming node and condition.

        With ``remaining_steps`` (the steps left of the step whose nodes it routes from, as
        they read it), the condition's state holds the graph's managed values too
        (``core.managed``), as the nodes' does: ``state["remaining_steps"] < 2`` ends a loop.

        A condition taking a second argument (``def route(state, config)``, as LangGraph
        passes path functions that accept it; the rule of ``node_runner.wants_context``) gets
        a LangGraph ``RunnableConfig`` dict: ``{"configurable": {<the run's values>, "thread_id",
        "checkpoint_ns"}, "metadata": {"thread_id"}}``.
        """
        managed = self.managed_keys
        if managed and remaining_steps is not None:
            state = {**state, **managed_inputs(managed, remaining_steps)}
        try:
            return await self._follow_condition(edge, state, configurable)
        except RoutingError:
            raise
        except ExecutionError as exc:
            # Chained to what the condition raised, if it raised.
            raise RoutingError(str(exc), node=edge.source,
                               condition=_callable_name(edge.condition)) from (exc.__cause__ or exc)

    async def _follow_condition(self, edge: ConditionalEdge, state: Any,
                                configurable: Mapping[str, Any] | None) -> list[str | Send]:
        label = self._condition_label(edge)
        view = ReadOnlyState.of(state, where=f"graph {self.name!r}: {label}")
        # A run context is there for get_runtime() in the condition too (LangGraph's).
        token = None if not configurable or CONTEXT_KEY not in configurable else \
            condition_runtime.set(_condition_config(state, configurable))
        try:
            if edge.with_config:
                chosen = edge.condition(view, _condition_config(state, configurable))
            else:
                chosen = edge.condition(view)
            if inspect.isawaitable(chosen):
                chosen = await chosen
        except asyncio.CancelledError as exc:
            if cancel_requested():  # the workflow's run is cancelled, not the condition
                raise
            raise ExecutionError(f"graph {self.name!r}: {label} raised {type(exc).__name__}: {exc}") from exc
        except BaseException as exc:  # any other BaseException the condition raises fails the workflow too
            if exc is view.refused:
                raise  # a write to the read-only view: its message already names condition, graph and key
            raise ExecutionError(f"graph {self.name!r}: {label} raised {type(exc).__name__}: {exc}") from exc
        finally:
            if token is not None:
                condition_runtime.reset(token)
        if view.refused is not None:
            # The condition caught its refused write and went on: the write still fails the workflow.
            raise view.refused
        several = isinstance(chosen, (list, tuple, set, frozenset))
        keys = list(chosen) if several else [chosen]
        targets: list[str | Send] = []
        for key in keys:
            # Name what the condition returned; for a collection, also the item at fault. Only
            # on an error: a repr of the whole collection per item is quadratic in a Send map's size.
            def returned(key: Any = key) -> str:
                return f"{chosen!r}: its item {key!r} is" if several else f"{key!r}, which is"
            if isinstance(key, Send):
                targets.append(self._check_send(edge, label, key))
                continue
            if edge.mapping is not None:
                try:
                    target = edge.mapping[key]
                except (KeyError, TypeError):
                    raise ExecutionError(
                        f"graph {self.name!r}: {label} "
                        f"returned {returned()} not in its targets "
                        f"[{', '.join(sorted(map(repr, edge.mapping)))}]"
                    ) from None
            else:
                target = key
                valid = edge.allowed if edge.allowed is not None else set(self._nodes) | {END}
                # An unhashable key (a nested list, a dict) must not escape as a bare TypeError.
                if not isinstance(target, str) or target not in valid:
                    raise ExecutionError(
                        f"graph {self.name!r}: {label} returned {returned()} not one of {sorted(valid)}"
                    )
            targets.append(target)
        return targets

    def _check_send(self, edge: ConditionalEdge, label: str, send: Send) -> Send:
        """A Send a condition returned, checked: a JSON dict argument, to a node the edge may reach."""
        try:
            body = send_dict(send, f"graph {self.name!r}: {label}")
        except DistributedAgentsError as exc:
            raise ExecutionError(str(exc)) from None
        valid = edge.possible_targets(self._nodes) - {END}
        if body["node"] not in valid:
            raise ExecutionError(f"graph {self.name!r}: {label} returned {send!r}, whose node is not one of "
                                 f"{sorted(valid)}; a Send goes to a node this edge may route to")
        return Send(body["node"], body["arg"])

    def spec(self) -> dict[str, Any]:
        """The compiled graph as JSON: nodes, node types, edges, routes, reducers."""
        self._require_compiled()
        return {
            "name": self.name,
            "description": self.description,
            "nodes": [
                {
                    "name": n.name,
                    "node_type": n.node_type,
                    "retry": None if n.retry is None else n.retry.to_dict(),
                    "timeout": n.timeout,
                    # Only when set, so graphs without priorities keep their fingerprint.
                    **({"priority": n.priority} if n.priority else {}),
                    **({"destinations": list(n.destinations)} if n.destinations is not None else {}),
                    **({"defer": True} if n.defer else {}),
                    **({"on_error": n.on_error} if n.on_error is not None else {}),
                    **(n.subgraph.spec() if n.subgraph is not None else {}),
                }
                for n in self._nodes.values()
            ],
            "edges": _edges_spec(self._edges),
            "conditional_edges": [
                {
                    "source": e.source,
                    "condition": _callable_name(e.condition),
                    "targets": _targets_spec(e),
                }
                for e in self._conditional
            ],
            "reducers": dict(self._reducer_names),
            **({"interrupt_before": list(self._interrupt_before)} if self._interrupt_before else {}),
            **({"interrupt_after": list(self._interrupt_after)} if self._interrupt_after else {}),
            # Only with a schema, so untyped graphs keep their fingerprint.
            **({"state_schema": self._schema.spec()} if self._schema is not None else {}),
        }

    def fingerprint(self) -> dict[str, Any]:
        """A small identity of the compiled graph: name, node count and a hash of ``spec()``.

        Workflow records carry this instead of the whole spec, so each step's commit
        stays small however large the graph is.
        """
        known = self.__dict__.get("_fingerprint")
        if known is not None and self._compiled:  # a compiled graph no longer changes; every run asks
            return dict(known)
        # Static breakpoints are left out: as in LangGraph, a thread started by a graph compiled
        # with some breakpoints continues under a compile of the same builder with others.
        spec = {k: v for k, v in self.spec().items() if k not in ("interrupt_before", "interrupt_after")}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        found = {"name": self.name, "nodes": len(self._nodes), "sha256": digest}
        if self._compiled:
            self.__dict__["_fingerprint"] = found
        return dict(found)

    def earlier_digests(self) -> tuple[str, ...]:
        """The ``sha256`` this graph's fingerprint had in versions that hashed its breakpoints too.

        Empty for a graph without breakpoints (its fingerprint never changed). A workflow
        stored with such a digest still matches this graph (``orchestrator.graph_mismatch``).
        """
        if not (self._interrupt_before or self._interrupt_after):
            return ()
        return (hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest(),)

    # -- running it as LangGraph code does ------------------------------------------------------

    def invoke(self, input: Any, config: Mapping[str, Any] | None = None, *, backend: str | None = None,
               interrupt_before: Sequence[str] | None = None,
               interrupt_after: Sequence[str] | None = None, context: Any = None,
               stream_mode: str | Sequence[str] = "values", durability: str | None = None) -> Any:
        """LangGraph's ``graph.invoke(input, config)``: run a workflow of this graph here, blocking.

        A shortcut over ``Orchestrator(backend=backend).invoke`` / ``.sync.resume``
        (``memory://`` by default) for code ported from LangGraph:
        ``config["configurable"]["thread_id"]`` is the workflow id (a new one when
        absent). A dict ``input`` starts the workflow under that id; a
        ``Command(resume=answer)`` answers its interrupts and None continues it from a
        static breakpoint (both need the ``thread_id``). Returns the state as a dict:
        the final one, or the state so far with ``"__interrupt__"`` (a list of
        ``{"id", "node", "value", "kind"}`` dicts, where LangGraph has a tuple of
        ``Interrupt`` objects). As a LangGraph thread, a completed workflow given a new
        ``input`` runs again from ``START`` on its state with the input applied through the
        reducers (``execute(continue_completed=True)``), as does a pending one (seeded by
        ``update_state``, or updated since it last ran); one running or paused is
        ``WorkflowExistsError`` saying to resume or wait for it. Graphs are also run by an
        ``Orchestrator`` directly, which is how they reach workers.

        ``stream_mode`` other than ``"values"`` (one mode, or a list) returns the list of the
        run's chunks in that mode, as LangGraph's ``invoke(..., stream_mode=...)`` does.
        ``durability`` (``"sync"``, ``"async"`` or ``"exit"``, LangGraph's) is the run's
        checkpointing mode (``Orchestrator.execute(durability=)``); ``ConfigurationError``
        for another value.
        """
        config = self._bound(config)  # with_config()'s, under this call's
        if stream_mode != "values":
            return list(self.stream(input, config, stream_mode=stream_mode, backend=backend,
                                    interrupt_before=interrupt_before, interrupt_after=interrupt_after,
                                    context=context, durability=durability))
        from distributed_agents.core.orchestrator import Orchestrator  # the orchestrator builds on graphs

        orchestrator = Orchestrator(backend=backend)
        options = _run_options(self.name, config, interrupt_before, interrupt_after,
                               with_context_schema(self, context), durability)
        input = _input_of(input)
        _budget_for(options, input)
        thread = options.get("workflow_id")
        if _continues_at(config, input) is not None:
            from distributed_agents.core.sync_api import run_sync

            input = run_sync(orchestrator, "invoke()", lambda: self._continuation(orchestrator, config, input, "invoke"))
        if input is None or isinstance(input, Command):
            if thread is None:
                raise ConfigurationError(
                    f"graph {self.name!r}: invoke({input!r}) continues a workflow: pass config="
                    "{'configurable': {'thread_id': <the id it was started with>}}")
            args: tuple[Any, ...] = (thread, self) if input is None else (thread, self, input)
            return _unless_paused_in_node(self.name, dict(orchestrator.sync.resume(*args, **_resume_options(options))))
        if current_context() is not None:  # invoked inside a node: it may end with Command.PARENT for it
            from distributed_agents.core.sync_api import run_sync

            return _unless_paused_in_node(self.name, dict(run_sync(
                orchestrator, "invoke()", lambda: self._run_for_caller(orchestrator, input, options))))
        return _unless_paused_in_node(self.name, dict(orchestrator.invoke(self, input, **options)))

    def stream(self, input: Any, config: Mapping[str, Any] | None = None, *, stream_mode: str | Sequence[str] = "updates",
               subgraphs: bool = False, backend: str | None = None, interrupt_before: Sequence[str] | None = None,
               interrupt_after: Sequence[str] | None = None, context: Any = None,
               durability: str | None = None) -> Iterator[Any]:
        """LangGraph's ``graph.stream(input, config, stream_mode=...)``: ``invoke``'s run, chunk by chunk.

        Chunks as ``Orchestrator.stream`` yields them (LangGraph's shapes); a dict
        ``input`` starts the workflow under the config's ``thread_id``, a ``Command``
        answers its interrupts and None continues it from a breakpoint (streaming only
        the steps it runs).
        """
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        options = _run_options(self.name, config, interrupt_before, interrupt_after,
                               with_context_schema(self, context), durability)
        input = _input_of(input)
        _budget_for(options, input)
        thread = options.get("workflow_id")
        orchestrator = Orchestrator(backend=backend)
        if _continues_at(config, input) is not None:
            from distributed_agents.core.sync_api import run_sync

            input = run_sync(orchestrator, "stream()", lambda: self._continuation(orchestrator, config, input, "stream"))
        if input is None or isinstance(input, Command):
            if thread is None:
                raise ConfigurationError(
                    f"graph {self.name!r}: stream({input!r}) continues a workflow: pass config="
                    "{'configurable': {'thread_id': <the id it was started with>}}")
            input = Command() if input is None else input
        chunks = orchestrator.stream(self, input, stream_mode=stream_mode, subgraphs=subgraphs, **options)
        return chunks if current_context() is None else _chunks_unless_paused_in_node(self.name, chunks)

    def get_state(self, config: Mapping[str, Any], *, subgraphs: bool = False, backend: str | None = None) -> Any:
        """LangGraph's ``graph.get_state(config)``: the thread's ``StateSnapshot`` (``values``, ``next``, ``config``...).

        ``config["configurable"]["thread_id"]`` names the workflow; with a
        ``checkpoint_id`` too (a snapshot's ``config``), that checkpoint's snapshot.
        ``subgraphs=True`` nests the snapshots of running subgraphs (latest only). A thread
        that does not exist gives an empty snapshot (``values == {}``, ``next == ()``,
        ``step == -1``), as in LangGraph; ``WorkflowNotFoundError`` for a checkpoint the
        thread does not have, ``ConfigurationError`` for one of another thread.
        """
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator
        from distributed_agents.core.sync_api import run_sync

        orchestrator = Orchestrator(backend=backend)
        return run_sync(orchestrator, "get_state()", lambda: self._get_state(orchestrator, config, subgraphs))

    async def aget_state(self, config: Mapping[str, Any], *, subgraphs: bool = False,
                         backend: str | None = None) -> Any:
        """``get_state`` for async code (LangGraph's ``aget_state``)."""
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        try:
            return await self._get_state(orchestrator, config, subgraphs)
        finally:
            await orchestrator.close()

    async def _get_state(self, orchestrator: Any, config: Mapping[str, Any], subgraphs: bool) -> Any:
        from distributed_agents.core.errors import WorkflowNotFoundError
        from distributed_agents.core.history import StateSnapshot, parse_checkpoint_id

        thread, checkpoint = _thread_and_checkpoint(self.name, config, "get_state")
        await self._check_thread_graph(orchestrator, thread, "get_state")
        if self._compiled:
            orchestrator._remember(self)  # a paused step's kept writes show in its values (its reducers)
        if checkpoint is None:
            try:
                return await orchestrator.get_state(thread, subgraphs=subgraphs)
            except WorkflowNotFoundError:  # LangGraph's answer for a thread with no checkpoint yet
                return StateSnapshot(thread, {}, (), -1, "", None, 0.0)
        step = parse_checkpoint_id(checkpoint)[1]
        found = await orchestrator.get_state_history(thread, limit=1, before=step + 1)
        if not found or found[0].checkpoint_id != checkpoint:
            raise WorkflowNotFoundError(f"graph {self.name!r}: thread {thread!r} has no checkpoint {checkpoint!r} "
                                        "(get_state_history(config) lists the ones it has)")
        return found[0]

    async def _check_thread_graph(self, orchestrator: Any, thread: str, call: str) -> None:
        """``ConfigurationError`` if workflow ``thread`` exists and was started with a graph of another name.

        A LangGraph checkpointer belongs to one compiled graph, so tutorials give every graph
        thread "1"; here threads are workflows of the backend, shared by every graph run on
        it, and a thread another graph ran would read as this one's state. A graph of the same
        name whose nodes or edges changed since (code edited between runs) still reads it, as
        LangGraph reads old checkpoints; running on it is what ``invoke`` and ``update_state``
        refuse (``orchestrator.graph_mismatch``). A subgraph's child workflow (a child
        snapshot's ``config``) reads through its parent, as in LangGraph.
        """
        await orchestrator.connect()
        record = await orchestrator.backend.state_store.get(thread)
        if record is None:
            return
        graphs, names = [self], set()
        while graphs:
            graph = graphs.pop()
            names.add(graph.name)
            graphs += [spec.subgraph.graph for spec in graph._nodes.values() if spec.subgraph is not None]
        if record.graph_name not in names:
            raise ConfigurationError(
                f"graph {self.name!r}: {call}() of thread {thread!r}: that workflow was started with graph "
                f"{record.graph_name!r}. Thread ids name workflows shared by every graph run on this backend (a "
                "LangGraph checkpointer belongs to one graph): read the thread through the graph it ran (or "
                "Orchestrator.get_state, which takes no graph), and give each graph thread ids of its own")

    def get_state_history(self, config: Mapping[str, Any], *, filter: Mapping[str, Any] | None = None,
                          before: Mapping[str, Any] | str | None = None, limit: int | None = None,
                          backend: str | None = None) -> Iterator[Any]:
        """LangGraph's ``graph.get_state_history(config)``: the thread's snapshots, newest first.

        ``before`` (a snapshot's ``config``, or a checkpoint id) keeps only older ones;
        ``limit`` bounds how many (0: none); ``filter`` (LangGraph's match on checkpoint
        metadata) keeps the snapshots whose ``metadata`` holds every given key with that
        value. A ``checkpoint_id`` in ``config`` starts at that checkpoint (it included), as
        in LangGraph. A thread that does not exist has no snapshots. ``ConfigurationError``
        for a ``filter`` that is no dict or a checkpoint of another thread.
        """
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator
        from distributed_agents.core.sync_api import run_sync

        orchestrator = Orchestrator(backend=backend)
        return iter(run_sync(orchestrator, "get_state_history()",
                             lambda: self._history(orchestrator, config, filter, before, limit)))

    async def aget_state_history(self, config: Mapping[str, Any], *, filter: Mapping[str, Any] | None = None,
                                 before: Mapping[str, Any] | str | None = None, limit: int | None = None,
                                 backend: str | None = None) -> AsyncIterator[Any]:
        """``get_state_history`` for async code (LangGraph's ``aget_state_history``): an async iterator."""
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        try:
            snapshots = await self._history(orchestrator, config, filter, before, limit)
        finally:
            await orchestrator.close()
        for snapshot in snapshots:
            yield snapshot

    async def _history(self, orchestrator: Any, config: Mapping[str, Any], filter: Mapping[str, Any] | None,
                       before: Mapping[str, Any] | str | None, limit: int | None) -> list[Any]:
        from distributed_agents.core.errors import WorkflowNotFoundError
        from distributed_agents.core.history import parse_checkpoint_id

        thread, checkpoint = _thread_and_checkpoint(self.name, config, "get_state_history")
        if filter is not None and not isinstance(filter, Mapping):
            raise ConfigurationError(f"graph {self.name!r}: get_state_history(filter=...) takes a dict of metadata "
                                     f"keys and values, e.g. {{'source': 'loop'}}, got {filter!r}")
        if isinstance(before, Mapping):  # a snapshot's config
            configurable = before.get("configurable")
            before = configurable.get("checkpoint_id") if isinstance(configurable, Mapping) else None
        if before is not None:  # of this thread, as get_state checks
            _thread_and_checkpoint(self.name, {"configurable": {"thread_id": thread, "checkpoint_id": before}},
                                   "get_state_history(before=)")
        await self._check_thread_graph(orchestrator, thread, "get_state_history")
        if limit == 0:  # as LangGraph: nothing asked, nothing listed
            return []
        bounds = [] if checkpoint is None else [parse_checkpoint_id(checkpoint)[1] + 1]  # it included
        if before is not None:
            bounds.append(parse_checkpoint_id(before)[1])
        try:
            snapshots = await orchestrator.get_state_history(
                thread, before=min(bounds) if bounds else None, limit=None if filter else limit)
        except WorkflowNotFoundError:
            return []  # as LangGraph: a thread with no checkpoints has no history
        if filter:
            snapshots = [s for s in snapshots if all(k in s.metadata and s.metadata[k] == v for k, v in filter.items())]
            snapshots = snapshots if limit is None else snapshots[:limit]
        return list(snapshots)

    def update_state(self, config: Mapping[str, Any], values: Mapping[str, Any] | None, as_node: str | None = None,
                     *, backend: str | None = None) -> dict[str, Any]:
        """LangGraph's ``graph.update_state(config, values, as_node=)``: the new checkpoint's ``config``.

        ``Orchestrator.update_state`` on the thread (``values`` merged through the
        reducers as if ``as_node`` returned them; ``invoke(None, config)`` then
        continues). Updating from a past checkpoint (a ``checkpoint_id`` in ``config``
        that is not the latest) is refused: ``Orchestrator.fork`` it first.
        A thread that does not exist is started unrun, as LangGraph's: ``values`` are its
        input (its entry points next) or, with ``as_node``, that node's output (the nodes
        routed after it next); ``invoke(None, config)`` runs it.
        """
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator
        from distributed_agents.core.sync_api import run_sync

        orchestrator = Orchestrator(backend=backend)
        return run_sync(orchestrator, "update_state()",
                        lambda: self._update_state(orchestrator, config, values, as_node))

    async def aupdate_state(self, config: Mapping[str, Any], values: Mapping[str, Any] | None,
                            as_node: str | None = None, *, backend: str | None = None) -> dict[str, Any]:
        """``update_state`` for async code (LangGraph's ``aupdate_state``)."""
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        try:
            return await self._update_state(orchestrator, config, values, as_node)
        finally:
            await orchestrator.close()

    async def _update_state(self, orchestrator: Any, config: Mapping[str, Any], values: Mapping[str, Any] | None,
                            as_node: str | None) -> dict[str, Any]:
        thread, checkpoint = _thread_and_checkpoint(self.name, config, "update_state")
        if checkpoint is not None and (await orchestrator.get_state(thread)).checkpoint_id != checkpoint:
            raise ConfigurationError(
                f"graph {self.name!r}: update_state from checkpoint {checkpoint!r}, which is not thread {thread!r}'s "
                "latest, would fork the thread, which is not done in place: fork it first (new_config = "
                "graph.fork(config) gives a new thread holding that checkpoint) and update that one")
        snapshot = await orchestrator.update_state(thread, dict(values or {}), as_node=as_node, graph=self)
        return dict(snapshot.config)

    async def _continuation(self, orchestrator: Any, config: Mapping[str, Any] | None, input: Any, call: str) -> Any:
        """``input`` for a run on ``config``'s thread, checked against the thread's latest snapshot (read once).

        A ``checkpoint_id`` in ``config`` must be the latest (``_refuse_past_checkpoint``); a
        ``Command(resume=...)`` at static breakpoints only becomes None (``_past_breakpoint``).
        Nothing is read when neither applies.
        """
        thread = _continues_at(config, input)
        if thread is None:
            return input
        named = _checkpoint_named(self.name, config, call)  # a checkpoint of another thread: refused first
        snapshot = await orchestrator.get_state(thread)
        if named is not None:
            _refuse_past_checkpoint(self.name, named, snapshot.checkpoint_id)
        return _past_breakpoint(input, snapshot) if isinstance(input, Command) else input

    def fork(self, config: Mapping[str, Any], *, thread_id: str | None = None,
             backend: str | None = None) -> dict[str, Any]:
        """A new thread holding the checkpoint ``config`` names (a past snapshot's ``config``); its ``config``.

        What LangGraph does in place when it runs or updates from a past checkpoint (a
        branch of the same thread), done here as ``Orchestrator.fork``: a new workflow
        (``thread_id``, default a fresh id) starting at that checkpoint, not yet run;
        ``invoke(None, new_config)`` runs it, ``update_state(new_config, ...)`` edits it
        first. The original thread is left as it was. ``config`` without a
        ``checkpoint_id`` forks the thread's latest. ``WorkflowNotFoundError`` if the
        thread or checkpoint is not stored, ``WorkflowExistsError`` if ``thread_id`` is taken.
        """
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator
        from distributed_agents.core.sync_api import run_sync

        orchestrator = Orchestrator(backend=backend)
        return run_sync(orchestrator, "fork()", lambda: self._fork(orchestrator, config, thread_id))

    async def afork(self, config: Mapping[str, Any], *, thread_id: str | None = None,
                    backend: str | None = None) -> dict[str, Any]:
        """``fork`` for async code."""
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        try:
            return await self._fork(orchestrator, config, thread_id)
        finally:
            await orchestrator.close()

    async def _fork(self, orchestrator: Any, config: Mapping[str, Any], thread_id: str | None) -> dict[str, Any]:
        thread, checkpoint = _thread_and_checkpoint(self.name, config, "fork")
        if checkpoint is None:
            checkpoint = (await orchestrator.get_state(thread)).checkpoint_id
        new_id = await orchestrator.fork(checkpoint, workflow_id=thread_id, graph=self)
        return {"configurable": {"thread_id": new_id}}

    async def ainvoke(self, input: Any, config: Mapping[str, Any] | None = None, *, backend: str | None = None,
                      interrupt_before: Sequence[str] | None = None,
                      interrupt_after: Sequence[str] | None = None, context: Any = None,
                      stream_mode: str | Sequence[str] = "values", durability: str | None = None) -> Any:
        """``invoke`` for async code (LangGraph's ``ainvoke``)."""
        config = self._bound(config)  # with_config()'s, under this call's
        if stream_mode != "values":
            return [chunk async for chunk in self.astream(
                input, config, stream_mode=stream_mode, backend=backend, interrupt_before=interrupt_before,
                interrupt_after=interrupt_after, context=context, durability=durability)]
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        options = _run_options(self.name, config, interrupt_before, interrupt_after,
                               with_context_schema(self, context), durability)
        input = _input_of(input)
        _budget_for(options, input)
        thread = options.get("workflow_id")
        try:
            input = await self._continuation(orchestrator, config, input, "ainvoke")
            if input is None or isinstance(input, Command):
                if thread is None:
                    raise ConfigurationError(
                        f"graph {self.name!r}: ainvoke({input!r}) continues a workflow: pass config="
                        "{'configurable': {'thread_id': <the id it was started with>}}")
                if input is None:
                    result = await orchestrator.resume(thread, self, **_resume_options(options))
                else:
                    result = await orchestrator.resume(thread, self, input, **_resume_options(options))
            else:
                result = await (self._run_for_caller(orchestrator, input, options) if current_context() is not None
                                else orchestrator.execute(self, input, **options))
            return _unless_paused_in_node(self.name, dict(result))
        finally:
            await orchestrator.close()

    async def _run_for_caller(self, orchestrator: Any, input: Any, options: dict[str, Any]) -> Any:
        """``execute`` of this graph invoked inside a node: a node of it returning
        ``Command(graph=Command.PARENT)`` ends the run for the calling node, which then raises
        ``ParentCommand`` with that command (LangGraph's), ending the node as if it returned it."""
        from distributed_agents.core.subgraphs import parent_command_of
        from distributed_agents.core.types import ParentCommand

        options = {**options, "configurable": {**options.get("configurable", {}), RETURNS_TO_CALLER_KEY: True}}
        result = await orchestrator.execute(self, input, **options)
        record = await orchestrator.backend.state_store.get(result.workflow_id)
        folded = None if record is None else parent_command_of(record)
        if folded is not None:
            update, goto = folded
            targets = [Send(str(t["node"]), t.get("arg")) if isinstance(t, Mapping) else t for t in goto]
            raise ParentCommand(Command(update=update or None, goto=targets))
        return result

    def clear_cache(self, nodes: Sequence[str] | None = None, *, backend: str | None = None) -> None:
        """LangGraph's ``graph.clear_cache(nodes=None)``: remove the node cache entries of this graph, blocking.

        A shortcut over ``Orchestrator(backend=backend).clear_cache(self, nodes)``
        (``memory://`` by default) for code ported from LangGraph; every orchestrator
        and worker on that backend and prefix shares the cache.
        """
        from distributed_agents.core.orchestrator import Orchestrator

        Orchestrator(backend=backend).sync.clear_cache(self, nodes)

    async def aclear_cache(self, nodes: Sequence[str] | None = None, *, backend: str | None = None) -> None:
        """``clear_cache`` for async code (LangGraph's ``aclear_cache``)."""
        from distributed_agents.core.orchestrator import Orchestrator

        orchestrator = Orchestrator(backend=backend)
        try:
            await orchestrator.clear_cache(self, nodes)
        finally:
            await orchestrator.close()

    def draw_mermaid(self) -> str:
        """The compiled graph as Mermaid flowchart text (see ``core.drawing``)."""
        from distributed_agents.core.drawing import draw_mermaid  # drawing reads graphs: imported on use

        return draw_mermaid(self)

    def draw_ascii(self) -> str:
        """The compiled graph as plain text, one block per node (see ``core.drawing``)."""
        from distributed_agents.core.drawing import draw_ascii

        return draw_ascii(self)

    def draw_dot(self) -> str:
        """The compiled graph in Graphviz's DOT language (see ``core.drawing``); no library needed."""
        from distributed_agents.core.drawing import draw_dot

        return draw_dot(self)

    def draw_png(self, path: str | os.PathLike[str] | None = None) -> bytes:
        """The compiled graph as a PNG image (its bytes), also written to ``path`` if given.

        Rendered by Graphviz's ``dot`` program: ``ConfigurationError`` naming the package
        to install when it is missing (see ``core.drawing.draw_image``). Unlike LangGraph's
        ``draw_png``, the bytes are returned even when a file is written.
        """
        from distributed_agents.core.drawing import draw_image

        return draw_image(self, "png", path)

    def draw_svg(self, path: str | os.PathLike[str] | None = None) -> str:
        """The compiled graph as SVG text, also written to ``path`` if given (see ``draw_png``)."""
        from distributed_agents.core.drawing import draw_image

        return draw_image(self, "svg", path).decode("utf-8")

    #: The config ``with_config`` bound (None: none), merged under each call's.
    _bound_config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Graph:
        """LangGraph's ``compiled.with_config(config, **kwargs)``: this compiled graph with a config
        bound, used by every call that takes one (``invoke``, ``stream``, ``batch``, ``get_state``,
        ``update_state``, ... and their async forms) under the call's own.

        ``kwargs`` are config keys (``recursion_limit=100``). The call's config wins a clash;
        ``configurable`` and ``metadata`` are merged key by key, ``tags`` added. The graph itself is
        unchanged (a copy sharing its nodes is returned). ``GraphNotCompiledError`` before compile;
        ``ConfigurationError`` if ``config`` is not a dict.
        """
        self._require_compiled()
        if config is not None and not isinstance(config, Mapping):
            raise ConfigurationError(f"graph {self.name!r}: with_config() takes a config dict "
                                     f"({{'recursion_limit': ..., 'configurable': {{...}}}}), got {config!r:.80}")
        bound = copy.copy(self)
        bound._bound_config = _merge_configs(self._bound_config, {**(config or {}), **kwargs})
        return bound

    def _bound(self, config: Any) -> Any:
        """``config`` (a call's: a dict, a list of them for ``batch``, or None) under ``with_config``'s."""
        bound = self._bound_config
        if not bound:
            return config
        if isinstance(config, (list, tuple)):
            return [_merge_configs(bound, item) for item in config]
        if config is not None and not isinstance(config, Mapping):
            return config  # (a NodeContext handed on, or a wrong type the call itself reports)
        return _merge_configs(bound, config)

    def get_graph(self, config: Any = None, *, xray: int | bool = False) -> Graph:
        """LangGraph's ``compiled.get_graph()``: this graph, which draws itself (``draw_mermaid()``,
        ``draw_ascii()``, ``draw_png()``, ...). ``config`` and ``xray`` are accepted for ports; a
        subgraph is drawn as one node either way.
        """
        return self

    def batch(self, inputs: Sequence[Any], config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
              *, return_exceptions: bool = False, backend: str | None = None,
              context: Any = None) -> list[dict[str, Any] | Exception]:
        """LangGraph's ``graph.batch(inputs, config)``: ``invoke`` each input in turn; the results in order.

        ``config`` is one config for every input or a list of one per input (``ConfigurationError``
        if the lengths differ). One config with a ``thread_id`` for several inputs runs each as a
        new run of that thread (see ``invoke``). The first input whose run raises stops the batch
        with that error, unless ``return_exceptions`` (LangGraph's keyword): then every input
        runs, and a failed one's error (an ``Exception``; a ``KeyboardInterrupt`` or a
        cancellation still stops the batch) stands in its place in the list.
        """
        inputs = list(inputs)  # (any iterable, a generator's too: its length is checked against the configs)
        config = self._bound(config)  # with_config()'s, under this call's
        configs = _batch_configs(self.name, inputs, config)
        if not return_exceptions:
            return [self.invoke(item, one, backend=backend, context=context) for item, one in zip(inputs, configs)]
        results: list[dict[str, Any] | Exception] = []
        for item, one in zip(inputs, configs):
            try:
                results.append(self.invoke(item, one, backend=backend, context=context))
            except Exception as error:
                results.append(error)
        return results

    async def abatch(self, inputs: Sequence[Any],
                     config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
                     return_exceptions: bool = False, backend: str | None = None,
                     context: Any = None) -> list[dict[str, Any] | Exception]:
        """``batch`` for async code (LangGraph's ``abatch``): the runs go concurrently, results in
        order. Without ``return_exceptions`` the first error to come is raised (as LangGraph's,
        the other runs are not cancelled: each is a workflow that commits its own steps); with
        it, every run's result or ``Exception`` in its place. Being concurrent, inputs that share
        one ``thread_id`` collide: one runs, the others get ``WorkflowExistsError`` (the thread
        is running); ``batch`` runs them one after another as new runs of that thread."""
        inputs = list(inputs)  # (any iterable, as batch)
        config = self._bound(config)  # with_config()'s, under this call's
        configs = _batch_configs(self.name, inputs, config)
        if not return_exceptions:
            return list(await asyncio.gather(*(self.ainvoke(item, one, backend=backend, context=context)
                                               for item, one in zip(inputs, configs))))

        async def one_run(item: Any, one: Any) -> dict[str, Any] | Exception:
            try:
                result: dict[str, Any] = await self.ainvoke(item, one, backend=backend, context=context)
            except Exception as error:
                return error
            return result

        return list(await asyncio.gather(*(one_run(item, one) for item, one in zip(inputs, configs))))

    async def astream(self, input: Any, config: Mapping[str, Any] | None = None, *,
                      stream_mode: str | Sequence[str] = "updates", subgraphs: bool = False,
                      backend: str | None = None, interrupt_before: Sequence[str] | None = None,
                      interrupt_after: Sequence[str] | None = None, context: Any = None,
                      durability: str | None = None) -> AsyncIterator[Any]:
        """``stream`` for async code (LangGraph's ``astream``): the same chunks, as an async iterator."""
        config = self._bound(config)  # with_config()'s, under this call's
        from distributed_agents.core.orchestrator import Orchestrator

        options = _run_options(self.name, config, interrupt_before, interrupt_after,
                               with_context_schema(self, context), durability)
        input = _input_of(input)
        _budget_for(options, input)
        if input is None or isinstance(input, Command):
            if "workflow_id" not in options:
                raise ConfigurationError(
                    f"graph {self.name!r}: astream({input!r}) continues a workflow: pass config="
                    "{'configurable': {'thread_id': <the id it was started with>}}")
            input = Command() if input is None else input
        orchestrator = Orchestrator(backend=backend)
        try:
            # None (a resume past static breakpoints only) continues; an empty dict is an input like any other.
            resolved = await self._continuation(orchestrator, config, input, "astream")
            input = Command() if resolved is None else resolved
        except BaseException:
            await orchestrator.close()
            raise
        chunks = orchestrator.astream(self, input, stream_mode=stream_mode, subgraphs=subgraphs, **options)
        try:
            async for chunk in chunks:
                _unless_paused_in_node(self.name, chunk)
                yield chunk
        finally:
            closing = getattr(chunks, "aclose", None)
            if closing is not None:
                await closing()
            await orchestrator.close()

    def __repr__(self) -> str:
        state = "compiled" if self._compiled else "not compiled"
        return f"<Graph {self.name!r}: {len(self._nodes)} nodes, {state}>"


def _plain(frontier: Mapping[str, Any], use: str) -> list[str]:
    if frontier.get("sends"):
        raise ExecutionError(f"a condition returned Send(...) objects; read routes with Graph.{use}, which keeps them")
    return list(frontier["next"]) + list(frontier.get("deferred", ()))


def _breakpoints(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [names]
    if not all(isinstance(n, str) for n in names):
        raise ConfigurationError(f"breakpoints must be a list of node names (or '*'), got {names!r}")
    return tuple(dict.fromkeys(names))


def _input_annotation(func: Any) -> Any:
    """The annotation of ``func``'s first parameter (its state) if it resolves to a class, else None."""
    import typing  # only when a node has a function: reading annotations may evaluate strings

    try:
        first = next(iter(inspect.signature(func).parameters))
        hint = typing.get_type_hints(func).get(first)
    except Exception:  # no parameters, or unresolvable annotations: no input schema
        return None
    return hint if isinstance(hint, type) else None


def _annotated_destinations(func: Any) -> tuple[str, ...] | None:
    """``("a", "b")`` for a function annotated ``-> Command[Literal["a", "b"]]``, else None."""
    import typing  # only when a node has a function: reading annotations may evaluate strings

    try:
        hint = typing.get_type_hints(func).get("return")
    except Exception:  # unresolvable annotations: no declared destinations
        return None
    from distributed_agents.core.types import Command

    if typing.get_origin(hint) is not Command:
        return None
    names: list[str] = []
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is typing.Literal:
            names.extend(str(v) for v in typing.get_args(arg))
        elif isinstance(arg, str):
            names.append(arg)
    return tuple(names) or None


def _targets_spec(edge: ConditionalEdge) -> Any:
    if edge.mapping is not None:
        return {str(key): target for key, target in edge.mapping.items()}
    return None if edge.allowed is None else sorted(edge.allowed)


def _closure(start: str, successors: Mapping[str, set[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for nxt in successors.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _edges_spec(edges: Sequence[tuple[tuple[str, ...], str]]) -> list[dict[str, Any]]:
    """Edges as JSON, each once: a join's sources sorted and deduplicated (a join is its set of sources).

    So a join written in another source order, or declared twice, gives the same spec,
    fingerprint and drawing. Plain edges keep their declaration order (and their spec).
    """
    seen: set[tuple[tuple[str, ...], str]] = set()
    spec: list[dict[str, Any]] = []
    for sources, target in edges:
        normal = tuple(sorted(set(sources))) if len(set(sources)) > 1 else tuple(dict.fromkeys(sources))
        if (normal, target) not in seen:
            seen.add((normal, target))
            spec.append({"sources": list(normal), "target": target})
    return spec


def _thread_id(graph: str, config: Mapping[str, Any] | None) -> str | None:
    """The workflow id in a LangGraph ``config`` (``{"configurable": {"thread_id": ...}}``), or None."""
    if config is None:
        return None
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    if not isinstance(configurable, Mapping):
        raise ConfigurationError(f"graph {graph!r}: config must look like {{'configurable': {{'thread_id': ...}}}}, "
                                 f"got {config!r}")
    thread = configurable.get("thread_id")
    return None if thread is None else str(thread)


def _checkpoint_named(graph: str, config: Mapping[str, Any] | None, call: str) -> tuple[str, str] | None:
    """``(thread, checkpoint_id)`` when a run's ``config`` names a checkpoint (a snapshot's ``config``), else None."""
    if not isinstance(config, Mapping) or not isinstance(config.get("configurable"), Mapping) \
            or config["configurable"].get("checkpoint_id") is None:
        return None
    thread, checkpoint = _thread_and_checkpoint(graph, config, call)
    assert checkpoint is not None
    return thread, checkpoint


def _refuse_past_checkpoint(graph: str, named: tuple[str, str], latest: str) -> None:
    """A run from checkpoint ``named`` goes on in place only from the thread's ``latest`` one (LangGraph's
    edit-then-continue: ``invoke(None, update_state(...))``); from an older one it would fork the thread."""
    thread, checkpoint = named
    if checkpoint != latest:
        raise ConfigurationError(
            f"graph {graph!r}: running from checkpoint {checkpoint!r}, older than thread {thread!r}'s latest "
            f"({latest!r}), would fork the thread, which is not done in place: fork it (new_config = "
            "graph.fork(config) gives a new thread holding that checkpoint), then invoke(None, new_config); "
            "get_state(config) reads a past checkpoint")


def _thread_and_checkpoint(graph: str, config: Mapping[str, Any], call: str) -> tuple[str, str | None]:
    """``(thread_id, checkpoint_id or None)`` of a LangGraph ``config``; ``ConfigurationError`` without a
    thread, or with a checkpoint of another thread."""
    thread = _thread_id(graph, config)
    if thread is None:
        raise ConfigurationError(f"graph {graph!r}: {call} needs config={{'configurable': {{'thread_id': ...}}}}")
    checkpoint = config["configurable"].get("checkpoint_id")
    if checkpoint is None:
        return thread, None
    from distributed_agents.core.history import parse_checkpoint_id

    if parse_checkpoint_id(checkpoint)[0] != thread:
        raise ConfigurationError(f"graph {graph!r}: {call}: checkpoint {checkpoint!r} is not of thread {thread!r}; "
                                 "pass the config a snapshot of that thread gives (snapshot.config)")
    return thread, checkpoint


def _batch_configs(graph: str, inputs: Sequence[Any],
                   config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any] | None]:
    """One config per input for ``batch``: ``config`` repeated, or the list given (same length)."""
    if config is None or isinstance(config, Mapping):
        return [config] * len(inputs)
    configs: list[Mapping[str, Any] | None] = list(config)
    if len(configs) != len(inputs):
        raise ConfigurationError(f"graph {graph!r}: batch got {len(inputs)} input(s) but {len(configs)} config(s); "
                                 "pass one config, or one per input")
    return configs


# LangGraph config keys about tracing/callbacks, accepted and not used here.
_IGNORED_CONFIG_KEYS = ("tags", "metadata", "run_name", "run_id", "callbacks", "max_concurrency")


_R = TypeVar("_R")


class ConditionConfig(dict[str, Any]):
    """The config a condition taking a second parameter gets: LangGraph's ``RunnableConfig`` dict,
    which also reads as its ``Runtime`` (``route(state, runtime)``: ``runtime.context``, the run's
    context as ``NodeContext.context`` gives it; ``runtime.store`` None)."""

    @property
    def context(self) -> RunContext | None:
        """The run's context (``invoke(..., context=...)``), or None."""
        return run_context_of(self)

    @property
    def store(self) -> None:
        """LangGraph's ``runtime.store``: None."""
        return None


def _condition_config(state: Any, configurable: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config a condition taking one is called with (``Graph._follow``): the run's
    ``configurable`` values and its thread (the outermost workflow, as ``NodeContext.as_config``),
    also read as LangGraph's ``Runtime`` (``ConditionConfig``)."""
    workflow_id = str(getattr(state, "workflow_id", "") or "")
    thread = workflow_id.split(":sub:", 1)[0]
    namespace = "" if thread == workflow_id else workflow_id
    config = ConditionConfig(
        configurable={**visible_configurable(configurable), "thread_id": thread, "checkpoint_ns": namespace},
        metadata={"thread_id": thread, "langgraph_checkpoint_ns": namespace})
    context = (configurable or {}).get(CONTEXT_KEY)
    if context is not None:
        config[CONTEXT_KEY] = context  # (read by .context; not a config key LangGraph has)
    return config


def _merge_configs(base: Mapping[str, Any] | None, over: Mapping[str, Any] | None) -> dict[str, Any]:
    """LangGraph's config merge: ``over``'s keys win, ``configurable``/``metadata`` merge key by key,
    ``tags`` add up."""
    merged = dict(base or {})
    for key, value in (over or {}).items():
        if key in ("configurable", "metadata") and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        elif key == "tags" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *(tag for tag in value if tag not in merged[key])]
        else:
            merged[key] = value
    return merged


def _nested_config(config: Any) -> Any:
    """``config`` for a run, with a running node's own config passed through made a nested run's.

    LangGraph code runs a graph from inside a node as ``sub.invoke(x, config)``, handing on the
    node's ``config`` (here a ``NodeContext``, or its ``as_config()`` dict). Its ``thread_id`` is
    the calling workflow's, which the nested run must not take over: the run gets a workflow of
    its own, keeping the caller's other ``configurable`` values and its ``recursion_limit``.
    Any other config is returned as given.
    """
    if isinstance(config, NodeContext):
        config = config.as_config()
    caller = current_context()
    if caller is None or not isinstance(config, Mapping):
        return config
    configurable = config.get("configurable")
    own = caller.as_config()["configurable"]
    if not isinstance(configurable, Mapping) or configurable.get("thread_id") != own["thread_id"]:
        return config
    return {**config, "configurable": {key: value for key, value in configurable.items()
                                       if key not in ("thread_id", "checkpoint_ns", "checkpoint_id")}}


def _paused(chunk: Any) -> bool:
    """Whether a run's result or stream chunk (a dict, or a tuple of mode/namespace and one) reports a pause."""
    if isinstance(chunk, tuple):
        return any(_paused(part) for part in chunk)
    return isinstance(chunk, Mapping) and "__interrupt__" in chunk


def _unless_paused_in_node(graph: str, result: _R) -> _R:
    """``result``, unless it is a pause of a run started inside a running node: ``ExecutionError`` then.

    LangGraph's nested run pauses its caller; here a run started from a node's code is a
    workflow of its own, whose pause its caller would take for a result (the answer lost,
    the caller going on without it), so it fails the node instead, saying what to do.
    """
    caller = current_context() if _paused(result) else None
    if caller is None:
        return result
    raise ExecutionError(
        f"graph {graph!r} paused at an interrupt while run from inside node {caller.node!r} of workflow "
        f"{caller.workflow_id!r}: a graph run from a node's code is a workflow of its own and cannot pause its "
        "caller. Add the graph as a node instead (add_node(name, subgraph), or add_node(name, subgraph, input=..., "
        "output=...) to map the states), so its interrupts pause the parent and Command(resume=...) reaches them")


def _chunks_unless_paused_in_node(graph: str, chunks: Iterator[Any]) -> Iterator[Any]:
    """``chunks`` passed through ``_unless_paused_in_node`` (closed when this is, or when it raises)."""
    try:
        for chunk in chunks:
            yield _unless_paused_in_node(graph, chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _continues_at(config: Mapping[str, Any] | None, input: Any) -> str | None:
    """The thread whose latest snapshot a run on ``config`` must check first (a ``checkpoint_id``
    in the config, or a ``Command`` input), else None."""
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    if not isinstance(configurable, Mapping):
        return None
    thread = configurable.get("thread_id")
    if configurable.get("checkpoint_id") is not None:
        return "" if thread is None else str(thread)  # "": _checkpoint_named refuses it, saying why
    return None if thread is None or not isinstance(input, Command) else str(thread)


def _past_breakpoint(input: Any, snapshot: Any) -> Any:
    """``input``, or None for a ``Command(resume=...)`` given to a thread paused only at static breakpoints
    (``Command(update=...)`` without the answer, for one with an update).

    LangGraph continues past a static breakpoint whatever resume value it is given (the
    usual loop ``while "__interrupt__" in out: out = graph.invoke(Command(resume=...), config)``
    relies on it); ``Orchestrator.resume`` refuses an answer nothing waits for, so the
    LangGraph-style calls leave it out there.
    """
    if not isinstance(input, Command) or input.goto or input.graph is not None:
        return input
    pauses = getattr(snapshot, "interrupts", ())
    if not (pauses and all(p.kind != "interrupt" for p in pauses)):
        return input
    # The answer dropped; an update= kept (``Orchestrator.resume`` applies it there).
    return None if input.update is None else Command(update=input.update)


def _input_of(input: Any) -> Any:
    """A run's ``input`` as LangGraph takes it: the state a node was given (a ``State``, which
    names its own workflow) as plain values, so a graph invoked inside a node runs as a
    workflow of its own (its thread from ``config`` alone) rather than under the caller's id."""
    from distributed_agents.core.state import State

    return dict(input) if isinstance(input, State) else input


def _resume_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``interrupt_before``/``interrupt_after``, ``step_limit`` and ``durability`` among
    ``_run_options``'s, and the run context, for ``resume``."""
    picked = {key: options[key] for key in ("interrupt_before", "interrupt_after", "step_limit", "durability")
              if key in options}
    context = (options.get("configurable") or {}).get(CONTEXT_KEY)
    if context is not None:
        picked["context"] = context
    return picked


#: ``_config_options``: the config's own recursion_limit, beside the step_limit it gives a new run.
_RECURSION_LIMIT = "recursion_limit"


def _budget_for(options: dict[str, Any], input: Any) -> None:
    """The step limit of a call with ``input``, from the config's ``recursion_limit`` of N (taken out
    of ``options``): N - 1 steps for a new run (``_config_options``), N + 1 for a continuation (None
    or a ``Command``), which LangGraph runs without an input step."""
    limit = options.pop(_RECURSION_LIMIT, None)
    if limit is not None and (input is None or isinstance(input, Command)):
        options["step_limit"] = limit + 1


def _run_options(graph: str, config: Mapping[str, Any] | None, interrupt_before: Sequence[str] | None = None,
                 interrupt_after: Sequence[str] | None = None, context: Any = None,
                 durability: str | None = None) -> dict[str, Any]:
    """``execute`` options from a LangGraph ``config``: ``thread_id`` -> ``workflow_id``, ``recursion_limit`` -> ``step_limit``.

    ``interrupt_before``/``interrupt_after`` (LangGraph's ``invoke(..., interrupt_before=)``) are
    added as given: this run's breakpoints instead of the compiled graph's.

    ``ConfigurationError`` for a key it does not understand (saying what is). Other
    ``configurable`` values than ``thread_id`` go to ``execute(configurable=)``: the
    run's nodes read them as ``config["configurable"][key]``.
    """
    caller = current_context()
    inherited_limit = None
    if caller is not None:  # a run started inside a node inherits its configurable values and context (LangGraph's)
        if config is None and visible_configurable(caller.configurable):
            config = {"configurable": visible_configurable(caller.configurable)}
        if context is None:
            context = (caller.configurable or {}).get(CONTEXT_KEY)
        # ... and its call's step limit, unless the config gives one (LangGraph hands recursion_limit down).
        inherited_limit = caller.step_limit
    options = _config_options(graph, config, interrupt_before, interrupt_after)
    if inherited_limit is not None and "step_limit" not in options:
        options["step_limit"] = inherited_limit
    if durability is not None:  # LangGraph's invoke(..., durability=): "sync", "async" or "exit"
        options["durability"] = durability
    if context is not None:  # LangGraph's run context: travels with the configurable values (CONTEXT_KEY)
        options["configurable"] = {**options.get("configurable", {}), CONTEXT_KEY: context_values(f"graph {graph!r}",
                                                                                                   context)}
    return options


def with_context_schema(graph: Graph, context: Any) -> Any:
    """A dict ``context`` read through the graph's ``context_schema`` (a dataclass or Pydantic
    model: its defaults filled, its fields checked, as LangGraph builds it), else ``context``.
    ``ConfigurationError`` naming the schema for a dict it does not accept."""
    schema = getattr(graph, "context_schema", None)
    if schema is None or not isinstance(context, Mapping) or not isinstance(schema, type):
        return context
    try:
        if dataclasses.is_dataclass(schema):
            return schema(**context)
        if callable(getattr(schema, "model_validate", None)):
            return schema.model_validate(dict(context))  # type: ignore[attr-defined]
    except Exception as exc:
        raise ConfigurationError(f"graph {graph.name!r}: context= {dict(context)!r} does not fit its context_schema "
                                 f"{schema.__name__}: {type(exc).__name__}: {exc}") from None
    return context


def _config_options(graph: str, config: Mapping[str, Any] | None, interrupt_before: Sequence[str] | None,
                    interrupt_after: Sequence[str] | None) -> dict[str, Any]:
    """``_run_options`` without the run context."""
    breakpoints = {key: value for key, value in (("interrupt_before", interrupt_before),
                                                  ("interrupt_after", interrupt_after)) if value is not None}
    config = _nested_config(config)
    if config is None:
        return breakpoints
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"graph {graph!r}: config must be a dict like {{'configurable': {{'thread_id': ...}}, "
                                 f"'recursion_limit': 25}}, got {config!r}")
    unknown = [key for key in config if key not in ("configurable", "recursion_limit", *_IGNORED_CONFIG_KEYS)]
    if unknown:
        raise ConfigurationError(f"graph {graph!r}: config key(s) {', '.join(map(repr, unknown))} are not understood; "
                                 "a config holds 'configurable' ({'thread_id': ...}) and 'recursion_limit' (the "
                                 f"step limit); {', '.join(map(repr, _IGNORED_CONFIG_KEYS))} are accepted and ignored")
    options: dict[str, Any] = dict(breakpoints)
    if "configurable" in config:
        thread = _thread_id(graph, config)
        extra = {key: value for key, value in config["configurable"].items()
                 if key not in ("thread_id", "checkpoint_ns", "checkpoint_id")}
        if extra:
            options["configurable"] = extra
        if thread is not None:  # a thread takes a new input as a new run once completed, as in LangGraph
            options.update(workflow_id=thread, continue_completed=True)
    limit = config.get("recursion_limit")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise ConfigurationError(f"graph {graph!r}: config['recursion_limit'] must be an int >= 1 (the step "
                                     f"limit), got {limit!r}")
        # LangGraph's recursion_limit of N lets a call run N - 1 steps (its input takes one): the same
        # here (1, which lets LangGraph run one step before it raises, allows that step). A resume
        # takes no input step there and runs N + 1 (``_resume_options``).
        options["step_limit"] = max(1, limit - 1)
        options[_RECURSION_LIMIT] = limit
    return options


def _checked_node_metadata(graph: str, node: str, metadata: Any) -> dict[str, Any]:
    """``add_node(metadata=)`` as a JSON dict of its own; ``GraphValidationError`` naming the graph
    and node if it is not a dict with string keys whose values JSON returns unchanged."""
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise GraphValidationError(
            f"graph {graph!r}: node {node!r}: metadata must be a dict with string keys (JSON), got {metadata!r:.120}",
            graph=graph, culprit=node)
    try:
        check_values(metadata, "metadata")
    except StateNotSerializableError as exc:
        raise GraphValidationError(f"graph {graph!r}: node {node!r}: metadata is not JSON: {exc}", graph=graph,
                                   culprit=node) from None
    copied: dict[str, Any] = decode(encode(dict(metadata)))  # its own: later changes to the caller's dict do not leak in
    return copied


class StateGraph(Graph):
    """LangGraph's ``StateGraph(state_schema)``: a ``Graph`` named after its state schema.

    ``StateGraph(State)`` is ``Graph(State.__name__, state_schema=State)``;
    ``input_schema``/``output_schema`` (or LangGraph's older ``input``/``output``) as for
    ``Graph``; ``StateGraph(dict)`` is an untyped graph. ``context_schema`` reads a dict
    ``context=`` (``with_context_schema``); a run's context travels as JSON and nodes read it
    as ``runtime.context`` (``NodeContext.context``). ``config_schema`` is accepted and ignored.
    ``name=`` names the graph otherwise (graph names key stored workflows and drawings).
    """

    def __init__(
        self,
        state_schema: type | None = None,
        context_schema: type | None = None,
        *,
        input_schema: type | None = None,
        output_schema: type | None = None,
        input: type | None = None,
        output: type | None = None,
        config_schema: type | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        typed = state_schema if state_schema not in (None, dict) else None
        super().__init__(name or getattr(state_schema, "__name__", None) or "StateGraph", state_schema=typed,
                         input_schema=input_schema or input, output_schema=output_schema or output, **options)
        self.context_schema = context_schema  # a dict context= is read through it (``with_context_schema``)

    def compile(
        self, *, interrupt_before: Sequence[str] | None = None, interrupt_after: Sequence[str] | None = None,
        checkpointer: Any = None, cache: Any = None,
    ) -> Graph:
        """``Graph.compile``, after making every node with no way onward a finish point, as LangGraph does.

        In LangGraph a node with no outgoing edge, condition, ``Command`` destinations or
        error handler simply ends the run there; a plain ``Graph`` asks for
        ``set_finish_point`` (so a forgotten edge is caught), a ``StateGraph`` adds it.
        """
        if not self.compiled:
            routed = {source for sources, _ in self._edges for source in sources}
            routed |= {edge.source for edge in self._conditional}
            for name, spec in self._nodes.items():
                if name not in routed and spec.destinations is None and spec.on_error is None:
                    self.set_finish_point(name)
        return super().compile(interrupt_before=interrupt_before, interrupt_after=interrupt_after,
                               checkpointer=checkpointer, cache=cache)


def _callable_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _copy_frontier(frontier: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a frontier ``Graph._frontier`` made without Sends: its lists and joins copied, nothing shared."""
    copied: dict[str, Any] = {}
    for key, value in frontier.items():
        copied[key] = {k: list(v) for k, v in value.items()} if key == "joins" else list(value)
    return copied
