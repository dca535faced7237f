"""Node functions for the dead-letter and priority tests, served by real worker processes.

Everything observable goes to files in ``DA_MARKER_DIR``: ``notify`` fails while a file
``broken`` exists there and appends one line to ``notified`` per run that got past
that (the side effect that must happen once); ``archive`` appends to ``archived``;
``work`` appends the workflow's ``label`` to ``order`` (the order tasks were claimed);
``fallback`` (an ``on_error`` handler) returns the name of the node it handled.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()


def _dir() -> pathlib.Path:
    return pathlib.Path(os.environ["DA_MARKER_DIR"])


def _append(name: str, line: str) -> None:
    with open(_dir() / name, "a") as file:
        file.write(line + "\n")


@registry.register("notify")
def notify(state: State, context: NodeContext) -> dict[str, Any]:
    _append("notify_attempts", context.idempotency_key)
    if (_dir() / "broken").exists():
        raise RuntimeError("mail server unreachable")
    _append("notified", context.idempotency_key)
    return {"notified": state["to"]}


@registry.register("archive")
def archive(state: State) -> dict[str, Any]:
    _append("archived", state["notified"])
    return {"archived": True}


@registry.register("work")
def work(state: State) -> dict[str, Any]:
    _append("order", state["label"])
    return {"done": state["label"]}


@registry.register("audit")
def audit(state: State) -> dict[str, Any]:
    _append("audited", state["to"])
    return {"audited": True}


@registry.register("fallback")
def fallback(state: State) -> dict[str, Any]:
    """notify's on_error handler: records which node it handled."""
    return {"handled": state["error"]["node"]}
