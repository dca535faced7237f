"""RetryPolicy: delay schedule, which failures are retried, the JSON form, argument checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents import RetryPolicy
from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.retry import NO_RETRY

pytestmark = pytest.mark.timeout(60)


class TransientError(Exception):
    """A retryable failure defined in this module."""


class FlakyConnection(TransientError):
    """A subclass: retried wherever TransientError is."""


# -- delays ----------------------------------------------------------------------------


def test_delays_without_jitter_follow_the_exponential_schedule_exactly() -> None:
    """initial * factor ** (attempt - 1), capped at max_interval."""
    policy = RetryPolicy(initial_interval=0.5, backoff_factor=2.0, max_interval=5.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert RetryPolicy(initial_interval=3, backoff_factor=1, jitter=False).delay(10) == 3


def test_delay_of_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    """A policy retrying thousands of times keeps returning max_interval (2.0 ** 5000 overflows a float)."""
    policy = RetryPolicy(max_attempts=1_000_000, initial_interval=1.0, max_interval=30.0, jitter=False)
    assert policy.delay(5000) == 30.0
    assert RetryPolicy(initial_interval=0.0, jitter=False).delay(5000) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.001, 10),
    factor=st.floats(1, 4),
    cap=st.floats(0.001, 100),
    attempt=st.integers(1, 40),
)
def test_jittered_delays_stay_within_a_quarter_of_the_capped_delay(
    initial: float, factor: float, cap: float, attempt: int
) -> None:
    """With jitter, each delay is within ±25% of the un-jittered (capped) delay."""
    exact = RetryPolicy(initial_interval=initial, backoff_factor=factor, max_interval=cap, jitter=False)
    jittered = RetryPolicy(initial_interval=initial, backoff_factor=factor, max_interval=cap, jitter=True)
    base = exact.delay(attempt)
    assert base == min(initial * factor ** (attempt - 1), cap)
    for _ in range(5):
        assert 0.75 * base <= jittered.delay(attempt) <= 1.25 * base


def test_jitter_actually_varies_the_delay() -> None:
    """Jitter is random: many draws are not all equal."""
    policy = RetryPolicy(initial_interval=1.0, jitter=True)
    assert len({policy.delay(1) for _ in range(50)}) > 1


# -- which failures are retried -----------------------------------------------------------


def test_should_retry_stops_at_max_attempts() -> None:
    """Failed attempts 1 and 2 of 3 are retried, attempt 3 is final."""
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n, ConnectionError()) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert NO_RETRY.should_retry(1, RuntimeError()) is False


def test_retry_on_matches_the_listed_types_and_their_subclasses_only() -> None:
    """retry_on=TransientError retries it and FlakyConnection, not ValueError."""
    policy = RetryPolicy(max_attempts=5, retry_on=TransientError)
    assert policy.should_retry(1, TransientError())
    assert policy.should_retry(1, FlakyConnection())
    assert not policy.should_retry(1, ValueError())
    assert not policy.should_retry(5, FlakyConnection())


def test_retry_on_accepts_a_tuple_and_base_exceptions() -> None:
    """A tuple of types, including BaseException subclasses, is matched by any member."""
    policy = RetryPolicy(retry_on=(KeyError, KeyboardInterrupt))
    assert policy.retries(KeyError("k"))
    assert policy.retries(KeyboardInterrupt())
    assert not policy.retries(LookupError())  # a base class of KeyError is not matched
    assert RetryPolicy(retry_on=Exception).retries(ValueError())
    assert not RetryPolicy(retry_on=Exception).retries(KeyboardInterrupt())


# -- JSON form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_on",
    [Exception, TransientError, (KeyError, FlakyConnection), ()],
    ids=["Exception", "custom", "tuple", "nothing"],
)
def test_to_dict_from_dict_round_trip_keeps_matching_by_qualified_name(retry_on: Any) -> None:
    """A policy rebuilt from JSON retries exactly the same exceptions and serialises identically."""
    policy = RetryPolicy(max_attempts=4, initial_interval=0.1, backoff_factor=3.0, max_interval=9.0,
                         jitter=False, retry_on=retry_on)
    data = json.loads(json.dumps(policy.to_dict()))
    rebuilt = RetryPolicy.from_dict(data)
    assert rebuilt.to_dict() == policy.to_dict()
    assert (rebuilt.max_attempts, rebuilt.initial_interval, rebuilt.backoff_factor, rebuilt.max_interval,
            rebuilt.jitter) == (4, 0.1, 3.0, 9.0, False)
    for exc in (TransientError(), FlakyConnection(), KeyError(), ValueError(), KeyboardInterrupt()):
        assert rebuilt.retries(exc) == policy.retries(exc), exc


def test_to_dict_names_exception_types_by_module_and_qualified_name() -> None:
    """retry_on travels as 'module.QualName' strings."""
    data = RetryPolicy(retry_on=(KeyError, FlakyConnection)).to_dict()
    assert data["retry_on"] == ["builtins.KeyError", f"{__name__}.FlakyConnection"]


def test_a_policy_that_retries_nothing_stays_so_after_a_round_trip() -> None:
    """retry_on=() means no exception is retried, also on a worker that rebuilt the policy."""
    rebuilt = RetryPolicy.from_dict(RetryPolicy(retry_on=()).to_dict())
    assert rebuilt.to_dict()["retry_on"] == []
    assert not rebuilt.should_retry(1, Exception())


def test_from_dict_fills_defaults() -> None:
    """Missing fields take the documented defaults."""
    assert RetryPolicy.from_dict({}).to_dict() == {
        "max_attempts": 3, "initial_interval": 0.5, "backoff_factor": 2.0, "max_interval": 128.0,
        "jitter": True, "retry_on": ["@default"],
    }


# -- argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": 2.5},
        {"max_attempts": "3"},
        {"max_attempts": True},
        {"initial_interval": -0.1},
        {"initial_interval": float("nan")},
        {"initial_interval": "1"},
        {"max_interval": -1},
        {"max_interval": float("nan")},
        {"max_interval": float("inf")},
        {"backoff_factor": 0.5},
        {"backoff_factor": float("nan")},
        {"retry_on": int},
        {"retry_on": "ValueError"},
        {"retry_on": (ValueError, 3)},
        {"retry_on": [ValueError, "x"]},
        {"retry_on": lambda exc: True},  # LangGraph's predicate form: cannot travel to a worker
    ],
    ids=lambda kwargs: "-".join(f"{k}={'a predicate' if callable(v) and not isinstance(v, type) else repr(v)}"
                                for k, v in kwargs.items()),  # (a function's repr names its address)
)
def test_invalid_arguments_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    """Out-of-range, NaN, infinite or mistyped arguments raise ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    field = next(iter(kwargs))
    expected = "retry_on" if field == "retry_on" else "max_attempts" if field == "max_attempts" else field
    assert expected in str(info.value)


