"""Streaming in one process: every mode, several at once, order, the sync iterator, writers, errors, overflow."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from support.aio import run

from distributed_agents import (
    END,
    Command,
    Graph,
    NodeContext,
    Orchestrator,
    State,
    StreamGap,
    StreamGapError,
    get_stream_writer,
    interrupt,
)
from distributed_agents.adapters.memory.message_bus import BusData, MemoryMessageBus
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    NodeExecutionError,
    WorkflowCancelledError,
    WorkflowExistsError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from distributed_agents.core.events import EventPublisher

pytestmark = pytest.mark.timeout(60)


async def speak(state: State) -> dict[str, Any]:
    """An async node: tokens through get_stream_writer(), then a custom chunk."""
    writer = get_stream_writer()
    for token in ["Hel", "lo"]:
        writer.message(token, metadata={"model": "m1"})
    writer({"progress": 1.0})
    return {"said": "Hello"}


def count(state: State, context: NodeContext) -> dict[str, Any]:
    """A plain function (runs in a thread): its context's writer and emit_message."""
    for i in range(3):
        context.stream_writer({"i": i})
    context.emit_message("done")
    return {"counted": 3}


def two_steps() -> Graph:
    graph = Graph("talk").add_node("speak", speak).add_node("count", count)
    return graph.set_entry_point("speak").add_edge("speak", "count").set_finish_point("count").compile()


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def test_each_mode_alone_yields_langgraph_shaped_chunks() -> None:
    async def scenario() -> dict[str, list[Any]]:
        orchestrator = Orchestrator()
        out = {mode: await collect(orchestrator.astream(two_steps(), {"topic": "x"}, stream_mode=mode))
               for mode in ("values", "updates", "custom", "messages", "debug")}
        await orchestrator.close()
        return out

    out = run(scenario())
    assert out["values"] == [{"topic": "x"}, {"topic": "x", "said": "Hello"},
                             {"topic": "x", "said": "Hello", "counted": 3}]
    assert out["updates"] == [{"speak": {"said": "Hello"}}, {"count": {"counted": 3}}]
    assert out["custom"] == [{"progress": 1.0}, {"i": 0}, {"i": 1}, {"i": 2}]
    tokens = [(chunk, meta["node"], meta["step"]) for chunk, meta in out["messages"]]
    assert tokens == [("Hel", "speak", 0), ("lo", "speak", 0), ("done", "count", 1)]
    first = out["messages"][0][1]
    assert first["model"] == "m1" and first["run"] == 0 and first["attempt"] == 1
    assert re.fullmatch(rf"{re.escape(first['workflow_id'])}:0\.[0-9a-f]{{8}}:0:speak", first["task_id"])
    events = [(c["type"], c["event"], c["payload"].get("node")) for c in out["debug"]]
    assert events == [
        ("workflow", "workflow.started", None),
        ("task", "node.started", "speak"), ("task_result", "node.completed", "speak"), ("checkpoint", "step.committed", None),
        ("task", "node.started", "count"), ("task_result", "node.completed", "count"), ("checkpoint", "step.committed", None),
        ("workflow", "workflow.completed", None),
    ]
    finished = [c for c in out["debug"] if c["event"] == "node.completed"]
    assert all(c["payload"]["duration"] >= 0 and c["payload"]["attempts"] == 1 for c in finished)


def test_several_modes_come_tagged_in_order_tokens_before_their_step_values() -> None:
    async def scenario() -> list[Any]:
        orchestrator = Orchestrator()
        try:
            return await collect(orchestrator.astream(two_steps(), {}, stream_mode=["values", "updates", "messages"],
                                                      workflow_id="wf-tagged"))
        finally:
            await orchestrator.close()

    chunks = run(scenario())
    shown = [(mode, chunk if mode != "messages" else chunk[0]) for mode, chunk in chunks]
    assert shown == [  # no values for the empty input (LangGraph 1.2.24 yields none either)
        ("messages", "Hel"), ("messages", "lo"),
        ("updates", {"speak": {"said": "Hello"}}), ("values", {"said": "Hello"}),
        ("messages", "done"),
        ("updates", {"count": {"counted": 3}}), ("values", {"said": "Hello", "counted": 3}),
    ]
    assert all(meta["workflow_id"] == "wf-tagged" for mode, (_, meta) in
               [c for c in chunks if c[0] == "messages"])


