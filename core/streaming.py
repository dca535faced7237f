"""Reading a workflow's stream: ``Orchestrator.astream`` / ``stream`` build on ``StreamReader``.

Modes (LangGraph's names and shapes):

* ``values``: the workflow's values (as ``execute`` returns them) after each committed
  step, starting with the input (step 0); a pause in ``interrupt()`` adds those values
  once more with ``"__interrupt__"`` (its pauses), as LangGraph does (a static breakpoint
  adds nothing);
* ``updates``: ``{node: what it returned}`` per task of each committed step, in merge
  order; a pause adds ``{"__interrupt__": [{"id", "node", "value", "kind"}]}``;
* ``custom``: what nodes emit with their ``StreamWriter`` (``writer(chunk)``);
* ``messages``: ``(chunk, metadata)`` per ``writer.message(chunk)``: metadata has
  ``workflow_id``, ``node``, ``step``, ``task_id``, ``run``, ``attempt`` (and the
  node's own metadata);
* ``debug``: ``{"type": "task" | "task_result" | "checkpoint" | "workflow", "event",
  "step", "timestamp", "payload"}`` per event (task start, finish with timing, commit);
* ``checkpoints``: per committed checkpoint, LangGraph's shape of it: ``{"config",
  "parent_config", "values", "metadata", "next", "tasks": [{"id", "name", "interrupts",
  "state"}]}`` (what ``get_state`` returns for that checkpoint, as a dict);
* ``tasks``: LangGraph's task events: ``{"id", "name", "input", "triggers"}`` as a step's
  task starts (``input`` the state, or a ``Send``'s argument; ``triggers``
  ``["branch:to:<node>"]``, or ``["__pregel_push"]`` for a ``Send``), then ``{"id", "name",
  "error", "result", "interrupts"}`` once it ended (``result`` its writes; ``interrupts``
  the ``{"value", "id"}`` of its ``interrupt()`` pauses; ``error`` the failure's message).
  Ids are ``PregelTask`` ids (``get_state().tasks``). Read from the checkpoints like
  ``values``, a task's start comes when its step committed (or paused, or failed), right
  before its result, in LangGraph's order (checkpoint, starts, results, next checkpoint);
  a task paused before it ran (a breakpoint) has none until it runs.

One mode yields chunks; a list of modes yields ``(mode, chunk)``; ``subgraphs=True``
prefixes a namespace tuple (``(namespace, chunk)`` or ``(namespace, mode, chunk)``, the
root graph's being ``()``); without it, chunks from inside subgraphs are left out.

Where chunks come from: ``values``/``updates``/``checkpoints``/``tasks`` from the checkpoints (a ``step.committed``
event says when to read them; silences are covered by reading the workflow record every
``poll_interval`` seconds), so none is ever missed or repeated (each step is emitted
once, in order, from the checkpoint store); ``custom``/``messages``/``debug`` live from
the bus. The reader subscribes to ``*.<workflow_id>.>`` before the workflow starts (or
before it replays, when attaching), so nothing a node emits is lost before it reads.

A slow consumer never stalls anything: a background task moves bus messages into a
buffer of at most ``buffer_size`` live chunks (custom, messages, debug), handing the
event loop to the consumer after each bus message so a consumer that keeps up drains it
as it fills; past that the oldest live chunk is dropped. ``values``/``updates`` are never
dropped: they are read from the store when the consumer gets to them. A writer whose
process could not publish in time (its own bound, see ``core.events``) drops chunks too
(``StreamGap.source == "writer"``).

A drop is never silent, and never breaks the shapes above: each is logged as a warning
naming the side that overflowed, recorded on the stream (``ChunkStream.gaps`` /
``dropped``), and handled as ``on_gap`` says: ``"warn"`` (the default: nothing in the
stream), ``"raise"`` (``StreamGapError`` at that point of the stream), ``"yield"`` (a
``StreamGap`` where the chunks would have been: bare in a one-mode stream, ``("gap",
StreamGap)`` with several modes, prefixed by its namespace with ``subgraphs=True``), or
a callable, called with the ``StreamGap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from distributed_agents.core.backoff import Outage, until_available
from distributed_agents.core import history
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from distributed_agents.core.interrupts import PendingInterrupt, read_interrupts
from distributed_agents.core.ports.message_bus import BusMessage, MessageBus, Subscription
from distributed_agents.core.ports.state_store import Checkpoint, StateStore, WorkflowRecord, WorkflowStatus
from distributed_agents.core.subgraphs import NAMESPACE_KEY, SUBGRAPHS_KEY, children_of, is_child_of
from distributed_agents.core.types import INTERRUPT_KEY, read_output
from distributed_agents.core.timeouts import wait_within

__all__ = ["DEFAULT_BUFFER_SIZE", "STREAM_MODES", "ChunkStream", "OnGap", "StreamGap", "StreamGapError", "StreamReader",
           "check_on_gap", "parse_stream_mode"]

log = logging.getLogger("distributed_agents.streaming")

T = TypeVar("T")

STREAM_MODES = ("values", "updates", "custom", "messages", "debug", "checkpoints", "tasks")
# The modes read from the checkpoints (the others come live from the bus).
_STEP_MODES = frozenset({"values", "updates", "checkpoints", "tasks"})
DEFAULT_BUFFER_SIZE = 10_000  # live chunks held for a slow consumer before the oldest are dropped
END_GRACE = 5.0  # seconds to wait for the end event once the driving task returned
_END_EVENTS = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.interrupted"})
_DEBUG_TYPES = {"node.started": "task", "node.completed": "task_result", "node.failed": "task_result",
                "step.committed": "checkpoint"}


@dataclass(frozen=True)
class StreamGap:
    """Chunks that were dropped, yielded where they would have been.

    ``dropped`` maps each mode (``custom``, ``messages``, ``debug``) to how many of its
    chunks were lost; ``source`` is ``"caller"`` (this stream's buffer was full: the
    consumer was slower than the workflow) or ``"writer"`` (the node's process could not
    publish them in time). Values and updates are never dropped.
    """

    dropped: Mapping[str, int]
    source: str
    workflow_id: str
    namespace: tuple[str, ...] = ()


class StreamGapError(ExecutionError):
    """Live chunks were dropped from a stream read with ``on_gap="raise"``; ``gap`` says which."""

    def __init__(self, message: str, gap: StreamGap) -> None:
        super().__init__(message)
        self.gap = gap


OnGap = str | Callable[[StreamGap], object]
_ON_GAP = ("warn", "raise", "yield")


def check_on_gap(on_gap: OnGap) -> OnGap:
    """``on_gap`` if it is ``"warn"``, ``"raise"``, ``"yield"`` or a callable; else ``ConfigurationError``."""
    if callable(on_gap) or on_gap in _ON_GAP:
        return on_gap
    raise ConfigurationError(
        f"on_gap={on_gap!r} is not a way to report dropped chunks; use 'warn' (log, count on the stream), 'raise' "
        "(StreamGapError), 'yield' (a StreamGap in the stream) or a callable taking the StreamGap")


class ChunkStream(AsyncIterator[Any]):
    """What ``astream`` returns: an async iterator of chunks, with the gaps it met.

    ``gaps`` lists every ``StreamGap`` so far, ``dropped`` sums them by mode; ``aclose()``
    closes it (as an async generator's).
    """

    def __init__(self, chunks: AsyncIterator[Any], gaps: list[StreamGap]) -> None:
        self._chunks = chunks
        self.gaps = gaps

    @property
    def dropped(self) -> dict[str, int]:
        """Live chunks dropped so far, by mode (both sides: this stream's buffer and the writers')."""
        total: dict[str, int] = {}
        for gap in self.gaps:
            for mode, count in gap.dropped.items():
                total[mode] = total.get(mode, 0) + count
        return total

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop reading; see ``Orchestrator.astream`` for what happens to the workflow."""
        closing = getattr(self._chunks, "aclose", None)
        if closing is not None:
            await closing()


def parse_stream_mode(stream_mode: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``(modes, tagged)``: the modes asked for, and whether chunks come as ``(mode, chunk)``.

    An empty list asks for none: the run goes to its end streaming nothing (LangGraph's
    ``stream(..., stream_mode=[])``). ``ConfigurationError`` naming the valid modes for
    anything else.
    """
    tagged = not isinstance(stream_mode, str)
    listed = isinstance(stream_mode, (list, tuple))
    modes = (stream_mode,) if isinstance(stream_mode, str) else tuple(stream_mode) if listed else ()
    unknown = [m for m in modes if m not in STREAM_MODES]
    if not (modes or listed) or unknown:
        shown = ", ".join(map(repr, unknown)) if unknown else repr(stream_mode)
        raise ConfigurationError(
            f"stream_mode {shown} is not a stream mode; use one of {', '.join(map(repr, STREAM_MODES))}, "
            "or a list of them (then chunks come as (mode, chunk) pairs)")
    return tuple(dict.fromkeys(modes)), tagged


@dataclass
class _Gap:
    dropped: dict[str, int]
    source: str
    namespace: tuple[str, ...] = ()


@dataclass
class _Buffer:
    """Items in arrival order: ("chunk", mode, value, ns), ("gap", _Gap), ("commit", step), ("end", event),
    ("subcommit", child workflow id, step, ns)."""

    limit: int
    items: deque[list[Any]] = field(default_factory=deque)
    live: int = 0  # chunk items held
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def put(self, item: list[Any]) -> None:
        if item[0] == "commit" and self.items and self.items[-1][0] == "commit":
            self.items[-1][1] = max(self.items[-1][1], item[1])  # consecutive commits: the later says it all
        else:
            self.items.append(item)
            if item[0] == "chunk":
                self.live += 1
                if self.live > self.limit:
                    self._drop_oldest()
        self.ready.set()

    def _drop_oldest(self) -> None:
        for index, item in enumerate(self.items):
            if item[0] != "chunk":
                continue
            mode, namespace = item[1], item[3]
            self.live -= 1
            self.dropped += 1
            before = self.items[index - 1] if index else None
            if before is not None and before[0] == "gap" and before[1].source == "caller" \
                    and before[1].namespace == namespace:
                before[1].dropped[mode] = before[1].dropped.get(mode, 0) + 1
                del self.items[index]
            else:
                self.items[index] = ["gap", _Gap({mode: 1}, "caller", namespace)]
            return

    def get(self) -> list[Any] | None:
        if not self.items:
            self.ready.clear()
            return None
        item = self.items.popleft()
        if item[0] == "chunk":
            self.live -= 1
        return item


class StreamReader:
    """Follows one workflow: bus messages into a bounded buffer, checkpoints on demand.

    ``open()`` subscribes (call it before the workflow starts or is replayed);
    ``chunks(...)`` yields what the modes ask for until the workflow ends; ``close()``
    unsubscribes. See the module docstring for what is yielded.
    """

    def __init__(
        self, store: StateStore, bus: MessageBus, workflow_id: str, stream_mode: str | Sequence[str], *,
        subgraphs: bool = False, buffer_size: int = DEFAULT_BUFFER_SIZE, poll_interval: float = 1.0,
        on_gap: OnGap = "warn",
    ) -> None:
        self.modes, self.tagged = parse_stream_mode(stream_mode)
        self.on_gap = check_on_gap(on_gap)
        self.gaps: list[StreamGap] = []  # every gap met, whatever on_gap says
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigurationError(f"buffer_size must be an int >= 1 (live chunks held), got {buffer_size!r}")
        self._store = store
        self._bus = bus
        self.workflow_id = workflow_id
        self.subgraphs = subgraphs
        self.poll_interval = poll_interval
        self._buffer = _Buffer(buffer_size)
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._last = -1  # the last step whose values/updates were yielded
        # The last step a live chunk asked the values/updates before it for (``_take``).
        self._announced = -1
        self._wants_steps = bool(_STEP_MODES & set(self.modes))
        self._namespaces: dict[str, tuple[str, ...]] = {}  # subgraph workflow id -> its namespace
        self._sub_steps: set[tuple[str, int]] = set()  # (subgraph workflow id, step) whose chunks were yielded
        self._started: set[str] = set()  # ids of the tasks whose "tasks" start was yielded
        # (step, task keys) of a resumed step whose finished tasks' writes were kept: streamed by the
        # run that paused (``_finish``), so the resumed step's commit does not stream them again.
        self._kept: tuple[int, frozenset[str]] = (-1, frozenset())
        # The stream rides out a backend outage as the workflow's driver does: its reads of
        # the store wait for the backend (core.backoff) instead of ending the stream.
        self._outage = Outage(log, f"stream of workflow {workflow_id!r}")

    @property
    def dropped(self) -> int:
        """Live chunks this reader dropped because its consumer was slower than the workflow."""
        return self._buffer.dropped

    async def _read_store(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """``await call()`` (a read of the store), repeated with backoff while the backend is
        unavailable (``core.backoff.until_available``, the orchestrator's own policy): an
        outage of any length delays the stream, it does not end it. Cancellable."""
        return await until_available(call, what=what, outage=self._outage)

    async def open(self) -> None:
        """Subscribe to the workflow's events and stream chunks; delivery starts before this returns."""
        self._subscription = await self._bus.subscribe(f"*.{self.workflow_id}.>")
        self._pump = asyncio.ensure_future(self._read(self._subscription))

    async def close(self) -> None:
        """Stop reading the bus. Idempotent."""
        # The subscription is closed first: its reader then ends by itself, even where a
        # cancellation racing a delivery is swallowed (asyncio.wait_for before Python 3.12).
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()
            self._subscription = None
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
            self._pump = None

    async def _read(self, subscription: Subscription) -> None:
        async for message in subscription:
            try:
                await self._take(message)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
                # Anyone who can publish on the bus can send a JSON object of any shape: a
                # malformed one is dropped, and the stream goes on with the next message.
                log.warning("stream of workflow %s dropped a malformed message on %r: %s: %s", self.workflow_id,
                            message.channel[:200], type(exc).__name__, str(exc)[:200])

    async def _take(self, message: BusMessage) -> None:
        """Buffer what one bus message means for this stream; raises on a malformed message."""
        kind, _, rest = message.channel.partition(".")
        data = message.data
        namespace = tuple(str(part) for part in data.get("namespace") or ())
        if namespace and not self.subgraphs:
            return
        if kind == "stream":
            mode = rest.rpartition(".")[2]
            if mode in self.modes:
                for one in data.get("chunks") or () if data.get("type") == "chunks" else (data,):
                    inner = await self._chunk_namespace(one)
                    step = one.get("step")
                    if not inner and self._wants_steps and type(step) is int and step > self._announced:
                        # A node of step N streams after the values of checkpoint N (its input), as in
                        # LangGraph. Its step's commit event may come later than the chunk (the first
                        # step's tasks go out with the workflow's creation, before "workflow.started"):
                        # the values up to N are caught up first.
                        self._announced = step
                        self._buffer.put(["commit", step])
                    if not inner or self.subgraphs:
                        self._buffer.put(["chunk", mode, _live_chunk(mode, one), inner])
                if self._buffer.live:
                    # Let a waiting consumer take what arrived before reading on: the bus
                    # may hold a long burst, which would otherwise all land in the buffer
                    # (and overflow it) before the consumer ever runs.
                    await asyncio.sleep(0)
                return
            if mode == "gap":
                dropped = {m: int(n) for m, n in dict(data.get("dropped") or {}).items() if m in self.modes}
                if dropped:
                    self._buffer.put(["gap", _Gap(dropped, "writer", namespace)])
        elif kind == "events":
            event_type = str(data.get("type", ""))
            if "debug" in self.modes:
                self._buffer.put(["chunk", "debug", _debug_chunk(data), namespace])
            if namespace:  # a subgraph's own steps and end are not this workflow's
                child = data.get("subgraph_workflow_id")
                # started: the subgraph's input checkpoint (step 0), its first values as in LangGraph
                if event_type in ("step.committed", "workflow.started") and isinstance(child, str) \
                        and self._wants_steps:
                    self._buffer.put(["subcommit", child, int(data.get("step", 0)), namespace])
                return
            if event_type in ("step.committed", "workflow.started"):  # started: the input's checkpoint
                self._buffer.put(["commit", int(data.get("step", 0))])
            elif event_type in _END_EVENTS:
                self._buffer.put(["end", dict(data)])

    async def _chunk_namespace(self, chunk: Mapping[str, Any]) -> tuple[str, ...]:
        """The namespace of a chunk: its own, else that of the subgraph workflow that streamed it.

        A node inside a subgraph runs in a child workflow whose record knows its namespace
        (``core.subgraphs``); it is read once per child and remembered.
        """
        namespace = chunk.get("namespace")
        if namespace:
            return tuple(str(part) for part in namespace)
        child = chunk.get("subgraph_workflow_id")
        if not isinstance(child, str):
            return ()
        if child not in self._namespaces:
            try:
                record = await self._store.get(child)
            except Exception:  # the chunk still counts; it is shown under its child's id
                record = None
            found = (record.metadata.get(NAMESPACE_KEY) if record is not None else None) or [child]
            self._namespaces[child] = tuple(str(part) for part in found)
        return self._namespaces[child]

    async def chunks(
        self, *, after_step: int = -1, driver: asyncio.Future[Any] | None = None
    ) -> AsyncIterator[Any]:
        """Yield the stream from the checkpoint after ``after_step`` until the workflow ends.

        With ``driver`` (the task running the workflow in this process) the stream ends
        once it is done and the end event arrived (or ``END_GRACE`` passed), and then
        raises what it raised. Without it (attached), the stream ends when the workflow
        is completed, failed, cancelled, interrupted or pending (updated, forked or seeded and
        not run since: nothing drives it until a resume), raising ``WorkflowFailedError`` /
        ``WorkflowCancelledError`` for the last two of those after yielding everything.
        """
        self._last = self._announced = after_step
        if driver is None:
            record = await self._record()
            for chunk in await self._catch_up(record):
                yield chunk
            if self._finished(record):
                for chunk in await self._finish(record):
                    yield chunk
                return
        driver_done_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            item = self._buffer.get()
            if item is None:
                if driver is not None and driver.done():
                    driver_done_at = driver_done_at or loop.time()
                    if loop.time() - driver_done_at >= END_GRACE or await self._never_started(driver):
                        break
                wait = self.poll_interval if driver is None or not driver.done() else 0.05
                await wait_within(self._buffer.ready.wait(), wait)  # not wait_for: see core.timeouts
                if not self._buffer.items:  # silence: the record says whether steps or the end were missed
                    if driver is not None:
                        stored = await self._read_store(lambda: self._store.get(self.workflow_id),
                                                        f"read workflow {self.workflow_id!r}")
                        if stored is None:
                            # Not stored (yet): the run is starting, or failed before storing it (a bad
                            # input): then its own error, which ``await driver`` below raises, is the answer.
                            if driver.done():
                                break
                            continue
                        record = stored
                    else:
                        record = await self._record()
                    for chunk in await self._catch_up(record):
                        yield chunk
                    if driver is None and self._finished(record):
                        for chunk in await self._finish(record):
                            yield chunk
                        return
                continue
            kind = item[0]
            if kind == "chunk":
                yield self._shape(item[1], item[2], item[3])
            elif kind == "gap":
                gap = item[1]
                found = StreamGap(dict(gap.dropped), gap.source, self.workflow_id, gap.namespace)
                why = (f"this stream's buffer of {self._buffer.limit} live chunks (buffer_size) was full: its consumer "
                       "did not take chunks as fast as they arrived" if gap.source == "caller" else
                       "the node's process could not publish them in time (its publisher's queue was full: its bus "
                       "was slower than the node, or an async node emitted without awaiting)")
                log.warning("stream of workflow %r: %s live chunk(s) dropped (%s): %s", self.workflow_id,
                            sum(gap.dropped.values()), ", ".join(f"{m}={n}" for m, n in gap.dropped.items()), why)
                self.gaps.append(found)
                if self.on_gap == "yield":
                    yield self._shape("gap", found, gap.namespace)
                elif self.on_gap == "raise":
                    raise StreamGapError(
                        f"stream of workflow {self.workflow_id!r}: {sum(gap.dropped.values())} live chunk(s) dropped "
                        f"({why}); pass on_gap='warn' to go on past gaps, or a larger buffer_size", found)
                elif callable(self.on_gap):
                    self.on_gap(found)
            elif kind == "subcommit":
                for chunk in await self._subgraph_step(item[1], item[2], item[3]):
                    yield chunk
            elif kind == "commit":
                if item[1] > self._last and self._wants_steps:
                    # Only up to this commit's step: the workflow may be further on, and a later
                    # step's values must come after the live chunks its nodes streamed, which
                    # this reader may not have taken off the bus yet.
                    for chunk in await self._catch_up(await self._record(), upto=item[1], replay=False):
                        yield chunk
            else:  # the end: everything it follows has arrived
                record = await self._record()
                for chunk in await self._catch_up(record):
                    yield chunk
                if driver is None and not self._finished(record):
                    continue  # an old end (e.g. a pause since resumed): keep following
                if driver is None:
                    for chunk in await self._finish(record):
                        yield chunk
                    return
                for chunk in await self._finish(record, raise_errors=False):
                    yield chunk
                break
        assert driver is not None
        record_now = await self._read_store(lambda: self._store.get(self.workflow_id),
                                            f"read workflow {self.workflow_id!r}")
        if record_now is not None:
            for chunk in await self._catch_up(record_now):
                yield chunk
        await driver  # the workflow's own error, as execute raises it

    async def _never_started(self, driver: asyncio.Future[Any]) -> bool:
        """Whether ``driver`` failed before storing the workflow (a bad argument): nothing will come."""
        if driver.cancelled():
            return True
        return driver.exception() is not None and await self._read_store(
            lambda: self._store.get(self.workflow_id), f"read workflow {self.workflow_id!r}") is None

    async def _record(self) -> WorkflowRecord:
        record = await self._read_store(lambda: self._store.get(self.workflow_id),
                                        f"read workflow {self.workflow_id!r}")
        if record is None:
            raise WorkflowNotFoundError(
                f"cannot stream workflow {self.workflow_id!r}: no such workflow on this backend; pass a workflow id "
                "that submit()/execute() returned (list_workflows() lists them), or a graph to start one")
        return record

    @staticmethod
    def _finished(record: WorkflowRecord) -> bool:
        # (Pending: updated, forked or seeded and not run since; nothing drives it until a resume, as a pause.)
        return record.status in WorkflowStatus.TERMINAL or record.status in (WorkflowStatus.INTERRUPTED,
                                                                               WorkflowStatus.PENDING)

    async def _finish(self, record: WorkflowRecord, *, raise_errors: bool = True) -> list[Any]:
        """The closing chunks of an ended workflow; raises for a failed or cancelled one (attached)."""
        out = []
        if self.subgraphs and record.status in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED) and \
                {"tasks", "updates"} & set(self.modes):
            out += await self._stopped_children(record)  # the subgraphs' paused or failed steps, deepest first
        if "tasks" in self.modes and record.status in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED):
            for start, result in _stopped_tasks(record):
                out += self._starts([start], ())
                out.append(self._shape("tasks", result, ()))
        if "updates" in self.modes and record.status in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED):
            # The tasks that finished in the step that paused or failed, as LangGraph streams them
            # then (their writes are kept and merged when the step commits, not streamed again).
            out += [self._shape("updates", {key.partition("#")[0]: writes}, ()) for key, writes in _kept_writes(record)]
        if record.status == WorkflowStatus.INTERRUPTED and {"updates", "values"} & set(self.modes):
            pauses = [PendingInterrupt(id=i.id, node=i.node, value=i.value, kind=i.kind)
                      for i in read_interrupts(record.frontier)]
            if "updates" in self.modes:
                out.append(self._shape("updates", {INTERRUPT_KEY: pauses}, ()))
            asked = [pause for pause in pauses if pause.kind == "interrupt"]
            if asked and "values" in self.modes:
                # As LangGraph: interrupt() pauses (not static breakpoints) add the values so far with them.
                out.append(self._shape("values", {**record.state, INTERRUPT_KEY: asked}, ()))
        if raise_errors and record.status == WorkflowStatus.FAILED:
            summary = (record.error or {}).get("summary", "no details recorded")
            raise WorkflowFailedError(f"workflow {self.workflow_id!r} failed: {summary}",
                                      workflow_id=self.workflow_id)
        if raise_errors and record.status == WorkflowStatus.CANCELLED:
            raise WorkflowCancelledError(f"workflow {self.workflow_id!r} was cancelled")
        return out

    async def _stopped_children(self, parent: WorkflowRecord) -> list[Any]:
        """With ``subgraphs``: the ``tasks`` and ``updates`` chunks of the step each child workflow of
        ``parent``'s step stopped at (paused or failed), under its namespace, deepest first: its
        ended tasks, its finished tasks' writes, and a pause's ``__interrupt__``, as at the root."""
        out: list[Any] = []
        children = await self._read_store(functools.partial(children_of, self._store, parent),
                                          f"read the subgraph workflows of {parent.workflow_id!r}")
        for child in children.values():
            if child.status not in (WorkflowStatus.INTERRUPTED, WorkflowStatus.FAILED):
                continue
            namespace = tuple(str(part) for part in child.metadata.get(NAMESPACE_KEY) or [child.workflow_id])
            out += await self._stopped_children(child)
            if "tasks" in self.modes:
                for start, result in _stopped_tasks(child):
                    out += self._starts([start], namespace)
                    out.append(self._shape("tasks", result, namespace))
            if "updates" in self.modes:
                out += [self._shape("updates", {key.partition("#")[0]: writes}, namespace)
                        for key, writes in _kept_writes(child)]
                asked = [PendingInterrupt(id=i.id, node=i.node, value=i.value, kind=i.kind)
                         for i in read_interrupts(child.frontier) if i.kind == "interrupt"]
                if child.status == WorkflowStatus.INTERRUPTED and asked:
                    out.append(self._shape("updates", {INTERRUPT_KEY: asked}, namespace))
        return out

    async def _catch_up(self, record: WorkflowRecord, upto: int | None = None, *, replay: bool = True) -> list[Any]:
        """Values/updates of every checkpoint after the last yielded, up to ``record``'s step (or ``upto``).

        With ``subgraphs``, each checkpoint is followed by the steps its next step's subgraphs
        committed so far, unless ``replay`` is False: for a commit event read live, whose
        subgraphs' own commit events come live after it.
        """
        top = record.step if upto is None else min(record.step, upto)
        if top <= self._last or not self._wants_steps:
            self._last = max(self._last, top)
            return []
        # With "tasks", the checkpoint before the first too: its step's task starts come from it.
        wanted = top - self._last + ("tasks" in self.modes)
        checkpoints = await self._read_store(
            lambda: self._store.list_checkpoints(self.workflow_id, limit=wanted, before=top + 1),
            f"read the checkpoints of workflow {self.workflow_id!r}")
        out: list[Any] = []
        prior: Checkpoint | None = None
        for checkpoint in sorted(checkpoints, key=lambda cp: cp.step):
            if checkpoint.step <= self._last:
                prior = checkpoint
                continue
            out += self._step_chunks(checkpoint, record, (), prior)
            prior = checkpoint
            if self.subgraphs and replay:  # the subgraphs this step ran come before the next step's chunks
                out += await self._replay_children(record, checkpoint)
            self._last = checkpoint.step
        self._last = max(self._last, top)
        return out

    async def _subgraph_step(self, child: str, step: int, namespace: tuple[str, ...]) -> list[Any]:
        """Values/updates of a subgraph's committed step (its child workflow's checkpoint), once each."""
        if (child, step) in self._sub_steps:
            return []
        found = await self._read_store(lambda: self._store.list_checkpoints(child, limit=2, before=step + 1),
                                       f"read the checkpoints of subgraph workflow {child!r}")
        found = sorted(found, key=lambda cp: cp.step)
        if not found or found[-1].step != step:
            return []
        self._sub_steps.add((child, step))
        return self._step_chunks(found[-1], None, namespace, found[0] if len(found) > 1 else None)

    async def _replay_children(self, parent: WorkflowRecord, checkpoint: Checkpoint) -> list[Any]:
        """Values/updates of the subgraphs run by the step after ``checkpoint`` of ``parent``, so far.

        Their child workflows are named in the checkpoint's frontier (``core.subgraphs``);
        each child's checkpoints come in order under its namespace, its own subgraphs
        nested after the step that ran them. Steps already yielded (live) are skipped.
        """
        out: list[Any] = []
        for child_id in dict(checkpoint.frontier.get(SUBGRAPHS_KEY) or {}).values():
            child = await self._read_store(functools.partial(self._store.get, str(child_id)),
                                           f"read subgraph workflow {child_id!r}")
            if child is None or not is_child_of(child, parent):  # not one left by an earlier workflow of its id
                continue
            namespace = tuple(str(part) for part in child.metadata.get(NAMESPACE_KEY) or [child.workflow_id])
            self._namespaces[child.workflow_id] = namespace
            found = await self._read_store(
                functools.partial(self._store.list_checkpoints, child.workflow_id, limit=child.step + 1,
                                  before=child.step + 1),
                f"read the checkpoints of subgraph workflow {child.workflow_id!r}")
            prior: Checkpoint | None = None
            for step in sorted(found, key=lambda cp: cp.step):
                if (child.workflow_id, step.step) not in self._sub_steps:
                    self._sub_steps.add((child.workflow_id, step.step))
                    out += self._step_chunks(step, None, namespace, prior)
                out += await self._replay_children(child, step)
                prior = step
        return out

    def leading_values(self, record: WorkflowRecord) -> list[Any]:
        """The chunks a resumed run's stream starts with (LangGraph's): the "values" of the state
        ``record`` holds, the one the run resumes from, and (``tasks``) the starts of the tasks of
        its step (those whose writes it kept end with no result: the run that paused streamed it,
        and their ``updates`` come again marked ``{"__metadata__": {"cached": True}}``), after
        (``checkpoints``) the checkpoint it resumes from."""
        out = []
        kept = frozenset(key for key, _ in _kept_writes(record))
        self._kept = (record.step, kept)
        if "checkpoints" in self.modes:  # the checkpoint it resumes from, with its pauses and kept results
            out.append(self._shape("checkpoints", _checkpoint_chunk(Checkpoint(
                record.workflow_id, record.step, record.state, record.frontier, created_at=record.updated_at),
                record), ()))
        if "values" in self.modes:
            out.append(self._shape("values", dict(record.state), ()))
        if "tasks" in self.modes:  # every task of the step starts again, as LangGraph's (the kept ones end cached)
            out += self._starts(_task_starts(record.workflow_id, record.step, record.state, record.frontier), ())
        return out

    def _starts(self, starts: Sequence[dict[str, Any]], namespace: tuple[str, ...]) -> list[Any]:
        """``tasks`` start chunks of ``starts`` (from ``_task_starts``) not yielded yet, shaped."""
        out = []
        for start in starts:
            if start["id"] not in self._started:
                self._started.add(start["id"])
                out.append(self._shape("tasks", {k: v for k, v in start.items() if k != "_key"}, namespace))
        return out

    def _step_chunks(
        self, checkpoint: Checkpoint, record: WorkflowRecord | None, namespace: tuple[str, ...] = (),
        prior: Checkpoint | None = None,
    ) -> list[Any]:
        """The chunks of ``checkpoint`` (``prior``: the checkpoint before it, if read: its step's
        task starts come from it, for ``tasks``)."""
        out = []
        kept_step, kept = self._kept
        # The resumed step's tasks that finished before its pause: streamed by that run already.
        streamed = kept if checkpoint.workflow_id == self.workflow_id and checkpoint.step == kept_step + 1 \
            else frozenset()
        if "tasks" in self.modes and _ran_tasks(checkpoint):
            if prior is not None and prior.workflow_id == checkpoint.workflow_id and prior.step == checkpoint.step - 1:
                out += self._starts(_task_starts(prior.workflow_id, prior.step, prior.state, prior.frontier),
                                    namespace)
            out += [self._shape("tasks", chunk, namespace) for chunk in _task_results(checkpoint)
                    if chunk["id"].rpartition(":")[2] not in streamed]
        if "checkpoints" in self.modes:
            out.append(self._shape("checkpoints", _checkpoint_chunk(checkpoint), namespace))
        if "updates" in self.modes:
            for key, writes in checkpoint.writes.items():
                # A kept task's writes again, marked cached, as LangGraph streams its pending writes.
                cached = {"__metadata__": {"cached": True}} if str(key) in streamed else {}
                out.append(self._shape("updates", {str(key).partition("#")[0]: writes, **cached}, namespace))
        if "values" in self.modes and not _wrote_nothing(checkpoint):
            # The whole state, as LangGraph streams it: an output schema filters only the run's result.
            values = dict(checkpoint.state)
            out.append(self._shape("values", values, namespace))
        return out

    def _shape(self, mode: str, chunk: Any, namespace: tuple[str, ...]) -> Any:
        if self.subgraphs:
            return (namespace, mode, chunk) if self.tagged else (namespace, chunk)
        return (mode, chunk) if self.tagged else chunk


