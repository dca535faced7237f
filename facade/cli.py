"""The ``distributed-agents`` command (also ``python -m distributed_agents``).

    distributed-agents [--log-level LEVEL] [--version] COMMAND ...
    distributed-agents worker --app mymodule:registry [--backend-url URL] [--node-types a,b] [--health-port P] ...
    distributed-agents orchestrator --app mymodule:graph [--backend-url URL] [--health-port P] ...
    distributed-agents dead-letters list [--node-type T] [--limit N]
    distributed-agents dead-letters show TASK_ID [--json]
    distributed-agents dead-letters requeue TASK_ID [TASK_ID ...]
    distributed-agents dead-letters purge [TASK_ID ...] [--node-type T] [--yes]
    distributed-agents run MODULE:GRAPH [--input JSON] [--stream] | submit MODULE:GRAPH [--input JSON]
    distributed-agents status ID | list [--status S] | cancel ID | resume ID --graph MODULE:GRAPH [--value JSON]
    distributed-agents history ID | workers | queues | conformance URL       (read commands take --json)
    distributed-agents backends
    distributed-agents draw MODULE:GRAPH [--format mermaid|ascii|dot|png|svg] [--output FILE]
    distributed-agents help [COMMAND ...]

Every option may also come from the environment (``--backend-url`` from
``DA_BACKEND_URL``, ``BACKEND_URL``, ``REDIS_URL`` or ``NATS_URL``; ``--app`` from ``DA_APP``; the others
are listed by ``--help``). An environment value is read and checked only by the
command that uses it, so a bad ``HEARTBEAT_INTERVAL`` breaks ``worker`` (with a
message naming it) but not ``dead-letters``. ``--log-level`` is accepted before or
after the command.

Errors in the input (flags, environment, ``--app``, the backend URL) are one line on
stderr, saying what is wrong and what to do, with exit status 2; other failures
(an unreachable backend, a dead letter not found) exit with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from distributed_agents.core.dead_letters import requeue_dead_letter
from distributed_agents.core.errors import (
    BackendConfigError,
    BackendNotFoundError,
    ConfigurationError,
    DistributedAgentsError,
    MissingExtraError,
    PayloadDecodeError,
    WorkflowNotFoundError,
)
from distributed_agents.core.graph import Graph
from distributed_agents.core.orchestrator import Orchestrator, withdraw_step_tasks
from distributed_agents.core.ports.backend import MAX_DURATION, Backend
from distributed_agents.core.ports.state_store import StateStore, WorkflowRecord, WorkflowStatus
from distributed_agents.core.ports.task_queue import DeadLetter
from distributed_agents.core.registry import NodeRegistry
from distributed_agents.core.subgraphs import PARENT_KEY
from distributed_agents.core.worker import STOP_SIGNALS, Worker
from distributed_agents import cli_client, operations
from distributed_agents.distributed import DistributedWorker
from distributed_agents.draw import FORMATS, draw_graph, file_path_problem, format_for_path
from distributed_agents import observability
from distributed_agents.log_format import LOG_FORMATS, configure_logging
from distributed_agents.plugins import available_backends, open_backend
from distributed_agents.service_gc import keep_defaults_from, settle_for_service

__all__ = ["UsageError", "load_app", "main", "requeue_dead_letters"]

PROG = "distributed-agents"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
HELP_FLAGS = ("-h", "--help")


class UsageError(DistributedAgentsError):
    """Bad input on the command line or in the environment: one line, exit status 2."""


# Errors in what the user gave (flags, environment, --app, the URL): exit status 2.
USAGE_ERRORS = (UsageError, ConfigurationError, BackendConfigError, BackendNotFoundError, MissingExtraError)


# -- value parsers: each raises ValueError saying what the value must be ----------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{value} is not a positive whole number (at least 1)")
    return value


def _seconds(minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):  # nan, inf
            raise ValueError(f"{text!r} is not a finite number of seconds")
        if value < minimum or (strict and value == minimum):
            bound = "more than" if strict else "at least"
            raise ValueError(f"{text!r} seconds must be {bound} {minimum:g}")
        if value > MAX_DURATION:  # TTLs and leases past it overflow the engines' clocks
            raise ValueError(f"{text!r} seconds must be at most {MAX_DURATION:,.0f} (10 years)")
        return value

    return parse


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _log_format(text: str) -> str:
    log_format = text.strip().lower()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not a log format; use one of {', '.join(LOG_FORMATS)}")
    return log_format


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    return text.strip()


def _draw_format(text: str) -> str:
    if text.strip().lower() not in FORMATS:
        raise ValueError(f"{text!r} is not a format; use one of {', '.join(FORMATS)}")
    return text.strip().lower()


def _app_spec(text: str) -> str:
    module_name, sep, attribute = text.strip().partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{text!r} must look like MODULE:ATTRIBUTE, e.g. myapp.nodes:registry")
    path_like = file_path_problem(module_name.strip(), attribute)
    if path_like:
        raise ValueError(f"{text!r}: {path_like}")
    return text.strip()


def _graph_specs(text: str) -> tuple[str, ...]:
    specs = tuple(dict.fromkeys(_app_spec(s) for s in text.split(",") if s.strip()))
    if not specs:
        raise ValueError(f"{text!r} names no graph; give MODULE:GRAPH, e.g. myapp.flows:graph")
    return specs


def _node_types(text: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not types:
        raise ValueError(f"{text!r} names no node type; give a comma-separated list, e.g. researcher,writer")
    return types


def _modes(text: str) -> list[str]:
    from distributed_agents.core.streaming import STREAM_MODES

    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in STREAM_MODES]
    if not modes or unknown:
        raise ValueError(f"{text!r} is not a list of stream modes; use some of {', '.join(STREAM_MODES)}")
    return modes


# -- options: one table gives argparse its flags and help, and the environment its fallbacks --


@dataclass(frozen=True)
class Option:
    """A command-line option with its environment variables and default.

    ``parse`` turns the text (from the flag or the environment) into the value, raising
    ``ValueError`` with what is wrong; ``example`` is a valid value shown in hints.
    """

    flag: str
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    help: str
    example: str
    default: Any = None
    default_text: str = ""
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        shown_default = self.default_text or ("none" if self.default is None else str(self.default))
        env = " or ".join(f"${name}" for name in self.env)
        parser.add_argument(
            self.flag,
            dest=self.dest,
            default=None,
            type=_argparse_type(self.parse),
            metavar=self.metavar or self.dest.upper(),
            help=f"{self.help} (default: {shown_default}; env: {env})",
        )

    def resolve(self, args: argparse.Namespace) -> Any:
        """The flag's value, else the first environment variable set, else the default."""
        value = getattr(args, self.dest, None)
        if value is not None:
            return value
        for name in self.env:
            raw = os.environ.get(name)
            if raw is None or raw == "":
                continue
            try:
                return self.parse(raw)
            except ValueError as exc:
                raise UsageError(
                    f"environment variable {name}={raw!r} is invalid for {self.flag}: {exc}; "
                    f"set it to a valid value (e.g. {name}={self.example}), unset it, or pass {self.flag} {self.example}"
                ) from None
        return self.default


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