def test_subgraphs_true_prefixes_the_root_namespace() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        orchestrator = Orchestrator()
        try:
            one = await collect(orchestrator.astream(two_steps(), {}, stream_mode="updates", subgraphs=True))
            several = await collect(orchestrator.astream(two_steps(), {}, stream_mode=["custom"], subgraphs=True))
            return one, several
        finally:
            await orchestrator.close()

    one, several = run(scenario())
    assert one == [((), {"speak": {"said": "Hello"}}), ((), {"count": {"counted": 3}})]
    assert several[0] == ((), "custom", {"progress": 1.0})


def test_sync_stream_is_a_plain_iterator_and_refused_inside_a_loop() -> None:
    orchestrator = Orchestrator()
    assert list(orchestrator.stream(two_steps(), {}, stream_mode="updates")) == [
        {"speak": {"said": "Hello"}}, {"count": {"counted": 3}}]
    assert not orchestrator._connected
    finished = orchestrator.invoke(two_steps(), {}, workflow_id="wf-sync")
    assert list(orchestrator.stream("wf-sync", stream_mode="values")) == [{"said": "Hello"}, dict(finished)]
    # Leaving early closes everything too.
    iterator = orchestrator.stream(two_steps(), {}, stream_mode="custom")
    assert next(iterator) == {"progress": 1.0}
    iterator.close()  # type: ignore[attr-defined]
    assert not orchestrator._connected

    async def inside_a_loop() -> None:
        with pytest.raises(ExecutionError, match="running event loop"):
            orchestrator.stream(two_steps(), {})

    run(inside_a_loop())


def test_unknown_modes_and_bad_arguments_are_refused_at_once_naming_the_valid_modes() -> None:
    orchestrator = Orchestrator()
    for bad in ("tokens", ["values", "token"], 3, None):
        with pytest.raises(ConfigurationError) as caught:
            orchestrator.astream(two_steps(), {}, stream_mode=bad)  # type: ignore[arg-type]
        assert "'values', 'updates', 'custom', 'messages', 'debug'" in str(caught.value)
    with pytest.raises(ConfigurationError, match="stream mode"):
        orchestrator.stream(two_steps(), {}, stream_mode="everything")
    with pytest.raises(ConfigurationError, match="attaches to a running workflow"):
        orchestrator.astream("wf-1", {"x": 1})
    with pytest.raises(ConfigurationError, match="workflow_id"):
        orchestrator.astream("bad id.with dots")


def test_an_empty_list_of_modes_runs_to_the_end_streaming_nothing() -> None:
    """LangGraph's stream(..., stream_mode=[]): the run goes on to its end (or pause), nothing is yielded."""
    ran: list[str] = []

    def ask(state: State) -> dict[str, Any]:
        ran.append("ask")
        return {"answer": interrupt("name?")}

    asking = Graph("asking").add_node("ask", ask).set_entry_point("ask").set_finish_point("ask").compile()

    async def scenario() -> None:
        orchestrator = Orchestrator()
        try:
            assert await collect(orchestrator.astream(two_steps(), {"topic": "x"}, stream_mode=[],
                                                      workflow_id="wf-none")) == []
            assert (await orchestrator.get_state("wf-none")).values["counted"] == 3  # both steps ran
            assert await collect(orchestrator.astream(asking, {}, stream_mode=[], workflow_id="wf-ask")) == []
            assert ran == ["ask"] and (await orchestrator.get_state("wf-ask")).next == ("ask",)  # paused
        finally:
            await orchestrator.close()

    run(scenario())
    assert list(Orchestrator().stream(two_steps(), {"topic": "x"}, stream_mode=[], subgraphs=True)) == []


def test_attaching_to_an_unknown_workflow_names_it() -> None:
    async def scenario() -> None:
        orchestrator = Orchestrator()
        try:
            with pytest.raises(WorkflowNotFoundError, match="cannot stream workflow 'nope'.*no such workflow"):
                await collect(orchestrator.astream("nope"))
        finally:
            await orchestrator.close()

    run(scenario())


def gated_graph(gate: asyncio.Event) -> Graph:
    async def first(state: State) -> dict[str, Any]:
        return {"n": 1}

    async def wait(state: State) -> dict[str, Any]:
        get_stream_writer()("waiting")
        await gate.wait()
        get_stream_writer()("released")
        return {"n": 2}

    graph = Graph("gated").add_node("first", first).add_node("wait", wait).add_node("last", lambda s: {"n": 3})
    graph.set_entry_point("first").add_edge("first", "wait").add_edge("wait", "last")
    return graph.set_finish_point("last").compile()


