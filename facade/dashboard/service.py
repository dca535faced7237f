"""What the dashboard shows and does, through the public client API and the backend's ports only.

``DashboardService`` wraps an ``Orchestrator`` (its ``list_workflows``,
``get_workflow_status``, ``get_state_history``, ``cancel_workflow``, ``resume``,
``fork``) and its backend's worker registry and task queue (workers, queue depths,
dead letters, through ``distributed_agents.operations``). Every method returns
JSON-ready data (the CLI's ``--json`` shapes where one exists); the HTML pages and the
``/api`` endpoints render the same data.

Errors: ``WorkflowNotFoundError`` for an unknown workflow, ``ActionRefused`` (with a
message saying what to do) when an action cannot be done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from distributed_agents import operations
from distributed_agents.cli_client import checkpoint_json, workflow_json
from distributed_agents.core.dead_letters import requeue_dead_letter
from distributed_agents.core.errors import DistributedAgentsError, WorkflowNotFoundError
from distributed_agents.core.graph import Graph
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.ports.state_store import WorkflowStatus

from .hub import EventHub

__all__ = ["ActionRefused", "DashboardService", "state_diff"]

log = logging.getLogger("distributed_agents.dashboard")

PAGE_SIZE = 50
HISTORY_LIMIT = 200  # checkpoints shown on a workflow's page (newest first)


class ActionRefused(DistributedAgentsError):
    """An action that cannot be done as asked; the message says why and what to do."""


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def state_diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Keys that changed from ``before`` to ``after``: ``{key, change, before, after}`` with change
    ``added``, ``removed`` or ``changed``; sorted by key. ``before`` None: every key is added."""
    before = before or {}
    rows = []
    for key in sorted(set(before) | set(after), key=str):
        if key not in before:
            rows.append({"key": key, "change": "added", "before": None, "after": after[key]})
        elif key not in after:
            rows.append({"key": key, "change": "removed", "before": before[key], "after": None})
        elif _json_text(before[key]) != _json_text(after[key]):
            rows.append({"key": key, "change": "changed", "before": before[key], "after": after[key]})
    return rows


