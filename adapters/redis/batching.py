"""Script calls issued in one event-loop tick, sent to Redis as one pipeline.

An orchestrator driving many workflows at once issues many small scripts at the same
moment (one workflow's commit, another's enqueue, a third's create). Sent one by one,
each pays redis-py's per-command cost (a pooled connection checked out, a write, a
wake-up per reply); ``ScriptBatcher`` collects the calls made before the loop runs
again and sends them as one non-transactional pipeline of ``EVALSHA`` commands: one
write and one read pass for all of them, on one connection. A lone call goes out as it
always did. Each caller still gets its own reply or its own error, and the scripts run
in the order they were issued (a pipeline is not a transaction: each script is atomic
on its own, as when sent alone).

A reply ``NOSCRIPT`` (the server lost its script cache, e.g. it restarted) makes that
call be run again alone, which loads the script. A broken connection fails the whole
batch as it fails a lone command (redis-py retries it first): each caller sees the
error its own call would have raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["MAX_BATCH", "ScriptBatcher"]

MAX_BATCH = 256  # calls per pipeline: bounds one write and the replies held at once
DRAIN_GRACE = 5.0  # seconds ``drain`` lets sends under way finish before cancelling them


class ScriptBatcher:
    """Coalesces ``AsyncScript`` calls of one tick into pipelines on ``client()``'s client."""

    def __init__(self, client: Any) -> None:
        self._client = client  # a callable returning the loop's redis.asyncio.Redis
        self._pending: list[tuple[Any, list[Any], list[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        # Sends under way: held here so that ``drain`` can wait for them (and so that the
        # loop, which keeps only weak references to tasks, does not drop one mid-send).
        self._sending: set[asyncio.Future[None]] = set()
        self._batches: dict[asyncio.Future[None], list[tuple[Any, list[Any], list[Any], asyncio.Future[Any]]]] = {}

    async def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """The reply of ``script`` run with ``keys`` and ``args``, sent with the others of this tick."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            batch = pending[start:start + MAX_BATCH]
            task = asyncio.ensure_future(self._send_guarded(batch))
            self._sending.add(task)
            self._batches[task] = batch
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._sending.discard(task)
        self._batches.pop(task, None)

    async def drain(self, grace: float = DRAIN_GRACE) -> None:
        """Send what this tick collected and wait until every send under way has ended.

        The connection calls it before closing its client: a send still running after
        that would check a connection out of the closed pool (or, the client being gone,
        open a new one that nobody closes). Callers get their replies or errors as usual.
        Sends still running after ``grace`` seconds (the server unreachable, redis-py
        retrying) are cancelled; their callers get a ``ConnectionError``.
        """
        if self._scheduled:
            self._flush()  # the call_soon'd flush then finds nothing to do
        if not self._sending:
            return
        _, late = await asyncio.wait(set(self._sending), timeout=grace)
        if not late:
            return
        from redis.exceptions import ConnectionError as RedisConnectionError

        closed = RedisConnectionError("the connection was closed while this call was being sent")
        for task in late:
            for _, _, _, future in self._batches.get(task, ()):
                if not future.done():
                    future.set_exception(closed)
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _send_guarded(self, batch: list[tuple[Any, list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        """``_send``; whatever it raises reaches every caller still waiting (none is left hanging)."""
        try:
            await self._send(batch)
        except BaseException as exc:
            for _, _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _send(self, batch: list[tuple[Any, list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        live = [item for item in batch if not item[3].done()]  # a caller cancelled meanwhile: not sent
        if not live:
            return
        client = self._client()
        if len(live) == 1:
            script, keys, args, future = live[0]
            await _settle(future, script(keys=keys, args=args, client=client))
            return
        from redis.exceptions import NoScriptError

        pipe = client.pipeline(transaction=False)
        for script, keys, args, _ in live:
            # EVALSHA directly: registering the scripts in the pipeline would cost a SCRIPT
            # EXISTS round trip per batch; a NOSCRIPT reply is handled below instead.
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, _, future in live:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (script, keys, args, future), reply in zip(live, replies):
            if isinstance(reply, NoScriptError):
                await _settle(future, script(keys=keys, args=args, client=client))
            elif future.done():
                continue
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


async def _settle(future: asyncio.Future[Any], call: Any) -> None:
    """Await ``call`` and hand its outcome to ``future`` (unless its caller gave up)."""
    try:
        reply = await call
    except Exception as exc:  # the caller's own error, raised where it awaits
        if not future.done():
            future.set_exception(exc)
        return
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
        raise
    if not future.done():
        future.set_result(reply)
