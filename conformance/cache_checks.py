"""Checks of the StateStore's node cache: round trip, isolation, clear, ttl, and a state machine.

A store that keeps the port's no-op defaults (``implements_cache`` is False) has no
node cache: its checks are skipped with that reason, as when the backend declares the
``node_cache`` capability unsupported.
"""

from __future__ import annotations

import asyncio

from hypothesis import strategies as st
from hypothesis.stateful import rule

from distributed_agents.conformance.catalog import CheckSkipped, conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import CheckContext, Session, Window, monotonic
from distributed_agents.conformance.helpers import sleep_past
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.core.ports.backend import Backend
from distributed_agents.core.ports.state_store import StateStore, implements_cache

PORT = "state_store"

# Namespaces and keys that naive layouts confuse: separators of Redis keys (':'), NATS
# subjects ('.', '*', '>'), percent escapes, a namespace that is a prefix of another.
# ("a", "b:c") and ("a:b", "c") joined with ':' are one key, ("a", "b.c") and ("a.b", "c") one subject.
TRICKY = ["a", "ab", "a:b", "a.b", "a*", "a>", "a/b", "a%3Ab", "a_2eb", "日本 語", "b:c", "b.c", "c"]


async def _cache(session: Session, **options: object) -> tuple[Backend, StateStore]:
    backend = await session.open(**options)
    store = backend.state_store
    if not implements_cache(store):
        raise CheckSkipped(f"{type(store).__name__} keeps the port's no-op node cache (cache_get/cache_set not "
                           "implemented): nodes with a cache_policy run every time on this backend")
    return backend, store


@conformance_check(PORT, ("state_store.cache",), requires=("node_cache",))
async def check_cache_round_trip(session: Session) -> None:
    """cache_get returns exactly the bytes cache_set stored (empty, binary, large), the latest set winning."""
    _, store = await _cache(session)
    clause = "state_store.cache"
    missing = await store.cache_get("graph/node", "nothing")
    expect(missing is None, clause, f"cache_get of a key never set returned {missing!r}")
    values = {"empty": b"", "binary": bytes(range(256)) + b"\n\n\r\x00", "json": '{"y": "héllo ✓"}'.encode(),
              "large": b"x" * 200_000, "newline-first": b"\nstarts with a newline"}
    for key, value in values.items():
        await store.cache_set("graph/node", key, value)
    for key, value in values.items():
        got = await store.cache_get("graph/node", key)
        expect(got == value, clause, f"cache_get({key!r}) returned {None if got is None else got[:60]!r}, "
                                     f"stored {value[:60]!r}")
    await store.cache_set("graph/node", "json", b"second")
    got = await store.cache_get("graph/node", "json")
    expect(got == b"second", clause, f"after a second cache_set the entry reads {got!r}, expected b'second'")
    expect(await store.cache_get("graph/other", "json") is None, clause, "an entry is visible under another namespace")


@conformance_check(PORT, ("state_store.cache-isolation", "state_store.prefix-isolation"), requires=("node_cache",))
async def check_cache_isolation(session: Session) -> None:
    """Different (namespace, key) pairs never share an entry, whatever separators they hold; nor do prefixes."""
    mine, store = await _cache(session)
    clause = "state_store.cache-isolation"
    pairs = [(namespace, key) for namespace in TRICKY for key in TRICKY]
    for index, (namespace, key) in enumerate(pairs):
        await store.cache_set(namespace, key, f"{index}".encode())
    for index, (namespace, key) in enumerate(pairs):
        got = await store.cache_get(namespace, key)
        expect(got == f"{index}".encode(), clause,
               f"cache_get({namespace!r}, {key!r}) read {got!r}, expected {str(index).encode()!r}: two pairs share an entry")
    # A prefix that extends mine (app-1 / app-12) sees nothing of mine, and its clear removes nothing of mine.
    theirs = (await session.open(prefix=f"{mine.options.prefix}2")).state_store
    clause = "state_store.prefix-isolation"
    leaked = [pair for pair in pairs[:12] if await theirs.cache_get(*pair) is not None]
    expect(not leaked, clause, f"another prefix reads my cache entries {leaked}")
    await theirs.cache_set("a", "a", b"theirs")
    await theirs.cache_clear("a")
    got = await store.cache_get("a", "a")
    expect(got == b"0", clause, f"another prefix's cache_set/cache_clear changed my entry to {got!r}")