def test_langgraph_forms_positional_fields_and_a_list_of_types() -> None:
    """LangGraph's ``RetryPolicy(initial_interval, backoff_factor, max_interval, max_attempts, jitter,
    retry_on)`` order, and ``retry_on`` as a list (LangGraph's Sequence) of exception types."""
    policy = RetryPolicy(0.01, 3.0, 5.0, 4, False, [ConnectionError, TimeoutError])
    assert (policy.initial_interval, policy.backoff_factor, policy.max_interval, policy.max_attempts,
            policy.jitter) == (0.01, 3.0, 5.0, 4, False)
    assert policy.retries(ConnectionResetError()) and policy.retries(TimeoutError()) and not policy.retries(ValueError())
    assert RetryPolicy.from_dict(policy.to_dict()).retries(ConnectionResetError())  # as on a worker
    with pytest.raises(ConfigurationError, match="a predicate .* cannot travel with a task to a worker"):
        RetryPolicy(retry_on=lambda exc: isinstance(exc, ValueError))


# -- LangGraph's default rule ---------------------------------------------------------------


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def _http_error(module: str, name: str, status: int | None) -> BaseException:
    """An exception class named as httpx's / requests' HTTP errors are (matched by name, never imported)."""
    cls = type(name, (Exception,), {"__module__": module})
    exc = cls("http")
    if status is not None:
        exc.response = _Response(status)  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(("exc", "retried"), [
    (ConnectionError("refused"), True),
    (ConnectionResetError("reset"), True),
    (TransientError(), True),
    (Exception("something"), True),
    (_http_error("httpx", "HTTPStatusError", 503), True),
    (_http_error("httpx", "HTTPStatusError", 404), False),
    (_http_error("requests.exceptions", "HTTPError", 502), True),
    (_http_error("requests.exceptions", "HTTPError", 400), False),
    (_http_error("requests.exceptions", "HTTPError", None), True),
    (ValueError("bad input"), False),
    (TypeError("bad call"), False),
    (KeyError("k"), False),
    (ZeroDivisionError(), False),
    (RuntimeError("nope"), False),
    (FileNotFoundError("f"), False),
    (TimeoutError("slow"), False),
    (StopIteration(), False),
    (KeyboardInterrupt(), False),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value))
def test_the_default_retries_what_langgraphs_default_retry_on_retries(exc: BaseException, retried: bool) -> None:
    """RetryPolicy() retries as LangGraph's RetryPolicy() does (its default_retry_on): a ported
    node raising ValueError under RetryPolicy(max_attempts=3) runs once there, and so here."""
    from distributed_agents.core.retry import default_retry_on

    policy = RetryPolicy(max_attempts=3)
    assert default_retry_on(exc) is retried
    assert policy.retries(exc) is retried
    assert RetryPolicy.from_dict(policy.to_dict()).retries(exc) is retried  # on a worker too
    assert policy.to_dict()["retry_on"] == ["@default"] and policy.max_interval == 128.0