LOG_LEVEL = Option("--log-level", ("LOG_LEVEL",), _log_level, "how much to log: " + ", ".join(LOG_LEVELS),
                   "info", default="info", metavar="LEVEL")
LOG_FORMAT = Option("--log-format", ("DA_LOG_FORMAT",), _log_format,
                    "how to write the log to stderr: text, or json (one object per line with time, level, logger, "
                    "message and, while a workflow or node runs, workflow_id, step, node, task_id, attempt)",
                    "json", default="text", metavar="FORMAT")
BACKEND_URL = Option(
    "--backend-url", ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL"), _text,
    "backend to use, e.g. redis://HOST:6379/0 or nats://HOST:4222", "redis://127.0.0.1:6379/0", metavar="URL",
)
PREFIX = Option("--prefix", ("DA_PREFIX",), _text,
                "key/subject prefix of the deployment (must match the orchestrator's)", "myapp",
                default_text="the URL's ?prefix=, else da")
APP = Option("--app", ("DA_APP",), _app_spec,
             "the NodeRegistry (or Worker) with the node functions, or a Graph holding them (LangGraph "
             "style: every node function of it and its subgraphs, by node type), as MODULE:ATTRIBUTE; "
             "the current directory is importable", "myapp.nodes:registry", metavar="MODULE:ATTRIBUTE")
NODE_TYPES = Option("--node-types", ("NODE_TYPES",), _node_types,
                    "comma-separated node types to serve; each needs a function in --app", "researcher,writer",
                    default_text="every node type --app has a function for", metavar="TYPES")
WORKER_ID = Option("--worker-id", ("WORKER_ID",), _text, "unique name of this worker", "worker-1",
                   default_text="worker-HOST-PID-RANDOM", metavar="ID")
CAPACITY = Option("--capacity", ("CAPACITY",), _positive_int,
                  "nodes run at the same time (a task whose result is on its way to the backend leaves its slot)",
                  "4", default=1, metavar="N")
HEARTBEAT_INTERVAL = Option("--heartbeat-interval", ("HEARTBEAT_INTERVAL",), _seconds(0.0, strict=True),
                            "seconds between liveness heartbeats", "10", default=10.0, metavar="SECONDS")
SHUTDOWN_GRACE = Option("--shutdown-grace", ("SHUTDOWN_GRACE",), _seconds(0.0, strict=False),
                        "seconds running tasks may finish after SIGTERM before they are given back", "30",
                        default=30.0, metavar="SECONDS")
VISIBILITY_TIMEOUT = Option("--visibility-timeout", ("VISIBILITY_TIMEOUT",), _seconds(0.0, strict=True),
                            "lease length in seconds: a task of a dead worker is delivered again after it", "30",
                            default_text="the URL's ?visibility_timeout=, else 30", metavar="SECONDS")
NODE_TYPE = Option("--node-type", ("DA_NODE_TYPE",), _text, "only dead letters of this node type", "writer",
                   default_text="all node types", metavar="TYPE")
DRAW_FORMAT = Option("--format", ("DA_DRAW_FORMAT",), _draw_format,
                     "how to draw: mermaid (flowchart text), ascii (plain text), dot (Graphviz text), or a png / "
                     "svg image (needs Graphviz's dot program)", "svg",
                     default="mermaid", default_text="from --output's suffix (.png, .svg, .dot), else mermaid",
                     metavar="FORMAT")
DRAW_OUTPUT = Option("--output", ("DA_DRAW_OUTPUT",), _text, "write the drawing to this file instead of printing "
                     "it (needed for png)", "graph.svg", default_text="print it", metavar="FILE")
LIMIT = Option("--limit", ("DA_LIMIT",), _positive_int, "list at most this many", "100", default=100,
               metavar="N")

INPUT = Option("--input", ("DA_INPUT",), _text, "the input state as JSON", '{"topic": "tides"}', default_text="{}",
               metavar="JSON")
WORKFLOW_ID = Option("--workflow-id", ("DA_WORKFLOW_ID",), _text, "id of the new workflow", "wf_report_1",
                     default_text="a fresh one", metavar="ID")
STREAM_MODE = Option("--stream-mode", ("DA_STREAM_MODE",), _modes, "comma-separated stream modes --stream prints: "
                     "values, updates, custom, messages, debug", "updates,custom", default=["updates", "custom"],
                     default_text="updates,custom", metavar="MODES")
STATUS = Option("--status", ("DA_STATUS",), _text, "only workflows of this status (pending, running, interrupted, "
                "completed, failed, cancelled), or 'active' (pending, running or interrupted)", "active",
                default_text="all", metavar="STATUS")
GRAPH_NAME = Option("--graph", ("DA_GRAPH_NAME",), _text, "only workflows of this graph name", "essay",
                    default_text="all", metavar="NAME")
PAGE_LIMIT = Option("--limit", ("DA_LIMIT",), _positive_int, "list at most this many", "100", default_text="all",
                    metavar="N")
CURSOR = Option("--cursor", ("DA_CURSOR",), _text, "start after this cursor (the last one a page printed)",
                "1700000000.0/wf_1", default_text="from the start", metavar="CURSOR")
VALUE = Option("--value", ("DA_RESUME_VALUE",), _text, "the answer to the workflow's pending interrupt, as JSON",
               '"yes"', default_text="no answer", metavar="JSON")
GRAPH_SPEC = Option("--graph", ("DA_GRAPH",), _text, "where the workflow's graph is, as MODULE:GRAPH (the graph it "
                    "was started with; required)", "myapp.flows:graph", default_text="none", metavar="MODULE:GRAPH")
QUEUE_NODE_TYPES = Option("--node-types", ("NODE_TYPES",), _node_types, "comma-separated node types to show",
                          "researcher,writer", default_text="those of live workers and dead letters", metavar="TYPES")

HEALTH_PORT = Option("--health-port", ("DA_HEALTH_PORT",), observability.port_number,
                     "serve HTTP GET /livez and /readyz on this port (all interfaces) for liveness and readiness "
                     "probes; 0 picks a free port (logged)", "8080", default_text="none", metavar="PORT")
GRAPHS = Option("--app", ("DA_APP",), _graph_specs,
                "the graphs whose workflows to drive, as MODULE:GRAPH (a Graph, or a function returning one); "
                "several comma-separated; the current directory is importable", "myapp.flows:graph",
                metavar="MODULE:GRAPH[,...]")
ORCHESTRATOR_ID = Option("--orchestrator-id", ("ORCHESTRATOR_ID",), _text,
                         "unique name of this orchestrator (workflow leases name their holder)", "orchestrator-1",
                         default_text="orchestrator-HOST-PID-RANDOM", metavar="ID")
LEASE_TTL = Option("--lease-ttl", ("DA_LEASE_TTL",), _seconds(0.0, strict=True),
                   "seconds a workflow's lease outlives the last renewal (renewed every third of that): after a "
                   "SIGKILL, another orchestrator takes the workflows over that long after", "30", default=30.0,
                   metavar="SECONDS")
