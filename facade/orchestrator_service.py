"""``distributed-agents orchestrator``: a long-running process that drives submitted workflows.

Clients store workflows (``distributed-agents submit``, ``Orchestrator.submit`` in a
process that then exits) and read their results (``status``, ``wait``); this process
runs them. Every ``poll_interval`` seconds it looks for running workflows of its graphs
whose lease is free (just submitted, or left by an orchestrator that stopped or died)
and drives each from its last committed step, its nodes on workers.

SIGTERM or SIGINT stops it cleanly: no new workflow is taken, the ones it drives stop
where they are (each stays resumable at its last committed step, tasks already queued
stay queued for workers) and their leases are released, so another orchestrator (the
next pod of a Deployment) takes them over within its own poll interval. After a
SIGKILL the leases run out ``lease_ttl`` seconds after their last renewal instead.
Several orchestrators may run side by side: a workflow's lease lets one drive it at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from distributed_agents.core.backoff import Outage, until_available
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.graph import Graph
from distributed_agents.core.worker import STOP_SIGNALS
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.timeouts import wait_within

__all__ = ["OrchestratorService", "queue_backlog"]

log = logging.getLogger("distributed_agents.orchestrator_service")


def safe_url(url: str) -> str:
    """``url`` without its user and password (for logs and probe answers)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def graph_node_types(graphs: Iterable[Graph]) -> set[str]:
    """The node types whose tasks the graphs' workflows queue: their nodes' and, at any depth, their subgraphs'."""
    types: set[str] = set()
    for graph in graphs:
        for spec in graph.nodes.values():
            if spec.subgraph is not None:  # runs as a child workflow whose own nodes are queued
                types |= graph_node_types([spec.subgraph.graph])
            else:
                types.add(spec.node_type)
    return types


async def queue_backlog(backend: Any, node_types: Iterable[str]) -> dict[str, Any]:
    """Queue counts of ``node_types``: totals and per type.

    ``{"backlog": queued + in_flight, "queued": N, "in_flight": N, "dead": N,
    "node_types": {type: {"queued", "in_flight", "dead"}}}``; ``backlog`` is what an
    autoscaler divides by a worker's capacity to get the workers needed.
    """
    per_type: dict[str, dict[str, int]] = {}
    for node_type in sorted(set(node_types)):
        stats = await backend.task_queue.stats(node_type)
        per_type[node_type] = {"queued": stats.queued, "in_flight": stats.in_flight, "dead": stats.dead}
    totals = {key: sum(counts[key] for counts in per_type.values()) for key in ("queued", "in_flight", "dead")}
    return {"backlog": totals["queued"] + totals["in_flight"], **totals, "node_types": per_type}


class OrchestratorService:
    """Drives the workflows of ``graphs`` that ``orchestrator``'s backend holds, until ``stop()``.

    ``orchestrator`` should be made with ``recover=False``: this service looks for
    workflows itself, every ``poll_interval`` seconds, so that it knows when that last
    worked (``readiness``).
    """

    def __init__(self, orchestrator: Orchestrator, graphs: Sequence[Graph], *, poll_interval: float = 1.0) -> None:
        self.orchestrator = orchestrator
        self.graphs = list(graphs)
        self.poll_interval = poll_interval
        self._stopping = asyncio.Event()
        self._round_ok_at: float | None = None  # time.monotonic() of the last round that reached the backend
        self._round_failed: str | None = None  # why the last round failed, if it did
        self._outage = Outage(log, f"orchestrator {orchestrator.orchestrator_id}")
        self.taken: list[str] = []  # workflow ids this process took up, in order

    def stop(self) -> None:
        """Stop taking workflows; ``serve`` hands the ones it drives back and returns."""
        self._stopping.set()

    async def readiness(self) -> str | None:
        """None while the last look for workflows worked and is recent; else why not (one line)."""
        if self._stopping.is_set():
            return "stopping: handing its workflows back"
        if self._round_failed is not None:
            return self._round_failed
        if self._round_ok_at is None:
            return "not serving yet: connecting to the backend"
        age = time.monotonic() - self._round_ok_at
        limit = max(3 * self.poll_interval, 10.0)
        if age > limit:
            return (f"the backend at {safe_url(self.orchestrator.backend.url)} has not answered for {age:.0f}s "
                    "(workflows are not being taken up)")
        return None

    async def queues(self, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /queues[?node_types=a,b]``: ``queue_backlog`` of those types (default: every node type of the graphs)."""
        wanted = [t.strip() for t in query.get("node_types", "").split(",") if t.strip()]
        return await queue_backlog(self.orchestrator.backend, wanted or graph_node_types(self.graphs))

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Take up workflows until ``stop()`` (or SIGTERM/SIGINT with ``handle_signals``), then hand them back."""
        orchestrator = self.orchestrator
        for graph in self.graphs:
            orchestrator.register_graph(graph)
        installed = self._install_signal_handlers() if handle_signals else []
        try:
            connecting = asyncio.ensure_future(
                until_available(orchestrator.connect, what="connect", outage=self._outage))
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([connecting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
                return
            connecting.result()  # a configuration error (not an outage) ends the command here
            names = ", ".join(sorted(g.name for g in self.graphs))
            log.info("orchestrator %s driving workflows of %s on %s (looking every %gs)",
                     orchestrator.orchestrator_id, names, safe_url(orchestrator.backend.url), self.poll_interval)
            while not self._stopping.is_set():
                await self._round()
                await wait_within(self._stopping.wait(), self.poll_interval)  # not wait_for: see core.timeouts
        finally:
            self._stopping.set()
            # Cancels the drives: each releases its workflow's lease for the next orchestrator.
            await orchestrator.close()
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("orchestrator %s stopped; took up %d workflow(s), the unfinished ones are left for another "
                     "orchestrator", orchestrator.orchestrator_id, len(self.taken))

    async def _round(self) -> None:
        try:
            taken = await self.orchestrator.recover_workflows()
        except BackendUnavailableError as exc:
            self._outage.failed("look for workflows to drive", exc, self.poll_interval)
            self._round_failed = f"the backend at {safe_url(self.orchestrator.backend.url)} is unavailable: {exc}"
            return
        except Exception as exc:  # a bug or a bad record: keep serving the others, say what happened
            self._round_failed = f"looking for workflows failed: {type(exc).__name__}: {exc}"
            log.warning("orchestrator %s: looking for workflows failed: %s: %s", self.orchestrator.orchestrator_id,
                        type(exc).__name__, exc, exc_info=exc)
            return
        self._outage.succeeded()
        self._round_ok_at = time.monotonic()
        self._round_failed = None
        self.taken.extend(taken)  # recover_workflows logs each

    def _install_signal_handlers(self) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        log.info("orchestrator %s received %s: stopping", self.orchestrator.orchestrator_id,
                 signal.Signals(sig).name)
        self.stop()