@conformance_check(PORT, ("state_store.cache-clear",), requires=("node_cache",))
async def check_cache_clear(session: Session) -> None:
    """cache_clear(namespace) removes every entry of it (past any page size) and nothing of other namespaces."""
    _, store = await _cache(session)
    clause = "state_store.cache-clear"
    count = 1_250
    await _set_many(store, "a", [f"k{i}" for i in range(count)])
    for namespace in TRICKY[1:]:
        await store.cache_set(namespace, "k0", namespace.encode())
    await store.cache_clear("a")
    left = [key for key, got in zip(range(count), await _get_many(store, "a", [f"k{i}" for i in range(count)]))
            if got is not None]
    expect(not left, clause, f"after cache_clear('a') {len(left)} of its {count} entries are left, e.g. {[f'k{i}' for i in left[:3]]}")
    for namespace in TRICKY[1:]:
        got = await store.cache_get(namespace, "k0")
        expect(got == namespace.encode(), clause, f"cache_clear('a') changed namespace {namespace!r}'s entry to {got!r}")
    await store.cache_clear("never-used")
    await store.cache_set("a", "k1", b"again")
    got = await store.cache_get("a", "k1")
    expect(got == b"again", clause, f"an entry set after cache_clear reads {got!r}")


@conformance_check(PORT, ("state_store.cache-ttl",), requires=("node_cache",))
async def check_cache_ttl(session: Session) -> None:
    """An entry set with ttl is gone ttl seconds after its set, not before; a set replaces the ttl too."""
    _, store = await _cache(session)
    clause = "state_store.cache-ttl"
    ttl = session.short * 2
    started = monotonic()
    await store.cache_set("ns", "short", b"1", ttl)
    await store.cache_set("ns", "forever", b"2")
    await store.cache_set("ns", "made-forever", b"3", ttl)
    await store.cache_set("ns", "made-forever", b"3", None)
    await store.cache_set("ns", "made-short", b"4")
    await store.cache_set("ns", "made-short", b"4", ttl)
    window = Window.after(started, monotonic(), ttl, session.slack)
    got = await store.cache_get("ns", "short")
    if window.state(monotonic(), 0.0) == "pending":  # a slow run cannot judge "not before"
        expect(got == b"1", clause, f"an entry with ttl={ttl}s read {got!r} before its ttl passed")
    await asyncio.sleep(max(0.0, window.latest - monotonic()))
    await sleep_past(0.0, session.slack)
    for key, want in (("short", None), ("made-short", None), ("forever", b"2"), ("made-forever", b"3")):
        got = await store.cache_get("ns", key)
        expect(got == want, clause, f"{key!r} reads {got!r} {ttl}s after its last set, expected {want!r}")


async def _set_many(store: StateStore, namespace: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 50):
        await asyncio.gather(*(store.cache_set(namespace, key, key.encode()) for key in keys[start:start + 50]))


async def _get_many(store: StateStore, namespace: str, keys: list[str]) -> list[bytes | None]:
    found: list[bytes | None] = []
    for start in range(0, len(keys), 50):
        found += await asyncio.gather(*(store.cache_get(namespace, key) for key in keys[start:start + 50]))
    return found


# --- a state machine: random sets, gets and clears on two connections vs a dict ------------

NAMESPACES = ("g/n", "g/n2", "g:n", "g")
KEYS = ("k", "k:1", "k.1", "K")


class CacheMachine(BackendMachine):
    """The node cache and a ``{(namespace, key): bytes}`` model side by side (no ttl: no time passes)."""

    def __init__(self) -> None:
        super().__init__()
        self.stores = [self.backend.state_store, self.open_peer().state_store]
        self.model: dict[tuple[str, str], bytes] = {}

    @rule(namespace=st.sampled_from(NAMESPACES), key=st.sampled_from(KEYS), value=st.binary(max_size=40),
          via=st.integers(0, 1))
    def set(self, namespace: str, key: str, value: bytes, via: int) -> None:
        self.call(self.stores[via].cache_set(namespace, key, value))
        self.model[(namespace, key)] = value

    @rule(namespace=st.sampled_from(NAMESPACES), key=st.sampled_from(KEYS), via=st.integers(0, 1))
    def get(self, namespace: str, key: str, via: int) -> None:
        got = self.call(self.stores[via].cache_get(namespace, key))
        want = self.model.get((namespace, key))
        expect(got == want, "state_store.cache", f"cache_get({namespace!r}, {key!r}) = {got!r}, expected {want!r}")

    @rule(namespace=st.sampled_from(NAMESPACES), via=st.integers(0, 1))
    def clear(self, namespace: str, via: int) -> None:
        self.call(self.stores[via].cache_clear(namespace))
        self.model = {pair: value for pair, value in self.model.items() if pair[0] != namespace}
        for key in KEYS:  # the namespace is empty at once
            got = self.call(self.stores[1 - via].cache_get(namespace, key))
            expect(got is None, "state_store.cache-clear", f"after cache_clear({namespace!r}) its key {key!r} reads {got!r}")


@conformance_check(PORT, ("state_store.cache", "state_store.cache-clear"), requires=("node_cache",), timeout=300.0)
def check_cache_state_machine(context: CheckContext) -> None:
    """Random sets, gets and clears through two connections agree with a dict after every step."""
    async def probe() -> bool:
        backend = await context.factory.open()
        try:
            return implements_cache(backend.state_store)
        finally:
            await backend.close()

    if not asyncio.run(probe()):
        raise CheckSkipped("the state store keeps the port's no-op node cache (cache_get/cache_set not implemented)")
    run_machine(CacheMachine, context, examples=0.5)