def test_attach_replays_then_follows_a_running_workflow_without_duplicates() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        gate = asyncio.Event()
        runner, watcher = Orchestrator(), Orchestrator()  # two orchestrators, one backend
        workflow_id = await runner.submit(gated_graph(gate), {}, workflow_id="wf-attach")
        stream = watcher.astream(workflow_id, stream_mode=["values", "updates", "custom"], poll_interval=0.1)
        seen = [await stream.__anext__() for _ in range(3)]  # the replay: input, step 1
        gate.set()
        seen += [chunk async for chunk in stream]
        finished = await collect(watcher.astream(workflow_id, stream_mode="values"))
        await runner.close()
        await watcher.close()
        return seen, finished

    seen, finished = run(scenario())
    assert seen[:2] == [("updates", {"first": {"n": 1}}), ("values", {"n": 1})]  # (no values for the empty input)
    assert [c for c in seen if c[0] != "custom"][2:] == [
        ("updates", {"wait": {"n": 2}}), ("values", {"n": 2}), ("updates", {"last": {"n": 3}}), ("values", {"n": 3})]
    assert ("custom", "released") in seen
    # A finished workflow is replayed, then the stream ends.
    assert finished == [{"n": 1}, {"n": 2}, {"n": 3}]


def failing_graph() -> Graph:
    def boom(state: State) -> dict[str, Any]:
        get_stream_writer()("about to fail")
        raise RuntimeError("kaput")

    graph = Graph("failing").add_node("ok", lambda s: {"a": 1}).add_node("boom", boom)
    return graph.set_entry_point("ok").add_edge("ok", "boom").set_finish_point("boom").compile()


def test_a_failing_workflow_streams_what_happened_then_raises_its_error() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        orchestrator = Orchestrator()
        got: list[Any] = []
        with pytest.raises(NodeExecutionError, match="kaput"):
            async for chunk in orchestrator.astream(failing_graph(), {}, stream_mode=["updates", "custom"],
                                                    workflow_id="wf-fail"):
                got.append(chunk)
        replayed: list[Any] = []
        with pytest.raises(WorkflowFailedError, match="wf-fail"):
            async for chunk in orchestrator.astream("wf-fail", stream_mode="updates"):
                replayed.append(chunk)
        await orchestrator.close()
        return got, replayed

    got, replayed = run(scenario())
    assert got == [("updates", {"ok": {"a": 1}}), ("custom", "about to fail")]
    assert replayed == [{"ok": {"a": 1}}]


def test_an_interrupt_ends_the_stream_and_a_resume_streams_the_state_it_resumes_from_then_the_new_steps() -> None:
    """As LangGraph 1.2 streams a resume (``Command(resume=...)``): the values it resumes from
    first, then the steps it runs; not the steps before the pause again."""
    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("name?")}

    graph = Graph("ask").add_node("ask", ask).set_entry_point("ask").set_finish_point("ask").compile()

    async def scenario() -> tuple[list[Any], list[Any]]:
        orchestrator = Orchestrator()
        paused = await collect(orchestrator.astream(graph, {}, stream_mode="updates", workflow_id="wf-ask"))
        resumed = await collect(orchestrator.astream(graph, Command(resume="Ada"), stream_mode=["updates", "values"],
                                                     workflow_id="wf-ask"))
        await orchestrator.close()
        return paused, resumed

    paused, resumed = run(scenario())
    assert len(paused) == 1 and paused[0]["__interrupt__"][0]["value"] == "name?"
    assert resumed == [("values", {}), ("updates", {"ask": {"answer": "Ada"}}), ("values", {"answer": "Ada"})]


