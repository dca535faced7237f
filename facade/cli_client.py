"""The workflow commands of ``distributed-agents``: run, submit, status, list, cancel, resume, history, queues.

Each ``*_command`` takes the parsed arguments, the backend URL and the backend options
(``prefix``) and returns the exit status. Output on stdout is either text for people
(the default) or, with ``--json``, JSON with the field names below, which stay stable:

* a workflow (``status``; one line per workflow in ``list``): ``workflow_id``, ``graph``,
  ``status``, ``step``, ``next_nodes``, ``waiting_for``, ``error`` (null or the failure
  record), ``interrupts`` (``[{id, node, value, kind}]``), ``created_at``,
  ``updated_at`` (Unix seconds) and, in ``list``, ``cursor`` (pass to ``--cursor``);
* a checkpoint (one line per checkpoint in ``history``, newest first): ``checkpoint_id``,
  ``parent_checkpoint_id``, ``step``, ``next``, ``status``, ``created_at``, ``values``,
  ``interrupts``;
* a queue (one line per node type in ``queues``): ``node_type``, ``queued``,
  ``in_flight``, ``dead``.

``run`` and ``resume`` print the final state as one JSON object; ``run --stream`` prints
one JSON line per stream chunk instead (``{"mode", "namespace", "chunk"}``) and a last
``{"mode": "result", "namespace": [], "chunk": STATE}``. Progress goes to stderr: one
line per node start/finish and per committed step, or one redrawn line on a terminal.

Errors in the input raise ``ConfigurationError`` (exit status 2 in ``cli.main``); an
unknown workflow ``WorkflowNotFoundError`` and other failures exit with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from distributed_agents.core.backoff import Outage, until_available
from distributed_agents.core.errors import (
    ConfigurationError,
    ExecutionError,
    StateNotSerializableError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.state import check_values, new_workflow_id
from distributed_agents import operations
from distributed_agents.draw import load_graph

PROG = "distributed-agents"

log = logging.getLogger("distributed_agents.cli")


def parse_json_value(flag: str, text: str) -> Any:
    """``text`` as JSON; ``ConfigurationError`` naming ``flag`` if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if flag == "--value" and text.lstrip()[:1] not in ("{", "[", '"'):
            # resume --value yes: a string answer is JSON too, its double quotes inside the shell's quotes.
            hint = (f"a string answer is a JSON string, in double quotes inside the shell's quotes: "
                    f"{flag} {shlex.quote(json.dumps(text))}")
        else:
            hint = f"quote it for the shell, e.g. {flag} '{{\"topic\": \"tides\"}}'"
        raise ConfigurationError(f"{flag} {text!r} is not JSON ({exc.msg} at character {exc.pos}); {hint}") from None


def parse_input_state(text: str | None) -> dict[str, Any]:
    """``--input`` as the initial state: a JSON object; ``{}`` when not given.

    Raises ``ConfigurationError`` (exit status 2) for text that is not JSON or is JSON
    but not an object (a list, a string, a number, ``null``): a state maps keys to values.
    """
    if text is None:
        return {}
    value = parse_json_value("--input", text)
    if not isinstance(value, dict):
        kind = ("null" if value is None else "a boolean" if isinstance(value, bool) else "an array"
                if isinstance(value, list) else "a string" if isinstance(value, str) else "a number")
        raise ConfigurationError(
            f"--input must be a JSON object (the initial state, keys to values), not {kind} ({text!r}); e.g. --input '{{\"topic\": \"tides\"}}'")
    try:
        check_values(value)  # NaN, Infinity, 1e999: parsed by Python's json, refused as state
    except StateNotSerializableError as exc:
        raise ConfigurationError(f"--input: {exc}") from None
    return value


def _is_memory(url: str) -> bool:
    return url.partition("://")[0].lower() == "memory"


# submit stores a workflow and exits without driving it: the lease it took lapses this soon,
# so an orchestrator with recovery (or 'resume') takes the workflow over at once.
SUBMIT_LEASE_TTL = 1.0


def _orchestrator(url: str, options: Mapping[str, Any], local_nodes: bool = False, **more: Any) -> Orchestrator:
    """A client orchestrator: nodes run here on memory:// (or when asked), else on workers (waited for)."""
    local = local_nodes or _is_memory(url)
    return Orchestrator(backend=url, backend_options=dict(options), local_nodes=local, wait_for_workers=not local,
                        **more)


client_orchestrator = _orchestrator  # the dashboard's orchestrator is a client one too


