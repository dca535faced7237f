"""The node cache: ``CachePolicy`` (LangGraph's names) and the step engine's use of it.

A node added with ``graph.add_node(name, func, cache_policy=CachePolicy(key_func=...,
ttl=...))`` is not run again for an input whose output is already cached. The step
engine, in the orchestrator and before a task runs in-process or goes to the queue,
computes the task's cache key from its input and looks it up in the backend; a hit is
used as the node's output (its ``node.completed`` event carries ``cached=True`` and no
``node.started`` precedes it); a miss runs the node and stores its output for ``ttl``
seconds (None: until cleared). The cache lives in the backend's ``StateStore``
(``cache_get``/``cache_set``/``cache_clear``), so every orchestrator and worker of the
backend shares it.

Keys. ``key_func(input)`` gets the node's input as a plain dict (a copy: the shared
state as of the start of the step, or the ``Send``'s argument, or an error handler's
``{"error", "state"}``) and returns ``str`` or ``bytes`` (a ``str`` is its UTF-8
bytes, so ``"a"`` and ``b"a"`` are one key). The default, ``default_cache_key``, is the
SHA-256 of the input as canonical JSON (sorted keys), so key order does not matter but
``1`` and ``1.0`` differ. The key is hashed again and stored under a namespace
(``cache_namespace``) of the graph's name, the node's name and an identity of both
(``node_identity``): the graph's fingerprint (its structure: nodes, node types, edges,
schema, policies) and the node's implementation (its node type and, for a function given
to ``add_node``, its module, qualified name and a digest of its code, including the
functions and plain values its closure holds; a subgraph node's: the subgraph's
identity). So two graphs, even of one name (``StateGraph(State)`` is named after
``State``), or two nodes, never share an entry, while the same graph built in another
process does. Only what the digest sees is covered: after changing what a node computes
without changing its code (a global it reads, a called helper), clear its entries with
``Orchestrator.clear_cache(graph, nodes=[...])``; entries of a graph's earlier versions are
left to expire (or to ``cache_clear`` of the store).

What is cached: a successful output, plain updates or ``Command(update=, goto=)`` (the
routing is replayed with the updates). Never cached: a failure (the node runs again next
time; its error handler, retries and dead letters work as without a cache), a pause
(``interrupt``), the run of a task resumed with answers (its output depends on them, not
only on its input: it is neither looked up nor stored), and any other output form
(``Command(graph=Command.PARENT)``, which leaves its graph). Tasks of one step with equal
keys (a map over repeated items) run once and share the output, as hits; if that run
fails, pauses or returns what is not cached, the others run after it. Two workflows
missing at the same moment both run the node (there is no lock; the later write wins).

Failures of the cache itself never fail a node: an entry that cannot be decoded, or a
read the store refuses, is a miss (logged); a write the store refuses is logged and
skipped (the output is in hand). Only a read that meets an unavailable backend raises
(``BackendUnavailableError``, like any other backend call of the step, which the step
loop retries). A backend whose store keeps the port's default (no cache) runs cached
nodes every time, with one warning per node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import types
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import BackendUnavailableError, ConfigurationError, ExecutionError
from distributed_agents.core.ports.state_store import StateStore, implements_cache
from distributed_agents.core.types import COMMAND_KEY

__all__ = ["CachePolicy", "NodeCache", "cache_namespace", "cacheable_output", "code_identity", "default_cache_key",
           "graph_identity", "graph_implementations", "node_identity"]

log = logging.getLogger("distributed_agents.cache")

KeyFunc = Callable[[Any], "str | bytes"]


def default_cache_key(value: Any) -> bytes:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces): the default ``key_func``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class CachePolicy:
    """How a node's outputs are cached (LangGraph's ``CachePolicy``; see the module docstring).

    ``key_func(input) -> str | bytes`` (default ``default_cache_key``); ``ttl`` seconds an
    entry lives, a finite number > 0, or None (never expires; LangGraph takes whole
    seconds, fractions work here). ``ConfigurationError`` for anything else.
    """

    key_func: KeyFunc = default_cache_key
    ttl: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.key_func):
            raise ConfigurationError(
                f"CachePolicy(key_func={self.key_func!r}): key_func must be a function of the node's input "
                "returning str or bytes")
        ttl = self.ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not math.isfinite(ttl) or ttl <= 0):
            raise ConfigurationError(
                f"CachePolicy(ttl={ttl!r}): ttl must be a finite number of seconds > 0, or None for entries that "
                "never expire")


def cache_namespace(graph: str, node: str, identity: str = "") -> str:
    """The cache namespace of ``node`` of ``graph``: ``<graph>/<node>[/<identity>]``, percent-encoded (injective).

    ``identity`` is ``node_identity(graph, node)`` (the engine always passes it).
    """
    base = f"{quote(graph, safe='')}/{quote(node, safe='')}"
    return f"{base}/{quote(identity, safe='')}" if identity else base


_SCALARS = (str, bytes, int, float, bool, type(None))


def _const_parts(value: Any, depth: int) -> Any:
    """A deterministic (hash-seed independent) description of a code constant."""
    if isinstance(value, types.CodeType):
        return _code_parts(value, depth)
    if isinstance(value, (frozenset, set)):
        return sorted(repr(_const_parts(v, depth)) for v in value)
    if isinstance(value, tuple):
        return [_const_parts(v, depth) for v in value]
    return repr(value)


def _code_parts(code: types.CodeType, depth: int) -> list[Any]:
    # Bytecode, names and constants (not line numbers: moving a function keeps its entries).
    return [code.co_code.hex(), list(code.co_names), list(code.co_varnames),
            [_const_parts(c, depth) for c in code.co_consts]]


def _value_identity(value: Any, depth: int) -> Any:
    """A process-independent description of a value a node's closure (or callable object) holds.

    Plain values by ``repr``; dicts, lists, tuples and sets by their items; functions and
    bound methods by their code (and a bound method's object); any other object by its
    class and its attributes, recursively to three levels — so two closures of one factory
    over ``Client("a")`` and ``Client("b")``, or over different dicts, never share cache
    entries. Past three levels, or for objects without attributes, only the class counts.
    No ``id()``-based ``repr`` is used, so the same graph built in another process matches.
    """
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, (type, types.ModuleType)):
        return f"{kind}:{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value.__name__)}"
    if depth >= 3:
        return kind
    if isinstance(value, dict):
        return [kind, sorted(([repr(k) if isinstance(k, _SCALARS) else type(k).__qualname__,
                               _value_identity(v, depth + 1)] for k, v in value.items()), key=lambda kv: str(kv))]
    if isinstance(value, (list, tuple)):
        return [kind, [_value_identity(v, depth + 1) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [kind, sorted(str(_value_identity(v, depth + 1)) for v in value)]
    if isinstance(value, types.MethodType):
        return [code_identity(value.__func__, depth + 1), _value_identity(value.__self__, depth + 1)]
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) or (
            callable(value) and not hasattr(value, "__dict__")):
        return code_identity(value, depth + 1)
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        return [kind, _value_identity(attributes, depth + 1)]
    slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
    if slots:
        return [kind, [[name, _value_identity(getattr(value, name, None), depth + 1)] for name in slots
                       if isinstance(name, str)]]
    return kind


def code_identity(func: Any, depth: int = 0) -> str:
    """``func``'s implementation: ``module.qualname#<sha256 of its code>`` (stable across processes).

    The digest covers the bytecode, names and constants of a plain function (or a bound
    method's function) and its closure's plain values (str, bytes, numbers, None) and
    functions (recursively, three levels), so two lambdas of one module differ, and so do
    two closures of one factory over different functions or strings. A callable object
    is its class, its ``__call__``'s code and its attributes (JSON values; others by type),
    and ``functools.partial`` its function and arguments' reprs.
    """
    import functools  # only here: most graphs cache nothing

    if isinstance(func, functools.partial):
        return f"partial({code_identity(func.func, depth)},{func.args!r},{sorted(func.keywords.items())!r})"
    target = getattr(func, "__func__", func)
    code = getattr(target, "__code__", None)
    name = f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    if not isinstance(code, types.CodeType):
        # A callable object: its class, its __call__'s code and its plain attributes, so two
        # instances configured differently differ (in every process alike: no ids).
        kind = type(func)
        call = getattr(kind, "__call__", None)
        body = json.dumps([code_identity(call, depth + 1) if isinstance(call, types.FunctionType) and depth < 3 else "",
                           _value_identity(getattr(func, "__dict__", {}), depth)], sort_keys=True)
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
        return f"{kind.__module__}.{kind.__qualname__}#{digest}"
    parts: list[Any] = [_code_parts(code, depth)]
    for cell in getattr(target, "__closure__", None) or ():
        try:
            held = cell.cell_contents
        except ValueError:  # an empty cell
            parts.append(None)
            continue
        parts.append(_value_identity(held, depth))
    digest = hashlib.sha256(json.dumps(parts, default=repr).encode("utf-8")).hexdigest()[:16]
    return f"{name}#{digest}"


_IDENTITIES: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
_GRAPH_IDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def graph_implementations(graph: Any) -> dict[str, str]:
    """Each node's implementation in compiled ``graph``: node type plus ``code_identity`` or subgraph identity."""
    known = _IDENTITIES.get(graph)
    if known is None:
        known = {}
        for name, spec in graph.nodes.items():
            if spec.subgraph is not None:
                inner = spec.subgraph
                part = "subgraph:" + graph_identity(inner.graph) + "".join(
                    f",{code_identity(f)}" for f in (inner.input, inner.output) if f is not None)
            else:
                part = "" if spec.func is None else code_identity(spec.func)
            known[name] = f"{spec.node_type}|{part}"
        _IDENTITIES[graph] = known
    return known


def graph_identity(graph: Any) -> str:
    """A digest of compiled ``graph``'s fingerprint and every node's implementation (``graph_implementations``)."""
    known = _GRAPH_IDS.get(graph)
    if known is None:
        body = json.dumps([graph.fingerprint()["sha256"], graph_implementations(graph)], sort_keys=True)
        known = _GRAPH_IDS[graph] = hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]
    return known


def node_identity(graph: Any, node: str) -> str:
    """The identity of ``node`` of compiled ``graph`` in cache namespaces: its graph's and its own implementation."""
    body = json.dumps([graph_identity(graph), graph_implementations(graph)[node]])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def cacheable_output(output: Mapping[str, Any] | None) -> bool:
    """Whether a node's successful output may be cached: plain updates or ``Command(update=, goto=)``.

    A pause (``interrupt``) and any other special form (a ``Command`` with more than
    update and goto, e.g. one addressed to a parent graph) are not.
    """
    if not output:
        return True
    special = [key for key in output if isinstance(key, str) and key.startswith("__") and key.endswith("__")]
    if not special:
        return True
    if special == [COMMAND_KEY] and len(output) == 1:
        body = output[COMMAND_KEY]
        return isinstance(body, Mapping) and set(body) <= {"update", "goto"}
    return False


class NodeCache:
    """The step engine's view of the cache in ``store``: keys, encoding, error policy."""

    def __init__(self, store: StateStore, *, previous: NodeCache | None = None) -> None:
        """``previous``: the cache this one replaces (a reopened backend), whose warnings are not repeated."""
        self.store = store
        self.enabled = implements_cache(store)
        self._warned: set[tuple[str, str]] = set() if previous is None else previous._warned

    def key(self, graph: str, node: str, policy: CachePolicy, value: Mapping[str, Any]) -> str:
        """The stored key of ``node``'s input ``value``: the SHA-256 hex of ``policy.key_func(value)``.

        Raises ``ExecutionError`` naming the graph and node when ``key_func`` raises or
        returns something other than ``str``/``bytes``.
        """
        try:
            raw = policy.key_func(dict(value))
        except Exception as exc:
            raise ExecutionError(
                f"graph {graph!r}: node {node!r}: CachePolicy.key_func raised {type(exc).__name__}: {exc}; fix "
                "key_func (it gets the node's input as a dict and returns str or bytes)") from exc
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        if not isinstance(raw, (bytes, bytearray)):
            raise ExecutionError(
                f"graph {graph!r}: node {node!r}: CachePolicy.key_func returned {type(raw).__name__}, expected str "
                "or bytes; return e.g. a string built from the input keys that decide the output")
        return hashlib.sha256(bytes(raw)).hexdigest()

    def usable(self, graph: str, node: str) -> bool:
        """Whether caching works on this backend; warns once per node when it does not."""
        if not self.enabled and (graph, node) not in self._warned:
            self._warned.add((graph, node))
            log.warning("graph %r: node %r has a cache_policy, but the backend's state store (%s) has no node cache "
                        "(StateStore.cache_get/cache_set are the port's defaults): the node runs every time",
                        graph, node, type(self.store).__name__)
        return self.enabled

    @staticmethod
    def namespace(graph: Any, node: str) -> str:
        """The namespace of ``node`` of compiled ``graph`` (a ``Graph``): name, node name and ``node_identity``."""
        return cache_namespace(graph.name, node, node_identity(graph, node))

    async def get(self, graph_obj: Any, node: str, key: str) -> dict[str, Any] | None:
        """The cached output of ``node`` of ``graph_obj`` (a Graph) for ``key``, or None (absent, expired, undecodable)."""
        graph = graph_obj.name
        try:
            raw = await self.store.cache_get(self.namespace(graph_obj, node), key)
        except BackendUnavailableError:
            raise  # retried with the step, like every backend call of it
        except Exception as exc:  # the cache is an optimisation: a read it refuses is a miss
            log.warning("graph %r: node %r: could not read its cache entry %s (%s: %s); running the node", graph,
                        node, key, type(exc).__name__, exc)
            return None
        if raw is None:
            return None
        try:
            output = decode(raw)
        except Exception as exc:  # a corrupt or foreign entry: run the node and overwrite it
            log.warning("graph %r: node %r: cache entry %s cannot be decoded (%s); running the node", graph, node,
                        key, exc)
            return None
        return output if isinstance(output, dict) else None

    async def put(self, graph_obj: Any, node: str, key: str, output: Mapping[str, Any], ttl: float | None) -> None:
        """Store ``output`` for node ``node`` of ``graph_obj`` (a Graph); a failure is logged, never raised."""
        graph = graph_obj.name
        try:
            await self.store.cache_set(self.namespace(graph_obj, node), key, encode(dict(output)), ttl)
        except BackendUnavailableError as exc:
            log.warning("graph %r: node %r: could not cache its output (backend unavailable: %s)", graph, node, exc)
        except Exception as exc:
            log.warning("graph %r: node %r: could not cache its output (%s: %s)", graph, node, type(exc).__name__,
                        exc)

    async def clear(self, graph: Any, nodes: list[str]) -> None:
        """Remove every entry of ``nodes`` of ``graph`` (a Graph; this version of it)."""
        for node in nodes:
            await self.store.cache_clear(self.namespace(graph, node))
