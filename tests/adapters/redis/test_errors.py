"""Error translation at the edge, and the package without redis-py installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from support.aio import connect_failure, run
from support.redis_server import RedisServer

from distributed_agents.adapters.redis import RedisStateManager, RedisTaskQueue
from distributed_agents.adapters.redis.errors import mask_url
from distributed_agents.core.errors import BackendError, BackendUnavailableError
from distributed_agents.core.ports.task_queue import Task


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("redis://user:s3cret@host:6379/2") == "redis://user:***@host:6379/2"
    assert mask_url("rediss://:s3cret@host/0") == "rediss://:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
    assert mask_url("unix://:pw@/tmp/redis.sock?db=1") == "unix://:***@/tmp/redis.sock?db=1"


def test_a_stopped_server_is_reported_as_unavailable_naming_the_url_without_password() -> None:
    """Operations retry with backoff, then raise BackendUnavailableError; after a restart they work again."""

    async def while_down(queue: RedisTaskQueue) -> BackendUnavailableError:
        with pytest.raises(BackendUnavailableError) as caught:
            await queue.enqueue(Task("t2", "wf", "n", "alpha", {}))
        return caught.value

    async def use(queue: RedisTaskQueue, task_id: str) -> bool:
        return await queue.enqueue(Task(task_id, "wf", "n", "alpha", {}))

    with RedisServer(password="hunter2-secret", appendonly=True) as server:

        async def scenario() -> tuple[BackendUnavailableError, bool, bool]:
            queue = RedisTaskQueue(server.url, prefix="down")
            try:
                assert await use(queue, "t1")
                await asyncio.to_thread(server.stop, kill=True)
                error = await while_down(queue)
                await asyncio.to_thread(server.start)
                # The same queue object recovers: the pool reconnects on the next call.
                again = await use(queue, "t3")
                # AOF kept t1 across the SIGKILL: enqueue stays idempotent.
                duplicate = await use(queue, "t1")
                return error, again, duplicate
            finally:
                await queue.close()

        error, again, duplicate = run(scenario(), 60)
    message = str(error)
    assert "hunter2-secret" not in message
    assert f"redis://:***@127.0.0.1:{server.port}/0" in message
    assert "enqueue task 't2'" in message
    assert isinstance(error.__cause__, Exception)
    assert again is True and duplicate is False


def test_wrong_password_is_a_backend_error_that_says_so() -> None:
    with RedisServer(password="right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"

        async def scenario() -> BackendError:
            store = RedisStateManager(url, prefix="auth")
            try:
                with pytest.raises(BackendError) as caught:
                    await store.get("w1")
                return caught.value
            finally:
                await store.close()

        error = run(scenario(), 30)
    assert "wrong" not in str(error) and "***" in str(error)
    assert "password" in str(error) or "credentials" in str(error)


def _run_without_redis(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nsys.modules['redis'] = None\nsys.modules['redis.asyncio'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_package_imports_without_redis_and_use_says_how_to_install() -> None:
    done = _run_without_redis(
        """
        import distributed_agents.adapters.redis as pkg
        import distributed_agents.adapters.redis.plugin
        from distributed_agents.core.errors import MissingExtraError
        cls = pkg.RedisTaskQueue          # lazy attribute: no redis-py needed to get the class
        try:
            cls("redis://127.0.0.1:1/0")
        except MissingExtraError as exc:
            print("QUEUE:", exc)
        from distributed_agents import open_backend
        try:
            open_backend("redis://127.0.0.1:1/0")
        except MissingExtraError as exc:
            print("OPEN:", exc)
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("QUEUE:") and "pip install 'distributed-agents[redis]'" in line for line in lines), lines
    assert any(line.startswith("OPEN:") and "pip install 'distributed-agents[redis]'" in line for line in lines), lines


def test_a_script_missing_again_after_its_reload_is_an_outage_to_ride_out() -> None:
    # redis-py reloads a missing script once; if the server restarts between that load and
    # the EVALSHA, the script is missing again: a restart, retried like any other outage.
    import redis.exceptions as rexc

    from distributed_agents.adapters.redis.errors import redis_errors

    with pytest.raises(BackendUnavailableError, match="lost its Lua scripts while trying to enqueue"):
        with redis_errors("redis://:pw@host:6379/0", "enqueue"):
            raise rexc.NoScriptError("No matching script. Please use EVAL.")