def test_writer_refuses_what_is_not_json_and_takes_model_dump_objects() -> None:
    class Delta:
        def model_dump(self, mode: str = "python") -> dict[str, Any]:
            return {"content": "hi", "mode": mode}

    def node(state: State) -> dict[str, Any]:
        get_stream_writer().message(Delta())
        if state.get("bad"):
            get_stream_writer()({1, 2})
        return {}

    graph = Graph("w").add_node("n", node).set_entry_point("n").set_finish_point("n").compile()

    async def scenario() -> list[Any]:
        orchestrator = Orchestrator()
        try:
            tokens = await collect(orchestrator.astream(graph, {}, stream_mode="messages"))
            with pytest.raises(NodeExecutionError, match="streamed a chunk of type set, which is not JSON"):
                await orchestrator.execute(graph, {"bad": True})
            return tokens
        finally:
            await orchestrator.close()

    tokens = run(scenario())
    assert tokens[0][0] == {"content": "hi", "mode": "json"}
    with pytest.raises(ExecutionError, match="outside a node"):
        get_stream_writer()


def test_a_slow_consumer_gets_the_newest_chunks_and_a_gap_for_the_dropped_ones() -> None:
    def chatty(state: State) -> dict[str, Any]:
        writer = get_stream_writer()
        for i in range(50):
            writer(i)
        return {"done": True}

    graph = Graph("chatty").add_node("talk", chatty).set_entry_point("talk").set_finish_point("talk").compile()

    async def scenario() -> list[Any]:
        orchestrator = Orchestrator()
        stream = orchestrator.astream(graph, {}, stream_mode=["custom", "values"], buffer_size=5,
                                      workflow_id="wf-slow", on_gap="yield")
        first = await stream.__anext__()
        while (await orchestrator.get_workflow_status("wf-slow")).status != "completed":
            await asyncio.sleep(0.01)  # the consumer is busy meanwhile: everything piles up
        rest = [chunk async for chunk in stream]
        await orchestrator.close()
        return [first, *rest]

    chunks = run(scenario())
    gaps = [chunk for mode, chunk in chunks if mode == "gap"]
    kept = [chunk for mode, chunk in chunks if mode == "custom"]
    assert len(gaps) == 1 and isinstance(gaps[0], StreamGap) and gaps[0].source == "caller"
    assert gaps[0].dropped["custom"] + len(kept) == 50 and len(kept) <= 5
    assert kept == list(range(50 - len(kept), 50))  # the newest, in order
    assert chunks[-1] == ("values", {"done": True})  # values are never dropped