POLL_INTERVAL = Option("--poll-interval", ("DA_POLL_INTERVAL",), _seconds(0.0, strict=True),
                       "seconds between looks for workflows to drive (submitted, or left by a stopped orchestrator)",
                       "1", default=1.0, metavar="SECONDS")

DASHBOARD_HOST = Option("--host", ("DA_DASHBOARD_HOST",), _text, "address to listen on (0.0.0.0: every interface; "
                        "set --token then)", "127.0.0.1", default="127.0.0.1", metavar="HOST")
DASHBOARD_PORT = Option("--port", ("DA_DASHBOARD_PORT",), _positive_int, "TCP port to listen on", "8080", default=8080,
                        metavar="PORT")
DASHBOARD_TOKEN = Option("--token", ("DA_DASHBOARD_TOKEN",), _text, "token that actions must carry (a header or "
                         "form field; the page asks for it)", "s3cret", default_text="none: actions need no token",
                         metavar="TOKEN")
DASHBOARD_OPTIONS = (BACKEND_URL, PREFIX, DASHBOARD_HOST, DASHBOARD_PORT, DASHBOARD_TOKEN)

WORKER_OPTIONS = (APP, BACKEND_URL, PREFIX, NODE_TYPES, WORKER_ID, CAPACITY, HEARTBEAT_INTERVAL, SHUTDOWN_GRACE,
                  VISIBILITY_TIMEOUT, HEALTH_PORT)
ORCHESTRATOR_OPTIONS = (GRAPHS, BACKEND_URL, PREFIX, ORCHESTRATOR_ID, LEASE_TTL, POLL_INTERVAL, HEALTH_PORT)
BACKEND_OPTIONS = (BACKEND_URL, PREFIX)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line that says what to do."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _parser() -> Parser:
    from distributed_agents import __version__

    common = Parser(add_help=False)
    # SUPPRESS: a subcommand that is not given --log-level keeps the top-level value.
    common.add_argument("--log-level", dest="log_level", default=argparse.SUPPRESS, metavar="LEVEL",
                        type=_argparse_type(_log_level),
                        help=f"{LOG_LEVEL.help}; also accepted before the command (default: info; env: $LOG_LEVEL)")
    common.add_argument("--log-format", dest="log_format", default=argparse.SUPPRESS, metavar="FORMAT",
                        type=_argparse_type(_log_format),
                        help=f"{LOG_FORMAT.help}; also accepted before the command (default: text; "
                             "env: $DA_LOG_FORMAT)")

    parser = Parser(
        prog=PROG,
        description="Run workers for distributed-agents workflows and inspect their backend.",
        epilog=f"'{PROG} COMMAND --help' shows a command's options.",
    )
    LOG_LEVEL.add_to(parser)
    LOG_FORMAT.add_to(parser)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def command(name: str, help_text: str, description: str, into: Any = commands) -> Parser:
        sub: Parser = into.add_parser(name, help=help_text, description=description, parents=[common])
        sub.set_defaults(command_parser=sub)  # the innermost command reports unknown arguments
        return sub

    worker = command(
        "worker", "serve node tasks until SIGTERM/SIGINT/SIGHUP",
        "Serve the node functions of --app on a backend until SIGTERM, SIGINT or SIGHUP, then drain: stop claiming, "
        "let running tasks finish (up to --shutdown-grace), give the rest back, deregister. A second SIGTERM or "
        "SIGINT while it drains stops it within a few seconds (running tasks are given back, or run again once "
        "their leases expire).",
    )
    for option in WORKER_OPTIONS:
        option.add_to(worker)
    worker.set_defaults(run=_run_worker, options=WORKER_OPTIONS)
    observability.add_flags(worker)
    _add_gc_flag(worker)

    orchestrator = command(
        "orchestrator", "drive submitted workflows until SIGTERM/SIGINT/SIGHUP",
        "Drive the workflows of the --app graphs that clients submit ('submit', Orchestrator.submit) or that "
        "a stopped or dead orchestrator left, each from its last committed step, their nodes on workers. "
        "SIGTERM, SIGINT or SIGHUP stops it: its workflows stay resumable and their leases are released, so another "
        "orchestrator takes them over at once.",
    )
    for option in ORCHESTRATOR_OPTIONS:
        option.add_to(orchestrator)
    orchestrator.set_defaults(run=_run_orchestrator, options=ORCHESTRATOR_OPTIONS)
    observability.add_flags(orchestrator)
    _add_gc_flag(orchestrator)

    dead = command("dead-letters", "list, show, requeue or purge dead-lettered tasks",
                   "Tasks that failed their last allowed attempt, or whose payload could not be decoded.")
    actions = dead.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = command("list", "one JSON line per dead letter, oldest first",
                      "Print one JSON object per dead letter, oldest first: task_id, node_type, attempts, "
                      "reason (its first line), workflow_id.", actions)
    show = command("show", "a dead letter's task, full error history and tracebacks",
                   "Print everything stored about one dead letter: its task, every attempt's error with "
                   "its traceback, and the payload.", actions)
    show.add_argument("task_id", metavar="TASK_ID", help="the task id, as 'dead-letters list' prints it")
    _json_flag(listing, "JSON lines, which is also the default (kept for scripts)")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text (default: text)")
    requeue = command("requeue", "queue dead-lettered tasks again",
                      "Queue each dead-lettered task again with a fresh attempt count.", actions)
    requeue.add_argument("task_ids", nargs="+", metavar="TASK_ID", help="task ids, as 'dead-letters list' prints them")
    purge = command("purge", "delete dead letters for good (all, by task id or by node type)",
                    "Delete dead letters so they are neither listed nor requeueable: the given TASK_IDs, or every "
                    "dead letter (of --node-type, if given). Asks for confirmation unless --yes.", actions)
    purge.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="task ids to delete (default: all)")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation (default: ask)")
    for sub, options, run in (
        (listing, (*BACKEND_OPTIONS, NODE_TYPE, LIMIT), _list_dead_letters),
        (show, BACKEND_OPTIONS, _show_dead_letter),
        (requeue, BACKEND_OPTIONS, _requeue_command),
        (purge, (*BACKEND_OPTIONS, NODE_TYPE), _purge_dead_letters),
    ):
        for option in options:
            option.add_to(sub)
        sub.set_defaults(run=run, options=options)

    delete = command("delete", "delete finished or malformed workflows for good: record, checkpoints, lease, "
                     "dead letters",
                     "Delete each workflow's record, checkpoints and lease, so that its id is free again, with the "
                     "child workflows of its subgraph nodes (and theirs). A workflow "
                     "still running or paused is refused (cancel it first, or pass --force, which cancels it "
                     "first: its queued tasks are taken back); one whose record "
                     "cannot be read (malformed, e.g. edited by hand) can always be deleted. Asks for confirmation "
                     "unless --yes.")
    delete.add_argument("workflow_ids", nargs="+", metavar="WORKFLOW_ID", help="workflow ids, as 'list' prints them")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation (default: ask)")
    delete.add_argument("--force", action="store_true",
                        help="delete running or paused workflows too, cancelling them first (default: refuse them)")
    for option in BACKEND_OPTIONS:
        option.add_to(delete)
    delete.set_defaults(run=_delete_workflows, options=BACKEND_OPTIONS)

    workers = command("workers", "list live workers: node types, capacity and busy slots",
                      "Print one JSON object per live worker (heartbeat within the backend's heartbeat_ttl), "
                      "sorted by id: worker_id, node_types, capacity, in_flight (tasks held: running, or their "
                      "result on its way), busy_abandoned "
                      "(threads of cancelled plain-function nodes still running; each keeps a slot taken), host, "
                      "pid, heartbeat_age (seconds since its last heartbeat; slot counts are as of then).")
    for option in BACKEND_OPTIONS:
        option.add_to(workers)
    _json_flag(workers, "JSON lines, which is also the default (kept for scripts)")
    workers.set_defaults(run=_list_workers, options=BACKEND_OPTIONS)

    _add_client_commands(command)

    board = command("dashboard", "serve the web dashboard: workflows, graphs, live events, workers, queues",
                    "Serve a web dashboard over the backend (needs the [dashboard] extra): workflows with their "
                    "graphs, step timelines, state and live events; workers, queue depths and dead letters; "
                    "cancel, resume, answer, fork, requeue and purge. Binds 127.0.0.1 unless --host says otherwise.")
    for option in DASHBOARD_OPTIONS:
        option.add_to(board)
    board.add_argument("--graph", dest="graphs", action="append", metavar="MODULE:GRAPH", default=None,
                       help="a graph to draw, resume and fork (repeat for several; default: none, so graphs are "
                            "not drawn and workflows cannot be resumed from the dashboard; env: $DA_DASHBOARD_GRAPHS, "
                            "comma-separated)")
    board.add_argument("--read-only", action="store_true", help="refuse every action (default: actions allowed)")
    board.add_argument("--allowed-host", dest="allowed_hosts", action="append", metavar="NAME", default=None,
                       help="a Host header name to answer besides 127.0.0.1, localhost, [::1] and --host, e.g. a "
                            "reverse proxy's name (repeat for several; default: none, so a DNS-rebinding page is "
                            "refused; env: $DA_DASHBOARD_ALLOWED_HOSTS, comma-separated)")
    board.set_defaults(run=_dashboard, options=DASHBOARD_OPTIONS)

    backends = command("backends", "list installed backends (URL scheme, name, description)",
                       "List the backends installed in this environment, one per URL scheme.")
    _json_flag(backends, "one JSON object per backend: scheme, name, description")
    backends.set_defaults(run=_list_backends, options=())

    draw = command("draw", "draw a graph: Mermaid or plain text, Graphviz DOT, or a PNG / SVG image",
                   "Import MODULE:GRAPH (a Graph, or a function returning one) and draw it: Mermaid flowchart "
                   "text (paste it into Markdown or mermaid.live), a plain-text rendering, Graphviz DOT text, or "
                   "a PNG / SVG image rendered by Graphviz's dot program (apt-get install graphviz).")
    draw.add_argument("graph", metavar="MODULE:GRAPH", help="where the graph is, e.g. myapp.flows:graph")
    DRAW_FORMAT.add_to(draw)
    DRAW_OUTPUT.add_to(draw)
    draw.set_defaults(run=_draw, options=(DRAW_FORMAT, DRAW_OUTPUT))

    helper = command("help", "show the help of a command", "Show the help of the given command.")
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="e.g. worker, or dead-letters purge")
    helper.set_defaults(run=None, options=())
    return parser