def _not_found(exc: WorkflowNotFoundError) -> WorkflowNotFoundError:
    return WorkflowNotFoundError(f"{exc}; '{PROG} list' shows the workflow ids (check --backend-url and --prefix)")


async def _final(orchestrator: Orchestrator, workflow_id: str) -> tuple[str, Any]:
    """The status and result of a workflow ``run``/``resume`` drove to its end (or pause).

    Read through a backend outage with the orchestrator's own policy
    (``core.backoff.until_available``): a Redis or NATS restart as the workflow ends only
    delays the answer, as it delays the run itself. Raises as ``get_result`` does.
    """
    outage = Outage(log, f"{PROG}: workflow {workflow_id!r}")
    what = f"read the outcome of workflow {workflow_id!r}"
    info = await until_available(lambda: orchestrator.get_workflow_status(workflow_id), what=what, outage=outage)
    result = await until_available(lambda: orchestrator.get_result(workflow_id), what=what, outage=outage)
    return info.status, result


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data (dataclasses such as ``Interrupt`` become objects)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(_plain(value), default=str, **kwargs)


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else "-"


def workflow_json(info: Any, *, cursor: bool = False) -> dict[str, Any]:
    """A ``WorkflowStatusInfo`` under the stable field names (see the module docstring)."""
    data = {
        "workflow_id": info.workflow_id, "graph": info.graph_name, "status": info.status, "step": info.step,
        "next_nodes": list(info.next_nodes), "waiting_for": info.waiting_for, "error": _plain(info.error),
        "interrupts": [{"id": i.id, "node": i.node, "value": _plain(i.value), "kind": i.kind} for i in info.interrupts],
        "created_at": info.created_at, "updated_at": info.updated_at,
    }
    if cursor:
        data["cursor"] = info.cursor
    return data


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """Shows debug events as they come: plain lines, or one redrawn line on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.running: dict[str, float] = {}
        self.step = 0
        self.done = 0
        self.ended = False

    def event(self, chunk: Mapping[str, Any], namespace: Sequence[str]) -> None:
        event = str(chunk.get("event", ""))
        payload = chunk.get("payload") or {}
        step = chunk.get("step")
        self.step = step if isinstance(step, int) else self.step
        where = "/".join(namespace)
        node = f"{where}/{payload.get('node')}" if where else str(payload.get("node"))
        if event == "node.started":
            self.running[node] = time.monotonic()
            line = f"step {self.step}: {node} started ({payload.get('where', '?')})"
        elif event in ("node.completed", "node.failed"):
            self.running.pop(node, None)
            self.done += 1
            verb = "failed" if event == "node.failed" else "done"
            duration = payload.get("duration")
            took = f" in {duration:.2f}s" if isinstance(duration, (int, float)) else ""
            line = f"step {self.step}: {node} {verb}{took}"
        elif event == "step.committed":
            line = f"step {self.step} committed"
        elif event.startswith("workflow.") and event != "workflow.started":
            self.ended = True
            line = f"{event.replace('.', ' ')} at step {self.step}"
        else:
            line = event.replace(".", " ")
        if self.live:
            running = ", ".join(self.running) or "-"
            self._write(f"\r\x1b[Kstep {self.step} | running: {running} | nodes done: {self.done}")
        else:
            self._write(line + "\n")

    def finish(self, status: str) -> None:
        if self.live:
            self._write(f"\r\x1b[Kstep {self.step} | {status} | nodes done: {self.done}\n")
        elif not self.ended:  # the workflow's own end event was not seen (e.g. it failed to start)
            self._write(f"workflow {status} at step {self.step}\n")

    def _write(self, text: str) -> None:
        """One write under the log handlers' locks: nodes log from worker threads onto the same
        stderr, and a progress line written between a record's parts would break JSON log lines."""
        handlers = logging.getLogger().handlers
        for handler in handlers:
            handler.acquire()
        try:
            self.out.write(text)
            self.out.flush()
        finally:
            for handler in reversed(handlers):
                handler.release()


def _split_chunk(item: Any) -> tuple[list[str], str, Any]:
    """``(namespace, mode, chunk)`` from an ``astream(..., subgraphs=True)`` item with a list of modes."""
    namespace, mode, chunk = item
    return list(namespace), str(mode), chunk


# -- commands -----------------------------------------------------------------------------------


