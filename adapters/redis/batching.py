"""Script calls and commands issued in one event-loop tick, sent to Redis in one write.

An orchestrator driving many workflows at once issues many small scripts at the same
moment (one workflow's commit, another's enqueue, a third's create) and publishes their
events. Sent one by one, each pays redis-py's per-command cost (a pooled connection
checked out, its command packed in Python, a write, a timer and a wake-up per reply).
``ScriptBatcher`` collects the calls made before the loop runs again and sends them on
one pooled connection: packed in one go (by hiredis when it is installed, the
``redis[hiredis]`` extra), one write, then the replies read in order under one timeout.
A lone call goes the same way. Each caller still gets its own reply or its own error,
and the commands run in the order they were issued (this is a pipeline, not a
transaction: each script is atomic on its own, as when sent alone).

A reply ``NOSCRIPT`` (a process's first calls, or the server lost its script cache,
e.g. it restarted) makes each missing script be loaded once (``SCRIPT LOAD``) and the
calls that got it be sent again together. A broken connection
or a read that times out fails the round trip as it fails a lone command: the
connection is dropped and the whole batch is sent again on a fresh one, with the
client's retry policy (every script and command sent this way is safe to repeat, see
``task_queue``); when the retries run out each caller sees that error.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_BATCH", "HeldConnections", "ScriptBatcher", "pack_commands"]

MAX_BATCH = 256  # calls per write: bounds one write and the replies held at once
DRAIN_GRACE = 5.0  # seconds ``drain`` lets sends under way finish before cancelling them

# One queued call: (script or None for a plain command, keys, args, the caller's future).
# A plain command's ``args`` is the whole command (name first).
_Call = tuple[Any, list[Any], list[Any], "asyncio.Future[Any]"]

_hiredis_pack: Any
try:  # C packing when hiredis is installed (the redis[hiredis] extra)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - exercised where hiredis is absent
    _hiredis_pack = None

_timeout: Any = getattr(asyncio, "timeout", None)  # Python >= 3.11
if _timeout is None:  # pragma: no cover - Python 3.10: redis-py depends on async-timeout there
    import async_timeout

    _timeout = async_timeout.timeout


def _pack_python(args: Sequence[Any]) -> bytes:
    """One command in RESP, as redis-py's encoder would write it (str UTF-8, numbers as text)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, bool) or not isinstance(arg, (int, float)):
            raise TypeError(f"a Redis command argument must be str, bytes, int or float, not {type(arg).__name__}")
        else:
            data = repr(arg).encode("ascii")
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` (each a sequence of str/bytes/int/float arguments) as one RESP write."""
    if _hiredis_pack is not None:
        return b"".join([_hiredis_pack(tuple(args)) for args in commands])
    return b"".join([_pack_python(args) for args in commands])


def _command_of(call: _Call) -> list[Any]:
    script, keys, args, _ = call
    if script is None:
        return args
    return ["EVALSHA", script.sha, len(keys), *keys, *args]


async def execute(client: Any, commands: Sequence[Sequence[Any]], held: HeldConnections | None = None) -> list[Any]:
    """Send ``commands`` on one pooled connection of ``client`` and read their replies.

    A reply that is an error comes back as its exception object (``ResponseError``,
    ``NoScriptError``, ...), in its place. A broken connection or a read past the
    connection's ``socket_timeout`` is retried with the connection's retry policy, as
    redis-py retries a command, and raised when it gives up. ``held``: take the
    connection from (and give it back to) these connections kept out of the pool.
    """
    packed = pack_commands(commands)  # an argument that cannot be sent fails here, before anything is sent
    pool = client.connection_pool
    connection = held.take(pool) if held is not None else None
    if connection is None:
        connection = await pool.get_connection()

    async def fail(error: BaseException) -> None:
        await connection.disconnect()

    done = False
    try:
        try:
            # The first attempt outside the retry policy's wrappers (a few calls and two
            # coroutines per round trip); one that fails the way the policy retries is
            # handed to it, which then tries again with its full count and backoff.
            replies = await _round_trip(connection, packed, len(commands))
        except _retried_errors(connection) as error:
            from redis.exceptions import AuthenticationError

            if isinstance(error, AuthenticationError):  # refused credentials: not retried (connection._retry_policy)
                raise
            await fail(error)
            replies = await connection.retry.call_with_retry(
                lambda: _round_trip(connection, packed, len(commands)), fail)
        done = True
        return replies
    finally:
        if not done:
            # Stopped part-way (cancelled, or the retries ran out): replies may still come on
            # this socket, so it is closed rather than reused.
            await connection.disconnect(nowait=True)
        if held is None or not held.give_back(pool, connection):
            await pool.release(connection)


def _retried_errors(connection: Any) -> tuple[type[BaseException], ...]:
    """The errors ``connection``'s retry policy repeats a command after (redis-py's
    ``ConnectionError`` and ``TimeoutError`` by default)."""
    supported = getattr(connection.retry, "_supported_errors", None)
    if supported:
        return tuple(supported)
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)


class HeldConnections:
    """Up to ``keep`` connections of one pool (at most an eighth of its ``max_connections``)
    kept checked out between round trips.

    redis-py's pool checks a connection out and in under a lock and a timer, with
    observability hooks and a readability probe: on a small machine about half the
    CPU of a one-command round trip. A batcher sends one write per event-loop tick, so
    it keeps the connections it used and takes them again. A connection that broke was
    disconnected by the round trip and reconnects on its next send; one left with
    unread replies is closed (``execute``). The pool still owns them (they count as in
    use), so closing the client closes them; ``release_all`` gives them back first.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._pool: Any = None
        self._idle: list[Any] = []

    def take(self, pool: Any) -> Any:
        """An idle held connection of ``pool``, or None (then check one out of the pool)."""
        if pool is not self._pool or not self._idle:
            return None
        return self._idle.pop()

    def give_back(self, pool: Any, connection: Any) -> bool:
        """Keep ``connection`` for the next round trip; False if the caller must release it to ``pool``.

        A closed pool (``closed`` set, as ``connection.RedisConnection.close`` does) gets it
        back, so that it closes it.
        """
        if getattr(pool, "closed", False):
            return False
        if pool is not self._pool:
            if self._idle:  # a new client (a new event loop): the old pool's connections are its own
                return False
            self._pool = pool
        # At most an eighth of the pool (none of a pool under 8): the pool's other users (a
        # pub/sub reader, plain commands) must still find connections in a small one.
        if len(self._idle) >= min(self.keep, (getattr(pool, "max_connections", 0) or 0) // 8):
            return False
        self._idle.append(connection)
        return True

    async def release_all(self) -> None:
        """Give every held connection back to its pool."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._pool.release(connection)


async def _round_trip(connection: Any, packed: bytes, count: int) -> list[Any]:
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    writer = _ready_writer(connection)
    if writer is None:  # connect, or a health check due: redis-py's own send does those
        await connection.send_packed_command(packed)
    replies: list[Any] = []
    try:
        # One timer for the whole batch (the write too) instead of one per reply.
        async with _timeout(connection.socket_timeout):
            if writer is not None:
                writer.write(packed)  # a failed send shows as the connection lost, on the read below
                if writer.transport.get_write_buffer_size():  # the socket took only part: wait for room
                    await _drain(connection, writer)
            for _ in range(count):
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
    except asyncio.TimeoutError:
        # Replies may still come: this connection cannot be reused for other commands.
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout sending {count} command(s) or reading their replies") from None
    return replies


def _ready_writer(connection: Any) -> Any:
    """The stream a connected ``connection`` writes to, when a command may be written to it
    straight away; None when redis-py's ``send_packed_command`` must send it (not connected,
    closing, or its health check is due).

    redis-py's send runs the write under ``asyncio.wait_for``, which on Python < 3.12 starts
    a task for it: the write then waits for the loop's next round, on every round trip.
    """
    writer = getattr(connection, "_writer", None)
    if writer is None or not connection.is_connected or writer.transport.is_closing():
        return None
    interval = connection.health_check_interval
    if interval and asyncio.get_running_loop().time() > connection.next_health_check:
        return None
    return writer


async def _drain(connection: Any, writer: Any) -> None:
    """Wait until ``writer`` can take more (a large batch), as redis-py's send does."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        await writer.drain()
    except OSError as exc:
        await connection.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while writing to the socket: {exc}") from exc


class ScriptBatcher:
    """Coalesces script calls and commands of one tick into one write on ``client()``'s client.

    ``round_trips`` counts the writes made (each batch, or a lone call, is one; a
    ``NOSCRIPT`` reload and retries of a broken connection are not counted).
    """

    def __init__(self, client: Any) -> None:
        self._client = client  # a callable returning the loop's redis.asyncio.Redis
        self._pending: list[_Call] = []
        self._scheduled = False
        self.round_trips = 0
        # Sends under way: held here so that ``drain`` can wait for them (and so that the
        # loop, which keeps only weak references to tasks, does not drop one mid-send).
        self._sending: set[asyncio.Future[None]] = set()
        self._batches: dict[asyncio.Future[None], list[_Call]] = {}
        self._held = HeldConnections()

    async def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """The reply of ``script`` run with ``keys`` and ``args``, sent with the others of this tick."""
        return await self.submit(script, keys, args)

    async def run_now(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """As ``run``, but written at once, by this call, when the batcher is idle (nothing
        queued, no write awaiting its replies): a worker's lone ack then leaves as soon as
        its node returned, not a loop round later. Otherwise it joins this tick's write, as
        ``run``: while a write is under way the calls of the tick still go out together (a
        worker finishing many tasks at once sends their acks in one write after the first).

        Only for calls that need no order with the other calls of their tick (a write of
        the next round, on another connection, may reach the server first or second).
        """
        if self._pending or self._sending:
            return await self.submit(script, keys, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._sending.add(future)  # ``drain`` waits for it as for a batch's send
        try:
            await self._send_guarded([(script, keys, args, future)])
        finally:
            self._sending.discard(future)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: raised below or, the caller cancelled, not wanted
        if future.cancelled():  # ``drain`` gave up on it: as for the calls of a batch it gives up on
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("the connection was closed while this call was being sent")
        return future.result()

    def submit(self, script: Any, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """Queue ``script`` (None: ``args`` is a plain command, name first) for this tick's write.

        The future gets its reply, or its error.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            # The send starts in the loop's next round, with every call queued by then
            # (a task made now, not a call_soon that would make it then: one round sooner).
            self._scheduled = True
            task = loop.create_task(self._send_pending())
            self._sending.add(task)
            task.add_done_callback(self._sent)
        return future

    async def _send_pending(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        task = asyncio.current_task()
        if task is not None:
            self._batches[task] = batch
        await self._send_guarded(batch)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._sending.discard(task)
        self._batches.pop(task, None)

    async def drain(self, grace: float = DRAIN_GRACE) -> None:
        """Send what this tick collected and wait until every send under way has ended.

        The connection calls it before closing its client: a send still running after
        that would check a connection out of the closed pool (or, the client being gone,
        open a new one that nobody closes). Callers get their replies or errors as usual.
        Sends still running after ``grace`` seconds (the server unreachable, redis-py
        retrying) are cancelled; their callers get a ``ConnectionError``. The connections
        kept between round trips go back to the pool.
        """
        try:
            await self._drain(grace)
        finally:
            await self._held.release_all()

    async def _drain(self, grace: float) -> None:
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
        if self._scheduled:  # the send that would have taken these never started
            for _, _, _, future in self._pending:
                if not future.done():
                    future.set_exception(closed)
        await asyncio.gather(*late, return_exceptions=True)

    async def _send_guarded(self, batch: list[_Call]) -> None:
        """``_send`` of ``MAX_BATCH`` calls at a time, in order on one task (so commands of one
        tick run in the order they were issued); whatever it raises reaches every caller
        still waiting (none is left hanging)."""
        try:
            for start in range(0, len(batch), MAX_BATCH):
                await self._send(batch[start:start + MAX_BATCH])
        except BaseException as exc:
            for _, _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _send(self, batch: list[_Call]) -> None:
        live = [call for call in batch if not call[3].done()]  # a caller cancelled meanwhile: not sent
        if not live:
            return
        client = self._client()
        from redis.exceptions import NoScriptError

        self.round_trips += 1
        try:
            # EVALSHA directly: checking that the scripts are loaded would cost a round
            # trip per batch; a NOSCRIPT reply is handled below instead.
            replies = await execute(client, [_command_of(call) for call in live], self._held)
        except (TypeError, ValueError):  # an argument that cannot be sent: fail only its caller
            if len(live) == 1:
                raise
            for call in live:  # each alone, so that the others still go out
                await _settle(call[3], self._send([call]))
            return
        missing = [call for call, reply in zip(live, replies) if call[0] is not None and isinstance(reply, NoScriptError)]
        if missing:
            # The server lost (or never had) these scripts: load each once, then send their
            # calls again together (a cold start has every call of its first round here).
            replies = await self._reload(client, missing, live, replies)
        for (script, keys, args, future), reply in zip(live, replies):
            if future.done():
                continue
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


    async def _reload(self, client: Any, missing: list[_Call], live: list[_Call], replies: list[Any]) -> list[Any]:
        """``replies`` with those of ``missing`` (calls answered NOSCRIPT) replaced by their
        answers once their scripts are loaded; a failed load becomes each caller's error."""
        scripts = {id(call[0]): call[0] for call in missing}
        try:
            for script in scripts.values():
                # SCRIPT LOAD returns the SHA-1 redis-py computed, so EVALSHA finds it now.
                await client.script_load(script.script)
            again = await execute(client, [_command_of(call) for call in missing], self._held)
        except Exception as exc:  # each caller of a missing script gets the error, the others their replies
            again = [exc] * len(missing)
        answered = {id(call): reply for call, reply in zip(missing, again)}
        return [answered.get(id(call), reply) for call, reply in zip(live, replies)]


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
