"""Blocking calls honour a plain-function node's ``timeout=``: they raise without waiting for its thread.

Python cannot stop a thread: a timed-out plain ``def`` node is abandoned and finishes
on its own. ``asyncio.run`` used to wait for it at its end (shutting down the default
executor), so ``invoke()`` raised only once the function returned. Here the node blocks
on an event the test sets only after the call has returned: the old behaviour would
wait the node's whole (generous) wait and the node would be found finished. No test
compares durations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from distributed_agents import END, START, Graph, Orchestrator
from distributed_agents.core.errors import NodeTimeoutError

pytestmark = pytest.mark.timeout(120)

GENEROUS = 20.0  # seconds the node waits for the test to let it go (the old code waited all of it)


class Blocker:
    """A plain-function node that returns only when the test lets it go (or after GENEROUS seconds)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()
        self.released: bool | None = None  # True: let go by the test; False: it waited GENEROUS seconds

    def node(self, state: dict[str, Any]) -> dict[str, Any]:
        try:
            self.released = self.release.wait(GENEROUS)
        finally:
            self.finished.set()
        return {"x": 1}

    def graph(self, name: str = "tmo") -> Graph:
        graph = Graph(name)
        graph.add_node("a", self.node, timeout=0.3)
        graph.add_edge(START, "a").add_edge("a", END)
        return graph.compile()

    def assert_abandoned_then_let_go(self) -> None:
        # The call returned while the node's thread still ran: it did not wait for it.
        assert not self.finished.is_set(), "the blocking call waited for the abandoned node's thread"
        self.release.set()
        assert self.finished.wait(GENEROUS)
        assert self.released is True


BLOCKING_CALLS: dict[str, Callable[[Graph], Any]] = {
    "Orchestrator.invoke": lambda graph: Orchestrator().invoke(graph, {}),
    "Orchestrator.execute_sync": lambda graph: Orchestrator().execute_sync(graph, {}),
    "Orchestrator.sync.execute": lambda graph: Orchestrator().sync.execute(graph, {}),
    "Orchestrator.stream": lambda graph: list(Orchestrator().stream(graph, {})),
    "Graph.invoke": lambda graph: graph.invoke({}),
    "Graph.invoke(stream_mode=updates)": lambda graph: graph.invoke({}, stream_mode="updates"),
    "Graph.stream": lambda graph: list(graph.stream({})),
    "Graph.batch": lambda graph: graph.batch([{}]),
}


@pytest.mark.parametrize("call", list(BLOCKING_CALLS), ids=list(BLOCKING_CALLS))
def test_blocking_call_raises_the_timeout_without_waiting_for_the_abandoned_thread(call: str) -> None:
    blocker = Blocker()
    try:
        with pytest.raises(NodeTimeoutError, match=r"node 'a' timed out after 0\.3s"):
            BLOCKING_CALLS[call](blocker.graph())
        blocker.assert_abandoned_then_let_go()
    finally:
        blocker.release.set()


def test_the_orchestrator_runs_again_while_an_abandoned_thread_still_runs_and_its_late_return_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The next call on the same orchestrator works; the thread returning after its loop closed raises nothing."""
    blocker = Blocker()
    orchestrator = Orchestrator()
    quick = Graph("quick")
    quick.add_node("b", lambda state: {"y": state["y"] + 1})
    quick.add_edge(START, "b").add_edge("b", END)
    quick.compile()
    try:
        with pytest.raises(NodeTimeoutError):
            orchestrator.invoke(blocker.graph(), {}, workflow_id="hung")
        assert orchestrator.invoke(quick, {"y": 1})["y"] == 2
        assert orchestrator.sync.get_state("hung").status == "failed"
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            blocker.assert_abandoned_then_let_go()
            # The executors were shut down without waiting: their threads exit once idle, after
            # the node's future has run its callbacks (which must find the closed loop quietly).
            for thread in threading.enumerate():
                if thread.name.startswith("asyncio_") and thread is not threading.current_thread():
                    thread.join(GENEROUS)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        # Its late result was discarded: the workflow stays failed.
        assert orchestrator.sync.get_state("hung").status == "failed"
    finally:
        blocker.release.set()


def test_a_node_that_finishes_in_time_is_still_awaited_and_its_result_kept() -> None:
    """Not waiting for abandoned threads must not cut short a plain function that is within its timeout."""
    done = threading.Event()

    def slowish(state: dict[str, Any]) -> dict[str, Any]:
        done.wait(0.05)
        return {"x": state["x"] + 1}

    graph = Graph("in_time")
    graph.add_node("a", slowish, timeout=30)
    graph.add_edge(START, "a").add_edge("a", END)
    graph.compile()
    assert Orchestrator().invoke(graph, {"x": 1}) == {"x": 2}
    assert graph.invoke({"x": 5}) == {"x": 6}
