"""The Redis Cluster client of ``RedisConnection`` (URLs with ``?cluster=true``).

``open_cluster_client`` returns a redis-py ``RedisCluster`` (asyncio) with two changes
the adapter needs, made in a subclass built on first use (redis-py is imported lazily):

* ``pipeline()`` accepts ``publish`` and ``evalsha``, which redis-py's cluster pipeline
  refuses by name although it routes them like any command sent with
  ``execute_command``: the message bus publishes a batch as one pipeline, and a
  ``PUBLISH`` reaches every node of a cluster whichever node receives it;
* ``publish`` (and ``PUBLISH`` in a pipeline) goes to the primary serving the slot of
  the channel's hash tag (``{prefix}:bus:...``), the node where the queue's scripts
  publish too, and ``pubsub()`` returns a plain (non-cluster) ``PubSub`` on a pool whose
  connections go to that same node first (``home_key``). A cluster forwards a classic
  ``PUBLISH`` to every node, so any node would receive the messages, but only on the
  publishing node is a message published before a subscription was confirmed never
  delivered to it, and one publisher's messages delivered in order, as on one server.
  When that node stops answering (killed, partitioned), the pool connects to the next
  node the client knows instead of retrying the dead one for ever. (redis-py's own
  ``ClusterPubSub`` does not exist in the asyncio client before redis-py 6.)

Everything else is redis-py's: slot routing, ``MOVED``/``ASK``, re-reading the slot map
after a failover, ``retry`` for connection errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from distributed_agents.adapters.redis.errors import load_redis

__all__ = ["open_cluster_client"]

_classes: dict[str, Any] = {}


def _client_class() -> Any:
    """The ``RedisCluster`` subclass (made once; redis-py is imported here, not at import time)."""
    if "client" in _classes:
        return _classes["client"]
    load_redis()
    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster
    from redis.asyncio.connection import ConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    class Pipeline(ClusterPipeline):  # type: ignore[misc]
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            if str(args[0]).upper() == "PUBLISH" and "target_nodes" not in kwargs:
                node = self._cluster._tag_node(args[1])
                if node is not None:
                    kwargs["target_nodes"] = node
            return super().execute_command(*args, **kwargs)

        def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
            return self.execute_command("PUBLISH", channel, message, **kwargs)

        def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    class Cluster(RedisCluster):  # type: ignore[misc]
        _pubsub_pool: Any = None
        _pubsub_settings: tuple[str, dict[str, Any]] = ("", {})
        _home_key: str | None = None

        def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
            if transaction or shard_hint:
                return super().pipeline(transaction, shard_hint)
            pipe = Pipeline(self)
            pipe._cluster = self
            return pipe

        def _tag_node(self, channel: Any) -> Any:
            """The primary serving the hash slot of ``channel``'s tag (``{prefix}:...``), or None."""
            text = channel.decode() if isinstance(channel, bytes) else str(channel)
            if "{" not in text:
                return None
            try:
                return self.get_node_from_key(text)
            except Exception:  # slot map not read yet, or the slot has no primary right now
                return None

        async def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
            """``PUBLISH`` on the node serving the channel's slot, where its subscribers listen."""
            node = None if "target_nodes" in kwargs else self._tag_node(channel)
            if node is None:
                return await super().publish(channel, message, **kwargs)
            try:
                return await super().publish(channel, message, target_nodes=node, **kwargs)
            except (RedisConnectionError, RedisTimeoutError):
                # That node is gone (a failover under way): any node carries a publish.
                return await super().publish(channel, message, **kwargs)

        def pubsub(self, **kwargs: Any) -> Any:
            if self._pubsub_pool is None:
                url, settings = self._pubsub_settings
                self._pubsub_pool = _failover_pool(ConnectionPool, url, settings, self._node_addresses)
            return PubSub(connection_pool=self._pubsub_pool, **kwargs)

        async def _node_addresses(self) -> list[tuple[str, int]]:
            """Every node the client knows, as (host, port): the home slot's primary, other primaries, replicas."""
            await self.initialize()  # reads the slot map if not read yet (else does nothing)
            nodes = sorted(self.get_nodes(), key=lambda node: node.server_type != "primary")
            home = None if self._home_key is None else self._tag_node(self._home_key)
            if home is not None:
                nodes = [home, *(node for node in nodes if node is not home)]
            return [(str(node.host), int(node.port)) for node in nodes]

        async def aclose(self) -> None:
            pool, self._pubsub_pool = self._pubsub_pool, None
            try:
                await super().aclose()
            finally:
                if pool is not None:
                    await pool.disconnect()

    _classes["client"] = Cluster
    return Cluster


def open_cluster_client(client_url: str, home_key: str | None = None, **settings: Any) -> Any:
    """A ``RedisCluster`` for ``client_url`` (one node's address; the others are discovered).

    ``home_key``: a key of the prefix's slot; pub/sub connections go to its primary first.
    ``settings`` (``startup_nodes``: more nodes to try first) are keyword defaults for every node connection (timeouts, ``retry``,
    ``health_check_interval``), the pub/sub connections' included; the URL's query wins.
    """
    client = _client_class().from_url(client_url, **settings)
    client._home_key = home_key
    # The pub/sub pool's connections take the connection settings, not the cluster's.
    client._pubsub_settings = (client_url, {k: v for k, v in settings.items() if k != "startup_nodes"})
    return client


def _failover_pool(pool_class: Any, url: str, settings: dict[str, Any],
                   addresses: Callable[[], Awaitable[list[tuple[str, int]]]]) -> Any:
    """A pool for ``url`` whose connections try the cluster's other nodes when theirs is gone.

    Its connection class (one per pool: it carries ``addresses``) tries the node it last
    reached, then each node ``addresses()`` lists; redis-py's retry and re-subscription
    on reconnect then work as on a single server.
    """
    pool = pool_class.from_url(url, **settings)
    base = pool.connection_class

    async def _connect(self: Any) -> None:
        try:
            candidates = await addresses()
        except Exception:  # no node answers the slot map request: try the last address anyway
            candidates = []
        if (self.host, self.port) not in candidates:
            candidates.append((self.host, self.port))
        failure: BaseException | None = None
        for host, port in candidates:
            self.host, self.port = host, port
            try:
                await base._connect(self)
                return
            except (OSError, asyncio.TimeoutError) as exc:
                failure = exc
        assert failure is not None
        raise failure

    pool.connection_class = type(f"Failover{base.__name__}", (base,), {"_connect": _connect})
    return pool
