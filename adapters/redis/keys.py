"""Key and channel names of one prefix; the Lua scripts build the same names.

Everything lives under ``{prefix}:`` so that two prefixes never see each other's data:
``{prefix}:q:*`` task queue, ``{prefix}:wf:*`` state store, ``{prefix}:w:*`` worker
registry, ``{prefix}:bus:*`` message-bus channels, ``{prefix}:cache:*`` the node cache.

The classes take the *key prefix*, ``RedisConnection.key_prefix(prefix)``: the prefix
itself on one server, the prefix in braces on a Redis Cluster (``{app}``: a hash tag,
so that every key of the prefix is in one slot and a script may touch any of them).
Node-cache keys use the plain prefix (``cache_prefix``) in both cases: each cache
command touches one key, so on a cluster they spread over the slots.
"""

from __future__ import annotations

__all__ = ["QueueKeys", "StateKeys", "WorkerKeys", "bus_channel", "bus_glob"]


class QueueKeys:
    """Names used by the task queue (see ``task_queue`` for what each holds)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def route(self) -> str:
        """A key every queue script names in ``KEYS``: on a cluster it routes the script to its slot."""
        return f"{self.prefix}:q:seq"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:q:t:{task_id}"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}:q:r:{task_id}"

    def handoff(self, park_id: str) -> str:
        """The list a parked claimer blocks on: tasks handed to it by an enqueue (see queue_scripts)."""
        return f"{self.prefix}:q:h:{park_id}"

    def wake(self, node_type: str) -> str:
        """LIST of wake-up tokens: one idle claimer of ``node_type`` pops each (BLPOP)."""
        return f"{self.prefix}:q:wake:{node_type}"

    @property
    def done_channel(self) -> str:
        return f"{self.prefix}:q:ev:done"


class StateKeys:
    """Names used by the state store; ``cache_prefix`` (default ``prefix``) names the cache's keys."""

    def __init__(self, prefix: str, cache_prefix: str | None = None) -> None:
        self.prefix = prefix
        self.cache_prefix = prefix if cache_prefix is None else cache_prefix

    def record(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:r:{workflow_id}"

    def checkpoints(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:c:{workflow_id}"

    def lease(self, workflow_id: str) -> str:
        return f"{self.prefix}:wf:l:{workflow_id}"

    @property
    def index(self) -> str:
        return f"{self.prefix}:wf:all"

    def status_index(self, status: str) -> str:
        return f"{self.prefix}:wf:status:{status}"

    # The node cache: ``{p}:cache:<namespace>:<key>``, the namespace with '%' and ':'
    # percent-escaped so that it ends at the first ':' (two namespaces never share a key,
    # nor does a namespace's SCAN pattern match another's). Every cache command touches one
    # key, so entries need no hash tag: in a cluster they spread over the slots.
    def cache(self, namespace: str, key: str) -> str:
        return f"{self.cache_prefix}:cache:{_escape_namespace(namespace)}:{key}"

    def cache_glob(self, namespace: str) -> str:
        """A ``SCAN MATCH`` pattern matching exactly the keys of ``namespace``."""
        return _escape_glob(f"{self.cache_prefix}:cache:{_escape_namespace(namespace)}:") + "*"


def _escape_namespace(namespace: str) -> str:
    return namespace.replace("%", "%25").replace(":", "%3A")


class WorkerKeys:
    """Names used by the worker registry."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def info(self, worker_id: str) -> str:
        return f"{self.prefix}:w:i:{worker_id}"

    @property
    def beats(self) -> str:
        return f"{self.prefix}:w:beats"


def bus_channel(prefix: str, channel: str) -> str:
    """The Redis channel of a bus channel."""
    return f"{prefix}:bus:{channel}"


_GLOB_SPECIAL = "\\*?[]"


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def bus_glob(prefix: str, pattern: str) -> str:
    """A Redis ``PSUBSCRIBE`` glob matching at least every channel ``pattern`` matches.

    ``*`` (one token) and ``>`` (one or more trailing tokens) both become ``*``, which
    also crosses dots; the exact NATS-style match is made client-side with
    ``pattern_matches``. Everything else, the prefix included, is matched literally.
    """
    tokens = pattern.split(".")
    translated = ["*" if token in ("*", ">") else _escape_glob(token) for token in tokens]
    return _escape_glob(f"{prefix}:bus:") + ".".join(translated)