class _StalledBus(MemoryMessageBus):
    """A bus whose publishing waits for ``release``: a network that cannot keep up."""

    def __init__(self) -> None:
        super().__init__(BusData())
        self.release = asyncio.Event()

    async def publish_many(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        await self.release.wait()
        await super().publish_many(messages)


def test_a_writer_whose_bus_stalls_drops_its_oldest_chunks_and_reports_them() -> None:
    async def scenario() -> list[dict[str, Any]]:
        bus = _StalledBus()
        subscription = await bus.subscribe("stream.wf-w.>")
        publisher = EventPublisher(bus, chunk_limit=3)
        publisher.start()
        first = publisher.emit_chunk("wf-w", "custom", {"chunk": 0})
        await asyncio.sleep(0)  # the pump takes chunk 0 and stalls publishing it
        for i in range(1, 11):
            publisher.emit_chunk("wf-w", "custom", {"chunk": i})
        assert await publisher.wait_published(first, timeout=0.05) is False
        bus.release.set()
        await publisher.close()
        got = []
        while (message := await subscription.get(timeout=0)) is not None:
            got.append(dict(message.data))
        return got

    got = run(scenario())
    assert got[0] == {"chunk": 0}
    assert got[1]["type"] == "gap" and got[1]["dropped"] == {"custom": 7}
    # The chunks queued meanwhile go out as one message, in order.
    assert got[2]["type"] == "chunks" and [m["chunk"] for m in got[2]["chunks"]] == [8, 9, 10] and len(got) == 3


class _ConsumerError(Exception):
    pass


async def _leave(stream: Any, how: str) -> None:
    """Take the first chunk of ``stream``, then leave the loop the way ``how`` says."""
    if how == "break":
        async for _ in stream:
            break
    elif how == "aclose":
        await stream.__anext__()
        await stream.aclose()
    elif how == "raise":
        with contextlib.suppress(_ConsumerError):
            async for _ in stream:
                raise _ConsumerError("the consumer failed")
    else:  # "drop": the iterator is left to the garbage collector
        await stream.__anext__()
        del stream
        gc.collect()
    await asyncio.sleep(0)


@pytest.mark.parametrize("how", ["break", "aclose", "raise", "drop"])
def test_leaving_the_loop_early_leaves_the_workflow_running_to_its_end(how: str) -> None:
    async def scenario() -> tuple[str, dict[str, Any], bool]:
        gate = asyncio.Event()
        orchestrator = Orchestrator()
        try:
            await _leave(orchestrator.astream(gated_graph(gate), {}, stream_mode="custom", workflow_id="wf-left"),
                         how)
            status = (await orchestrator.get_workflow_status("wf-left")).status
            gate.set()  # the node finishes after the consumer left: someone still drives it
            final = await orchestrator.wait("wf-left", timeout=20)
            return status, dict(final), bool(await orchestrator.list_workflows("active"))
        finally:
            await orchestrator.close()

    status, final, active = run(scenario())
    assert status == "running" and final == {"n": 3} and not active


def test_a_workflow_whose_stream_was_left_is_cancelled_like_a_submitted_one() -> None:
    async def scenario() -> str:
        gate = asyncio.Event()
        orchestrator = Orchestrator()
        try:
            await _leave(orchestrator.astream(gated_graph(gate), {}, stream_mode="custom", workflow_id="wf-lc"),
                         "break")
            assert await orchestrator.cancel_workflow("wf-lc")
            with pytest.raises(WorkflowCancelledError):
                await orchestrator.wait("wf-lc", timeout=20)
            gate.set()
            return (await orchestrator.get_workflow_status("wf-lc")).status
        finally:
            await orchestrator.close()

    assert run(scenario()) == "cancelled"


def test_leaving_a_sync_stream_early_releases_the_lease_so_resume_continues_at_once() -> None:
    gate = threading.Event()

    def wait(state: State) -> dict[str, Any]:
        get_stream_writer()("waiting")
        gate.wait(10)
        return {"n": 2}

    graph = Graph("sync-left").add_node("wait", wait).add_node("last", lambda s: {"n": 3})
    graph = graph.set_entry_point("wait").add_edge("wait", "last").set_finish_point("last").compile()
    orchestrator = Orchestrator(lease_ttl=600)  # an expiring lease would hide a held one
    for chunk in orchestrator.stream(graph, {}, stream_mode="custom", workflow_id="wf-sync-left"):
        assert chunk == "waiting"
        gate.set()
        break
    # The stream's event loop ended with the loop: the workflow is left running, its lease free.
    assert orchestrator.sync.get_workflow_status("wf-sync-left").status == "running"

    async def lease_is_free() -> bool:
        lease = await orchestrator.backend.state_store.acquire_lease("wf-sync-left", "someone", 5)
        if lease is not None:
            await orchestrator.backend.state_store.release_lease(lease)
        return lease is not None

    assert run(lease_is_free())
    assert orchestrator.sync.resume("wf-sync-left", graph)["n"] == 3


def test_subgraph_chunks_and_steps_carry_their_namespace_only_with_subgraphs_true() -> None:
    def inner_node(state: State) -> dict[str, Any]:
        get_stream_writer()({"inside": True})
        get_stream_writer().message("sub-token")
        return {"inner": 1}

    child = Graph("child").add_node("work", inner_node).set_entry_point("work").set_finish_point("work").compile()
    parent = Graph("parent").add_node("before", lambda s: {"before": 1}).add_node("sub", child)
    parent = parent.set_entry_point("before").add_edge("before", "sub").set_finish_point("sub").compile()

    async def scenario() -> tuple[list[Any], list[Any]]:
        orchestrator = Orchestrator()
        try:
            hidden = await collect(orchestrator.astream(parent, {}, stream_mode=["custom", "updates"]))
            shown = await collect(orchestrator.astream(parent, {}, stream_mode=["custom", "messages", "updates"],
                                                       subgraphs=True))
            return hidden, shown
        finally:
            await orchestrator.close()

    hidden, shown = run(scenario())
    assert hidden == [("updates", {"before": {"before": 1}}), ("updates", {"sub": {"before": 1, "inner": 1}})]
    inside = [(ns, mode) for ns, mode, chunk in shown if ns]
    assert len({ns for ns, _ in inside}) == 1 and inside[0][0][0].startswith("sub:")
    assert [mode for _, mode in inside] == ["custom", "messages", "updates"]
    assert ((), "updates", {"sub": {"before": 1, "inner": 1}}) in shown
    assert (inside[0][0], "updates", {"work": {"inner": 1}}) in shown


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_other_durability_modes_stream_what_their_checkpoints_hold(durability: str) -> None:
    async def scenario() -> list[Any]:
        orchestrator = Orchestrator()
        try:
            return await collect(orchestrator.astream(two_steps(), {}, stream_mode=["values", "custom"],
                                                      durability=durability))
        finally:
            await orchestrator.close()

    chunks = run(scenario())
    values = [chunk for mode, chunk in chunks if mode == "values"]
    assert [chunk for mode, chunk in chunks if mode == "custom"] == [{"progress": 1.0}, {"i": 0}, {"i": 1}, {"i": 2}]
    expected = [{"said": "Hello"}, {"said": "Hello", "counted": 3}]  # (no values for the empty input)
    assert values == (expected if durability == "async" else [expected[1]])


def test_streaming_a_new_run_under_a_taken_id_is_refused_at_the_first_chunk() -> None:
    async def scenario() -> None:
        orchestrator = Orchestrator()
        try:
            await orchestrator.execute(two_steps(), {}, workflow_id="wf-taken")
            with pytest.raises(WorkflowExistsError, match="'wf-taken' already exists.*astream\\('wf-taken'\\)"):
                await collect(orchestrator.astream(two_steps(), {}, workflow_id="wf-taken"))
        finally:
            await orchestrator.close()

    run(scenario())


def test_chunks_a_writer_dropped_are_reported_to_the_caller_as_a_writer_gap() -> None:
    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        orchestrator = Orchestrator()
        stream = orchestrator.astream(gated_graph(gate), {}, stream_mode="custom", workflow_id="wf-wgap",
                                      on_gap="yield")
        got = [await stream.__anext__()]  # "waiting": the node runs
        # What a worker's publisher sends after dropping chunks it could not publish in time.
        await orchestrator.backend.message_bus.publish(
            "stream.wf-wgap.gap", {"type": "gap", "workflow_id": "wf-wgap", "dropped": {"custom": 3, "messages": 2}})
        gate.set()
        got += [chunk async for chunk in stream]
        await orchestrator.close()
        return got

    got = run(scenario())
    assert got[0] == "waiting" and got[2] == "released"
    assert got[1] == StreamGap({"custom": 3}, "writer", "wf-wgap")  # only the modes asked for


def test_a_backend_url_given_where_the_registry_or_node_types_go_is_refused_pointing_to_backend() -> None:
    from distributed_agents import NodeRegistry
    from distributed_agents.core.worker import Worker
    from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

    for url in ("redis://127.0.0.1:1/0", "nats://127.0.0.1:1", "memory://"):
        with pytest.raises(ConfigurationError, match=f"Orchestrator\\(backend='{url}'\\)"):
            Orchestrator(url)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=f"Worker\\(backend='{url}'\\)"):
            Worker(url)
    with pytest.raises(ConfigurationError, match="takes a NodeRegistry, got dict"):
        Orchestrator({"llm": len})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="registry=registry"):
        Worker(NodeRegistry())  # type: ignore[arg-type]
    for facade in (DistributedOrchestrator, DistributedWorker):
        with pytest.raises(ConfigurationError, match="redis_url must be a backend URL.*registry="):
            facade(NodeRegistry())  # type: ignore[arg-type]
    assert Orchestrator(NodeRegistry(), backend="memory://").registry is not None


