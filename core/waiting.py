"""Making "waiting for a worker of type X" visible: in the log, and in the stored record.

When a step's tasks sit in the queue and no live worker serves their node type, the
``TaskQueueExecutor`` reports the missing types every poll. ``WaitingReporter`` turns
that into a warning naming the types when waiting starts, again every
``log_interval`` seconds while it lasts, and an info line when it ends; and it writes
the note into the workflow record's ``metadata["waiting_for"]``, so
``get_workflow_status`` shows it from any process, not only the one driving the workflow.

Writing the record mid-step bumps its version, which would make the engine's next
compare-and-set commit fail as if another orchestrator had taken over. ``NotingStore``
wraps the state store the engine commits through: the note is a fenced CAS write on
top of the last version the engine wrote, the engine's next save expects the note's
version instead, and every save the engine makes drops the note (a committed step is
no longer waiting).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Coroutine, MutableMapping, Sequence
from typing import Any

from distributed_agents.core.errors import (
    BackendUnavailableError,
    FencingTokenRejectedError,
    LeaseLostError,
    VersionConflictError,
)
from distributed_agents.core.ports.state_store import (
    Checkpoint,
    StateStore,
    WorkflowLease,
    WorkflowRecord,
    WorkflowStatus,
)

__all__ = ["WAITING_KEY", "WAITING_LOG_INTERVAL", "NotingStore", "WaitingReporter", "waiting_text"]

WAITING_KEY = "waiting_for"
WAITING_LOG_INTERVAL = 30.0  # seconds between repeated warnings while a workflow waits

log = logging.getLogger("distributed_agents.orchestrator")


def waiting_text(node_types: Sequence[str]) -> str:
    """``waiting for a worker of type 'a', 'b'``: the status line for missing ``node_types``."""
    return "waiting for a worker of type " + ", ".join(map(repr, node_types))


class NotingStore(StateStore):
    """The engine's view of ``inner`` for one workflow run: saves that keep waiting notes in step.

    Only ``get``, ``save`` and ``save_releasing`` are used by the engine; everything else goes to ``inner``.
    """

    def __init__(self, inner: StateStore, workflow_id: str, lease: WorkflowLease) -> None:
        self._inner = inner
        self._workflow_id = workflow_id
        self._lease = lease
        self._base: WorkflowRecord | None = None  # the last version the engine wrote (or read)
        self._noted: WorkflowRecord | None = None  # the note written on top of it, if any
        self.state_ttl = inner.state_ttl
        # A commit may be in flight while the next step runs (durability="async"): saves never
        # interleave, so none expects a version another just moved on. (A flag, not an
        # asyncio.Lock: taking a free lock costs three coroutines per commit, and it is free
        # nearly always; waiters, if any, wait in ``_turn``.)
        self._busy = False
        self._turn_waiters: list[asyncio.Future[None]] | None = None  # made when one waits

    async def get(self, workflow_id: str) -> WorkflowRecord | None:
        return await self._inner.get(workflow_id)

    def save(
        self,
        record: WorkflowRecord,
        *,
        expected_version: int,
        checkpoint: Checkpoint | None = None,
        fencing_token: int | None = None,
    ) -> Coroutine[Any, Any, WorkflowRecord]:
        # The save's own coroutine, to await: no layer around it that every resumption passes through.
        return self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                          fencing_token=fencing_token)

    def save_releasing(
        self, record: WorkflowRecord, *, expected_version: int, lease: WorkflowLease,
        checkpoint: Checkpoint | None = None,
    ) -> Coroutine[Any, Any, WorkflowRecord]:
        return self._save(record, expected_version=expected_version, checkpoint=checkpoint,
                          fencing_token=lease.fencing_token, releasing=lease)

    async def _turn(self) -> None:
        """Return once no save is under way (the caller then marks its own as under way, without yielding)."""
        loop = asyncio.get_running_loop()
        while self._busy:
            waiter: asyncio.Future[None] = loop.create_future()
            if self._turn_waiters is None:
                self._turn_waiters = []
            self._turn_waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._turn_waiters is not None and waiter in self._turn_waiters:
                    self._turn_waiters.remove(waiter)

    def _done(self) -> None:
        """The save under way is over: every waiter looks again (the first to run goes next)."""
        self._busy = False
        waiters, self._turn_waiters = self._turn_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _save(
        self, record: WorkflowRecord, *, expected_version: int, checkpoint: Checkpoint | None,
        fencing_token: int | None, releasing: WorkflowLease | None = None,
    ) -> WorkflowRecord:
        """``save``/``save_releasing`` (with ``releasing``): one save at a time (a commit in flight and a note take
        turns)."""
        if self._busy:
            await self._turn()
        self._busy = True
        try:
            noted = self._noted
            if WAITING_KEY in record.metadata:  # e.g. carried over by a resume: the commit ends any wait
                record = record.evolve(metadata={k: v for k, v in record.metadata.items() if k != WAITING_KEY})
            if (record.workflow_id == self._workflow_id and noted is not None and self._base is not None
                    and expected_version == self._base.version):
                expected_version = noted.version  # the note moved the record on by one version
            try:
                if releasing is not None:
                    saved = await self._inner.save_releasing(record, expected_version=expected_version,
                                                             checkpoint=checkpoint, lease=releasing)
                else:
                    saved = await self._inner.save(record, expected_version=expected_version, checkpoint=checkpoint,
                                                   fencing_token=fencing_token)
            except VersionConflictError:
                # A repeated save whose first attempt landed (its reply lost in an outage)
                # is recognised here, as the engine cannot see past the note's version.
                current = await self._inner.get(record.workflow_id) if noted is not None else None
                if current is None or not _same_commit(current, record, expected_version + 1):
                    raise
                saved = current
            if record.workflow_id == self._workflow_id:
                self._base, self._noted = saved, None
            return saved
        finally:
            self._done()

    async def note(self, text: str | None) -> None:
        """Record ``text`` as ``metadata["waiting_for"]`` (None: remove it); best effort.

        A conflict means the workflow moved on (cancelled, committed, taken over): the
        note is dropped, since the record already says more than it would.
        """
        current = self._noted or self._base
        try:
            if current is None:
                current = await self._inner.get(self._workflow_id)
                if current is None:
                    return
                self._base = current
            if current.metadata.get(WAITING_KEY) == text or current.status != WorkflowStatus.RUNNING:
                return
            metadata = {k: v for k, v in current.metadata.items() if k != WAITING_KEY}
            if text is not None:
                metadata[WAITING_KEY] = text
            self._noted = await self._inner.save(
                current.evolve(metadata=metadata), expected_version=current.version,
                fencing_token=self._lease.fencing_token,
            )
        except (VersionConflictError, LeaseLostError, FencingTokenRejectedError, BackendUnavailableError) as exc:
            log.debug("workflow %r: waiting note not stored (%s)", self._workflow_id, exc)

    # -- everything else is the inner store's --------------------------------------------

    async def list_checkpoints(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.list_checkpoints(*args, **kwargs)

    async def list_workflows(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.list_workflows(*args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.delete(*args, **kwargs)

    async def acquire_lease(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.acquire_lease(*args, **kwargs)

    async def renew_lease(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.renew_lease(*args, **kwargs)

    async def release_lease(self, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.release_lease(*args, **kwargs)

    async def close(self) -> None:
        """The inner store belongs to the backend: nothing to close here."""


def _same_commit(current: WorkflowRecord, attempted: WorkflowRecord, version: int) -> bool:
    return (current.version == version and current.step == attempted.step and current.status == attempted.status
            and dict(current.state) == dict(attempted.state) and dict(current.frontier) == dict(attempted.frontier))


def start_worker_hint(graph: Any, node_types: Sequence[str], backend_url: str, prefix: str = "da") -> str:
    """What to run so a worker serves ``node_types`` of ``graph``, for the "no live worker" warning.

    When ``graph`` itself holds the functions (added inline, LangGraph style) and an
    imported module names it, the exact command (``--app module:attribute``); when it is
    defined in the script being run, how to make it importable; otherwise the
    registry form with ``--node-types``. The URL is shown without its password.
    """
    from distributed_agents.core.redaction import redact_url
    from distributed_agents.core.registry import NodeRegistry  # the registry is the worker's side

    # (The prefix too, when not the default: a worker started without it would serve another deployment.)
    url = redact_url(backend_url) + ("" if prefix == "da" else f" --prefix {prefix}")
    types = ",".join(node_types)
    try:
        inline = NodeRegistry.from_graph(graph)
    except Exception:  # two nodes sharing a type: the registry form says enough
        inline = NodeRegistry()
    if not node_types or not all(t in inline for t in node_types):
        return (f"start a worker that serves them, e.g. distributed-agents worker --app module:registry "
                f"--node-types {types} --backend-url {url}")
    modules = dict.fromkeys(getattr(inline.get(t), "__module__", None) or "" for t in inline)
    for name in modules:
        module = sys.modules.get(name)
        if module is None or name == "__main__":
            continue
        for attribute, value in vars(module).items():
            if value is graph:
                return (f"graph {graph.name!r} holds their functions: start a worker on it with "
                        f"distributed-agents worker --app {name}:{attribute} --backend-url {url}")
    return (f"graph {graph.name!r} holds their functions, defined in {', '.join(m for m in modules if m) or 'this process'}: "
            "put the graph in a module workers can import and start one with distributed-agents worker --app "
            f"<module>:<graph attribute> --backend-url {url} (or Worker(registry=graph, backend=...) in code); "
            "or run them here: Orchestrator(local_nodes=True)")


class WaitingReporter:
    """The executor's ``on_waiting`` hook for one workflow run: logs, stores and remembers the wait.

    ``in_memory`` maps workflow id to the current note (what the driving process shows
    at once, before the stored note lands).
    """

    def __init__(self, workflow_id: str, store: NotingStore, in_memory: MutableMapping[str, str],
                 log_interval: float = WAITING_LOG_INTERVAL, *,
                 hint_graph: Any = None, backend_url: str = "", prefix: str = "da") -> None:
        """How to start a worker serving the missing types is told as
        ``start_worker_hint(hint_graph, node_types, backend_url)`` with ``hint_graph``,
        else in the registry form."""
        self._hint_graph = hint_graph
        self._backend_url = backend_url
        self._prefix = prefix
        self._workflow_id = workflow_id
        self._store = store
        self._in_memory = in_memory
        self._log_interval = log_interval
        self._text: str | None = None
        self._since = 0.0
        self._logged = 0.0

    async def __call__(self, node_types: Sequence[str], meanwhile: str = "") -> None:
        """Note the wait for workers of ``node_types`` (none: the wait is over); ``meanwhile``
        (``"; meanwhile node 'x' failed ..."`` or "") follows the note, so the status of a step
        that waits on after a node's final failure says so."""
        now = time.monotonic()
        if not node_types:
            if self._text is not None:
                log.info("workflow %r: done waiting after %.0fs (%s)", self._workflow_id, now - self._since,
                         self._text)
                self._text = None
                self._in_memory.pop(self._workflow_id, None)
                await self._store.note(None)
            return
        text = waiting_text(node_types) + meanwhile
        if text != self._text:
            if self._text is None:
                self._since = now
            self._text, self._logged = text, now
            how = (start_worker_hint(self._hint_graph, node_types, self._backend_url, self._prefix)
                   if self._hint_graph is not None else
                   "start a worker that serves them, e.g. distributed-agents worker --app module:registry "
                   f"--node-types {','.join(node_types)}" + ("" if self._prefix == "da" else f" --prefix {self._prefix}"))
            # The prefix too: a worker started with another --prefix serves another deployment, unseen here.
            log.warning("workflow %r: no live worker serves node type(s) %s on key prefix %r; %s. %s",
                        self._workflow_id, ", ".join(map(repr, node_types)), self._prefix, text,
                        how[:1].upper() + how[1:])
        elif now - self._logged >= self._log_interval:
            self._logged = now
            log.warning("workflow %r: still %s, after %.0fs", self._workflow_id, text, now - self._since)
        self._in_memory[self._workflow_id] = text
        await self._store.note(text)
