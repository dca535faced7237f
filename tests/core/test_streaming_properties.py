"""Properties of the stream's two bounded queues: the caller's buffer and the publisher's grouping."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_agents.core.events import GROUP_BYTES, GROUP_CHUNKS, _grouped
from distributed_agents.core.streaming import _Buffer

MODES = ["custom", "messages", "debug"]

puts = st.lists(st.one_of(
    st.tuples(st.just("chunk"), st.sampled_from(MODES), st.sampled_from([(), ("sub:1",)])),
    st.tuples(st.just("commit"), st.integers(0, 5)),
    st.tuples(st.just("end")),
), max_size=200)


@settings(max_examples=200, deadline=None)
@given(puts, st.integers(1, 8), st.lists(st.integers(0, 3), max_size=200))
def test_the_buffer_holds_at_most_its_limit_keeps_order_and_accounts_for_every_chunk(
    items: list[tuple[Any, ...]], limit: int, reads: list[int]
) -> None:
    """Interleaved puts and reads: live chunks never exceed the limit; what comes out is in order;
    each mode's delivered plus dropped chunks equal what was put; commits and ends are never dropped."""
    buffer = _Buffer(limit)
    out: list[list[Any]] = []
    reads_left = iter(reads)
    put_chunks: dict[str, list[int]] = {m: [] for m in MODES}
    markers = 0
    for number, item in enumerate(items):
        if item[0] == "chunk":
            put_chunks[item[1]].append(number)
            buffer.put(["chunk", item[1], number, item[2]])
        elif item[0] == "commit":
            buffer.put(["commit", item[1]])
            markers += 1
        else:
            buffer.put(["end", {}])
            markers += 1
        assert buffer.live <= limit
        for _ in range(next(reads_left, 0)):
            got = buffer.get()
            if got is not None:
                out.append(got)
    while (got := buffer.get()) is not None:
        out.append(got)
    delivered = [entry[2] for entry in out if entry[0] == "chunk"]
    assert delivered == sorted(delivered)  # order kept
    dropped: dict[str, int] = {m: 0 for m in MODES}
    for entry in out:
        if entry[0] == "gap":
            for mode, count in entry[1].dropped.items():
                dropped[mode] += count
    for mode in MODES:
        mine = [n for n in delivered if n in put_chunks[mode]]
        assert len(mine) + dropped[mode] == len(put_chunks[mode])
    if not any(reads):  # a consumer that reads only at the end gets the newest chunks
        every = sorted(n for numbers in put_chunks.values() for n in numbers)
        assert delivered == every[len(every) - min(limit, len(every)):]
    assert sum(1 for entry in out if entry[0] == "end") == sum(1 for item in items if item[0] == "end")
    assert buffer.dropped == sum(dropped.values())


items_strategy = st.lists(st.tuples(
    st.sampled_from(["stream.w.custom", "stream.w.messages", "events.w.node.started"]),
    st.integers(1, GROUP_BYTES // 3),
), max_size=600)


@settings(max_examples=200, deadline=None)
@given(items_strategy)
def test_grouping_keeps_every_message_in_order_within_the_size_bounds(items: list[tuple[str, int]]) -> None:
    queued = [(seq, channel, {"n": seq}, 0 if channel.startswith("events.") else size)
              for seq, (channel, size) in enumerate(items, 1)]
    messages = _grouped(queued)
    flat: list[tuple[str, int]] = []
    for channel, data in messages:
        if data.get("type") == "chunks":
            assert 1 < len(data["chunks"]) <= GROUP_CHUNKS and data["workflow_id"] == "w"
            sizes = [queued[int(c["n"]) - 1][3] for c in data["chunks"]]
            assert sum(sizes) <= GROUP_BYTES
            flat += [(channel, int(c["n"])) for c in data["chunks"]]
        else:
            flat.append((channel, int(data["n"])))
    assert flat == [(channel, seq) for seq, channel, _, _ in queued]
