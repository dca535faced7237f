"""Properties under real concurrency: workers in separate threads, each with its own connection.

Threads (each with its own event loop and backend) make the workers truly concurrent
even for an in-process backend, so a check-then-act race in an adapter shows up here.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import CheckContext
from distributed_agents.conformance.helpers import make_task
from distributed_agents.conformance.state_store_checks import record
from distributed_agents.core.errors import LeaseLostError, VersionConflictError
from distributed_agents.core.ports.backend import Backend

PORT = "concurrency"


def _in_threads(count: int, body: Callable[[int], Awaitable[None]], timeout: float) -> None:
    """Run ``body(index)`` in ``count`` threads, each in its own event loop; re-raise the first error."""
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            asyncio.run(asyncio.wait_for(body(index), timeout))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5.0)
    violations = [e for e in errors if isinstance(e, ContractViolation)]
    if violations or errors:
        raise (violations or errors)[0]


async def _open(context: CheckContext, prefix: str, **options: object) -> Backend:
    """A connection on ``prefix``; workers share one only if the backend can share a prefix."""
    return await context.factory.open(prefix=prefix, **options)


def _prefix_for(context: CheckContext) -> str:
    if not context.requirements.supports("shared_prefix"):
        raise ContractViolation("concurrency.exclusive-claim", "concurrency checks need the shared_prefix capability")
    return context.factory.fresh_prefix()


@conformance_check(PORT, ("concurrency.exclusive-claim",), requires=("shared_prefix",), timeout=90.0)
def check_concurrent_claimers_never_share(context: CheckContext) -> None:
    """N workers claim and ack concurrently; no task is held by two of them at once."""
    prefix = _prefix_for(context)
    total, workers = context.profile.concurrent_tasks, context.profile.concurrent_workers
    holders: dict[str, str] = {}
    acked: Counter[str] = Counter()
    lock = threading.Lock()

    async def seed() -> None:
        backend = await _open(context, prefix)
        try:
            for index in range(total):
                await backend.task_queue.enqueue(make_task(f"t{index}", priority=index % 3))
        finally:
            await backend.close()

    asyncio.run(seed())

    async def work(index: int) -> None:
        backend = await _open(context, prefix)
        name = f"worker-{index}"
        try:
            while True:
                claims = await backend.task_queue.claim(["alpha"], worker_id=name, max_tasks=2, wait=0.05)
                if not claims:
                    with lock:
                        if sum(acked.values()) >= total:
                            return
                    continue
                for claim in claims:
                    with lock:
                        other = holders.get(claim.task.id)
                        expect(other is None, "concurrency.exclusive-claim", f"{claim.task.id} claimed by {name} while {other} holds it")
                        holders[claim.task.id] = name
                await asyncio.sleep(random.random() * 0.002)
                for claim in claims:
                    with lock:
                        del holders[claim.task.id]
                    await backend.task_queue.ack(claim, {"by": name})
                    with lock:
                        acked[claim.task.id] += 1
        finally:
            await backend.close()

    _in_threads(workers, work, 60.0)
    twice = sorted(task_id for task_id, n in acked.items() if n > 1)
    expect(not twice, "concurrency.exclusive-claim", f"tasks acked more than once: {twice[:10]}")
    expect(len(acked) == total, "concurrency.no-loss", f"{total - len(acked)} of {total} tasks were never delivered")


@conformance_check(PORT, ("concurrency.no-loss",), requires=("shared_prefix",), timeout=90.0)
def check_every_task_settles_once(context: CheckContext) -> None:
    """Workers ack, nack, delay or abandon at random; every task ends acked xor dead, exactly once."""
    prefix = _prefix_for(context)
    short = context.requirements.short_timeout
    total, workers = context.profile.concurrent_tasks, context.profile.concurrent_workers
    acked: Counter[str] = Counter()
    lock = threading.Lock()
    ids = [f"t{index}" for index in range(total)]

    async def seed() -> None:
        backend = await _open(context, prefix, max_attempts=3)
        try:
            for task_id in ids:
                await backend.task_queue.enqueue(make_task(task_id))
        finally:
            await backend.close()

    asyncio.run(seed())
    give_up = time.monotonic() + 45.0

    async def work(index: int) -> None:
        backend = await _open(context, prefix, max_attempts=3)
        chooser = random.Random(index)
        try:
            while time.monotonic() < give_up:
                claims = await backend.task_queue.claim(["alpha"], worker_id=f"w{index}", lease_seconds=short, wait=0.05)
                if not claims:
                    stats = await backend.task_queue.stats("alpha")
                    if stats.queued == 0 and stats.in_flight == 0:
                        return
                    continue
                for claim in claims:
                    roll = chooser.random()
                    try:
                        if roll < 0.55:
                            await backend.task_queue.ack(claim, {"by": index})
                            with lock:
                                acked[claim.task.id] += 1
                        elif roll < 0.75:
                            await backend.task_queue.nack(claim, f"error from w{index}")
                        elif roll < 0.85:
                            await backend.task_queue.nack(claim, "later", delay=short / 2)
                        # else: abandon it; the lease expires and it comes back
                    except LeaseLostError:
                        pass  # settled too late (lease expired): the task is someone else's now
        finally:
            await backend.close()

    _in_threads(workers, work, 60.0)

    async def verify() -> None:
        backend = await _open(context, prefix, max_attempts=3)
        try:
            dead = {d.task_id for d in await backend.task_queue.dead_letters("alpha", limit=total + 10)}
            twice = sorted(task_id for task_id, n in acked.items() if n > 1)
            expect(not twice, "concurrency.no-loss", f"tasks acked (succeeded) more than once: {twice[:10]}")
            both = sorted(dead & set(acked))
            expect(not both, "concurrency.no-loss", f"tasks both acked and dead-lettered: {both[:10]}")
            lost = [task_id for task_id in ids if task_id not in dead and task_id not in acked]
            expect(not lost, "concurrency.no-loss", f"{len(lost)} of {total} tasks neither acked nor dead-lettered: {lost[:10]}")
            for task_id in ids:
                result = await backend.task_queue.get_result(task_id)
                want = "failed" if task_id in dead else "succeeded"
                expect(result is not None and result.status == want, "concurrency.no-loss",
                       f"{task_id} has result {result!r}, expected {want}")
        finally:
            await backend.close()

    asyncio.run(verify())


@conformance_check(PORT, ("concurrency.cas-race",), requires=("shared_prefix",), timeout=90.0)
def check_concurrent_cas_has_one_winner(context: CheckContext) -> None:
    """Two writers save the same version at the same moment: exactly one wins, every round."""
    prefix = _prefix_for(context)
    rounds = context.profile.cas_rounds
    barrier = threading.Barrier(2, timeout=20.0)
    outcomes: list[list[str]] = [[], []]

    async def create() -> None:
        backend = await _open(context, prefix)
        try:
            await backend.state_store.save(record("wf", n=0), expected_version=0)
        finally:
            await backend.close()

    asyncio.run(create())

    async def write(index: int) -> None:
        backend = await _open(context, prefix)
        try:
            for round_number in range(rounds):
                current = await backend.state_store.get("wf")
                assert current is not None
                # Both read the same version before either writes.
                await asyncio.to_thread(barrier.wait)
                expected = 1 + round_number
                try:
                    await backend.state_store.save(record("wf", n=round_number, by=index), expected_version=expected)
                    outcomes[index].append("won")
                except VersionConflictError:
                    outcomes[index].append("lost")
                await asyncio.to_thread(barrier.wait)
        finally:
            await backend.close()

    _in_threads(2, write, 60.0)
    for round_number, pair in enumerate(zip(*outcomes)):
        expect(sorted(pair) == ["lost", "won"], "concurrency.cas-race",
               f"round {round_number}: the two concurrent writers ended {list(pair)}, expected exactly one winner")
