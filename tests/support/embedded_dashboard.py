"""An orchestrator and a dashboard over it, served from an event loop on a thread of its own.

The browser tests drive Chromium from the test's thread (Playwright's sync API) while the
orchestrator runs workflows and the dashboard answers on this loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from distributed_agents import Orchestrator
from distributed_agents.dashboard import dashboard


class EmbeddedDashboard:
    """``dashboard(orchestrator, port=0, **options)`` started on its own loop thread; ``close()`` stops both."""

    def __init__(self, orchestrator: Orchestrator, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.orchestrator = orchestrator
        self.board = dashboard(orchestrator, port=0, **options)
        self.call(self.board.start())

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the loop and wait for it (at most 60 s)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self, graph: Any, workflow_id: str, **inputs: str) -> concurrent.futures.Future[Any]:
        """Run a workflow of ``graph`` in the background; the future holds its outcome."""
        return asyncio.run_coroutine_threadsafe(self.orchestrator.execute(graph, inputs, workflow_id=workflow_id),
                                                self.loop)

    def close(self) -> None:
        try:
            self.call(self.board.stop())
            self.call(self.orchestrator.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()
