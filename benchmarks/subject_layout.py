"""What a subject per message costs a JetStream work queue, against one shared subject.

    python benchmarks/subject_layout.py                       # temporary nats-server
    python benchmarks/subject_layout.py --messages 1000,20000,50000 [--results FILE]

The question behind it: the NATS task queue keeps a KV record per task beside the task's
message (``adapters/nats/task_queue.py``), and ``queue_layers.py`` shows that record costs
about half of the queue's throughput. Dropping it needs another way to find a queued task's
message by its id (``cancel``), and the only one that costs no write per task is the message's
own subject: ``<p>.tasks.<type>.<priority>.<task token>``. This script measures what that
subject layout costs nats-server, with nats-py alone (no framework code):

For each ``--messages`` count N and each layout, a fresh work-queue stream (file storage, as
the adapter's) gets N messages of 200 bytes, each with a ``Nats-Msg-Id``, published 256 at a
time with their acks awaited; then one durable pull consumer takes them ``--batch`` (64) at a
time and acks each (confirmed). Printed: the server's and this client's CPU time per message
(``/proc``), for the publishes and for the pulls and acks. Layouts:

* ``shared``: every message on one subject, the consumer filtered on it (the adapter today);
* ``per-message``: a subject per message, the consumer filtered on the wildcard over them
  (what a per-task subject inside the present stream would be);
* ``unfiltered``: a subject per message, a consumer with no filter (as if each node type and
  priority had a stream of its own).

What it showed on a 2-core machine (nats-server 2.15.1, server CPU µs per message for pull and
ack): at 1,000 queued the per-message layout costs a few µs more (about 20 for all three; one
measurement of 1,000 messages is only a few of /proc's 10 ms ticks: repeat it); at 20,000, per-message 42-53 against 17-20
shared; at 50,000, per-message 75-92 against 14 shared and 20 unfiltered: a consumer whose filter
is a wildcard over many distinct subjects pays per message for their number, so draining a deep
queue laid out that way grows quadratically. Compare the ratios of one run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_support  # noqa: E402
import distributed_benchmark as bench  # noqa: E402

LAYOUTS = ("shared", "per-message", "unfiltered")
#: Messages published before their acks are awaited.
PUBLISH_CHUNK = 256
PAYLOAD = b"x" * 200


async def measure(url: str, layout: str, count: int, batch: int) -> dict[str, float]:
    """CPU µs per message (server, client) for publishing ``count`` messages and for pulling and
    acking them, in ``layout``, on a fresh stream that is deleted afterwards."""
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"LAYOUT{uuid.uuid4().hex[:8]}"
    try:
        await js.add_stream(name=name, subjects=[f"{name}.>"], retention=api.RetentionPolicy.WORK_QUEUE,
                            storage=api.StorageType.FILE)
        shared = f"{name}.t.p3"
        filter_subject = {"shared": shared, "per-message": f"{shared}.*", "unfiltered": None}[layout]
        await js.add_consumer(name, api.ConsumerConfig(durable_name="c", filter_subject=filter_subject,
                                                       ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1))
        pull = await js.pull_subscribe_bind("c", stream=name)
        server_0, client_0 = bench.process_cpu_seconds(bench.SERVER_PIDS[0]), time.process_time()
        for start in range(0, count, PUBLISH_CHUNK):
            await asyncio.gather(*(
                js.publish(shared if layout == "shared" else f"{shared}.{uuid.uuid4().hex[:12]}", PAYLOAD,
                           headers={"Nats-Msg-Id": uuid.uuid4().hex})
                for _ in range(min(PUBLISH_CHUNK, count - start))))
        server_1, client_1 = bench.process_cpu_seconds(bench.SERVER_PIDS[0]), time.process_time()
        taken = 0
        while taken < count:
            messages = await pull.fetch(batch, timeout=10)
            taken += len(messages)
            await asyncio.gather(*(message.ack_sync() for message in messages))
        server_2, client_2 = bench.process_cpu_seconds(bench.SERVER_PIDS[0]), time.process_time()
        left = (await js.stream_info(name)).state.messages
        if left:
            raise RuntimeError(f"{left} of {count} messages were left in the stream after every ack")
    finally:
        await bench_support.close_within(js.delete_stream(name))
        await bench_support.close_within(nc.close())
    micro = 1e6 / count
    return {"publish_server_us": (server_1 - server_0) * micro, "publish_client_us": (client_1 - client_0) * micro,
            "pull_ack_server_us": (server_2 - server_1) * micro, "pull_ack_client_us": (client_2 - client_1) * micro}


def main() -> None:
    parser = bench_support.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=bench_support.counts, default="1000,20000,50000",
                        help="messages queued per measurement, comma-separated")
    parser.add_argument("--batch", type=bench_support.positive_int, default=64, help="messages per pull")
    parser.add_argument("--rounds", type=bench_support.positive_int, default=1,
                        help="measurements of each layout at each count, alternated")
    parser.add_argument("--results", help="write the lines as JSON to this file")
    args = parser.parse_args()  # (--results is checked here: bench_support.BenchParser)
    lines: list[dict[str, Any]] = []
    with bench.local_server("nats", None) as url:
        for count in (int(c) for c in args.messages.split(",")):
            for round_ in range(args.rounds):
                for layout in LAYOUTS:
                    figures = bench_support.arun(measure(url, layout, count, args.batch))
                    lines.append({"messages": count, "layout": layout, "round": round_ + 1, **figures})
                    print(f"{count:>7,} queued  {layout:<12} publish: server {figures['publish_server_us']:6.1f} "
                          f"client {figures['publish_client_us']:6.1f} us/msg | pull+ack: server "
                          f"{figures['pull_ack_server_us']:6.1f} client {figures['pull_ack_client_us']:6.1f} us/msg",
                          flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps({"parameters": vars(args), "lines": lines}, indent=2) + "\n")


if __name__ == "__main__":
    bench_support.run(main)