def _flooding_graph(tokens: int, *, in_thread: bool) -> Graph:
    """One node bursting ``tokens`` messages without pausing (in a thread, or async never awaiting)."""
    def burst() -> dict[str, Any]:
        writer = get_stream_writer()
        for i in range(tokens):
            writer.message(f"t{i}", metadata={"i": i})
        return {"sent": tokens}

    async def burst_async(state: State) -> dict[str, Any]:
        return burst()

    graph = Graph("flood").add_node("talk", (lambda state: burst()) if in_thread else burst_async)
    return graph.set_entry_point("talk").set_finish_point("talk").compile()


# The default run bursts past both old bounds (10,000 chunks); the thorough profile sends 100,000.
BURST = 100_000 if os.environ.get("DA_TEST_PROFILE") == "thorough" else 25_000


@pytest.mark.parametrize("in_thread", [True, False], ids=["thread-node", "async-node-never-awaiting"])
def test_a_burst_of_tokens_reaches_a_consumer_that_keeps_up_intact(in_thread: bool) -> None:
    async def scenario() -> tuple[list[int], dict[str, int]]:
        orchestrator = Orchestrator()
        try:
            stream = orchestrator.astream(_flooding_graph(BURST, in_thread=in_thread), {}, stream_mode="messages",
                                          on_gap="raise")
            got = [metadata["i"] async for token, metadata in stream]  # the README idiom
            return got, stream.dropped
        finally:
            await orchestrator.close()

    got, dropped = run(scenario(), timeout=100)
    assert got == list(range(BURST)) and dropped == {}


