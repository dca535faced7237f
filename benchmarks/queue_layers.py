"""Task throughput through the task queue port alone, and on NATS what the protocol under it costs.

    python benchmarks/queue_layers.py                      # temporary redis-server and nats-server
    python benchmarks/queue_layers.py --start nats --rounds 9 [--results FILE]

One process, no worker or orchestrator: ``--width`` tasks (default 1,000) are enqueued
with ``enqueue_many``, then claimed ``--batch`` (64) at a time and acked, as one worker
process runs a fan-out; each line is the median of ``--rounds`` such passes (after one
warm-up pass), in tasks per second, with the CPU time per task of this process (the
client) and of the server (``/proc``). Lines:

* ``port <backend>``: the ``TaskQueue`` port of the adapter (``enqueue_many``, ``claim``,
  ``ack``): everything the adapter does per task;
* ``protocol N`` (NATS only): the same writes and reads made directly with the adapter's
  low-level helpers (``adapters.nats.replies``, ``kv``, ``delivery``), no record content,
  no checks, no bookkeeping; each level adds one step of the adapter's protocol:

  0. a lease that is only the JetStream delivery: publish the task, pull it, store its
     result (a KV write) and ack the message (a confirmed ``+ACK``) - the fewest steps a
     leased, result-keeping queue on JetStream needs;
  1. and read the task's record first (one batched direct get per claim);
  2. and claim it by a compare-and-set of that record before running it (``claimed``);
  3. and create the record at enqueue, before the message, which names the record's
     revision in its message id: the claim's compare-and-set is made against that
     revision, without the read of level 1 - the adapter's protocol.

The gap between ``protocol 3`` and ``port nats`` is the adapter's own code per task; the
gaps between the levels are what each protocol step costs; ``protocol 0`` against
``port redis`` says what JetStream itself allows on this machine. Compare the ratios of one
run: the machine is shared and the figures move between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402
import distributed_benchmark as bench  # noqa: E402

from distributed_agents.core.codec import decode, encode  # noqa: E402
from distributed_agents.core.ports.backend import BackendOptions  # noqa: E402
from distributed_agents.core.ports.task_queue import Task, task_to_dict  # noqa: E402

Pass = Callable[[str], Awaitable[None]]


async def _measure(run_pass: Pass, rounds: int) -> dict[str, float]:
    """Median tasks/s of ``rounds`` passes (after a warm-up pass), and CPU ms per task (client, server) over them."""
    await run_pass("warm-up")
    rates: list[float] = []
    client = server = 0.0
    for index in range(rounds):
        client_0, server_0 = time.process_time(), sum(map(bench.process_cpu_seconds, bench.SERVER_PIDS))
        started = time.perf_counter()
        await run_pass(f"r{index}")
        rates.append(1.0 / (time.perf_counter() - started))
        client += time.process_time() - client_0
        server += sum(map(bench.process_cpu_seconds, bench.SERVER_PIDS)) - server_0
    return {"passes_per_s": statistics.median(rates), "client_s": client / rounds, "server_s": server / rounds}


async def _port(url: str, kind: str, args: argparse.Namespace) -> dict[str, float]:
    if kind == "nats":
        from distributed_agents.adapters.nats.backend import open_nats_backend as open_backend
    else:
        from distributed_agents.adapters.redis.backend import open_redis_backend as open_backend  # type: ignore[assignment]
    backend = open_backend(url, BackendOptions.from_url(url, prefix=f"ql{uuid.uuid4().hex[:8]}"))
    await backend.connect()
    queue = backend.task_queue

    async def run_pass(name: str) -> None:
        await queue.enqueue_many([Task(f"{name}-{i}", "wf", "n", "x", {"i": i}) for i in range(args.width)])
        done = 0
        while done < args.width:
            claims = await queue.claim(["x"], worker_id="w", max_tasks=args.batch, wait=1.0)
            await asyncio.gather(*(queue.ack(claim, {"ok": 1}) for claim in claims))
            done += len(claims)

    try:
        return await _measure(run_pass, args.rounds)
    finally:
        await backend.close()


async def _protocol(url: str, level: int, args: argparse.Namespace) -> dict[str, float]:
    from distributed_agents.adapters.nats import kv, replies
    from distributed_agents.adapters.nats.backend import open_nats_backend
    from distributed_agents.adapters.nats.delivery import pull_ready

    backend = open_nats_backend(url, BackendOptions.from_url(url, prefix=f"qp{uuid.uuid4().hex[:8]}"))
    await backend.connect()
    queue: Any = backend.task_queue
    conn, bucket = queue._conn, queue._tasks  # noqa: SLF001 - the adapter's own connection and records bucket
    nc, names = conn.nc, conn.names
    await queue._ensure_consumer("x", 0)  # noqa: SLF001
    subject, consumer = names.task_subject("x", 0), names.task_consumer("x", 0)

    async def run_pass(name: str) -> None:
        tasks = [Task(f"{name}_{i}", "wf", "n", "x", {"i": i}) for i in range(args.width)]
        for start in range(0, len(tasks), 256):
            chunk = tasks[start:start + 256]
            raws = [encode(task_to_dict(task)) for task in chunk]
            if level < 3:
                await replies.js_publish_many(nc, [
                    (subject, raw, f"NATS/1.0\r\nNats-Msg-Id: {task.id}\r\n\r\n".encode())
                    for task, raw in zip(chunk, raws)])
                continue

            def publish(index: int, ack: replies.PubAck, chunk: list[Task] = chunk,
                        raws: list[bytes] = raws) -> tuple[str, bytes, bytes]:
                return subject, raws[index], f"NATS/1.0\r\nNats-Msg-Id: {chunk[index].id}@{ack.seq}\r\n\r\n".encode()

            await replies.js_publish_chain(nc, [
                kv.cas_request(bucket, f"rec.{task.id}", b'{"state":"queued","seq":0}', last=0) for task in chunk],
                publish)
        done = 0
        while done < args.width:
            delivered = await pull_ready(nc, names.task_stream, consumer, args.batch)
            keys = [f"rec.{decode(msg.data)['id']}" for msg in delivered]
            revisions: dict[str, int] = {}
            if level >= 3:
                revisions = {key: int(msg.headers["Nats-Msg-Id"].rsplit("@", 1)[1])
                             for key, msg in zip(keys, delivered)}
            elif level >= 1 and keys:
                revisions = {key: entry.revision for key, entry in (await kv.get_many(bucket, keys)).items()}
            if level >= 2 and keys:
                claimed = await kv.cas_many(conn.js, bucket, [
                    (key, b'{"state":"claimed"}', revisions.get(key, 0), None) for key in keys])
                revisions = {key: revision or 0 for key, revision in zip(keys, claimed)}
            results = [kv.cas_request(bucket, key if level >= 2 else f"res.{key}", b'{"state":"done","result":{"ok":1}}',
                                      last=revisions.get(key, 0) if level >= 2 else 0, ttl=3600.0) for key in keys]

            def acked(index: int, _: replies.PubAck, delivered: list[Any] = delivered) -> tuple[str, bytes, None]:
                return delivered[index].reply, b"+ACK", None

            await replies.js_publish_chain(nc, results, acked)
            done += len(delivered)

    try:
        return await _measure(run_pass, args.rounds)
    finally:
        await backend.close()


def _line(label: str, figures: dict[str, float], width: int) -> dict[str, float]:
    per_task = 1000.0 / width
    row = {"tasks_per_s": figures["passes_per_s"] * width, "client_cpu_ms": figures["client_s"] * per_task,
           "server_cpu_ms": figures["server_s"] * per_task}
    print(f"{label:<12} {row['tasks_per_s']:8.0f} tasks/s   cpu ms/task: client {row['client_cpu_ms']:.3f}, "
          f"server {row['server_cpu_ms']:.3f}", flush=True)
    return row


def main() -> None:
    parser = bench_support.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=bench_support.backends, default="redis,nats",
                        help="servers to start: redis, nats or both")
    parser.add_argument("--width", type=bench_support.positive_int, default=1000, help="tasks per pass")
    parser.add_argument("--batch", type=bench_support.positive_int, default=64,
                        help="tasks per claim (a worker's capacity)")
    parser.add_argument("--rounds", type=bench_support.positive_int, default=5, help="measured passes per line")
    parser.add_argument("--results", help="write the lines as JSON to this file")
    args = parser.parse_args()
    kinds, args.start = args.start, ",".join(args.start)  # the text in --results, as given
    rows: dict[str, dict[str, float]] = {}
    for kind in kinds:
        with bench.local_server(kind, None) as url:
            rows[f"port {kind}"] = _line(f"port {kind}", bench_support.arun(_port(url, kind, args)), args.width)
            if kind == "nats":
                for level in range(4):
                    label = f"protocol {level}"
                    rows[label] = _line(label, bench_support.arun(_protocol(url, level, args)), args.width)
    if args.results:
        Path(args.results).write_text(json.dumps({"parameters": vars(args), "lines": rows}, indent=2) + "\n")


if __name__ == "__main__":
    bench_support.run(main)