def test_redis_errors_translates_only_redis_and_socket_errors() -> None:
    # Translated: the original is the cause. Passed through unchanged: the project's own
    # errors, cancellations, and errors it has no translation for.
    import asyncio

    import redis.exceptions as rexc

    from distributed_agents.adapters.redis.errors import redis_errors

    original = rexc.ConnectionError("refused")
    with pytest.raises(BackendUnavailableError, match="unreachable while trying to save") as caught:
        with redis_errors("redis://:pw@host:6379/0", "save"):
            raise original
    assert caught.value.__cause__ is original
    assert ":pw@" not in str(caught.value)
    own = BackendUnavailableError("already ours")
    for passing in (own, asyncio.CancelledError(), KeyError("not redis")):
        with pytest.raises(type(passing)) as seen:
            with redis_errors("redis://host:6379/0", "save"):
                raise passing
        assert seen.value is passing
    with redis_errors("redis://host:6379/0", "save"):
        pass  # nothing raised: nothing to translate


def test_operations_work_after_the_server_flushed_its_scripts(redis_url: str) -> None:
    import redis.asyncio as redis_asyncio

    async def scenario() -> tuple[bool, bool]:
        queue = RedisTaskQueue(redis_url, prefix=f"flush{id(object())}")
        admin = redis_asyncio.Redis.from_url(redis_url)
        try:
            first = await queue.enqueue(Task("t1", "wf", "n", "alpha", {}))
            await admin.script_flush()
            second = await queue.enqueue(Task("t2", "wf", "n", "alpha", {}))
            return first, second
        finally:
            await admin.aclose()
            await queue.close()

    assert run(scenario(), 30) == (True, True)


def _connections_received(server: RedisServer) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def test_a_url_without_the_password_a_server_requires_fails_at_once_saying_what_to_add() -> None:
    """It was ~20 s of retries (redis-py types a refused AUTH as a connection error, and
    each health check retried the retry), then Redis's own HELLO error text."""
    from distributed_agents.core.errors import BackendConfigError

    with RedisServer(password="right-one") as server:
        before = _connections_received(server)
        missing = connect_failure(f"redis://127.0.0.1:{server.port}/0?prefix=auth", 60)
        tried = _connections_received(server) - before - 1  # less this count's own connection
        wrong = connect_failure(f"redis://:wrong-one@127.0.0.1:{server.port}/0", 60)
    assert isinstance(missing, BackendConfigError), repr(missing)  # exit status 2 in the CLI, as on NATS
    message = str(missing)
    assert "requires a password" in message and f"127.0.0.1:{server.port}" in message and "':PASSWORD@'" in message
    assert "HELLO" not in message
    assert tried <= 2, f"{tried} connections: the refusal was retried"
    assert isinstance(wrong, BackendConfigError) and "refused the credentials" in str(wrong)
    assert "wrong-one" not in str(wrong) and "right-one" not in str(wrong)


def test_a_cluster_node_that_refused_is_the_one_named_not_the_urls() -> None:
    """A Redis Cluster client reaches other nodes than the URL's: the error names the one that failed."""
    import redis.exceptions

    from distributed_agents.adapters.redis.connection import _connect_problem

    def refused_by(port: int) -> BaseException:
        try:
            try:
                raise ConnectionRefusedError(111, f"Connect call failed ('127.0.0.1', {port})")
            except ConnectionRefusedError as refused:
                raise redis.exceptions.ConnectionError(
                    f"Error 111 connecting to 127.0.0.1:{port}. Connect call failed ('127.0.0.1', {port}).") from refused
        except redis.exceptions.ConnectionError as exc:
            return exc

    url = "redis://127.0.0.1:17001/0"
    message = _connect_problem(url + "?cluster=true", url, refused_by(17006))
    same = _connect_problem(url, url, refused_by(17001))
    assert "refused by 127.0.0.1:17006" in message and "17001 led to" in message, message
    assert "refused by 127.0.0.1:17001 (nothing listens there)" in same, same