def _checkpoint_chunk(checkpoint: Checkpoint, record: WorkflowRecord | None = None) -> dict[str, Any]:
    """A ``checkpoints`` chunk: LangGraph's dict of ``checkpoint``'s snapshot (``history.snapshot_of``;
    ``record``: the workflow's, when the checkpoint is its latest)."""
    snapshot = history.snapshot_of(checkpoint, record)
    return {"config": snapshot.config, "parent_config": snapshot.parent_config, "values": dict(snapshot.values),
            "metadata": dict(snapshot.metadata), "next": list(snapshot.next),
            "tasks": [{"id": task.id, "name": task.name, "interrupts": list(task.interrupts), "state": None}
                      for task in snapshot.tasks]}


def _task_id(workflow_id: str, step: int, key: str) -> str:
    """The id of the task ``key`` (a node, or ``node#i`` for its i-th Send) of the step after
    checkpoint ``step``: its ``PregelTask`` id in ``get_state().tasks``."""
    return f"{history.checkpoint_id(workflow_id, step)}:{key}"


def _task_starts(workflow_id: str, step: int, state: Mapping[str, Any],
                 frontier: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``tasks`` start chunks of the step ``frontier`` (of checkpoint ``step``) runs, in
    ``get_state().tasks`` order (Sends first), each with its task key under ``"_key"``."""
    starts: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for send in frontier.get("sends") or ():
        node = str(send["node"])
        index = counts.get(node, 0)
        counts[node] = index + 1
        key = f"{node}#{index}"
        starts.append({"id": _task_id(workflow_id, step, key), "name": node, "input": dict(send.get("arg") or {}),
                       "triggers": ["__pregel_push"], "_key": key})
    for name in dict.fromkeys(str(name) for name in frontier.get("next", ())):
        starts.append({"id": _task_id(workflow_id, step, name), "name": name, "input": dict(state),
                       "triggers": [f"branch:to:{name}"], "_key": name})
    return starts


def _ran_tasks(checkpoint: Checkpoint) -> bool:
    """Whether tasks ran to make ``checkpoint`` (not an input, an ``update_state`` or a fork)."""
    return checkpoint.step > 0 and checkpoint.metadata.get("source") not in ("input", "update", "fork")


def _task_results(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The ``tasks`` result chunks of the step that made ``checkpoint`` (``_ran_tasks``): each task
    that wrote, then each that failed into its error handler (``add_node(on_error=)``: the
    handler's Send in the checkpoint names it and carries the error)."""
    workflow_id, step = checkpoint.workflow_id, checkpoint.step - 1
    out: list[dict[str, Any]] = [
        {"id": _task_id(workflow_id, step, str(key)), "name": str(key).partition("#")[0], "error": None,
         "result": dict(writes or {}), "interrupts": []} for key, writes in checkpoint.writes.items()]
    for send in checkpoint.frontier.get("sends") or ():
        handled = send.get("handles")
        if isinstance(handled, str):
            error = (send.get("arg") or {}).get("error") or {}
            message = error.get("message") if isinstance(error, Mapping) else None
            out.append({"id": _task_id(workflow_id, step, handled), "name": handled.partition("#")[0],
                        "error": str(message if message is not None else error), "result": {}, "interrupts": []})
    return out


def _kept_writes(record: WorkflowRecord) -> list[tuple[str, dict[str, Any]]]:
    """(task key, writes) of each task that finished in ``record``'s step before it paused or
    failed (its kept pending writes; not a task paused in ``interrupt()``), in task order."""
    pending = record.frontier.get("pending_writes") or {}
    out = []
    for start in _task_starts(record.workflow_id, record.step, {}, record.frontier):
        key = start["_key"]
        if key in pending:
            kept = read_output(pending[key])
            if kept.interrupt is None:
                out.append((key, dict(kept.updates or {})))
    return out


def _stopped_tasks(record: WorkflowRecord) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (start, result) ``tasks`` chunks of the tasks of a paused or failed step that ended:
    finished (their kept writes), paused in ``interrupt()`` (their pauses) or failed (the
    error's message). A task paused before it ran (a breakpoint) has none."""
    pauses: dict[str, list[dict[str, Any]]] = {}
    for pause in read_interrupts(record.frontier):
        if pause.kind == "interrupt":
            pauses.setdefault(pause.task or pause.node, []).append({"value": pause.value, "id": pause.id})
    pending = record.frontier.get("pending_writes") or {}
    error = record.error or {}
    failed = str(error.get("node") or "") if record.status == WorkflowStatus.FAILED else ""
    out = []
    for start in _task_starts(record.workflow_id, record.step, record.state, record.frontier):
        key = start["_key"]
        kept = read_output(pending[key]) if key in pending else None
        result = {"id": start["id"], "name": start["name"], "error": None, "result": {}, "interrupts": []}
        if key in pauses or (kept is not None and kept.interrupt is not None):
            result["interrupts"] = pauses.get(key, [])
        elif kept is not None:
            result["result"] = dict(kept.updates or {})
        elif failed and failed in (key, start["name"]):
            result["error"] = str(error.get("message") or error.get("summary") or "")
        else:
            continue  # not run (a breakpoint), or not known to have ended
        out.append((start, result))
    return out


def _wrote_nothing(checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` is a step whose nodes all ran and wrote nothing (or the first,
    of an empty input): its state is the step before's, so "values" yields nothing for it (as LangGraph yields values only for a
    step that updated the state); "updates" still names each node (``{node: None}``)."""
    writes = checkpoint.writes
    if checkpoint.step == 0 and not writes and not checkpoint.state:
        return True  # an empty first input (``stream({})``): LangGraph yields no values for it either
    return checkpoint.step > 0 and bool(writes) and all(updates is None for updates in writes.values())


def _live_chunk(mode: str, data: Mapping[str, Any]) -> Any:
    if mode == "custom":
        return data.get("chunk")
    metadata = {**dict(data.get("metadata") or {}),
                **{key: data[key] for key in ("workflow_id", "node", "step", "task_id", "run", "attempt", "seq",
                                              "namespace") if key in data}}
    return (data.get("chunk"), metadata)


def _debug_chunk(event: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(event.get("type", ""))
    payload = {key: value for key, value in event.items() if key not in ("type", "workflow_id", "time", "step")}
    return {"type": _DEBUG_TYPES.get(kind, "workflow"), "event": kind, "workflow_id": event.get("workflow_id"),
            "step": event.get("step"), "timestamp": event.get("time"), "payload": payload}
