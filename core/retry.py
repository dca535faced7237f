"""Retry policies: how often a node is attempted and how long to wait in between.

The same policy governs a node wherever it runs: in-process, the engine retries; on a
worker, the worker nacks the task with the computed delay, or dead-letters it when the
policy gives up. Attempts count every delivery, including ones whose worker died, so
``max_attempts`` also bounds how often a crashing node is re-delivered.

``retry_on`` lists exception types; only those (and their subclasses) are retried.
A node may have several policies (``add_node(retry_policy=[...])``, LangGraph's
``Sequence[RetryPolicy]``): a ``RetryChain``, where the first policy whose ``retry_on``
matches the error decides whether and when to retry, against the node's one count of
attempts.
Because a policy travels with the task to other machines, exception types are matched
by qualified name against the raised exception's class hierarchy. The default,
``default_retry_on``, is LangGraph's rule (``langgraph.types.RetryPolicy``'s default):
connection errors and HTTP 5xx responses (httpx, requests) are retried, errors that
would fail again the same way (``ValueError``, ``TypeError``, ``KeyError``,
``RuntimeError``, other ``OSError``s, ...) are not, any other ``Exception`` is.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed_agents.core.errors import ConfigurationError

__all__ = ["NO_RETRY", "NodeRetry", "RetryChain", "RetryPolicy", "default_retry_on", "node_retry", "retry_from_wire"]


def _qualified(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


# Errors that fail again the same way (LangGraph's default_retry_on does not retry them).
_NOT_RETRIED = (ValueError, TypeError, ArithmeticError, ImportError, LookupError, NameError, SyntaxError,
                RuntimeError, ReferenceError, StopIteration, StopAsyncIteration, OSError)
_HTTP_ERRORS = frozenset({"httpx.HTTPStatusError", "requests.exceptions.HTTPError"})
#: How ``default_retry_on`` travels in a task's policy (``retry_on`` holds type names otherwise).
DEFAULT_RULE = "@default"


def default_retry_on(exc: BaseException) -> bool:
    """LangGraph's default ``retry_on`` rule: whether ``exc`` is worth another attempt.

    True for a ``ConnectionError``, an HTTP 5xx error of httpx (``HTTPStatusError``) or requests
    (``HTTPError``; one without a response too), and any other ``Exception`` not below; False
    for an HTTP 4xx, ``ValueError``, ``TypeError``, ``ArithmeticError``, ``ImportError``,
    ``LookupError``, ``NameError``, ``SyntaxError``, ``RuntimeError``, ``ReferenceError``,
    ``StopIteration``, ``StopAsyncIteration``, other ``OSError``s and a ``BaseException``
    that is no ``Exception``. httpx and requests are recognised by name, never imported.
    """
    if isinstance(exc, ConnectionError):
        return True
    if not _HTTP_ERRORS.isdisjoint(_qualified(cls) for cls in type(exc).__mro__):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return 500 <= status < 600 if isinstance(status, int) else True
    return isinstance(exc, Exception) and not isinstance(exc, _NOT_RETRIED)


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry a failing node (LangGraph's ``RetryPolicy``: the same fields, in the same order).

    Attempt ``n`` (1-based) that fails is followed, if ``n < max_attempts`` and the
    exception matches ``retry_on``, by a wait of
    ``min(initial_interval * backoff_factor ** (n - 1), max_interval)`` seconds,
    randomised by up to ±25% when ``jitter`` is set.
    """

    # LangGraph's field order (RetryPolicy(0.5, 2.0) means the same there and here).
    initial_interval: float = 0.5
    backoff_factor: float = 2.0
    max_interval: float = 128.0
    max_attempts: int = 3
    jitter: bool = True
    retry_on: type[BaseException] | Sequence[type[BaseException]] | Callable[[BaseException], bool] = default_retry_on
    # None means "derive from retry_on"; () is a real value (retry nothing) that must survive from_dict.
    _retry_names: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        numbers = (self.initial_interval, self.backoff_factor, self.max_interval)
        # NaN compares False with everything, and infinities cannot travel as JSON with a task.
        if (
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers)
            or self.initial_interval < 0 or self.max_interval < 0 or self.backoff_factor < 1
        ):
            raise ConfigurationError(
                "RetryPolicy needs finite numbers initial_interval >= 0, max_interval >= 0 and backoff_factor >= 1, "
                f"got {self.initial_interval!r}, {self.max_interval!r} and {self.backoff_factor!r}"
            )
        if not isinstance(self.jitter, bool):
            raise ConfigurationError(
                f"RetryPolicy.jitter must be True (randomise each delay by up to ±25%) or False, got "
                f"{type(self.jitter).__name__} {self.jitter!r}")
        if self.retry_on is default_retry_on:  # LangGraph's default rule: it travels by name
            if self._retry_names is None:
                object.__setattr__(self, "_retry_names", (DEFAULT_RULE,))
            return
        if isinstance(self.retry_on, (list, set, frozenset)):  # LangGraph's Sequence of types too
            object.__setattr__(self, "retry_on", tuple(self.retry_on))
        types = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            predicate = callable(self.retry_on) and not isinstance(self.retry_on, type)
            raise ConfigurationError(
                f"RetryPolicy.retry_on must be an exception type or a list/tuple of them (or default_retry_on, the "
                f"default), got {self.retry_on!r}"
                + ("; a predicate (LangGraph's retry_on=callable) cannot travel with a task to a worker: list the "
                   "exception types it accepts instead" if predicate else ""))
        if self._retry_names is None:
            object.__setattr__(self, "_retry_names", tuple(_qualified(t) for t in types))

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); ``exc`` is not read (a
        ``RetryChain`` chooses its policy by it)."""
        try:
            grown = self.initial_interval * self.backoff_factor ** max(attempt - 1, 0)
        except OverflowError:  # float ** int overflows long before a retry loop would end
            grown = math.inf if self.initial_interval > 0 else 0.0
        base = min(grown, self.max_interval)
        if self.jitter and base > 0:
            base *= random.uniform(0.75, 1.25)
        return base

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a type this policy retries."""
        return matches_exception(self._retry_names or (), exc)

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """Whether failed attempt ``attempt`` should be followed by another."""
        return attempt < self.max_attempts and self.retries(exc)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape that travels with a task."""
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "backoff_factor": self.backoff_factor,
            "max_interval": self.max_interval,
            "jitter": self.jitter,
            "retry_on": list(self._retry_names or ()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """Rebuild a policy on a worker; ``retry_on`` stays as qualified names."""
        names = tuple(data.get("retry_on", (DEFAULT_RULE,)))
        return cls(
            max_attempts=int(data.get("max_attempts", 3)),
            initial_interval=float(data.get("initial_interval", 0.5)),
            backoff_factor=float(data.get("backoff_factor", 2.0)),
            max_interval=float(data.get("max_interval", 128.0)),
            jitter=bool(data.get("jitter", True)),
            _retry_names=names,
        )


@dataclass(frozen=True)
class RetryChain:
    """Several retry policies for one node: LangGraph's ``retry_policy=[p1, p2, ...]``.

    After failed attempt ``n`` (1-based, every attempt of the node counted, whatever
    policy ruled the ones before), the first policy whose ``retry_on`` matches the error
    decides: another attempt if ``n`` is below its ``max_attempts``, after its
    ``delay(n)``; an error no policy matches is not retried (``langgraph.pregel``'s
    ``run_with_retry``). ``max_attempts`` is the largest of the policies': the most
    deliveries the queue allows the task (a worker that dies mid-task counts too).
    Built by ``node_retry``; travels with a task as a JSON list of policies.
    """

    policies: tuple[RetryPolicy, ...]

    def __post_init__(self) -> None:
        if len(self.policies) < 2 or not all(isinstance(p, RetryPolicy) for p in self.policies):
            raise ConfigurationError(f"RetryChain needs two or more RetryPolicy objects, got {self.policies!r}")

    @property
    def max_attempts(self) -> int:
        """The largest ``max_attempts`` of the policies."""
        return max(p.max_attempts for p in self.policies)

    def policy_for(self, exc: BaseException) -> RetryPolicy | None:
        """The first policy that retries ``exc``, or None."""
        return next((p for p in self.policies if p.retries(exc)), None)

    def retries(self, exc: BaseException) -> bool:
        """Whether any policy retries ``exc``."""
        return self.policy_for(exc) is not None

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """Whether failed attempt ``attempt`` should be followed by another (the matching policy's rule)."""
        policy = self.policy_for(exc)
        return policy is not None and attempt < policy.max_attempts

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``: the delay of the policy matching
        ``exc`` (the first policy when ``exc`` is None or matches none)."""
        policy = None if exc is None else self.policy_for(exc)
        return (policy or self.policies[0]).delay(attempt)

    def to_dict(self) -> list[dict[str, Any]]:
        """The JSON shape that travels with a task: a list of ``RetryPolicy.to_dict()``."""
        return [p.to_dict() for p in self.policies]


#: What a node's ``retry`` holds: one policy, or several in order.
NodeRetry = RetryPolicy | RetryChain


def node_retry(value: Any, where: str) -> NodeRetry | None:
    """A node's retry from what ``add_node(retry=/retry_policy=)`` was given: a
    ``RetryPolicy`` as it is; a list or tuple of them (LangGraph's ``Sequence[RetryPolicy]``)
    as a ``RetryChain`` - one policy as that policy, none as None (no retry, as in LangGraph);
    None as None. Raises ``ConfigurationError`` naming ``where`` for anything else."""
    if value is None or isinstance(value, RetryPolicy):
        return value
    rule = "retry must be a RetryPolicy, a list of them (the first whose retry_on matches the error decides) or None"
    if isinstance(value, (list, tuple)) and not _foreign_policy(value):
        policies = tuple(value)
        for index, policy in enumerate(policies):
            if not isinstance(policy, RetryPolicy):
                raise ConfigurationError(f"{where}: {rule}; item {index} of the list is {_what(policy)}")
        return None if not policies else _one_or_chain(policies)
    raise ConfigurationError(f"{where}: {rule}, got {_what(value)}")


def _one_or_chain(policies: tuple[RetryPolicy, ...]) -> NodeRetry:
    """One policy as itself (its payload and fingerprint unchanged), several as a ``RetryChain``."""
    return policies[0] if len(policies) == 1 else RetryChain(policies)


def _foreign_policy(value: Any) -> bool:
    """Whether ``value`` is another library's RetryPolicy (LangGraph's is a NamedTuple, so a tuple)."""
    return type(value).__name__ == "RetryPolicy" and not isinstance(value, RetryPolicy)


def _what(value: Any) -> str:
    """``value`` described for an error message: its type, and what to do for a look-alike."""
    if _foreign_policy(value):
        origin = f"{type(value).__module__}.RetryPolicy"
        return (f"{origin} (another library's policy); use distributed_agents.RetryPolicy, which takes the same "
                "fields (retry_on as exception types, not a predicate)")
    if isinstance(value, (list, tuple)):
        return f"a nested {type(value).__name__} (the policies go in one flat list)"
    return f"{type(value).__name__} {value!r:.80}"


def retry_from_wire(data: Any) -> NodeRetry:
    """A node's retry as a task carries it (``NodeRetry.to_dict()``): an object is one policy,
    a list several. Raises ``ValueError``/``TypeError``/``ConfigurationError`` for other shapes."""
    if isinstance(data, list):
        return _one_or_chain(tuple(RetryPolicy.from_dict(item) for item in data))
    if not isinstance(data, Mapping):
        raise TypeError(f"a retry policy is a JSON object or a list of them, got {type(data).__name__}")
    return RetryPolicy.from_dict(data)


def matches_exception(names: Sequence[str], exc: BaseException) -> bool:
    """Whether any class in ``exc``'s hierarchy has one of the qualified ``names``.

    A ``BaseException`` a node raised (carried as ``NodeRaisedBaseException``) is
    matched by its own type: ``retry_on`` names what the node raises.
    """
    from distributed_agents.core.node_runner import NodeRaisedBaseException  # node_runner is imported later

    if isinstance(exc, NodeRaisedBaseException):
        exc = exc.original
    if DEFAULT_RULE in names and default_retry_on(exc):
        return True
    wanted = set(names)
    return any(_qualified(cls) in wanted for cls in type(exc).__mro__)


# Nodes without a policy: exceptions are not retried (they are usually deterministic),
# but a worker that dies mid-task still gets the task re-delivered up to the queue's
# max_attempts, because that is a lease expiry, not an exception.
NO_RETRY = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=False)
