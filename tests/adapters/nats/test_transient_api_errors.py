"""JetStream API errors a retry resolves are outages (retried), not failures.

Regression: on a three-server cluster a publish retried during a failover met
``409 err_code=10158 "duplicate message id is in process"`` (the first attempt still
being proposed) and the workflow failed with it (found by the NATS cluster soak).
"""

from __future__ import annotations

import pytest

from distributed_agents.adapters.nats.errors import nats_errors
from distributed_agents.core.errors import BackendError, BackendUnavailableError


def test_duplicate_message_id_in_process_is_retried_as_an_outage() -> None:
    import nats.js.errors

    # from_error raises the exception the server's error reply becomes, as nats-py's publish does.
    with pytest.raises(BackendUnavailableError, match="enqueue"):
        with nats_errors("nats://127.0.0.1:1", "enqueue 1 tasks"):
            nats.js.errors.APIError.from_error(
                {"code": 409, "err_code": 10158, "description": "duplicate message id is in process"})


def test_other_api_errors_stay_failures() -> None:
    import nats.js.errors

    with pytest.raises(BackendError) as raised:
        with nats_errors("nats://127.0.0.1:1", "create the stream"):
            nats.js.errors.APIError.from_error({"code": 400, "err_code": 10058, "description": "stream name in use"})
    assert not isinstance(raised.value, BackendUnavailableError)
