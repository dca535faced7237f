"""arq's throughput on the same Redis, for the side-by-side ratios of distributed_benchmark.

arq is not a dependency of this project: install it into its own environment from
``benchmarks/requirements-bench.txt`` and point ``distributed_benchmark.py --arq-python``
at that environment's interpreter, which runs this script::

    python -m venv /tmp/arq-env && /tmp/arq-env/bin/pip install -r benchmarks/requirements-bench.txt
    python benchmarks/distributed_benchmark.py --start redis --arq-python /tmp/arq-env/bin/python

Alone: ``python benchmarks/arq_benchmark.py --redis-url redis://127.0.0.1:6379/0``.

What it measures: one arq worker process (``poll_delay=0.01``, ``max_jobs=32``, the
settings the comparison names) serving ``--jobs`` no-op jobs enqueued at once: jobs
finished per second, from the first enqueue until every result is stored. It prints
one line, ``arq jobs/s <figure>``, which distributed_benchmark reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.worker import Worker, func

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_support  # noqa: E402  (needs nothing of distributed_agents: this runs in the peers' environment)


async def noop(ctx: dict[str, Any]) -> None:
    return None


def serve(url: str, queue: str) -> None:
    worker = Worker(functions=[func(noop, name="noop")], queue_name=queue, redis_settings=RedisSettings.from_dsn(url),
                    poll_delay=0.01, max_jobs=32, handle_signals=True, log_results=False)
    worker.run()


async def wait_done(redis: Any, job_ids: list[str]) -> None:
    """Until every job has a stored result: one pipelined EXISTS sweep every 5 ms."""
    pending = list(job_ids)
    while pending:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.exists(result_key_prefix + job_id)
            flags = await pipe.execute()
        pending = [job_id for job_id, flag in zip(pending, flags) if not flag]
        if pending:
            await asyncio.sleep(0.005)


async def measure(url: str, jobs: int) -> float:
    queue = f"arq:bench:{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen([sys.executable, __file__, "--role", "worker", "--redis-url", url, "--queue", queue],
                              env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        warm = await pool.enqueue_job("noop")  # the worker is up once this one is done
        assert warm is not None
        await wait_done(pool, [warm.job_id])
        started = time.perf_counter()
        enqueued = []
        for start in range(0, jobs, 200):
            batch = await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(200, jobs - start))))
            enqueued += [job.job_id for job in batch if job is not None]
        await wait_done(pool, enqueued)
        return len(enqueued) / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await pool.aclose()


def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--redis-url", required=True, help="the Redis server to run on")
    parser.add_argument("--jobs", type=bench_support.positive_int, default=1000, help="no-op jobs enqueued at once")
    parser.add_argument("--role", choices=("bench", "worker"), default="bench",
                        help="worker: the arq worker process the bench role starts")
    parser.add_argument("--queue", default="arq:queue", help="arq queue name (the bench role picks a fresh one)")
    args = parser.parse_args()
    if args.role == "worker":
        serve(args.redis_url, args.queue)  # arq's worker handles SIGTERM itself (handle_signals=True)
        return
    bench_support.stop_on_sigterm()  # stops the worker process it started, as Ctrl-C does
    print(f"arq jobs/s {bench_support.arun(measure(args.redis_url, args.jobs)):.1f}", flush=True)


if __name__ == "__main__":
    main()