def _json_flag(parser: argparse.ArgumentParser, text: str = "JSON (one object per line; fields in the README)") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {text} (default: text)")


def _add_client_commands(command: Callable[..., Parser]) -> None:
    """The workflow commands (implemented in ``cli_client``) and ``queues`` / ``conformance``."""
    local_help = ("run the graph's node functions in this process instead of on workers (default: only on "
                  "memory://; elsewhere nodes go to workers, waited for)")

    def client(name: str, help_text: str, description: str, run: Callable[..., Any],
               options: tuple[Option, ...] = BACKEND_OPTIONS) -> Parser:
        sub = command(name, help_text, description)
        for option in options:
            option.add_to(sub)
        sub.set_defaults(run=_client(run, options), options=options)
        return sub

    run = client("run", "run a graph to its end, showing progress; print the final state",
                 "Import MODULE:GRAPH, run it from --input and print the final state as JSON "
                 "({workflow_id, status, values}). Progress (nodes started and done, steps committed) goes to "
                 "stderr: one redrawn line on a terminal, plain lines otherwise.", cli_client.run_command,
                 (*BACKEND_OPTIONS, INPUT, WORKFLOW_ID, STREAM_MODE))
    run.add_argument("graph", metavar="MODULE:GRAPH", help="where the graph is, e.g. myapp.flows:graph")
    run.add_argument("--stream", action="store_true", help="print one JSON line per stream chunk "
                     "({mode, namespace, chunk}), then the result (default: the final state only)")
    run.add_argument("--local-nodes", action="store_true", help=local_help)

    submit = client("submit", "store a new workflow and print its id",
                    "Import MODULE:GRAPH and store a new workflow from --input; print its id. The workflow is "
                    "driven by an orchestrator with recovery (or 'resume ID --graph MODULE:GRAPH').",
                    cli_client.submit_command, (*BACKEND_OPTIONS, INPUT, WORKFLOW_ID))
    submit.add_argument("graph", metavar="MODULE:GRAPH", help="where the graph is, e.g. myapp.flows:graph")

    status = client("status", "a workflow's status, step, next nodes, pauses and failure",
                    "Print a workflow's status (pending, running, interrupted, completed, failed, cancelled), "
                    "step, next nodes, what it waits for, its pending interrupts and its failure.",
                    cli_client.status_command)
    status.add_argument("workflow_id", metavar="ID", help="the workflow id")
    _json_flag(status, "one JSON object")

    listing = client("list", "workflows, oldest first (filter by status and graph, page with --cursor)",
                     "List workflows, oldest first.", cli_client.list_command,
                     (*BACKEND_OPTIONS, STATUS, GRAPH_NAME, PAGE_LIMIT, CURSOR))
    _json_flag(listing)

    cancel = client("cancel", "cancel a workflow that has not finished",
                    "Cancel a workflow: it stops at its next step, queued tasks are taken back and workers "
                    "cancel its running tasks. Exit status 1 if it had already finished.",
                    cli_client.cancel_command)
    cancel.add_argument("workflow_id", metavar="ID", help="the workflow id")

    resume = client("resume", "continue a workflow (answer its interrupt with --value); print the final state",
                    "Continue a paused, failed or abandoned workflow from its last committed step and print the "
                    "final state as JSON. Needs the graph it was started with (--graph).",
                    cli_client.resume_command, (*BACKEND_OPTIONS, VALUE, GRAPH_SPEC))
    resume.add_argument("workflow_id", metavar="ID", help="the workflow id")
    resume.add_argument("--local-nodes", action="store_true", help=local_help)

    history = client("history", "a workflow's checkpoints, newest first",
                     "Print a workflow's checkpoints, newest first: step, checkpoint id, next nodes, status.",
                     cli_client.history_command, (*BACKEND_OPTIONS, PAGE_LIMIT))
    history.add_argument("workflow_id", metavar="ID", help="the workflow id")
    _json_flag(history)

    queues = command("queues", "queued, in-flight and dead tasks per node type",
                     "Print queued, in-flight and dead-lettered task counts per node type: those of --node-types, "
                     "else every type a live worker serves or a dead letter has.")
    for option in (*BACKEND_OPTIONS, QUEUE_NODE_TYPES):
        option.add_to(queues)
    _json_flag(queues)
    queues.set_defaults(run=_queues, options=(*BACKEND_OPTIONS, QUEUE_NODE_TYPES))

    conformance = command("conformance", "check that a backend keeps the port contracts",
                          "Run the backend conformance suite (needs the [conformance] extra) against URL and "
                          "print a per-port, per-clause report; exit status 1 if a check failed.")
    conformance.add_argument("url", metavar="URL", help="backend URL, e.g. redis://127.0.0.1:6379/0")
    conformance.add_argument("--thorough", action="store_true",
                             help="many more examples and larger concurrent runs (default: the quick profile); "
                                  "python -m distributed_agents.conformance --help shows further options")
    conformance.set_defaults(run=_conformance, options=())