class DashboardService:
    """The dashboard's reads and actions over one orchestrator (and its backend).

    ``graphs`` are made known to the orchestrator (``register_graph``): the dashboard
    draws them, and resumes and forks their workflows. Workflows resumed here are
    driven by this process (their nodes run where the orchestrator sends them).
    """

    def __init__(self, orchestrator: Orchestrator, hub: EventHub, graphs: Sequence[Graph] = ()) -> None:
        self.orchestrator = orchestrator
        self.hub = hub
        for graph in graphs:
            orchestrator.register_graph(graph)
        self._driving: dict[str, asyncio.Task[Any]] = {}

    @property
    def backend(self) -> Any:
        return self.orchestrator.backend

    def graph(self, name: str) -> Graph | None:
        return self.orchestrator.known_graph(name)

    # -- reading ------------------------------------------------------------------------

    async def workflows(self, status: str | None = None, graph: str | None = None, cursor: str | None = None,
                        limit: int = PAGE_SIZE, order: str = "newest", offset: int = 0) -> dict[str, Any]:
        """A page of workflows: ``{workflows, next_cursor, total, offset, order}``.

        ``order`` ``newest`` (default: new workflows come on page 1) or ``oldest``. ``graph``
        matches graph names as a case-insensitive substring. Oldest first without a graph
        filter (or with a ``cursor``) pages by cursor (``next_cursor``, None on the last page;
        ``total`` None); otherwise by ``offset`` with ``total`` counted.
        """
        if cursor or (order == "oldest" and not graph):
            infos = await self.orchestrator.list_workflows(status or None, limit=limit + 1, cursor=cursor or None)
            more = len(infos) > limit
            infos = infos[:limit]
            return {"workflows": [workflow_json(i, cursor=True) for i in infos],
                    "next_cursor": infos[-1].cursor if more and infos else None, "total": None, "offset": None,
                    "order": "oldest"}
        everything = await self.orchestrator.list_workflows(status or None)
        if graph:
            wanted = graph.casefold()
            everything = [i for i in everything if wanted in i.graph_name.casefold()]
        if order != "oldest":
            everything.reverse()
        offset = max(0, min(offset, max(0, len(everything) - 1)))
        chosen = everything[offset:offset + limit]
        return {"workflows": [workflow_json(i, cursor=True) for i in chosen], "next_cursor": None,
                "total": len(everything), "offset": offset, "order": "oldest" if order == "oldest" else "newest"}

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """One workflow: its status (``workflow_json``), ``history`` (newest first), ``timeline``,
        ``node_states`` (node -> current/finished/failed/interrupted), ``graph_known``, ``driving``."""
        info = await self.orchestrator.get_workflow_status(workflow_id)
        snapshots = await self.orchestrator.get_state_history(workflow_id, limit=HISTORY_LIMIT)
        data = workflow_json(info)
        history = []
        for snapshot in snapshots:
            item = checkpoint_json(snapshot)
            item["source"] = snapshot.metadata.get("source")
            item["writes"] = sorted(snapshot.metadata.get("writes", {}) or {})
            history.append(item)
        data["history"] = history
        data["timeline"] = self._timeline(workflow_id, history)
        if info.status == WorkflowStatus.INTERRUPTED:  # its node waits for an answer: not done
            waiting = {str(pause.get("node")) for pause in data["interrupts"]}
            for row in data["timeline"]:
                if row["step"] == data["step"] and row["node"] in waiting and row["outcome"] != "failed":
                    row["outcome"] = "waiting"
        data["node_states"] = self._node_states(data, history)
        data["graph_known"] = self.graph(info.graph_name) is not None
        data["driving"] = workflow_id in self._driving
        return data

    def _timeline(self, workflow_id: str, history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One row per node task: ``step`` (the step it ran in), ``node``, ``worker``, ``where``,
        ``duration`` (seconds), ``attempts``, ``outcome`` (running, done, failed, reused, cached),
        ``error``, ``started_at``. From the events this dashboard saw, completed by the checkpoints
        (a node that ran before the dashboard started has only its step and outcome)."""
        rows: dict[tuple[int, str, str], dict[str, Any]] = {}
        for event in self.hub.events_of(workflow_id):
            kind = event.get("type")
            if kind not in ("node.started", "node.completed", "node.failed"):
                continue
            namespace = "/".join(event.get("namespace") or ())
            node = f"{namespace}/{event.get('node')}" if namespace else str(event.get("node"))
            key = (int(event.get("step") or 0), node, str(event.get("task") or ""))
            row = rows.setdefault(key, {"step": key[0], "node": node, "worker": None, "where": None, "duration": None,
                                        "attempts": None, "outcome": "running", "error": None,
                                        "started_at": event.get("time")})
            if kind == "node.started":
                row["where"] = event.get("where")
                row["started_at"] = event.get("time")
                row["outcome"] = "running"
            else:
                row["duration"] = event.get("duration")
                row["attempts"] = event.get("attempts")
                row["worker"] = event.get("worker") or row["worker"]
                if kind == "node.failed":
                    row["outcome"], row["error"] = "failed", event.get("error")
                else:
                    row["outcome"] = "reused" if event.get("reused") else "cached" if event.get("cached") else "done"
        seen = {(step, node) for step, node, _ in rows}
        for checkpoint in history:
            if checkpoint.get("source") != "loop":
                continue
            step = int(checkpoint["step"]) - 1  # checkpoint N holds what the nodes of step N-1 wrote
            for node in checkpoint.get("writes", ()):
                if (step, node) not in seen:
                    rows[(step, node, "")] = {"step": step, "node": node, "worker": None, "where": None,
                                              "duration": None, "attempts": None, "outcome": "done", "error": None,
                                              "started_at": None}
        return sorted(rows.values(), key=lambda r: (r["step"], r["started_at"] or 0.0, r["node"]))

    @staticmethod
    def _node_states(data: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        states: dict[str, str] = {}
        for checkpoint in history:
            for node in checkpoint.get("writes", ()):
                states[node] = "finished"
        status = data["status"]
        if status in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING):
            for node in data["next_nodes"]:
                states[node] = "current"
        if status == WorkflowStatus.INTERRUPTED:
            for pause in data["interrupts"]:
                states[pause["node"]] = "interrupted"
        error = data.get("error") or {}
        if status == WorkflowStatus.FAILED:
            failed = error.get("failed_nodes") or ([error["node"]] if error.get("node") else [])
            for node in failed:
                states[str(node if not isinstance(node, Mapping) else node.get("node"))] = "failed"
        return states

    async def state_at(self, workflow_id: str, step: int | None) -> dict[str, Any] | None:
        """The checkpoint of ``step`` (default: the latest) with ``diff`` against the one before it;
        None if the workflow has no checkpoint of that step."""
        snapshots = await self.orchestrator.get_state_history(workflow_id, limit=HISTORY_LIMIT)
        by_step = {s.step: s for s in snapshots}
        if step is not None and step not in by_step and step >= 0:
            # older than the newest HISTORY_LIMIT: read that checkpoint and the one before it
            older = await self.orchestrator.get_state_history(workflow_id, limit=2, before=step + 1)
            if older and older[0].step == step:
                snapshots = older
                by_step = {s.step: s for s in older}
        chosen = snapshots[0] if step is None and snapshots else by_step.get(step) if step is not None else None
        if chosen is None:
            return None
        previous = next((s for s in snapshots if s.checkpoint_id == chosen.parent_checkpoint_id), None)
        if previous is None and chosen.parent_checkpoint_id is not None:  # a fork's parent is in another workflow
            previous = by_step.get(chosen.step - 1)
        data = checkpoint_json(chosen)
        data["writes"] = sorted(chosen.metadata.get("writes", {}) or {})
        data["previous_step"] = previous.step if previous is not None else None
        data["diff"] = state_diff(dict(previous.values) if previous is not None else None, dict(chosen.values))
        return data

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers (``operations.worker_json`` with ``status``), sorted by id."""
        now = time.time()
        registry = self.backend.worker_registry
        infos = await registry.list_workers()
        ttl = float(getattr(registry, "heartbeat_ttl", 30.0))
        return [operations.worker_json(info, now, ttl) for info in sorted(infos, key=lambda i: i.worker_id)]

    async def registry_snapshot(self) -> tuple[Any, ...]:
        """What the workers and queues pages show, minus heartbeat ages (which change every read):
        equal snapshots mean those pages need no refresh."""
        workers = tuple((w["worker_id"], tuple(w["node_types"]), w["capacity"], w["in_flight"], w["status"])
                        for w in await self.workers())
        types = await operations.known_node_types(self.backend)
        stats = tuple((s.node_type, s.queued, s.in_flight, s.dead)
                      for s in await operations.queue_stats(self.backend, types))
        return workers, stats

    async def queues(self, named: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Queue depth per node type: ``named`` ones, and those of live workers, dead letters and the
        nodes of active workflows' graphs (when this dashboard has the graph)."""
        extra: set[str] = set(named)
        for name in {info.graph_name for info in await self.orchestrator.list_workflows("active")}:
            graph = self.graph(name)
            if graph is not None:
                extra.update(spec.node_type for spec in graph.nodes.values())
        types = await operations.known_node_types(self.backend, extra)
        stats = await operations.queue_stats(self.backend, types)
        return [{"node_type": s.node_type, "queued": s.queued, "in_flight": s.in_flight, "dead": s.dead}
                for s in stats]

    async def dead_letters(self, node_type: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Dead letters (of ``node_type``), oldest first: ``limit`` of them from ``offset``."""
        return (await self.dead_letter_page(node_type, limit, offset))["letters"]

    async def dead_letter_page(self, node_type: str | None = None, limit: int = 100, offset: int = 0
                               ) -> dict[str, Any]:
        """``{letters, total, offset, limit}``: a page of the dead letters (of ``node_type``), oldest first,
        and how many there are in all (the page shows the count: nothing is cut off silently)."""
        everything = await operations.all_dead_letters(self.backend, node_type or None)
        offset = max(0, min(offset, max(0, len(everything) - 1)))
        chosen = everything[offset:offset + limit]
        return {"letters": [{**operations.letter_summary_json(letter), "dead_at": letter.dead_at} for letter in chosen],
                "total": len(everything), "offset": offset, "limit": limit}

    async def dead_letter(self, task_id: str) -> dict[str, Any] | None:
        letter = (await operations.find_dead_letters(self.backend, [task_id])).get(task_id)
        return operations.letter_json(letter) if letter is not None else None

    # -- acting -------------------------------------------------------------------------

    async def cancel(self, workflow_id: str) -> str:
        if await self.orchestrator.cancel_workflow(workflow_id):
            return f"cancelled {workflow_id}"
        status = (await self.orchestrator.get_workflow_status(workflow_id)).status
        raise ActionRefused(f"workflow {workflow_id!r} already finished ({status}); nothing to cancel")

    async def resume(self, workflow_id: str, answer: Any = None, has_answer: bool = False) -> str:
        """Start driving ``workflow_id`` from its last committed step (answering its interrupts with
        ``answer`` when ``has_answer``); returns at once, the workflow runs in this process."""
        info = await self.orchestrator.get_workflow_status(workflow_id)
        graph = self.graph(info.graph_name)
        if graph is None:
            raise ActionRefused(
                f"cannot resume {workflow_id!r}: this dashboard does not have graph {info.graph_name!r}, whose code "
                "the workflow runs; start the dashboard with --graph MODULE:GRAPH (the graph it was started with)")
        if info.status == WorkflowStatus.COMPLETED:
            raise ActionRefused(f"workflow {workflow_id!r} already completed; fork a step to run it again")
        if info.status == WorkflowStatus.INTERRUPTED and not has_answer and any(
                i.kind == "interrupt" for i in info.interrupts):
            raise ActionRefused(f"workflow {workflow_id!r} waits for an answer to its interrupt: fill in the answer")
        if has_answer and info.status != WorkflowStatus.INTERRUPTED:
            raise ActionRefused(f"workflow {workflow_id!r} is {info.status}, not waiting for an answer")
        running = self._driving.get(workflow_id)
        if running is not None and not running.done():
            raise ActionRefused(f"workflow {workflow_id!r} is already being resumed by this dashboard")
        extra: dict[str, Any] = {"resume": answer} if has_answer else {}
        task = asyncio.ensure_future(self.orchestrator.resume(workflow_id, graph, **extra))
        self._driving[workflow_id] = task
        task.add_done_callback(lambda done: self._resumed(workflow_id, done))
        return f"resuming {workflow_id}" + (" with the answer" if has_answer else "")

    def _resumed(self, workflow_id: str, task: asyncio.Task[Any]) -> None:
        if self._driving.get(workflow_id) is task:
            del self._driving[workflow_id]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # the workflow's own failure is in its record; say what happened on the page
            log.warning("resuming workflow %s ended: %s", workflow_id, error)
            self.hub.publish({"type": "notice", "workflow_id": workflow_id, "time": time.time(),
                              "message": f"resume ended: {str(error).splitlines()[0]}"})

    async def fork(self, checkpoint_id: str) -> str:
        """A new pending workflow from ``checkpoint_id``; its id."""
        workflow_id = checkpoint_id.rpartition(":")[0]
        info = await self.orchestrator.get_workflow_status(workflow_id)
        graph = self.graph(info.graph_name)
        if graph is None:
            raise ActionRefused(
                f"cannot fork {checkpoint_id!r}: this dashboard does not have graph {info.graph_name!r}; start it "
                "with --graph MODULE:GRAPH")
        return await self.orchestrator.fork(checkpoint_id, graph=graph)

    async def requeue(self, task_id: str) -> str:
        outcome = await requeue_dead_letter(self.backend, task_id)
        if not outcome.requeued:
            raise ActionRefused(outcome.message)
        return outcome.message

    async def purge(self, task_ids: Sequence[str] = (), node_type: str | None = None) -> str:
        """Purge the given dead letters, or every one (of ``node_type``) when none is given."""
        if task_ids:
            found = await operations.find_dead_letters(self.backend, task_ids)
            missing = [t for t in task_ids if t not in found]
            if missing and not found:
                raise ActionRefused(f"no dead letter with task id {', '.join(map(repr, missing))} (requeued or purged "
                                    "meanwhile?)")
            targets = list(found)
        else:
            targets = [letter.task_id for letter in await operations.all_dead_letters(self.backend, node_type)]
        purged = 0
        for task_id in targets:
            purged += bool(await self.backend.task_queue.purge_dead_letter(task_id))
        return f"purged {purged} dead letter(s)"

    async def close(self) -> None:
        """Stop driving resumed workflows (they stay resumable)."""
        for task in list(self._driving.values()):
            task.cancel()
        for task in list(self._driving.values()):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: its record says which
                pass


def parse_answer(text: str, as_text: bool = False) -> Any:
    """An interrupt answer typed in the page: ``text`` itself when ``as_text``, else its JSON value.

    Raises ``ActionRefused`` naming where the JSON is wrong: text that is not JSON is never
    silently sent as a string (the page's "Send as plain text" box says so explicitly).
    """
    if as_text:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionRefused(
            f"the answer is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); write JSON "
            f"(e.g. \"yes\" with the quotes, 42, {{\"ok\": true}}) or tick 'Send as plain text' to send it as "
            "it is") from None


__all__ += ["WorkflowNotFoundError", "parse_answer"]