def _slow_consumer_stream(orchestrator: Orchestrator, stream_mode: Any, **options: Any) -> Any:
    return orchestrator.astream(_flooding_graph(300, in_thread=True), {}, stream_mode=stream_mode, buffer_size=10,
                                **options)


async def _read_slowly(stream: Any) -> list[Any]:
    out = []
    async for chunk in stream:
        out.append(chunk)
        await asyncio.sleep(0.001)  # slower than the node: the buffer of 10 overflows
    return out


@pytest.mark.parametrize("stream_mode", ["messages", ["messages", "updates"]])
def test_gaps_never_change_the_documented_chunk_shapes_and_are_reported_on_the_stream(
        stream_mode: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[Any], Any]:
        orchestrator = Orchestrator()
        try:
            stream = _slow_consumer_stream(orchestrator, stream_mode)
            return await _read_slowly(stream), stream
        finally:
            await orchestrator.close()

    with caplog.at_level("WARNING", logger="distributed_agents.streaming"):
        chunks, stream = run(scenario())
    if isinstance(stream_mode, str):
        tokens = [token for token, metadata in chunks]  # the README idiom never meets a gap
    else:
        assert {mode for mode, _ in chunks} == {"messages", "updates"}
        tokens = [chunk[0] for mode, chunk in chunks if mode == "messages"]
    assert stream.gaps and all(gap.source == "caller" for gap in stream.gaps)
    assert len(tokens) + stream.dropped["messages"] == 300  # every chunk delivered or counted
    assert "buffer of 10 live chunks (buffer_size) was full" in caplog.text


def test_on_gap_raise_yield_and_a_callable() -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[StreamGap]]:
        orchestrator = Orchestrator()
        try:
            with pytest.raises(StreamGapError, match="live chunk\\(s\\) dropped.*buffer_size") as raised:
                await _read_slowly(_slow_consumer_stream(orchestrator, "messages", on_gap="raise"))
            assert raised.value.gap.source == "caller"
            yielded = await _read_slowly(_slow_consumer_stream(orchestrator, ["messages", "values"], on_gap="yield"))
            called: list[StreamGap] = []
            plain = await _read_slowly(_slow_consumer_stream(orchestrator, "messages", on_gap=called.append))
            return yielded, plain, called
        finally:
            await orchestrator.close()

    yielded, plain, called = run(scenario())
    assert any(mode == "gap" and isinstance(chunk, StreamGap) for mode, chunk in yielded)
    assert called and all(isinstance(chunk, tuple) for chunk in plain)
    assert len(plain) + sum(gap.dropped["messages"] for gap in called) == 300
    with pytest.raises(ConfigurationError, match="on_gap='ignore'.*'warn'"):
        Orchestrator().astream(two_steps(), {}, on_gap="ignore")


def _nested_graph() -> Graph:
    """root: before -> outer (subgraph: prep -> inner (subgraph: work)) -> after."""
    inner = Graph("inner").add_node("work", lambda s: {"inner": 1}).set_entry_point("work").set_finish_point("work")
    outer = Graph("outer").add_node("prep", lambda s: {"prep": 1}).add_node("inner", inner.compile())
    outer = outer.set_entry_point("prep").add_edge("prep", "inner").set_finish_point("inner")
    root = Graph("root").add_node("before", lambda s: {"before": 1}).add_node("outer", outer.compile())
    root = root.add_node("after", lambda s: {"after": 1}).set_entry_point("before").add_edge("before", "outer")
    return root.add_edge("outer", "after").set_finish_point("after").compile()