def _client(command: Callable[..., Any], options: tuple[Option, ...]) -> Callable[[argparse.Namespace], Any]:
    async def run(args: argparse.Namespace) -> int:
        for option in options:  # the flag, else the environment, else the default
            setattr(args, option.dest, option.resolve(args))
        status: int = await command(args, _backend_url(args), _backend_options(args))
        return status

    return run


async def _queues(args: argparse.Namespace) -> int:
    args.node_types = QUEUE_NODE_TYPES.resolve(args)
    return await _with_backend(args, lambda backend: cli_client.queues_command(args, backend))


async def _conformance(args: argparse.Namespace) -> int:
    from distributed_agents.conformance.__main__ import main as conformance_main

    argv = [args.url, *(["--thorough"] if args.thorough else [])]
    # In a thread: the suite runs its own event loops.
    status: int = await asyncio.to_thread(conformance_main, argv)
    return status


def _help_last(argv: list[str]) -> list[str]:
    """``--help worker`` and ``help worker`` mean ``worker --help``: the command's own help."""
    if argv and argv[0] == "help":
        return [*argv[1:], "--help"]
    if any(arg in HELP_FLAGS for arg in argv) and "--" not in argv:
        return [*(arg for arg in argv if arg not in HELP_FLAGS), "--help"]
    return argv


# -- the commands ------------------------------------------------------------------------------


def load_app(spec: str) -> NodeRegistry | Worker:
    """Import ``module:attribute`` and return the ``NodeRegistry`` or ``Worker`` it names.

    A ``Graph`` there (a LangGraph-style module's ``app = graph.compile()``) gives the
    registry of its node functions, subgraphs' included (``NodeRegistry.from_graph``).

    Raises ``ConfigurationError`` (naming ``--app``) if the spec is malformed, the
    module cannot be imported or the attribute is missing or of another type.
    """
    try:
        _app_spec(spec)
    except ValueError as exc:
        raise ConfigurationError(f"--app {exc}") from None
    module_name, _, attribute = spec.strip().partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and not (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigurationError(
                f"--app {spec!r}: importing {module_name!r} failed: {exc}; install what it needs into this "
                "environment (the one this command runs in)"
            ) from None
        raise ConfigurationError(
            f"--app {spec!r}: cannot import {module_name!r} ({exc}); run from the folder that contains it, "
            "or add that folder to PYTHONPATH"
        ) from None
    except SyntaxError as exc:
        raise ConfigurationError(
            f"--app {spec!r}: {module_name!r} has a syntax error at {exc.filename}:{exc.lineno}: {exc.msg}; "
            "fix it, then start again"
        ) from None
    except Exception as exc:  # the module's own code failed at import time
        logging.getLogger("distributed_agents.cli").debug("importing %r failed", module_name, exc_info=exc)
        raise ConfigurationError(
            f"--app {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}{_raised_at(exc)}; "
            f"fix the module (python3 -c 'import {module_name}' shows the traceback, as does --log-level debug)"
        ) from None
    try:
        app = getattr(module, attribute)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, (NodeRegistry, Worker, Graph)))
        found = f"; it has {', '.join(f'{module_name}:{n}' for n in names)}" if names else ""
        raise ConfigurationError(
            f"--app {spec!r}: module {module_name!r} has no attribute {attribute!r}{found}"
        ) from None
    if isinstance(app, Graph):
        registry = NodeRegistry.from_graph(app)
        if not len(registry):
            raise ConfigurationError(
                f"--app {spec!r}: graph {app.name!r} has no node functions of its own (its nodes are served by "
                "node type); point --app at the NodeRegistry they are registered on")
        return registry
    if not isinstance(app, (NodeRegistry, Worker)):
        raise ConfigurationError(
            f"--app {spec!r} is of type {type(app).__name__}, not a NodeRegistry, Worker or Graph; "
            "point it at the NodeRegistry your node functions are registered on, or at the graph that holds them"
        )
    return app


