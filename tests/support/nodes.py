"""Node functions shared by tests."""

from __future__ import annotations

import asyncio
from typing import Any


class BlockingNode:
    """An async node that blocks until cancelled; ``started``/``cancelled`` say when each happened.

    Create it inside the event loop that runs the test (its events bind to that loop).
    """

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, state: Any) -> dict[str, Any]:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {}
