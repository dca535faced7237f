"""Where a task's dispatch -> result latency goes on Redis, layer by layer, on this machine.

    python benchmarks/latency_layers.py                    # temporary redis-server
    python benchmarks/latency_layers.py --backend-url redis://127.0.0.1:6379/0 [--runs 500] [--results FILE]
    python benchmarks/latency_layers.py --server-times     # also each script's time inside redis-server

Three measurements of one task at a time, each between two processes (an "orchestrator"
and a "worker", both redis-py asyncio clients) and p50/p99 in milliseconds:

* ``floor``: the fewest hops any design needs: the orchestrator's script pushes a task id
  to a list, the worker's blocking pop returns it, the worker's script stores a result and
  publishes it, the orchestrator's pub/sub reader receives it. No framework code at all;
* ``queue``: the same through the task queue port (``enqueue_many``, a parked ``claim``,
  ``ack``, ``wait_results``): the adapter's scripts and client layer;
* ``engine``: a single-node workflow on a worker process, from ``node.started`` to
  ``node.completed`` (the benchmark's ``trigger->merged`` figure): the step loop, the
  worker's task handling and events on top.

The gaps between the lines say what each layer costs; the floor says what the machine
(process wake-ups, loopback sockets) costs whatever the design.

Under ``floor`` and ``queue`` a second line splits each task's time into its three legs,
p50 in milliseconds (``time.perf_counter``, one clock for every process of the machine):
``to worker`` (dispatch sent -> the worker holds the task: the dispatch script, the
server's wake-up of the blocked worker, its decoding), ``worker`` (holds it -> sends the
result: the no-op and the worker's own code) and ``to result`` (result sent -> the
orchestrator holds it: the ack script, the publish, the orchestrator's wake-up). The
legs say which process the time is spent in; their sum is close to the p50 above.

``--server-times`` adds, under each layer, the median time each script and command took
inside redis-server (its ``SLOWLOG``, every call logged while the layer runs; the settings
are put back afterwards): a script runs alone on the server, and a worker's wake-up
waits for the whole of the script that hands it its task.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pathlib
import signal
import statistics
import sys
import time
import uuid
from typing import Any

import redis.asyncio as redis_asyncio
import redis.exceptions

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_support  # noqa: E402

from distributed_agents.core.timeouts import wait_within  # noqa: E402

_ENQUEUE = "redis.call('RPUSH', KEYS[1], ARGV[1]) return 1"
_ACK = "redis.call('SET', KEYS[1], ARGV[2]) redis.call('PUBLISH', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2]) return 1"


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1000, samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000


# Each task's legs (seconds): dispatch -> worker holds it -> result sent -> orchestrator holds it.
Legs = dict[str, float]


def _legs(dispatched: dict[int, float], arrived: dict[int, float], worker: dict[int, tuple[float, float]]) -> Legs:
    """p50 of each leg in milliseconds, over the tasks timed at all four points."""
    runs = [i for i in dispatched if i in arrived and i in worker]
    if not runs:
        return {}
    return {
        "to worker": statistics.median(worker[i][0] - dispatched[i] for i in runs) * 1000,
        "worker": statistics.median(worker[i][1] - worker[i][0] for i in runs) * 1000,
        "to result": statistics.median(arrived[i] - worker[i][1] for i in runs) * 1000,
    }


def _run_index(task_id: Any) -> int:
    """The run number of task id ``t{i}`` (bytes or str)."""
    return int((task_id.decode() if isinstance(task_id, bytes) else task_id)[1:])


def _default_sigterm() -> None:
    """In a forked worker process: SIGTERM ends it (it inherited the parent's event loop's handler)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _floor_worker(url: str, prefix: str, runs: int, stamps: Any) -> None:
    _default_sigterm()
    async def serve() -> dict[int, tuple[float, float]]:
        client = redis_asyncio.Redis.from_url(url)
        ack = client.register_script(_ACK)
        times = {}
        for _ in range(runs):
            popped = await client.blpop([f"{prefix}:q"], timeout=30)
            if popped is None:
                break
            held = time.perf_counter()
            sent = time.perf_counter()
            await ack(keys=[f"{prefix}:r", f"{prefix}:done"], args=[popped[1], '{"ok": 1}'])
            times[_run_index(popped[1])] = (held, sent)
        await client.aclose()
        return times

    stamps.send(asyncio.run(serve()))