def _raised_at(exc: BaseException) -> str:
    """`` (at FILE:LINE)`` of the innermost frame of ``exc``'s traceback, or ``""``."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _backend_url(args: argparse.Namespace) -> str:
    url: str | None = BACKEND_URL.resolve(args)
    if url is None:
        raise UsageError(
            "no backend URL: pass --backend-url (e.g. --backend-url redis://127.0.0.1:6379/0 or "
            "nats://127.0.0.1:4222), or set DA_BACKEND_URL (or BACKEND_URL, REDIS_URL, NATS_URL)"
        )
    return url


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    prefix = PREFIX.resolve(args)
    return {"prefix": prefix} if prefix else {}


def _add_gc_flag(parser: argparse.ArgumentParser) -> None:
    """``--gc-defaults`` (``service_gc``) on a long-running command."""
    parser.add_argument("--gc-defaults", dest="gc_defaults", action="store_true", default=None,
                        help="keep CPython's garbage-collector settings; without it, what start-up made (the app, "
                             "its imports) is frozen out of the collector's passes once the app is loaded, which "
                             "saves CPU per task but never frees a start-up object the app drops later inside a "
                             "reference cycle (default: off; env: $DA_GC_DEFAULTS=1)")


async def _run_worker(args: argparse.Namespace) -> int:
    atexit.register(_ignore_stop_signals_last)  # first: the app's and telemetry's exit functions run before it
    spec = APP.resolve(args)
    if spec is None:
        raise UsageError(
            "worker needs the node functions to serve: pass --app MODULE:ATTRIBUTE naming a NodeRegistry "
            "(e.g. --app myapp.nodes:registry), or set DA_APP"
        )
    keep_gc_defaults = keep_defaults_from(getattr(args, "gc_defaults", None))
    app = load_app(spec)
    registry = app.registry if isinstance(app, Worker) else app
    available = sorted(registry.node_types())
    node_types: tuple[str, ...] | None = NODE_TYPES.resolve(args)
    if node_types is not None:
        missing = [t for t in node_types if t not in registry]
        if missing:
            raise UsageError(
                f"--node-types (or NODE_TYPES) lists {', '.join(map(repr, missing))}, which --app {spec!r} has no "
                f"function for (it has: {', '.join(available) or 'none'}); remove it from the list or register a "
                "function for it"
            )
    elif not available:
        raise UsageError(f"--app {spec!r} has no node functions registered; register one with @registry.register(NAME)")
    options: dict[str, Any] = _backend_options(args)
    visibility = VISIBILITY_TIMEOUT.resolve(args)
    if visibility is not None:
        options["visibility_timeout"] = visibility
    url = _backend_url(args)
    if url.partition("://")[0].lower() == "memory":
        raise UsageError(
            f"worker cannot use --backend-url {url!r}: memory:// lives inside one process, so no orchestrator "
            "could send this worker tasks; pass a shared backend, e.g. --backend-url redis://HOST:6379/0 or "
            "nats://HOST:4222"
        )
    worker = DistributedWorker(
        backend_url=url,
        worker_id=WORKER_ID.resolve(args),
        node_types=node_types,
        capacity=CAPACITY.resolve(args),
        heartbeat_interval=HEARTBEAT_INTERVAL.resolve(args),
        registry=registry,
        shutdown_grace=SHUTDOWN_GRACE.resolve(args),
        instrumentation=observability.instrumentation_from(args, "distributed-agents-worker"),
        **options,
    )
    health = None
    port = HEALTH_PORT.resolve(args)
    if port is not None:
        from distributed_agents.health import HealthServer

        async def ready() -> str | None:
            return worker.readiness()

        health = HealthServer(port, ready=ready, what=f"worker {worker.worker_id}")
        await health.start()
    # Until the process ends, a signal the worker does not take (before it serves, once it has
    # stopped, while the interpreter exits) means "now", and gets it: status 0, at once
    # (``main`` puts the previous handlers back for a caller that passed its own arguments).
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            _SIGNALS_BEFORE_WORKER.setdefault(sig, signal.signal(sig, _exit_at_once))
    settle_for_service(keep_gc_defaults)  # (the app is loaded: what it made stays for the process's life)
    try:
        await worker.start()
    finally:
        if health is not None:
            await health.close()
    usage = worker.slot_usage()
    if usage["busy_abandoned"] or usage["in_flight"]:
        # Given back or left to their leases already: a node's thread cannot be interrupted,
        # and the interpreter would wait at exit for it (and asyncio.run for a node that
        # ignores its cancellation), as long as the slowest of them runs.
        logging.getLogger("distributed_agents.worker").warning(
            "worker %s: exiting without waiting for %d node thread(s) and %d node task(s) still running "
            "(their tasks were given back or run again once their leases expire)", worker.worker_id,
            usage["busy_abandoned"], usage["in_flight"])
        _exit_at_once()
    return 0


# The SIGTERM/SIGINT handlers ``_run_worker`` replaced, put back by ``main`` once the run is over.
_SIGNALS_BEFORE_WORKER: dict[int, Any] = {}


def _ignore_stop_signals_last() -> None:
    """The last exit function of a worker run (registered before the others it makes): from here on
    the interpreter only tears down, and Python puts the default action back for signals
    with a Python handler (``_exit_at_once``), so a signal now would end an exit that is as
    good as done with status 143 or 130. Ignored instead; a caller's own handlers are left."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is _exit_at_once:
            signal.signal(sig, signal.SIG_IGN)


def _exit_at_once(*_: Any) -> NoReturn:
    """End the process now, status 0, with the logs and stdout flushed: what is left only waits
    for node threads or tasks that no longer matter (see ``_run_worker``)."""
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


async def _run_orchestrator(args: argparse.Namespace) -> int:
    from distributed_agents.distributed import DistributedOrchestrator
    from distributed_agents.draw import load_graph
    from distributed_agents.health import HealthServer
    from distributed_agents.orchestrator_service import OrchestratorService

    specs: tuple[str, ...] | None = GRAPHS.resolve(args)
    if not specs:
        raise UsageError("orchestrator needs the graphs whose workflows to drive: pass --app MODULE:GRAPH "
                         "(e.g. --app myapp.flows:graph; several comma-separated), or set DA_APP")
    keep_gc_defaults = keep_defaults_from(getattr(args, "gc_defaults", None))
    graphs = [load_graph(spec) for spec in specs]
    url = _backend_url(args)
    if url.partition("://")[0].lower() == "memory":
        raise UsageError(
            f"orchestrator cannot use --backend-url {url!r}: memory:// lives inside one process, so no client could "
            "submit to it; pass a shared backend, e.g. --backend-url redis://HOST:6379/0 or nats://HOST:4222")
    orchestrator = DistributedOrchestrator(
        backend_url=url, recover=False, orchestrator_id=ORCHESTRATOR_ID.resolve(args),
        lease_ttl=LEASE_TTL.resolve(args),
        instrumentation=observability.instrumentation_from(args, "distributed-agents-orchestrator"),
        **_backend_options(args))
    service = OrchestratorService(orchestrator, graphs, poll_interval=POLL_INTERVAL.resolve(args))
    health = None
    port = HEALTH_PORT.resolve(args)
    if port is not None:
        health = HealthServer(port, ready=service.readiness, routes={"/queues": service.queues},
                              what=f"orchestrator {orchestrator.orchestrator_id}")
        await health.start()
    settle_for_service(keep_gc_defaults)  # (the graphs are loaded: what they made stays for the process's life)
    try:
        await service.serve()
    finally:
        if health is not None:
            await health.close()
    return 0


async def _with_backend(args: argparse.Namespace, use: Callable[[Backend], Any]) -> int:
    backend = open_backend(_backend_url(args), **_backend_options(args))
    await backend.connect()
    try:
        status: int = await use(backend)
        return status
    finally:
        await backend.close()


async def _list_dead_letters(args: argparse.Namespace) -> int:
    async def use(backend: Backend) -> int:
        for letter in await backend.task_queue.dead_letters(NODE_TYPE.resolve(args), limit=LIMIT.resolve(args)):
            print(json.dumps(operations.letter_summary_json(letter)))
        return 0

    return await _with_backend(args, use)


def _letter_text(letter: DeadLetter) -> str:
    dead_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.dead_at))
    lines = [f"task:       {letter.task_id}", f"node type:  {letter.node_type}"]
    if letter.task is not None:
        lines += [f"node:       {letter.task.node}", f"workflow:   {letter.task.workflow_id}",
                  f"step:       {letter.task.payload.get('step', '?')}", f"priority:   {letter.task.priority}"]
    else:
        size = len(letter.raw or b"")
        lines.append(f"payload:    {size} bytes that do not decode as a task (cannot be requeued)")
    lines += [f"attempts:   {letter.attempts}", f"dead since: {dead_at}", f"reason:     {letter.reason.splitlines()[0] if letter.reason else ''}",
              "", f"error history ({len(letter.errors)}, oldest first):"]
    for error in letter.errors:
        lines += ["", error.rstrip()]
    return "\n".join(lines)


