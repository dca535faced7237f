"""Claims that read the priority-levels key instead of looking at the stream.

Each enqueue adds its level to ``<type>.levels`` (claims bucket) before its first message
at that level; a claim whose last look is recent reads that key (sent together with the
pull at the level it last saw) and pulls there when it lists one level. These check that
priority order across connections still holds when a level appears meanwhile, that a
claim pulled at the old level gives its messages back uncounted, and that messages at
a level no enqueue registered (a foreign producer) are still found by the periodic look.
"""

from __future__ import annotations

from support.aio import run

from distributed_agents.adapters.nats import kv, replies
from distributed_agents.core.ports.task_queue import Task, task_to_dict
from distributed_agents.core.codec import encode

from .conftest import open_nats


def task(task_id: str, priority: int = 0) -> Task:
    return Task(task_id, "wf", "n", "n", {}, priority=priority)


def test_a_level_added_by_another_connection_is_claimed_first(nats_url: str) -> None:
    """The claimer knows one level (0) and pulls there with its key read; another connection
    then enqueues at 0 and at 7: the next claim takes the 7 first, gives the 0 it pulled
    back without counting an attempt, and claims it next."""

    async def scenario() -> None:
        worker = await open_nats(nats_url)
        producer = await open_nats(nats_url, prefix=worker.options.prefix)
        queue = worker.task_queue
        queue.poll_interval = 60.0  # no periodic look during the test: the key decides
        try:
            assert await producer.task_queue.enqueue(task("warm"))
            (warm,) = await queue.claim(["n"], worker_id="w", max_tasks=4)  # looks
            await queue.ack(warm, None)
            assert await queue.claim(["n"], worker_id="w", max_tasks=4) == []  # reads the key
            assert queue._level == {"n": 0}  # one level: the next claims pull there with the key read
            for item in (task("low"), task("high", priority=7)):
                assert await producer.task_queue.enqueue(item)
            given_back = []
            give_back = queue._give_back_unneeded

            async def counted(node_type: str, msg: object) -> None:
                given_back.append(msg)
                await give_back(node_type, msg)  # type: ignore[arg-type]

            queue._give_back_unneeded = counted  # type: ignore[method-assign]
            order = []
            for _ in range(2):
                (claimed,) = await queue.claim(["n"], worker_id="w", max_tasks=1)
                order.append((claimed.task.id, claimed.attempt))
                await queue.ack(claimed, None)
            assert order == [("high", 1), ("low", 1)]
            assert len(given_back) == 1  # "low", pulled with the key read that showed level 7
            assert await queue.claim(["n"], worker_id="w", max_tasks=4) == []
            stats = await queue.stats("n")
            assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
        finally:
            await producer.close()
            await worker.close()

    run(scenario(), 60)


def test_every_enqueue_path_registers_its_level(nats_url: str) -> None:
    """enqueue, enqueue_many, enqueue_raw and a requeued dead letter each list their level
    in the key before their message goes out."""

    async def scenario() -> list[int] | None:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(task("a", 1))
            assert await queue.enqueue_many([task("b", 2), task("c", -3)]) == [True, True]
            await queue.enqueue_raw("n", b"not a task", priority=9)
            entry = await kv.get(queue._claims, "n.levels")
            assert entry is not None
            from distributed_agents.core.codec import decode

            return decode(entry.value)
        finally:
            await backend.close()

    assert run(scenario(), 60) == [-3, 1, 2, 9]


def test_a_message_at_a_level_no_enqueue_registered_is_found_by_the_look(nats_url: str) -> None:
    """A producer that publishes straight to the stream (no levels key entry) at a higher
    level is still served, in priority order, once the claim looks at the stream again
    (at most one poll interval after its last look)."""

    async def scenario() -> list[str]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        conn = backend.connection
        try:
            assert await queue.enqueue(task("known"))
            (first,) = await queue.claim(["n"], worker_id="w")
            await queue.ack(first, None)
            assert await queue.enqueue(task("low"))
            foreign = task("foreign", priority=4)
            await replies.js_publish(conn.nc, conn.names.task_subject("n", 4), encode(task_to_dict(foreign)),
                                     headers={"Nats-Msg-Id": "foreign", "Da-Task-Id": "foreign"})
            order = []
            for _ in range(2):
                (claimed,) = await queue.claim(["n"], worker_id="w", wait=5)
                order.append(claimed.task.id)
                await queue.ack(claimed, None)
            return order
        finally:
            await backend.close()

    order = run(scenario(), 60)
    # Within the poll interval the key's one level is pulled ("low"); the look then finds "foreign".
    assert sorted(order) == ["foreign", "low"], order


def test_a_damaged_levels_key_makes_claims_look(nats_url: str) -> None:
    """A levels key written by hand (not a list of ints) is left alone by enqueues, and
    claims look at the stream instead: tasks are still claimed in priority order."""

    async def scenario() -> list[str]:
        backend = await open_nats(nats_url)
        queue = backend.task_queue
        try:
            await kv.put(backend.connection.js, queue._claims, "n.levels", b"{not json")
            for item in (task("a"), task("b", priority=3)):
                assert await queue.enqueue(item)
            order = []
            for _ in range(2):
                (claimed,) = await queue.claim(["n"], worker_id="w")
                order.append(claimed.task.id)
                await queue.ack(claimed, None)
            entry = await kv.get(queue._claims, "n.levels")
            assert entry is not None and entry.value == b"{not json"
            return order
        finally:
            await backend.close()

    assert run(scenario(), 60) == ["b", "a"]
