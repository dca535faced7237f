"""Node functions for the worker-crash tests, served by real worker processes via the CLI.

``DA_MARKER_DIR``: each attempt of ``slow`` writes a marker file there (worker id and
attempt), so the test knows when a worker is mid-task. ``DA_HANG=1`` makes ``slow``
hang, so that worker can be killed while it holds the task.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

from distributed_agents import NodeContext, NodeRegistry, State

registry = NodeRegistry()


def _mark(context: NodeContext) -> None:
    """Say that a run started: ``<worker>.attempt<n>`` in ``DA_MARKER_DIR`` holds the pid, and the
    file ``DA_RUNS_LOG`` (when set) gets a line per run."""
    marker = pathlib.Path(os.environ["DA_MARKER_DIR"])
    (marker / f"{context.worker_id}.attempt{context.attempt}").write_text(str(os.getpid()))
    if os.environ.get("DA_RUNS_LOG"):
        with open(os.environ["DA_RUNS_LOG"], "a") as runs:
            runs.write(f"{context.worker_id} {context.node} {context.attempt}\n")


@registry.register("prepare")
async def prepare(state: State) -> dict[str, Any]:
    return {"prepared": f"prepared {state['query']}"}


@registry.register("slow")
async def slow(state: State, context: NodeContext) -> dict[str, Any]:
    _mark(context)
    if os.environ.get("DA_HANG") == "1":
        await asyncio.sleep(300)
    return {"analysis": f"analysed {state['prepared']}"}


@registry.register("finish")
def finish(state: State) -> dict[str, Any]:
    return {"report": f"report on {state['analysis']}"}


@registry.register("poison")
def poison(state: State, context: NodeContext) -> dict[str, Any]:
    raise ValueError(f"poisoned input on attempt {context.attempt}")


@registry.register("crasher")
def crasher(state: State) -> dict[str, Any]:
    os._exit(3)  # the worker process dies mid-task, every time


class LibraryTimeout(BaseException):
    """A library's own BaseException subclass (like gevent's Timeout)."""


@registry.register("stopiter")
def stopiter(state: State) -> dict[str, Any]:
    return {"first": next(iter([]))}  # StopIteration out of a thread: asyncio cannot carry it


@registry.register("libtimeout")
async def libtimeout(state: State) -> dict[str, Any]:
    raise LibraryTimeout("library gave up")


@registry.register("interrupted")
def interrupted(state: State) -> dict[str, Any]:
    raise KeyboardInterrupt("raised by the node, not by ^C")


@registry.register("hugeerror")
def hugeerror(state: State) -> dict[str, Any]:
    raise RuntimeError("HTTP 500: " + "<html>" * 1_000_000 + " END")  # a 6 MB message


@registry.register("blocking")
def blocking(state: State, context: NodeContext) -> dict[str, Any]:
    """A plain function that blocks its thread (``DA_HANG=1``: for 300 s), which nothing can interrupt."""
    _mark(context)
    if os.environ.get("DA_HANG") == "1":
        time.sleep(300)
    return {"analysis": f"analysed {state['query']} in a thread"}


@registry.register("stubborn")
async def stubborn(state: State, context: NodeContext) -> dict[str, Any]:
    """An async node that ignores every cancellation for 300 s (a library swallowing CancelledError)."""
    _mark(context)
    ends = time.monotonic() + 300
    while time.monotonic() < ends:
        try:
            await asyncio.sleep(ends - time.monotonic())
        except asyncio.CancelledError:
            continue
    return {"analysis": "stubborn"}