async def floor(url: str, runs: int) -> tuple[float, float, Legs]:
    prefix = f"floor{uuid.uuid4().hex[:8]}"
    receiving, sending = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=_floor_worker, args=(url, prefix, runs, sending))
    process.start()
    client = redis_asyncio.Redis.from_url(url)
    enqueue = client.register_script(_ENQUEUE)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{prefix}:done")
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def read() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                arrived.put_nowait(time.perf_counter())

    reader = asyncio.ensure_future(read())
    stopped = False
    samples = []
    dispatched: dict[int, float] = {}
    results: dict[int, float] = {}
    try:
        for i in range(runs):
            started = dispatched[i] = time.perf_counter()
            await enqueue(keys=[f"{prefix}:q"], args=[f"t{i}"])
            getting = asyncio.ensure_future(arrived.get())
            # Not asyncio.wait_for: before Python 3.12 it loses a Ctrl-C that lands as a result comes.
            if not await wait_within(getting, 30):
                raise TimeoutError(f"no result of task t{i} within 30s: is the floor worker process alive?")
            results[i] = getting.result()
            samples.append(results[i] - started)
    except BaseException:  # stopped or failed: the worker process would wait for tasks for up to 30s more
        stopped = True
        process.terminate()
        raise
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()
        await client.aclose()
        worker = receiving.recv() if not stopped and receiving.poll(60) else {}
        process.join(60)
    return (*_percentiles(samples), _legs(dispatched, results, worker))


def _queue_worker(url: str, prefix: str, runs: int, stamps: Any) -> None:
    _default_sigterm()
    from distributed_agents.core.backend_resolver import open_backend

    async def serve() -> dict[int, tuple[float, float]]:
        backend = open_backend(url, prefix=prefix)
        await backend.connect()
        done = 0
        times = {}
        while done < runs:
            claims = await backend.task_queue.claim(["noop"], worker_id="bench", max_tasks=32, wait=1.0)
            held = time.perf_counter()
            for claim in claims:
                times[_run_index(claim.task.id)] = (held, time.perf_counter())
                await backend.task_queue.ack(claim, {"ok": 1})
                done += 1
        await backend.close()
        return times

    stamps.send(asyncio.run(serve()))


async def queue(url: str, runs: int) -> tuple[float, float, Legs]:
    from distributed_agents.core.backend_resolver import open_backend
    from distributed_agents.core.ports.task_queue import Task

    prefix = f"queue{uuid.uuid4().hex[:8]}"
    receiving, sending = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=_queue_worker, args=(url, prefix, runs, sending))
    process.start()
    backend = open_backend(url, prefix=prefix)
    await backend.connect()
    stopped = False
    samples = []
    dispatched: dict[int, float] = {}
    arrived: dict[int, float] = {}
    try:
        await asyncio.sleep(0.5)  # the worker parks
        for i in range(runs):
            task = Task(f"t{i}", "wf", "node", "noop", {"v": 1, "step": 0, "state": {}})
            started = dispatched[i] = time.perf_counter()
            await backend.task_queue.enqueue_many([task])
            results: dict[str, Any] = {}
            while not results:
                results = await backend.task_queue.wait_results([task.id], timeout=1.0)
            arrived[i] = time.perf_counter()
            samples.append(arrived[i] - started)
    except BaseException:  # stopped or failed: the worker process would wait for its tasks for ever
        stopped = True
        process.terminate()
        raise
    finally:
        await backend.close()
        worker = receiving.recv() if not stopped and receiving.poll(60) else {}
        process.join(60)
    return (*_percentiles(samples), _legs(dispatched, arrived, worker))


async def engine(url: str, runs: int) -> tuple[float, float, Legs]:
    import distributed_benchmark as bench
    from distributed_agents.distributed import DistributedOrchestrator

    prefix = f"engine{uuid.uuid4().hex[:8]}"
    with bench.workers(url, prefix, 1, 64):
        orchestrator = DistributedOrchestrator(backend_url=url, prefix=prefix, worker_timeout=60)
        await orchestrator.connect()
        try:
            await bench.wait_for_workers(orchestrator, 1)
            await bench.single_workflows(orchestrator, 8, 8)
            p50, p99 = await bench.latency(orchestrator, runs)  # seconds
            return p50 * 1000, p99 * 1000, {}  # (the worker is another program: no legs)
        finally:
            await orchestrator.close()