async def _show_dead_letter(args: argparse.Namespace) -> int:
    async def use(backend: Backend) -> int:
        letter = (await operations.find_dead_letters(backend, [args.task_id])).get(args.task_id)
        if letter is None:
            print(f"{PROG}: error: no dead letter with task id {args.task_id!r}; "
                  f"'{PROG} dead-letters list' shows the ids (check --backend-url and --prefix)", file=sys.stderr)
            return 1
        print(json.dumps(operations.letter_json(letter), indent=2) if args.json else _letter_text(letter))
        return 0

    return await _with_backend(args, use)


async def requeue_dead_letters(backend: Backend, task_ids: Sequence[str]) -> int:
    """``dead-letters requeue``: queue each dead letter again; prints one line per id.

    A requeued id's line goes to stdout; a refused one's to stderr as an error.

    A task of a failed workflow also reopens that workflow, which then continues with
    the requeued task's result; a task of a workflow that moved on is refused with a
    pointer to ``resume`` (see ``distributed_agents.core.dead_letters``).
    Returns the exit status: 0 if every id was requeued, 1 otherwise.
    """
    failed = 0
    for task_id in task_ids:
        outcome = await requeue_dead_letter(backend, task_id)
        if outcome.requeued:
            print(outcome.message)
        else:  # like every other error: on stderr, prefixed
            print(f"{PROG}: error: {outcome.message}", file=sys.stderr)
        failed += not outcome.requeued
    return 1 if failed else 0


