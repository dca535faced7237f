"""in_own_context: a coroutine awaited in a copy of the caller's context, without a task of its own."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from support.aio import run

from distributed_agents.core.executors import in_own_context

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("test_in_own_context_mark", default="caller")


def test_what_the_coroutine_sets_stays_in_its_copy_across_suspensions() -> None:
    async def inner() -> list[str]:
        seen = [MARK.get()]
        MARK.set("inner")
        await asyncio.sleep(0)  # suspends: the rest runs in the same copy
        seen.append(MARK.get())
        await asyncio.sleep(0.001)
        seen.append(MARK.get())
        return seen

    async def outer() -> tuple[list[str], str]:
        MARK.set("outer")
        seen = await in_own_context(inner())
        return seen, MARK.get()

    assert run(outer()) == (["outer", "inner", "inner"], "outer")


def test_no_task_is_made_and_a_coroutine_that_never_suspends_finishes_at_once() -> None:
    async def inner() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    async def outer() -> bool:
        return await in_own_context(inner()) is asyncio.current_task()

    assert run(outer())


def test_errors_come_out_and_a_cancellation_reaches_the_coroutine() -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    async def outer_fails() -> None:
        await in_own_context(failing())

    with pytest.raises(KeyError, match="boom"):
        run(outer_fails())

    cleaned: list[str] = []

    async def sleeper() -> None:
        MARK.set("sleeper")
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(MARK.get())

    async def cancel_it() -> bool:
        task = asyncio.ensure_future(in_own_context(sleeper()))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert run(cancel_it()) and cleaned == ["sleeper"]


def test_a_coroutine_may_handle_a_thrown_cancellation_and_return() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "handled"
        return "slept"

    async def outer() -> str:
        task = asyncio.ensure_future(in_own_context(stubborn()))
        await asyncio.sleep(0.01)
        task.cancel()
        return await task

    assert run(outer()) == "handled"
