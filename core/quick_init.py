"""``quick_init``: a faster ``__init__`` for the frozen dataclasses the step loop makes every step.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``,
which costs several times what setting an ordinary attribute does; the step loop makes
a handful of these objects per step (node calls, contexts, outcomes, checkpoints), so
for a no-op node they cost more than the node. The ``__init__`` made here stores every
field with one ``__dict__`` update instead. Everything else stays as ``dataclass`` made
it: the parameters (names, order, defaults, keyword-only fields; ``inspect.signature``
shows them), default factories called once per instance, immutability, equality and
hashing, and a ``TypeError`` for a missing, unknown or repeated argument. Standard
library only.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

__all__ = ["FACTORY", "quick_init"]

C = TypeVar("C", bound=type)


class _Factory:
    """The default of a parameter whose field has a default factory (shown as dataclass shows it)."""

    def __repr__(self) -> str:
        return "<factory>"


FACTORY: Any = _Factory()
"""The default a hand-written ``__init__`` gives a parameter whose field has a default factory."""


def quick_init(cls: C) -> C:
    """Give frozen dataclass ``cls`` an equivalent ``__init__`` that fills ``__dict__`` at once; returns ``cls``.

    Apply it above ``@dataclass(frozen=True)``. Raises ``TypeError`` for a class that is
    not a frozen dataclass, uses ``__slots__``, has ``__post_init__`` or ``InitVar``s
    (their generated ``__init__`` does more than set fields).

    A class whose body defines ``__init__`` itself (dataclass keeps it; the hottest
    ones do, as one ``self.__dict__.update({...})``, several times faster than any
    generic one) keeps it, checked here: it must take exactly the fields, in order,
    keyword-only where the field is, with the fields' defaults, and ``FACTORY`` for a
    field with a default factory (which it then calls itself). ``TypeError`` if not, so
    a field added without its parameter fails at import.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init: {cls.__name__} must be a frozen dataclass without __slots__ or __post_init__")
    fields = dataclasses.fields(cls)
    generated = cls.__dict__["__init__"]
    if generated.__code__.co_filename != "<string>":  # the class's own (dataclass keeps it): checked, kept
        _check_own_init(cls, generated, fields)
        return cls
    signature = inspect.signature(generated)
    if [p for p in signature.parameters][1:] != [f.name for f in fields if f.init and not f.kw_only] + \
            [f.name for f in fields if f.init and f.kw_only]:
        raise TypeError(f"quick_init: {cls.__name__}'s __init__ takes parameters that are not fields (an InitVar)")
    name = cls.__name__
    positional = tuple(f.name for f in fields if f.init and not f.kw_only)
    accepted = frozenset(f.name for f in fields if f.init)
    required = frozenset(f.name for f in fields if f.init and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    factories = tuple((f.name, f.default_factory) for f in fields if f.default_factory is not dataclasses.MISSING)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = kwargs
        if args:  # the checks below are set operations on the names given, not a loop per field
            if len(args) > len(positional):
                raise TypeError(f"{name}() takes {len(positional)} positional arguments but {len(args)} were given")
            given = dict(zip(positional, args))
            if kwargs:
                if not given.keys().isdisjoint(kwargs):
                    raise TypeError(f"{name}() got multiple values for argument(s) {sorted(given.keys() & kwargs)}")
                given.update(kwargs)
        if not accepted.issuperset(given):
            raise TypeError(f"{name}() got unexpected keyword argument(s) {sorted(set(given) - accepted)}")
        if not required.issubset(given):
            raise TypeError(f"{name}() missing required argument(s) {sorted(required - set(given))}")
        values = {**defaults, **given}
        for key, factory in factories:
            if key not in given:
                values[key] = factory()
        self.__dict__.update(values)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__signature__ = signature  # type: ignore[attr-defined]
    setattr(cls, "__init__", __init__)  # noqa: B010 - replacing the generated method is the point
    return cls


def _check_own_init(cls: type, init: Any, fields: tuple[dataclasses.Field[Any], ...]) -> None:
    """``TypeError`` unless ``init`` takes exactly ``fields`` as dataclass's ``__init__`` would."""
    wanted = [f for f in fields if f.init and not f.kw_only] + [f for f in fields if f.init and f.kw_only]
    params = list(inspect.signature(init).parameters.values())[1:]
    problems = []
    if [p.name for p in params] != [f.name for f in wanted]:
        problems.append(f"parameters {[p.name for p in params]} are not the fields {[f.name for f in wanted]}")
    for param, f in zip(params, wanted):
        kind = inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = (f.default if f.default is not dataclasses.MISSING else
                   FACTORY if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        same_default = param.default is default or (type(param.default) is type(default) and param.default == default)
        if param.kind != kind or not same_default:
            problems.append(f"parameter {param.name!r} is not {kind.description} with default {default!r}")
    if problems:
        raise TypeError(f"quick_init: {cls.__name__}.__init__ does not match its fields: {'; '.join(problems)}")
