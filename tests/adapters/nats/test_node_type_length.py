"""Node types too long for a JetStream consumer name.

The example (hostile-input trial): node type ``"思" * 40`` (fine on Redis) failed on NATS with
``BackendError: ... could not enqueue 1 tasks (NotFoundError ... 'consumer not found')``, the
cause ("consumer name is too long, maximum allowed is 255") only in a chained traceback. Now
enqueue and claim refuse it with a ``ConfigurationError`` naming the node type, the escaped
length and the limit; a type exactly at the limit works.
"""

from __future__ import annotations

import pytest
from support.aio import run

from distributed_agents.adapters.nats.task_queue import MAX_CONSUMER_NAME
from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats

pytestmark = pytest.mark.timeout(60)

LONGEST_ASCII = "t" * (MAX_CONSUMER_NAME - len("-p0"))


def task(node_type: str, task_id: str = "t-1") -> Task:
    return Task(task_id, "wf-1", "node", node_type, {"state": {}})


@pytest.mark.parametrize("node_type", ["思" * 40, LONGEST_ASCII + "t", "ü" * 43, "a b" * 90])
@pytest.mark.parametrize("call", ["enqueue", "enqueue_many", "claim"])
def test_a_node_type_too_long_for_a_consumer_name_is_refused_saying_so(
        nats_url: str, node_type: str, call: str) -> None:
    async def scenario() -> None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            if call == "enqueue":
                await queue.enqueue(task(node_type))
            elif call == "enqueue_many":
                await queue.enqueue_many([task("short", "t-0"), task(node_type)])
            else:
                await queue.claim([node_type], worker_id="w", max_tasks=1)
        finally:
            await backend.close()

    with pytest.raises(ConfigurationError) as caught:
        run(scenario(), 40)
    message = str(caught.value)
    assert "too long for NATS" in message and "255" in message and repr(node_type[:20]) [:-1] in message, message


@pytest.mark.parametrize("node_type", [LONGEST_ASCII, "ü" * 42])
def test_a_node_type_at_the_limit_is_served(nats_url: str, node_type: str) -> None:
    async def scenario() -> list[str]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(task(node_type))
            claims = await queue.claim([node_type], worker_id="w", max_tasks=1)
            for claim in claims:
                await queue.ack(claim, {})
            return [claim.task.id for claim in claims]
        finally:
            await backend.close()

    assert run(scenario(), 40) == ["t-1"]