async def run_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``run MODULE:GRAPH --input JSON``: run it to its end (or pause), print the final state."""
    graph = load_graph(args.graph)
    initial = parse_input_state(args.input)
    modes = ["debug"] + [m for m in args.stream_mode if m != "debug"] if args.stream else ["debug"]
    workflow_id = args.workflow_id or new_workflow_id()
    orchestrator = _orchestrator(url, options, args.local_nodes)
    progress = Progress(sys.stderr)
    try:
        stream = orchestrator.astream(graph, initial, stream_mode=modes, subgraphs=True, workflow_id=workflow_id)
        async for item in stream:
            namespace, mode, chunk = _split_chunk(item)
            if mode == "debug":
                progress.event(chunk, namespace)
            if args.stream and mode in args.stream_mode:
                print(_dumps({"mode": mode, "namespace": namespace, "chunk": chunk}), flush=True)
        status, result = await _final(orchestrator, workflow_id)
        progress.finish(status)
    except ExecutionError as exc:  # the workflow failed, was cancelled or could not go on
        progress.finish("cancelled" if isinstance(exc, WorkflowCancelledError) else "failed")
        message = str(exc)
        if not _is_memory(url):  # the rest (the node's error and traceback) is kept in the record
            message = f"{message.splitlines()[0]}; '{PROG} status {workflow_id}' shows the failure in full"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # Ctrl-C: the workflow stays stored; say how to go on with it
        if not _is_memory(url):
            print(f"{PROG}: interrupted; workflow {workflow_id} stays stored at its last committed step: "
                  f"'{PROG} resume {workflow_id} --graph {args.graph}' (with the same --backend-url and --prefix) "
                  "continues it", file=sys.stderr)
        raise
    finally:
        await orchestrator.close()
    state = {"workflow_id": workflow_id, "status": status, "values": dict(result)}
    if status == "interrupted":
        print(f"paused for an answer: {PROG} resume {workflow_id} --value JSON --graph {args.graph}"
              + ("" if _is_memory(url) else " (with the same --backend-url and --prefix)"), file=sys.stderr)
    if args.stream:
        print(_dumps({"mode": "result", "namespace": [], "chunk": state}))
    else:
        print(_dumps(state, indent=2))
    return 0


async def submit_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``submit MODULE:GRAPH --input JSON``: store a new workflow, print its id, leave it to an orchestrator."""
    if _is_memory(url):
        raise ConfigurationError(
            f"submit cannot use --backend-url {url!r}: memory:// lives inside this process, so the workflow would "
            f"vanish when it exits; use '{PROG} run' there, or pass a shared backend (redis://HOST:6379/0, "
            "nats://HOST:4222)")
    graph = load_graph(args.graph)
    initial = parse_input_state(args.input)
    orchestrator = _orchestrator(url, options, lease_ttl=SUBMIT_LEASE_TTL)
    try:
        workflow_id = await orchestrator.submit(graph, initial, workflow_id=args.workflow_id)
    finally:
        await orchestrator.close()  # stops driving it; the stored workflow stays resumable
    print(workflow_id)
    return 0


def _status_text(data: Mapping[str, Any]) -> str:
    lines = [f"workflow:  {data['workflow_id']}", f"graph:     {data['graph']}", f"status:    {data['status']}",
             f"step:      {data['step']}", f"next:      {', '.join(data['next_nodes']) or '-'}"]
    if data["waiting_for"]:
        lines.append(f"waiting:   {data['waiting_for']}")
    for pause in data["interrupts"]:
        lines.append(f"interrupt: {pause['id']} at {pause['node']} ({pause['kind']}): {json.dumps(pause['value'])}")
    if data["error"]:
        lines.append(f"error:     {data['error'].get('summary', data['error'])}")
        trace = data["error"].get("traceback") if isinstance(data["error"], Mapping) else None
        if trace:  # the README promises it here: the failing node's traceback, indented under its summary
            lines.append("traceback:")
            lines += [f"  {line}" for line in str(trace).rstrip("\n").splitlines()]
    lines += [f"created:   {_when(data['created_at'])}", f"updated:   {_when(data['updated_at'])}"]
    return "\n".join(lines)


async def status_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``status ID``: the workflow's status, step, next nodes, pauses and failure."""
    orchestrator = _orchestrator(url, options)
    try:
        info = await orchestrator.get_workflow_status(args.workflow_id)
    except WorkflowNotFoundError as exc:
        raise _not_found(exc) from None
    finally:
        await orchestrator.close()
    data = workflow_json(info)
    print(_dumps(data) if args.json else _status_text(data))
    return 0


