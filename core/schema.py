"""Typed state: a graph's keys, their types, reducers and defaults, read from a class.

``Graph(name, state_schema=S)`` takes ``S`` from a ``TypedDict``, a dataclass or a
Pydantic model (recognised by its ``model_fields``/``model_validate``; Pydantic is never
imported here). Per key, as in LangGraph:

- the reducer comes from ``Annotated`` metadata, e.g. ``Annotated[list, operator.add]``;
  the last metadata item counts if it is a callable ``(current, update) -> value`` or
  a built-in reducer name (``"append"``, ``"add_messages"``, ...);
- the default comes from the dataclass or Pydantic field (``default`` or
  ``default_factory``); a key with a reducer and no default starts from its type's empty
  value (``list`` -> ``[]``, ``dict`` -> ``{}``, ``int`` -> ``0``, ...), as LangGraph's
  reducer channels do; ``TypedDict`` keys without a reducer have none.

What goes in and comes out (``Orchestrator.execute``): the initial state may only hold
declared keys (``StateValidationError`` otherwise); with an ``input_schema`` it is
filtered to that schema's keys; each value is checked; a key with a reducer takes its
input through the reducer from its default (so ``add_messages`` gives input messages
ids); defaults fill the keys not given. The state returned (``execute``, ``resume``,
``wait``, ``get_result``) holds the ``output_schema``'s keys, by default the state
schema's. Input and output schemas may declare keys of their own: every key of the
three schemas is a state key.

Checks, after each step's merge: a node writing a key no schema declares, or a
merged value of the wrong type, is a ``StateValidationError`` naming the key, the node
and the graph. Type checks stay cheap and top-level: ``str``, ``int``, ``float`` (an
int is accepted), ``bool``, ``None``, ``list[...]``, ``dict[...]``, ``Optional``/unions
and ``Literal`` are checked, element types and anything else are not; values of
TypedDict and dataclass schemas are checked, never converted. A Pydantic model
validates each written key through the model itself (its own rules, lax mode included)
and the state stores what Pydantic made of it, as ``model_dump(mode="json")`` gives it:
``"3"`` written to ``count: int`` is stored as ``3``, ``"2024-01-02"`` to a ``date``
stays that string (its JSON form); a value Pydantic refuses is a ``StateValidationError``.

``spec()`` names the classes and each key's type and reducer, without module paths (a
script's classes are in ``__main__`` in one process and in its module in another), for
the graph's fingerprint; the classes themselves never leave the process.

Nodes still receive the state as a ``State`` mapping (``state["key"]``), also for a
dataclass or Pydantic schema, where LangGraph passes an instance: state crosses
processes as JSON, and a worker has the node function but not the graph's classes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import ConfigurationError, StateNotSerializableError, StateValidationError
from distributed_agents.core.managed import managed_kind
from distributed_agents.core.reducers import BUILTIN_REDUCERS, Reducer, resolve_reducer
from distributed_agents.core.state import check_value

__all__ = ["OUTPUT_KEYS", "KeySpec", "StateSchema", "result_values"]

OUTPUT_KEYS = "output_keys"  # the workflow record's metadata entry holding the output schema's keys

Check = Callable[[Any], "str | None"]  # a value -> None if it fits, else what is wrong
_EMPTY_START: dict[type, Callable[[], Any]] = {list: list, dict: dict, int: int, float: float, str: str, bool: bool}


@dataclass(frozen=True)
class KeySpec:
    """One declared state key: its type, reducer and default, and the schema declaring it."""

    name: str
    type_label: str
    check: Check | None  # None: the type is not checked
    reducer: Reducer | None
    reducer_label: str | None
    default: Callable[[], Any] | None  # a fresh JSON value per call; None: no default
    owner: str  # the declaring schema's name, for messages
    # value -> (the value to store, None) if it fits, else (value, what is wrong); instead of check
    convert: Callable[[Any], tuple[Any, str | None]] | None = None
    # A Pydantic field without a default: the input must give it (Pydantic's own rule for the model).
    required: bool = False


def _schema_name(cls: Any) -> str:
    return str(getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or repr(cls))


def _schema_label(cls: Any) -> str:
    # The qualified name without the module: a script's classes live in "__main__" in one
    # process and in "app" in another, and both must give the same graph fingerprint.
    return _schema_name(cls)


def _is_pydantic(cls: Any) -> bool:
    return isinstance(getattr(cls, "model_fields", None), dict) and callable(getattr(cls, "model_validate", None))


def _is_typeddict(cls: Any) -> bool:
    """``typing.is_typeddict``, also true of a ``typing_extensions.TypedDict`` class (another
    metaclass before Python 3.12, which ``typing`` does not recognise): a dict subclass with
    the attributes every TypedDict class has."""
    return typing.is_typeddict(cls) or (
        isinstance(cls, type) and issubclass(cls, dict) and hasattr(cls, "__total__")
        and hasattr(cls, "__required_keys__") and hasattr(cls, "__optional_keys__"))


def _kind(cls: Any) -> str:
    if not isinstance(cls, type):
        raise ConfigurationError(
            f"state schema {cls!r} is not a class; pass a TypedDict, a dataclass or a Pydantic model class")
    if _is_typeddict(cls):
        return "typeddict"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if _is_pydantic(cls):
        return "pydantic"
    raise ConfigurationError(
        f"state schema {_schema_name(cls)!r} is not a TypedDict, a dataclass or a Pydantic model; "
        "declare the state's keys in one of those"
    )


def _type_label(annotation: Any) -> str:
    """A readable name without module paths (stable across processes, see ``_schema_label``)."""
    if annotation is type(None) or annotation is None:
        return "None"
    annotation, _ = _strip_annotated(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None or not args:
        name = getattr(annotation, "__name__", None)
        return str(name) if isinstance(name, str) else repr(annotation).replace("typing.", "")
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_label(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    name = getattr(origin, "__name__", None) or repr(origin).replace("typing.", "")
    return f"{name}[{', '.join(_type_label(arg) for arg in args)}]"


_KEY_QUALIFIERS = frozenset({"Required", "NotRequired", "ReadOnly"})  # TypedDict wrappers, not types


def _strip_annotated(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """The type inside ``Annotated`` (and TypedDict's ``Required``/``NotRequired``), and the metadata."""
    metadata: tuple[Any, ...] = ()
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint, metadata = hint.__origin__, tuple(hint.__metadata__)
        elif getattr(origin, "_name", None) in _KEY_QUALIFIERS and typing.get_args(hint):
            hint = typing.get_args(hint)[0]
        else:
            return hint, metadata


def _type_check(annotation: Any) -> Check | None:
    """A cheap top-level check for ``annotation``, or None where it is not checked."""
    annotation, _ = _strip_annotated(annotation)
    if annotation is None or annotation is type(None):
        return lambda v: None if v is None else f"got {type(v).__name__}"
    if annotation is float:  # an int is a float for type checkers (PEP 484), and JSON may carry one
        return lambda v: None if type(v) in (float, int) else f"got {type(v).__name__}"
    if annotation in (str, int, bool):
        exact: type = annotation
        return lambda v: None if type(v) is exact else f"got {type(v).__name__}"
    origin = typing.get_origin(annotation)
    if annotation in (list, dict) or origin in (list, dict):
        container = annotation if origin is None else origin
        return lambda v: None if isinstance(v, container) else f"got {type(v).__name__}"
    if origin is Literal:
        allowed = typing.get_args(annotation)
        return lambda v: None if any(type(v) is type(a) and v == a for a in allowed) else \
            f"not one of {list(allowed)!r}"
    if origin is Union or origin is types.UnionType:
        checks = [_type_check(arg) for arg in typing.get_args(annotation)]
        if any(check is None for check in checks):
            return None  # one member is not checkable: any value may be that one
        members = [check for check in checks if check is not None]
        return lambda v: None if any(check(v) is None for check in members) else \
            f"got {type(v).__name__}"
    return None


def _pydantic_convert(cls: Any, key: str) -> Callable[[Any], tuple[Any, str | None]]:
    validator = cls.__pydantic_validator__

    def convert(value: Any) -> tuple[Any, str | None]:
        try:
            # One field, on an instance built without validation: required keys may be unwritten.
            instance = cls.model_construct()
            validator.validate_assignment(instance, key, value)
            # What Pydantic made of it ("3" -> 3 for an int), in its JSON form: state is JSON.
            return instance.model_dump(mode="json", include={key})[key], None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = getattr(exc, "errors", None)
            details = [str(e.get("msg")) for e in errors()] if callable(errors) else [str(exc)]
            return value, f"{_schema_name(cls)} refuses it: {'; '.join(details)}"

    return convert


def _reducer_from(cls: Any, key: str, metadata: tuple[Any, ...]) -> tuple[Reducer | None, str | None]:
    """The reducer in ``Annotated`` metadata (its last item, as LangGraph), and its label."""
    if not metadata:
        return None, None
    last = metadata[-1]
    if isinstance(last, str):
        if last not in BUILTIN_REDUCERS:
            raise ConfigurationError(
                f"state schema {_schema_name(cls)!r}, key {key!r}: unknown reducer {last!r} in Annotated; use one "
                f"of {', '.join(sorted(BUILTIN_REDUCERS))} or a callable (current, update) -> value")
        return resolve_reducer(key, last), last
    if not callable(last) or isinstance(last, type):
        return None, None  # other metadata (e.g. a Pydantic Field): not a reducer
    try:
        parameters = list(inspect.signature(last).parameters.values())
    except (TypeError, ValueError):
        parameters = None  # some builtins have no signature; trust them
    if parameters is not None:
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
        if len(positional) < 2 and not varargs:
            raise ConfigurationError(
                f"state schema {_schema_name(cls)!r}, key {key!r}: the reducer {last!r} in Annotated must take "
                "two arguments (current, update) and return the new value")
    for name, builtin in BUILTIN_REDUCERS.items():
        if builtin is last:
            return last, name
    # Module and name: operator.add must not look like the built-in "add" in the graph's spec.
    module = str(getattr(last, "__module__", None) or "?").replace("_operator", "operator")
    return last, f"{module}.{getattr(last, '__qualname__', repr(last))}"


def _identity(value: Any) -> Any:
    return value


def _json_default(cls: Any, key: str, make: Callable[[], Any]) -> Callable[[], Any]:
    """``make`` checked once to give JSON state, then wrapped to return a fresh copy per call."""
    try:
        sample = make()
        check_value(key, sample)
    except StateNotSerializableError as exc:
        raise ConfigurationError(
            f"state schema {_schema_name(cls)!r}: the default of key {key!r} cannot be stored in state: {exc}"
        ) from None
    frozen = encode(sample)
    return lambda: decode(frozen)


def _annotated(base: Any, metadata: tuple[Any, ...]) -> Any:
    """``Annotated[base, *metadata]``, written so that Python 3.10 parses it."""
    args: tuple[Any, ...] = (base, *metadata)
    return typing.Annotated[args]


def _fields(cls: Any, kind: str, managed: dict[str, str] | None = None) -> dict[str, KeySpec]:
    """The state keys ``cls`` declares; its managed values (``core.managed``: key -> kind) go
    into ``managed`` instead, when given (else they are left out)."""
    hints: dict[str, Any]
    if kind == "pydantic":
        # Pydantic resolved the annotations itself (also of local classes); Annotated
        # extras are in each field's metadata.
        hints = {name: _annotated(info.annotation, tuple(info.metadata)) if info.metadata else info.annotation
                 for name, info in cls.model_fields.items()}
    else:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception as exc:
            raise ConfigurationError(
                f"state schema {_schema_name(cls)!r}: its annotations cannot be resolved ({type(exc).__name__}: "
                f"{exc}); define the types it names at module level"
            ) from exc
    defaults: dict[str, Callable[[], Any]] = {}
    if kind == "dataclass":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields)
        for name, f in fields.items():
            if f.default is not dataclasses.MISSING:
                defaults[name] = functools.partial(_identity, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                defaults[name] = f.default_factory
    elif kind == "pydantic":
        names = list(cls.model_fields)
        for name, info in cls.model_fields.items():
            if not info.is_required():
                defaults[name] = functools.partial(info.get_default, call_default_factory=True)
    else:
        names = list(hints)
    specs = {}
    for name in names:
        annotation, metadata = _strip_annotated(hints.get(name, Any))
        managed_as = managed_kind(metadata) if metadata else None
        if managed_as is not None:  # filled in for each node, never state (core.managed)
            if managed is not None:
                managed[name] = managed_as
            continue
        reducer, reducer_label = _reducer_from(cls, name, metadata)
        make = defaults.get(name)
        if make is None and reducer is not None:
            base = typing.get_origin(annotation) or annotation
            make = _EMPTY_START.get(base) if isinstance(base, type) else None
        specs[name] = KeySpec(
            name=name, type_label=_type_label(annotation),
            check=None if kind == "pydantic" else _type_check(annotation),
            convert=_pydantic_convert(cls, name) if kind == "pydantic" else None,
            reducer=reducer, reducer_label=reducer_label,
            default=None if make is None else _json_default(cls, name, make), owner=_schema_name(cls),
            required=kind == "pydantic" and make is None,
        )
    return specs


def _check_managed(graph: str, managed: Mapping[str, str], keys: Mapping[str, KeySpec]) -> None:
    """``ConfigurationError`` for a key one schema declares as state and another as a managed value."""
    for key in managed:
        if key in keys:
            raise ConfigurationError(
                f"graph {graph!r}: key {key!r} is a managed value ({managed[key]}) in one schema and a state key in "
                f"{keys[key].owner}; a managed value is never state: rename one of them")


class StateSchema:
    """The declared keys of a graph's state; see the module docstring.

    Raises ``ConfigurationError`` for a class that is not a TypedDict, dataclass or
    Pydantic model, unresolvable annotations, an unknown reducer name, a default that
    JSON cannot carry, or two schemas declaring different reducers for one key.
    """

    def __init__(self, graph: str, state: Any, input: Any = None, output: Any = None) -> None:
        self.graph = graph
        self.state, self.input, self.output = state, input, output
        self.name = _schema_name(state)
        # Managed values (core.managed: key -> kind) of every schema: node inputs, never state keys.
        self.managed: dict[str, str] = {}
        declared = {id(cls): _fields(cls, _kind(cls), self.managed) for cls in (state, input, output)
                    if cls is not None}
        self.keys: dict[str, KeySpec] = dict(declared[id(state)])
        for cls in (input, output):
            for key, spec in (declared[id(cls)] if cls is not None else {}).items():
                known = self.keys.setdefault(key, spec)
                if spec.reducer is not None and spec.reducer is not known.reducer:
                    raise ConfigurationError(
                        f"graph {graph!r}: state key {key!r} has reducer {known.reducer_label!r} in {known.owner} "
                        f"but {spec.reducer_label!r} in {spec.owner}; declare one reducer for the key")
        self.input_keys: frozenset[str] | None = None if input is None else frozenset(declared[id(input)])
        # What the input must give: the required fields of the input schema (else the state schema's).
        self.required_input: tuple[str, ...] = tuple(
            key for key, spec in declared[id(input if input is not None else state)].items() if spec.required)
        self.output_keys: list[str] = list(declared[id(output if output is not None else state)])
        _check_managed(self.graph, self.managed, self.keys)

    def add_node_schema(self, cls: Any) -> None:
        """Declare the keys of ``cls``, a node's input schema (LangGraph's private state: a key one
        node writes and another reads, declared only in that node's input TypedDict), as state
        keys: nodes may write them, they are not input or output keys. A class that is not a
        TypedDict, dataclass or Pydantic model, or is one of this schema's own, is ignored;
        ``ConfigurationError`` for a key it declares with another reducer than the state's."""
        if cls in (self.state, self.input, self.output) or not isinstance(cls, type):
            return
        if not (_is_typeddict(cls) or dataclasses.is_dataclass(cls) or _is_pydantic(cls)):
            return
        # Checked before anything is declared: a refused schema leaves this one as it was.
        managed: dict[str, str] = {}
        fields = _fields(cls, _kind(cls), managed)
        keys = {**fields, **{k: v for k, v in self.keys.items() if k not in fields}}
        for key, spec in fields.items():
            known = self.keys.get(key, spec)
            if spec.reducer is not None and spec.reducer is not known.reducer:
                raise ConfigurationError(
                    f"graph {self.graph!r}: state key {key!r} has reducer {known.reducer_label!r} in {known.owner} "
                    f"but {spec.reducer_label!r} in {spec.owner}; declare one reducer for the key")
        _check_managed(self.graph, {**self.managed, **managed}, {**keys, **self.keys})
        for key, spec in fields.items():
            self.keys.setdefault(key, spec)
        self.managed.update(managed)

    # -- reading ------------------------------------------------------------------------

    def reducers(self) -> dict[str, tuple[Reducer, str]]:
        """Reducers declared through ``Annotated``: key -> (reducer, label for the spec)."""
        return {key: (spec.reducer, spec.reducer_label or "")
                for key, spec in self.keys.items() if spec.reducer is not None}

    def spec(self) -> dict[str, Any]:
        """JSON naming the schema classes and each key's type and reducer (classes are not serialised)."""
        return {
            "state": _schema_label(self.state),
            "input": None if self.input is None else _schema_label(self.input),
            "output": None if self.output is None else _schema_label(self.output),
            "keys": {key: {"type": spec.type_label, "reducer": spec.reducer_label, "default": spec.default is not None}
                     for key, spec in self.keys.items()},
            "input_keys": None if self.input_keys is None else sorted(self.input_keys),
            "output_keys": list(self.output_keys),
            **({"managed": dict(self.managed)} if self.managed else {}),
        }

    # -- checking -----------------------------------------------------------------------

    def _unknown(self, key: str, who: str) -> StateValidationError:
        if key in self.managed:
            return StateValidationError(
                f"graph {self.graph!r}: {who} {key!r}, a managed value ({self.managed[key]}) that the engine fills in "
                f"for each node and never stores; leave it out", key=key, graph=self.graph, node=None)
        declared = ", ".join(map(repr, self.keys)) or "none"
        return StateValidationError(
            f"graph {self.graph!r}: {who} state key {key!r}, which its state schema {self.name} does not declare "
            f"(declared keys: {declared}); declare {key!r} in {self.name} or use a declared key",
            key=key, graph=self.graph, node=None)

    def _check(self, key: str, value: Any, who: str, node: str | None) -> Any:
        """``value`` checked for ``key``: the value to store (a Pydantic model's conversion), else raises."""
        spec = self.keys[key]
        if spec.convert is not None:
            value, problem = spec.convert(value)
        else:
            problem = None if spec.check is None else spec.check(value)
        if problem is not None:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            raise StateValidationError(
                f"graph {self.graph!r}: {who.replace('{value}', shown)} state key {key!r}, which {spec.owner} declares as "
                f"{spec.type_label}: {problem}", key=key, graph=self.graph, node=node)
        return value

    def prepare_input(self, values: Mapping[str, Any], *, present: Collection[str] = ()) -> dict[str, Any]:
        """The initial state for input ``values``: checked, filtered, reduced and defaulted (module docstring).

        Raises ``StateValidationError`` for an undeclared key, a value of the wrong type,
        or a required key (a Pydantic field without a default, of the input schema if
        there is one) neither in ``values`` nor in ``present`` (the keys a thread's state
        holds already, for its next run), naming the key and the graph.
        """
        for key in values:
            if key not in self.keys and key not in self.managed:
                err = self._unknown(key, "the input state has")
                raise err
        # An input value for a managed key is ignored, as in LangGraph (core.managed).
        given = {k: v for k, v in values.items()
                 if (self.input_keys is None or k in self.input_keys) and k not in self.managed}
        result: dict[str, Any] = {}
        for key, value in given.items():
            spec = self.keys[key]
            if spec.reducer is not None and spec.default is not None:
                try:
                    value = spec.reducer(spec.default(), value)
                    check_value(key, value)
                except Exception as exc:
                    raise StateValidationError(
                        f"graph {self.graph!r}: the input of state key {key!r} could not go through its reducer "
                        f"{spec.reducer_label!r}: {type(exc).__name__}: {exc}", key=key, graph=self.graph,
                    ) from exc
            result[key] = self._check(key, value, "the input state gives {value} for", None)
        for key, spec in self.keys.items():
            if key not in result and spec.default is not None:
                result[key] = spec.default()
        missing = [key for key in self.required_input if key not in result and key not in present]
        if missing:  # as LangGraph, whose first node's input fails the model's validation
            owner = self.keys[missing[0]].owner
            raise StateValidationError(
                f"graph {self.graph!r}: the input state lacks required key(s) {', '.join(map(repr, missing))}, which "
                f"{owner} declares without a default; give them in the input, or a default in {owner}",
                key=missing[0], graph=self.graph, node=None)
        return result

    def check_writes(self, writes: Sequence[tuple[str, Mapping[str, Any]]], merged: Mapping[str, Any]) -> None:
        """Raise ``StateValidationError`` if a node wrote an undeclared key or a merged value has the wrong type.

        ``writes`` are a step's (node, updates) in merge order, ``merged`` the state
        after merging them. A key without a reducer is checked as written; one with a
        reducer is checked as merged, since its updates need not have the key's type
        (``add_messages`` takes a single message for a list). A value a Pydantic model
        converts is replaced in ``merged`` (when it is mutable, as the engine's is) by
        its conversion, which is what the state stores.
        """
        writers: dict[str, list[str]] = {}
        for node, updates in writes:
            for key in updates:
                if key not in self.keys:
                    error = self._unknown(key, f"node {node!r} wrote")
                    error.node = node
                    raise error
                writers.setdefault(key, []).append(node)
        for key, nodes in writers.items():
            spec = self.keys[key]
            if spec.reducer is None:
                value = self._check(key, merged[key], f"node {nodes[-1]!r} wrote {{value}} to", nodes[-1])
            else:
                value = self._check(key, merged[key], f"merging the update(s) of node(s) {', '.join(map(repr, nodes))} "
                                                      f"through reducer {spec.reducer_label!r} gave {{value}} for",
                                    nodes[-1])
            if spec.convert is not None and isinstance(merged, MutableMapping) and value is not merged[key]:
                merged[key] = value

    def output_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` restricted to the output keys, in their declaration order."""
        return {key: values[key] for key in self.output_keys if key in values}


def result_values(state: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A workflow's result: ``state`` filtered to ``metadata["output_keys"]`` when the record has them.

    ``execute`` stores the graph's output keys in the workflow record's metadata, so
    every process returns the same result without needing the graph's classes.
    """
    keys = metadata.get(OUTPUT_KEYS)
    if not isinstance(keys, list):
        return dict(state)
    return {key: state[key] for key in keys if key in state}
