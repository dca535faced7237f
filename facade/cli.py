"""The ``distributed-agents`` command (also ``python -m distributed_agents``).

    distributed-agents worker --app mymodule:registry [--backend-url URL] [--node-types a,b]
                              [--worker-id ID] [--capacity N] [--heartbeat-interval S]
    distributed-agents dead-letters list [--node-type T] [--backend-url URL]
    distributed-agents dead-letters requeue TASK_ID [TASK_ID ...] [--backend-url URL]
    distributed-agents backends

Flags fall back to the environment: ``BACKEND_URL`` (or ``REDIS_URL`` / ``NATS_URL``),
``NODE_TYPES``, ``WORKER_ID``, ``CAPACITY``, ``HEARTBEAT_INTERVAL``, ``DA_APP``.
``--app`` names a ``NodeRegistry`` (or a ``Worker``) as ``module:attribute``; the
current directory is importable, as with other Python servers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from distributed_agents.core.dead_letters import requeue_dead_letter
from distributed_agents.core.errors import ConfigurationError, DistributedAgentsError
from distributed_agents.core.registry import NodeRegistry
from distributed_agents.core.worker import Worker
from distributed_agents.distributed import DistributedWorker, backend_url_from
from distributed_agents.plugins import available_backends, open_backend

__all__ = ["load_app", "main"]


def load_app(spec: str) -> NodeRegistry | Worker:
    """Import ``module:attribute`` and return the ``NodeRegistry`` or ``Worker`` it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r} must look like 'module:attribute', e.g. 'myapp.nodes:registry'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"--app {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, (NodeRegistry, Worker)):
        raise ConfigurationError(f"--app {spec!r} is a {type(app).__name__}, not a NodeRegistry or Worker")
    return app


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not an integer") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distributed-agents", description="distributed-agents command line")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="serve node tasks until SIGTERM/SIGINT")
    worker.add_argument("--app", default=os.environ.get("DA_APP"), help="module:attribute of a NodeRegistry")
    worker.add_argument("--backend-url", default=None, help="backend URL (default: $BACKEND_URL, $REDIS_URL, $NATS_URL)")
    worker.add_argument("--node-types", default=os.environ.get("NODE_TYPES"), help="comma-separated node types")
    worker.add_argument("--worker-id", default=os.environ.get("WORKER_ID"))
    worker.add_argument("--capacity", type=int, default=None)
    worker.add_argument("--heartbeat-interval", type=float,
                        default=float(os.environ.get("HEARTBEAT_INTERVAL", "10")))
    worker.add_argument("--shutdown-grace", type=float, default=30.0)
    worker.add_argument("--prefix", default=None)
    worker.add_argument("--visibility-timeout", type=float, default=None)

    dead = commands.add_parser("dead-letters", help="inspect and re-drive dead-lettered tasks")
    dead.add_argument("action", choices=("list", "requeue"))
    dead.add_argument("task_ids", nargs="*")
    dead.add_argument("--node-type", default=None)
    dead.add_argument("--backend-url", default=None)
    dead.add_argument("--prefix", default=None)
    dead.add_argument("--limit", type=int, default=100)

    commands.add_parser("backends", help="list installed backends")
    return parser


async def _run_worker(args: argparse.Namespace) -> int:
    if not args.app:
        raise ConfigurationError("worker needs --app module:registry (or DA_APP in the environment)")
    app = load_app(args.app)
    registry = app.registry if isinstance(app, Worker) else app
    node_types = [t.strip() for t in args.node_types.split(",") if t.strip()] if args.node_types else None
    capacity = args.capacity if args.capacity is not None else _env_int("CAPACITY", 1)
    options: dict[str, Any] = {}
    if args.prefix:
        options["prefix"] = args.prefix
    if args.visibility_timeout:
        options["visibility_timeout"] = args.visibility_timeout
    worker = DistributedWorker(
        backend_url=backend_url_from(None, args.backend_url), worker_id=args.worker_id, node_types=node_types,
        capacity=capacity, heartbeat_interval=args.heartbeat_interval, registry=registry,
        shutdown_grace=args.shutdown_grace, **options,
    )
    await worker.start()
    return 0


async def _dead_letters(args: argparse.Namespace) -> int:
    options = {"prefix": args.prefix} if args.prefix else {}
    backend = open_backend(backend_url_from(None, args.backend_url), **options)
    await backend.connect()
    try:
        queue = backend.task_queue
        if args.action == "list":
            for letter in await queue.dead_letters(args.node_type, limit=args.limit):
                print(json.dumps({
                    "task_id": letter.task_id, "node_type": letter.node_type, "attempts": letter.attempts,
                    "reason": letter.reason.splitlines()[0] if letter.reason else "",
                    "workflow_id": letter.task.workflow_id if letter.task else None,
                }))
            return 0
        if not args.task_ids:
            raise ConfigurationError("dead-letters requeue needs one or more task ids")
        failed = 0
        for task_id in args.task_ids:
            # A task of a failed workflow also reopens it (see core.dead_letters).
            outcome = await requeue_dead_letter(backend, task_id)
            print(outcome.message)
            failed += not outcome.requeued
        return 1 if failed else 0
    finally:
        await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "worker":
            return asyncio.run(_run_worker(args))
        if args.command == "dead-letters":
            return asyncio.run(_dead_letters(args))
        for scheme, spec in sorted(available_backends().items()):
            print(f"{scheme}://\t{spec.name}\t{spec.description}")
        return 0
    except DistributedAgentsError as exc:
        print(f"distributed-agents: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