def test_attaching_with_subgraphs_replays_every_subgraph_step_in_order_as_it_streamed_live() -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        orchestrator = Orchestrator()
        try:
            modes = ["values", "updates"]
            live = await collect(orchestrator.astream(_nested_graph(), {}, stream_mode=modes, subgraphs=True,
                                                      workflow_id="wf-nest"))
            replayed = await collect(orchestrator.astream("wf-nest", stream_mode=modes, subgraphs=True))
            root_only = await collect(orchestrator.astream("wf-nest", stream_mode=modes))
            return live, replayed, root_only
        finally:
            await orchestrator.close()

    live, replayed, root_only = run(scenario())
    assert replayed == live
    depths = [len(ns) for ns, _, _ in live]
    assert max(depths) == 2  # the inner subgraph, inside the outer one
    outer_ns = next(ns for ns, _, _ in live if len(ns) == 1)
    inner_ns = next(ns for ns, _, _ in live if len(ns) == 2)
    assert inner_ns[0] == outer_ns[0] and outer_ns[0].startswith("outer:") and inner_ns[1].startswith("inner:")
    # Each subgraph's first values are its input (LangGraph's), before its first update.
    assert [c for ns, m, c in live if ns == outer_ns][:2] == [{"before": 1}, {"prep": {"prep": 1}}]
    assert [(m, c) for ns, m, c in live if ns == inner_ns] == [
        ("values", {"before": 1, "prep": 1}), ("updates", {"work": {"inner": 1}}),
        ("values", {"before": 1, "prep": 1, "inner": 1})]
    # Subgraph chunks come between the step that ran them and the next root step.
    root_chunks = [(m, c) for ns, m, c in live if not ns]
    assert root_chunks == root_only
    first_sub, last_sub = depths.index(1), len(depths) - 1 - depths[::-1].index(1)
    assert live[first_sub - 1] == ((), "values", {"before": 1})
    assert live[last_sub + 1][:2] == ((), "updates") and "outer" in live[last_sub + 1][2]


def test_a_client_without_the_graph_is_asked_for_it_by_update_state_fork_and_resume_only() -> None:
    async def scenario() -> None:
        runner, client = Orchestrator(), Orchestrator()  # one backend; the client never saw the graph
        try:
            await runner.execute(two_steps(), {"topic": "x"}, workflow_id="wf-client", interrupt_before=["count"])
            history = await client.get_state_history("wf-client")  # an id is enough to read
            assert (await client.get_state("wf-client")).next == ("count",)
            assert [c async for c in client.astream("wf-client", stream_mode="updates")][0] == {
                "speak": {"said": "Hello"}}
            checkpoint = history[0].checkpoint_id
            for call in (lambda: client.update_state("wf-client", {"topic": "y"}, as_node="speak"),
                         lambda: client.fork(checkpoint), lambda: client.resume("wf-client")):
                with pytest.raises(ConfigurationError, match="needs the graph 'talk'.*graph"):
                    await call()
            await client.update_state("wf-client", {"topic": "y"}, as_node="speak", graph=two_steps())
            assert await client.fork(checkpoint, graph=two_steps())
            assert (await client.resume("wf-client", two_steps()))["topic"] == "y"
        finally:
            await runner.close()
            await client.close()

    run(scenario())


def test_a_consumer_slower_than_the_workflow_still_gets_each_steps_tokens_before_its_values() -> None:
    """The reader may be steps behind the workflow: a commit it reads yields values up to that step only."""

    async def talk(state: State) -> dict[str, Any]:
        turn = int(state.get("turn", 0))
        get_stream_writer().message(f"token {turn}")
        return {"turn": turn + 1}

    graph = Graph("slow_reader").add_node("talk", talk)
    graph = graph.add_conditional_edge("talk", lambda s: "talk" if s["turn"] < 5 else END, ["talk", END])
    graph = graph.set_entry_point("talk").compile()

    async def scenario() -> list[Any]:
        orchestrator = Orchestrator()
        shown = []
        try:
            async for mode, chunk in orchestrator.astream(graph, {}, stream_mode=["values", "messages"]):
                shown.append((mode, chunk["turn"] if mode == "values" and "turn" in chunk else
                              chunk[0] if mode == "messages" else None))
                if len(shown) == 1:
                    await asyncio.sleep(0.3)  # the workflow runs to its end meanwhile
        finally:
            await orchestrator.close()
        return shown

    expected: list[Any] = []  # (no values for the empty input, as LangGraph)
    for turn in range(5):
        expected += [("messages", f"token {turn}"), ("values", turn + 1)]
    assert run(scenario()) == expected
