"""``TaskResult``'s JSON shape: ``started_at`` round-trips, older results still decode, bad values are refused."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_agents.core.ports.task_queue import TaskResult

times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


@given(started_at=st.none() | times, finished_at=times, attempts=st.integers(0, 50),
       status=st.sampled_from(["succeeded", "failed"]))
def test_a_result_round_trips_through_json_with_or_without_started_at(
        started_at: float | None, finished_at: float, attempts: int, status: Any) -> None:
    result = TaskResult("t-1", status, output={"x": 1} if status == "succeeded" else None,
                        error=None if status == "succeeded" else "boom", attempts=attempts, worker_id="w",
                        finished_at=finished_at, started_at=started_at)
    data = result.to_dict()
    assert ("started_at" in data) == (started_at is not None)  # unknown: the older shape, unchanged
    assert TaskResult.from_dict(json.loads(json.dumps(data))) == result


def test_a_result_of_the_older_shape_decodes_with_started_at_unknown() -> None:
    old = {"task_id": "t", "status": "succeeded", "output": {}, "error": None, "attempts": 1,
           "worker_id": "w", "finished_at": 12.5}
    assert TaskResult.from_dict(old).started_at is None
    assert TaskResult.from_dict({**old, "started_at": None}).started_at is None
    assert TaskResult.from_dict({**old, "started_at": 10}).started_at == 10.0


@pytest.mark.parametrize("bad", ["10", True, [1], {"t": 1}, math.nan, math.inf, -math.inf])
def test_a_bad_started_at_is_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValueError, match="started_at"):
        TaskResult.from_dict({"task_id": "t", "status": "succeeded", "finished_at": 1.0, "started_at": bad})