def _script_names() -> dict[str, str]:
    """SHA-1 -> name of the adapter's Lua scripts (module-level strings that call redis)."""
    import hashlib
    import importlib

    names: dict[str, str] = {}
    for module in ("queue_scripts", "state_store", "message_bus", "worker_registry", "task_queue"):
        loaded = importlib.import_module(f"distributed_agents.adapters.redis.{module}")
        for name, value in vars(loaded).items():
            if isinstance(value, str) and ("redis.call" in value or name == "PUBLISH_SCRIPT"):
                names.setdefault(hashlib.sha1(value.encode()).hexdigest(), name.strip("_"))
    names[hashlib.sha1(_ENQUEUE.encode()).hexdigest()] = "floor enqueue"
    names[hashlib.sha1(_ACK.encode()).hexdigest()] = "floor ack"
    return names


class _ServerTimes:
    """Median server-side microseconds per script (by name) and command, from ``SLOWLOG``."""

    def __init__(self, url: str) -> None:
        self._client = redis_asyncio.Redis.from_url(url)
        self._saved: dict[str, Any] = {}

    async def __aenter__(self) -> _ServerTimes:
        for key in ("slowlog-log-slower-than", "slowlog-max-len"):
            self._saved.update(await self._client.config_get(key))
        await self._client.config_set("slowlog-log-slower-than", 0)
        await self._client.config_set("slowlog-max-len", 200_000)
        await self._client.slowlog_reset()
        return self

    async def read(self) -> dict[str, float]:
        names = _script_names()
        times: dict[str, list[float]] = {}
        for entry in await self._client.slowlog_get(200_000):
            command = entry["command"].split()
            name = command[0].decode().upper()
            if name == "EVALSHA" and len(command) > 1:
                name = names.get(command[1].decode(), f"script {command[1].decode()[:8]}")
            elif name in ("SLOWLOG", "CONFIG"):
                continue
            else:  # a command a script ran counts under its own name too
                name = f"{name} (command)"
            times.setdefault(name, []).append(float(entry["duration"]))
        return {name: statistics.median(values) for name, values in times.items()}

    async def __aexit__(self, *exc: object) -> None:
        try:
            for key, value in self._saved.items():
                await self._client.config_set(key, value)
        finally:
            await self._client.aclose()


async def check_redis(url: str) -> None:
    """PING ``url`` with redis-py (what the floor uses): ``SystemExit`` saying what failed, where and
    what to do if it cannot, before any process is started."""
    from distributed_agents.core.redaction import redact_url

    shown = redact_url(url)
    hint = "or leave out --backend-url to start a temporary redis-server"
    try:
        client = redis_asyncio.Redis.from_url(url)
    except ValueError as exc:
        raise SystemExit(f"--backend-url {shown!r} is not a Redis URL ({exc}): pass redis://host:port/db, "
                         f"{hint}") from None
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise SystemExit(f"cannot connect to Redis at {shown}: {str(exc).rstrip('.')}; check that redis-server "
                         f"is running and listening on that address, and the URL's host, port and credentials "
                         f"({hint})") from None
    except redis.exceptions.ResponseError as exc:
        raise SystemExit(f"Redis at {shown} refused PING: {exc}; check the URL's credentials and the server's "
                         "ACLs") from None
    finally:
        await client.aclose()


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--backend-url", help="a Redis URL; default: start a temporary redis-server")
    parser.add_argument("--runs", type=bench_support.positive_int, default=500, help="tasks measured per layer")
    parser.add_argument("--results", help="write the figures as JSON: {layer: {p50_ms, p99_ms}}")
    parser.add_argument("--server-times", action="store_true",
                        help="also print each script's median time inside redis-server, per layer (SLOWLOG)")
    args = parser.parse_args()
    import distributed_benchmark as bench

    if args.backend_url:
        await check_redis(args.backend_url)
    figures: dict[str, dict[str, float]] = {}
    with bench.local_server(None if args.backend_url else "redis", args.backend_url) as url:
        for name, measure in (("floor", floor), ("queue", queue), ("engine", engine)):
            server: dict[str, float] = {}
            if args.server_times:
                async with _ServerTimes(url) as times:
                    p50, p99, legs = await measure(url, args.runs)
                    server = await times.read()
            else:
                p50, p99, legs = await measure(url, args.runs)
            figures[name] = {"p50_ms": p50, "p99_ms": p99}
            print(f"{name:7s} dispatch -> result  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
            if legs:
                figures[name]["legs_p50_ms"] = legs
                print("        legs (p50): " + ", ".join(f"{leg} {ms:.3f} ms" for leg, ms in legs.items()), flush=True)
            if server:
                figures[name]["server_us"] = server
                scripts = sorted(((us, n) for n, us in server.items() if not n.endswith("(command)")), reverse=True)
                print("        server time per call (median): "
                      + ", ".join(f"{n} {us:.0f} us" for us, n in scripts), flush=True)
    if args.results:
        with open(args.results, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    bench_support.run(main)
