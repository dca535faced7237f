"""BackendOptions: every duration and count is checked for range where it is given, naming it.

The examples (hostile-input trial): on Redis ``?result_ttl=1e308`` and ``?heartbeat_ttl=1e308``
ended in an ``OverflowError`` traceback (the adapters turn seconds into milliseconds), and
``--visibility-timeout 1e308`` made a worker retry its claim for ever; NATS took them without a
word. ``?max_attempts=1e308`` was "not a number". Now each is a ``BackendConfigError`` (exit 2 on
the command line) naming the option, its range and the URL, with credentials masked.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from distributed_agents import Orchestrator, Worker
from distributed_agents.core.errors import BackendConfigError, ConfigurationError
from distributed_agents.core.ports.backend import MAX_DURATION, BackendOptions

URL = "redis://user:secret@127.0.0.1:1/0"


@pytest.mark.parametrize("query", [
    "result_ttl=1e308", "heartbeat_ttl=1e308", "visibility_timeout=1e308",  # the examples
    "state_ttl=1e12", "visibility_timeout=nan", "heartbeat_ttl=inf", "result_ttl=-inf", "result_ttl=0",
    f"visibility_timeout={MAX_DURATION * 1.001}",
])
def test_durations_out_of_range_are_refused_naming_the_option(query: str) -> None:
    name = query.split("=")[0]
    with pytest.raises(BackendConfigError, match=rf"{name} in '.*' must be > 0 and at most 315,360,000 seconds") as e:
        BackendOptions.from_url(f"{URL}?{query}")
    assert "secret" not in str(e.value)


@pytest.mark.parametrize(("query", "problem"), [
    ("max_attempts=1e308", r"must be an integer from 1 to 1,000,000, got 1e\+308"),
    ("max_attempts=0", "must be an integer from 1 to 1,000,000, got 0"),
    ("max_attempts=1.5", "is not a whole number"),
    ("max_payload_bytes=2.5", "is not a whole number"),
])
def test_counts_are_whole_numbers_in_range(query: str, problem: str) -> None:
    with pytest.raises(BackendConfigError, match=problem):
        BackendOptions.from_url(f"{URL}?{query}")


def test_values_in_range_still_read_as_before() -> None:
    options = BackendOptions.from_url(f"{URL}?max_attempts=1e3&state_ttl=none&result_ttl={MAX_DURATION}"
                                      "&max_payload_bytes=2e6")
    assert (options.max_attempts, options.state_ttl, options.result_ttl, options.max_payload_bytes) == \
        (1000, None, MAX_DURATION, 2_000_000)


@pytest.mark.parametrize(("override", "value"), [("visibility_timeout", "30"), ("result_ttl", True),
                                                 ("heartbeat_ttl", 1e308), ("max_attempts", 2.0)])
def test_overrides_are_checked_as_the_query_string_is(override: str, value: Any) -> None:
    with pytest.raises(BackendConfigError, match=override):
        BackendOptions.from_url(URL, **{override: value})


@pytest.mark.parametrize("build", [lambda: Worker(lease_seconds=1e308), lambda: Worker(lease_seconds=float("nan")),
                                   lambda: Orchestrator(lease_ttl=float("inf")), lambda: Orchestrator(lease_ttl=0)])
def test_constructor_leases_are_range_checked_too(build: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"must be > 0 and at most 315,360,000 seconds"):
        build()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["list", "--backend-url", f"{URL}?result_ttl=1e308"],
                                  ["worker", "--backend-url", "redis://127.0.0.1:1/0", "--visibility-timeout", "1e308",
                                   "--app", "nowhere:graph"]])
def test_the_command_line_exits_2_with_the_range(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "distributed_agents", *args], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "at most 315,360,000" in done.stderr and "Traceback" not in done.stderr
    assert "secret" not in done.stderr