async def list_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``list``: workflows, oldest first, filtered and paged."""
    orchestrator = _orchestrator(url, options)
    try:
        infos = await orchestrator.list_workflows(args.status, graph=args.graph, limit=args.limit, cursor=args.cursor)
    finally:
        await orchestrator.close()
    if args.json:
        for info in infos:
            print(_dumps(workflow_json(info, cursor=True)))
        return 0
    if not infos:
        print("no workflows")
        return 0
    rows = [["WORKFLOW", "GRAPH", "STATUS", "STEP", "UPDATED"]]
    rows += [[i.workflow_id, i.graph_name, i.status, str(i.step), _when(i.updated_at)] for i in infos]
    _table(rows, sys.stdout)
    if args.limit is not None and len(infos) == args.limit:
        print(f"more: --cursor '{infos[-1].cursor}'")
    return 0


async def cancel_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``cancel ID``: cancel a workflow that has not finished; exit 1 if it already had."""
    orchestrator = _orchestrator(url, options)
    try:
        cancelled = await orchestrator.cancel_workflow(args.workflow_id)
        status = None if cancelled else (await orchestrator.get_workflow_status(args.workflow_id)).status
    except WorkflowNotFoundError as exc:
        raise _not_found(exc) from None
    finally:
        await orchestrator.close()
    if cancelled:
        print(f"cancelled {args.workflow_id}")
        return 0
    print(f"{PROG}: error: workflow {args.workflow_id!r} already finished ({status}); nothing to cancel",
          file=sys.stderr)
    return 1


async def resume_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``resume ID [--value JSON] --graph MODULE:GRAPH``: continue it to its end, print the final state."""
    if args.graph is None:
        raise ConfigurationError(
            f"resume {args.workflow_id} runs the graph's code, so it needs the graph: pass --graph MODULE:GRAPH "
            "(the graph the workflow was started with, e.g. --graph myapp.flows:graph)")
    graph = load_graph(args.graph)
    extra: dict[str, Any] = {}
    if args.value is not None:
        extra["resume"] = parse_json_value("--value", args.value)
    orchestrator = _orchestrator(url, options, args.local_nodes)
    try:
        await orchestrator.resume(args.workflow_id, graph, **extra)
        status, result = await _final(orchestrator, args.workflow_id)
    except WorkflowNotFoundError as exc:
        raise _not_found(exc) from None
    finally:
        await orchestrator.close()
    print(_dumps({"workflow_id": args.workflow_id, "status": status, "values": dict(result)}, indent=2))
    return 0


def checkpoint_json(snapshot: Any) -> dict[str, Any]:
    """A ``StateSnapshot`` under the stable field names (see the module docstring)."""
    return {
        "checkpoint_id": snapshot.checkpoint_id, "parent_checkpoint_id": snapshot.parent_checkpoint_id,
        "step": snapshot.step, "next": list(snapshot.next), "status": snapshot.status,
        "created_at": snapshot.created_at, "values": _plain(snapshot.values), "interrupts": _plain(snapshot.interrupts),
    }


async def history_command(args: argparse.Namespace, url: str, options: Mapping[str, Any]) -> int:
    """``history ID``: the workflow's checkpoints, newest first."""
    orchestrator = _orchestrator(url, options)
    try:
        await orchestrator.get_workflow_status(args.workflow_id)  # an unknown id is an error, not an empty list
        snapshots = await orchestrator.get_state_history(args.workflow_id, limit=args.limit)
    except WorkflowNotFoundError as exc:
        raise _not_found(exc) from None
    finally:
        await orchestrator.close()
    if args.json:
        for snapshot in snapshots:
            print(_dumps(checkpoint_json(snapshot)))
        return 0
    rows = [["STEP", "CHECKPOINT", "NEXT", "STATUS", "CREATED"]]
    rows += [[str(s.step), s.checkpoint_id, ", ".join(s.next) or "-", s.status or "-", _when(s.created_at)]
             for s in snapshots]
    _table(rows, sys.stdout)
    return 0


async def queues_command(args: argparse.Namespace, backend: Any) -> int:
    """``queues``: queued, in-flight and dead tasks per node type.

    Node types: ``--node-types`` if given, else every type a live worker serves or a
    dead letter has (a queue no worker serves shows up once it is named).
    """
    stats = await operations.queue_stats(backend, args.node_types)
    if args.json:
        for s in stats:
            print(json.dumps({"node_type": s.node_type, "queued": s.queued, "in_flight": s.in_flight, "dead": s.dead}))
        return 0
    if not stats:
        print("no node types known (no live worker, no dead letter); name them with --node-types a,b")
        return 0
    rows = [["NODE TYPE", "QUEUED", "IN FLIGHT", "DEAD"]]
    rows += [[s.node_type, str(s.queued), str(s.in_flight), str(s.dead)] for s in stats]
    _table(rows, sys.stdout)
    return 0