async def _requeue_command(args: argparse.Namespace) -> int:
    return await _with_backend(args, lambda backend: requeue_dead_letters(backend, args.task_ids))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')} needs confirmation, but stdin is not a terminal; pass --yes")
    print(f"{question} [y/N] ", end="", flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _purge_dead_letters(args: argparse.Namespace) -> int:
    node_type = NODE_TYPE.resolve(args)

    async def use(backend: Backend) -> int:
        queue = backend.task_queue
        missing: list[str] = []
        if args.task_ids:
            found = await operations.find_dead_letters(backend, args.task_ids)
            missing = [t for t in dict.fromkeys(args.task_ids) if t not in found]
            targets = [found[t] for t in dict.fromkeys(args.task_ids) if t in found]
            if node_type is not None:
                targets = [t for t in targets if t.node_type == node_type]
        else:
            targets = await operations.all_dead_letters(backend, node_type)
        for task_id in missing:
            print(f"{task_id}: not found", file=sys.stderr)
        if not targets:
            print("no dead letters to purge")
            return 1 if missing else 0
        scope = f" of node type {node_type!r}" if node_type is not None and not args.task_ids else ""
        question = f"purge {len(targets)} dead letter(s){scope} for good?"
        if not args.yes and not _confirm(question):
            print("nothing purged")
            return 1
        purged = 0
        for letter in targets:
            if await queue.purge_dead_letter(letter.task_id):
                purged += 1
            else:
                print(f"{letter.task_id}: already gone (requeued or purged meanwhile)", file=sys.stderr)
        print(f"purged {purged} dead letter(s)")
        return 1 if missing else 0

    return await _with_backend(args, use)


async def _subgraph_workflows_of(store: StateStore, parents: Mapping[str, WorkflowRecord]) -> dict[str, WorkflowRecord]:
    """Every stored child workflow of ``parents`` (by id), their children's too: the records whose
    ``parent`` metadata names one of them (``core.subgraphs.PARENT_KEY``), found in one listing
    of the store."""
    if not parents:
        return {}
    by_parent: dict[str, list[WorkflowRecord]] = {}
    for record in await store.list_workflows():
        parent = record.metadata.get(PARENT_KEY)
        if isinstance(parent, str) and parent:
            by_parent.setdefault(parent, []).append(record)
    found: dict[str, WorkflowRecord] = {}
    pending = list(parents)
    while pending:
        for child in by_parent.get(pending.pop(), ()):
            if child.workflow_id not in found and child.workflow_id not in parents:
                found[child.workflow_id] = child
                pending.append(child.workflow_id)
    return found


async def _delete_workflows(args: argparse.Namespace) -> int:
    """``delete ID...``: exit 1 if any id was not found or was refused, else 0.

    Each workflow's tasks still queued (of its current step, in each of its runs: a failed
    one's, a cancelled one's that a cancel missed) are withdrawn before its record goes, so
    no worker started later runs them; what could not be withdrawn (or, for a malformed
    record, named) is said on stderr.
    """

    async def use(backend: Backend) -> int:
        store = backend.state_store
        targets: list[str] = []
        live: list[str] = []  # running or paused ones (--force): cancelled before they are deleted
        records: dict[str, WorkflowRecord] = {}  # the readable ones: their step's queued tasks are withdrawn
        status = 0
        for workflow_id in dict.fromkeys(args.workflow_ids):
            try:
                record = await store.get(workflow_id)
            except PayloadDecodeError:  # a malformed record: deleting it is the way out
                targets.append(workflow_id)
                continue
            if record is None:
                print(f"{workflow_id}: not found (check --backend-url and --prefix)", file=sys.stderr)
                status = 1
            elif record.status not in WorkflowStatus.TERMINAL and not args.force:
                print(f"{workflow_id}: still {record.status} at step {record.step}; cancel it first "
                      f"('{PROG} cancel {workflow_id}'), or pass --force", file=sys.stderr)
                status = 1
            else:
                targets.append(workflow_id)
                records[workflow_id] = record
                if record.status not in WorkflowStatus.TERMINAL:
                    live.append(workflow_id)
        if not targets:
            print("no workflows to delete")
            return status
        # A subgraph's child workflows (and theirs) go with their parent: nothing else drives or
        # resumes them, and their step's queued tasks would otherwise be run for nobody.
        children = await _subgraph_workflows_of(store, records)  # (none of them a target already)
        targets += children
        records.update(children)
        if not args.yes and not _confirm(f"delete {len(targets)} workflow(s) for good?"):
            print("nothing deleted")
            return 1
        if live:
            # Cancelled first, as 'cancel' does: the step's queued tasks are taken back (a worker
            # would otherwise run them later, for a workflow that no longer exists), workers stop
            # its running ones, and the orchestrator driving it stops.
            orchestrator = Orchestrator(backend=backend)
            try:
                for workflow_id in live:
                    with contextlib.suppress(WorkflowNotFoundError):
                        await orchestrator.cancel_workflow(workflow_id)
            finally:
                await orchestrator.close()
        # The step's tasks still queued (a failed workflow's, or ones a cancel missed): a worker
        # would otherwise run them later, for a workflow that no longer exists.
        withdrawn = 0
        unnamed: set[str] = set()  # deleted without withdrawing: their tasks could not be named
        for workflow_id in targets:
            record = records.get(workflow_id)
            if record is None:  # malformed
                unnamed.add(workflow_id)
                continue
            try:
                taken, failed = await withdraw_step_tasks(backend.task_queue, record)
            except (TypeError, ValueError):  # a frontier or run number edited by hand
                unnamed.add(workflow_id)
                continue
            withdrawn += taken
            if failed:  # kept, so that its tasks can still be named: deleting again retries
                print(f"{workflow_id}: not deleted: {failed} of its step's queued task(s) could not be withdrawn "
                      f"(the backend answered with an error); run '{PROG} delete {workflow_id}' again", file=sys.stderr)
                targets = [t for t in targets if t != workflow_id]
                status = 1
        deleted = 0
        for workflow_id in targets:
            if await store.delete(workflow_id):
                deleted += 1
                if workflow_id in unnamed:
                    print(f"{workflow_id}: its record was malformed, so the tasks it may have queued could not be "
                          "named and were not withdrawn: any still queued stay there, and a worker of their node "
                          f"type would run them ('{PROG} queues' counts them)", file=sys.stderr)
            else:
                print(f"{workflow_id}: already gone", file=sys.stderr)
        print(f"deleted {deleted} workflow(s)" + (f", {len(children)} of them subgraph workflows of the others"
                                                  if children else ""))
        if withdrawn:
            print(f"withdrew {withdrawn} queued task(s) of the deleted workflows")
        # Their dead letters would otherwise stay listed (and requeueable) with no workflow
        # left to take the result.
        purged = 0
        for letter in await operations.all_dead_letters(backend):
            if _letter_workflow(letter) in targets and await backend.task_queue.purge_dead_letter(letter.task_id):
                purged += 1
        if purged:
            print(f"purged {purged} dead letter(s) of the deleted workflows")
        return status

    return await _with_backend(args, use)


def _letter_workflow(letter: DeadLetter) -> str | None:
    """The workflow a dead letter belongs to: its task's, or (undecodable bytes) its id's prefix.

    Task ids start with the workflow id and a colon (``core.engine.task_id_for``).
    """
    if letter.task is not None:
        return letter.task.workflow_id
    return letter.task_id.split(":", 1)[0] if ":" in letter.task_id else None


async def _list_workers(args: argparse.Namespace) -> int:
    async def use(backend: Backend) -> int:
        now = time.time()
        for info in await backend.worker_registry.list_workers():
            print(json.dumps(operations.worker_json(info, now)))
        return 0

    return await _with_backend(args, use)


async def _dashboard(args: argparse.Namespace) -> int:
    url = _backend_url(args)
    if url.partition("://")[0].lower() == "memory":
        raise UsageError(
            f"dashboard cannot use --backend-url {url!r}: memory:// lives inside one process, so this one would show "
            "nothing; pass a shared backend (redis://HOST:6379/0, nats://HOST:4222), or embed the dashboard in the "
            "program that runs the workflows: distributed_agents.dashboard.dashboard(orchestrator)")
    try:
        from distributed_agents import dashboard
    except ImportError as exc:
        raise MissingExtraError(f"the dashboard needs the [dashboard] extra ({exc}): pip install "
                                "'distributed-agents[dashboard]'") from None
    from distributed_agents.draw import load_graph

    specs = args.graphs or [g.strip() for g in os.environ.get("DA_DASHBOARD_GRAPHS", "").split(",") if g.strip()]
    graphs = [load_graph(spec) for spec in specs]
    orchestrator = cli_client.client_orchestrator(url, _backend_options(args))
    await dashboard.serve(orchestrator, host=DASHBOARD_HOST.resolve(args),
                            port=DASHBOARD_PORT.resolve(args), token=DASHBOARD_TOKEN.resolve(args),
                            read_only=args.read_only, graphs=graphs, log_level=LOG_LEVEL.resolve(args),
                            allowed_host=args.allowed_hosts or [
                                h.strip() for h in os.environ.get("DA_DASHBOARD_ALLOWED_HOSTS", "").split(",")
                                if h.strip()])
    return 0


async def _draw(args: argparse.Namespace) -> int:
    output: str | None = DRAW_OUTPUT.resolve(args)
    chosen = args.format is not None or bool(os.environ.get("DA_DRAW_FORMAT"))
    output_format: str = DRAW_FORMAT.resolve(args)
    if not chosen and output is not None:
        output_format = format_for_path(output) or output_format
    if output is None and output_format == "png":
        raise UsageError("draw --format png makes a binary image: pass --output FILE (e.g. --output graph.png)")
    drawing = draw_graph(args.graph, output_format)
    if output is None:
        print(drawing if isinstance(drawing, str) else drawing.decode("utf-8"), end="")
        return 0
    data = drawing.encode("utf-8") if isinstance(drawing, str) else drawing
    try:
        with open(output, "wb") as file:
            file.write(data)
    except OSError as exc:
        raise UsageError(f"draw --output {output!r}: cannot write it: {exc.strerror or exc}") from None
    return 0


async def _list_backends(args: argparse.Namespace) -> int:
    for scheme, spec in sorted(available_backends().items()):
        if args.json:
            print(json.dumps({"scheme": scheme, "name": spec.name, "description": spec.description}))
        else:
            print(f"{scheme}://\t{spec.name}\t{spec.description}")
    return 0


# -- entry point -------------------------------------------------------------------------------


def _fail(message: str, status: int) -> int:
    from distributed_agents.core.redaction import redact_text  # a URL in an error never shows its secrets

    print(f"{PROG}: error: {redact_text(message)}", file=sys.stderr)
    return status


def _stdout_closed() -> int:
    """The reader of stdout went away (``... | head``): stop quietly, as Unix tools do.

    Points stdout at /dev/null so the interpreter's final flush cannot raise again (the
    pattern the Python docs recommend for SIGPIPE) and returns 141, the status of a
    process ended by SIGPIPE (128 + 13), which a shell pipeline ignores unless pipefail.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (embedded, tests): nothing to flush
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 failure, 2 bad input, 130 interrupted,
    141 stdout closed by its reader)."""
    arguments = _help_last(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args, unknown = parser.parse_known_args(arguments)
    if unknown:  # reported by the command they were given to, so its error points to its own --help
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        level = args.log_level if getattr(args, "log_level", None) else LOG_LEVEL.resolve(args)
        log_format = args.log_format if getattr(args, "log_format", None) else LOG_FORMAT.resolve(args)
        configure_logging(level, log_format)
        for option in args.options:
            option.resolve(args)  # every environment value this command uses is checked up front
        try:
            status: int = asyncio.run(args.run(args))
        finally:
            # A caller that passed ``argv`` goes on: its handlers come back. The command line's
            # process keeps "exit now" until it ends (the default action would end it with
            # status 143 or 130 while the interpreter exits).
            while _SIGNALS_BEFORE_WORKER:
                sig, handler = _SIGNALS_BEFORE_WORKER.popitem()
                if argv is not None:
                    signal.signal(sig, handler)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _stdout_closed()
    except USAGE_ERRORS as exc:
        return _fail(str(exc), 2)
    except DistributedAgentsError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
