"""Checkpoints stored as what changed: per-key deltas chained to periodic full snapshots.

A store keeps each workflow's checkpoints as a list of *entries* (encoded JSON, oldest
first, append-only). An entry is either

* a **snapshot**: ``Checkpoint.to_dict()`` plus ``"id"`` (a random hex id), exactly the
  shape stores wrote before deltas existed (entries without ``"id"`` are snapshots too), or
* a **delta**: the same fields without ``"state"``, led by ``"delta"``::

      {"delta": {"base": <id of the previous entry>, "snap": <index of the chain's
                 snapshot>, "set": {key: new value}, "append": {key: [appended items]},
                 "del": [removed keys]}, "id": ..., "workflow_id": ..., "step": ..., ...}

  ``"delta"`` comes first so a store can find the snapshot index without parsing the
  whole entry (``DELTA_SNAP_PATTERN``, also usable from Redis Lua). A key whose value
  is a list that extends the previous list stores only the appended items, so a chat
  history under an append reducer costs each message once, not once per step.

Policy (``next_entry``): a delta is written when the store knows the previous entry
(its ``ChainTip``), else a snapshot; a new snapshot is started when the deltas since
the last snapshot add up to at least the state's own size or there are
``MAX_CHAIN`` of them. Stored bytes therefore grow with the changes (each snapshot is
paid for by at least as many delta bytes), and rebuilding any checkpoint reads at most
about twice the state's size and ``MAX_CHAIN`` entries.

Every entry stores the step's writes without the values its state holds already
(``split_writes``: a key a node set is listed under ``"from_state"``), so a large value
costs one copy per entry, and ``max_payload_bytes`` bounds the state, not twice it.

Values are compared as JSON (``True``, ``1`` and ``1.0`` differ), so a rebuilt state is
exactly what ``decode(encode(state))`` returns. Standard library only.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distributed_agents.core.codec import decode, encode
from distributed_agents.core.errors import PayloadDecodeError
from distributed_agents.core.ports.state_store import Checkpoint, checkpoints_page

__all__ = [
    "DELTA_SNAP_PATTERN",
    "MAX_CHAIN",
    "SMALL_STATE",
    "ChainTip",
    "apply_delta",
    "checked_entry",
    "damaged_checkpoints",
    "delta_snap",
    "diff",
    "entry_step",
    "next_entry",
    "rebuild",
    "same",
    "split_writes",
]

# At most this many deltas follow a snapshot (bounds the entries a rebuild replays).
MAX_CHAIN = 1000
# States encoding to fewer bytes are always stored whole: a delta entry's own fields
# (ids, snapshot index) would make it about as large, and diffing costs time every step.
SMALL_STATE = 1024

# Matches the start of a delta entry and captures the index of its chain's snapshot.
DELTA_SNAP_PATTERN = rb'^\{"delta":\{"base":"[0-9a-f]*","snap":([0-9]+)'
_SNAP_RE = re.compile(DELTA_SNAP_PATTERN)


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as JSON: same types at every depth (``1 != 1.0 != True``)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def split_writes(
    writes: Mapping[str, Mapping[str, Any]], state: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The step's ``writes`` without the values the checkpoint's ``state`` already holds.

    Returns ``(kept, from_state)``: ``kept`` is ``writes`` minus every ``(node, key)``
    whose value is ``same`` as ``state[key]`` (a last-value key the node set), and
    ``from_state`` lists those keys by node. An entry stores ``kept`` plus
    ``"from_state"``, so a large value a node wrote is stored once, not in the state and
    again in the writes; ``rebuild`` puts the values back. A value that differs (an
    appended part, a reducer's input) is kept as written.
    """
    kept: dict[str, dict[str, Any]] = {}
    from_state: dict[str, list[str]] = {}
    for node, updates in writes.items():
        if not isinstance(updates, Mapping):
            kept[node] = updates  # not a node's updates: stored as it is
            continue
        mine: dict[str, Any] = {}
        for key, value in updates.items():
            if key in state and same(value, state[key]):
                from_state.setdefault(node, []).append(key)
            else:
                mine[key] = value
        kept[node] = mine
    return kept, from_state


def _restore_writes(item: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's writes with the values ``split_writes`` left to the state put back."""
    writes = {node: dict(updates) if isinstance(updates, Mapping) else updates
              for node, updates in (item.get("writes") or {}).items()}
    for node, keys in (item.get("from_state") or {}).items():
        target = writes.setdefault(node, {})
        for key in keys:
            if key in state:  # always, unless the chain is damaged: then the write is left out
                target[key] = copy.deepcopy(state[key])
    return writes


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The delta turning JSON state ``old`` into ``new``: ``{"set": {}, "append": {}, "del": []}``.

    A list value that starts with the old list's items stores only the appended items
    under ``"append"``; any other changed or new key stores its whole new value under
    ``"set"``. Values in the delta are ``new``'s own objects (not copies).
    """
    changed: dict[str, Any] = {}
    appended: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            changed[key] = value
            continue
        before = old[key]
        if same(before, value):
            continue
        if (type(before) is list and type(value) is list and len(value) > len(before)
                and same(before, value[: len(before)])):
            appended[key] = value[len(before):]
        else:
            changed[key] = value
    removed = [key for key in old if key not in new]
    return {"set": changed, "append": appended, "del": removed}


def apply_delta(state: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Apply ``delta`` (from ``diff``) to ``state`` in place.

    Raises ``PayloadDecodeError`` if an append targets a key that is not a list.
    """
    for key in delta.get("del", ()):
        state.pop(key, None)
    for key, value in delta.get("set", {}).items():
        state[key] = value
    for key, items in delta.get("append", {}).items():
        current = state.get(key)
        if type(current) is not list:
            raise PayloadDecodeError(
                f"checkpoint delta appends to key {key!r}, which holds {type(current).__name__}, not a list: "
                "the stored checkpoint chain is damaged; restore the workflow from an earlier checkpoint")
        current.extend(items)


@dataclass(frozen=True)
class ChainTip:
    """What a store remembers of a workflow's newest entry to write the next one as a delta.

    ``index`` is the entry's position in the list, ``snap`` that of its chain's
    snapshot, ``depth`` the deltas since it, ``delta_bytes`` their encoded size,
    ``state_raw`` the entry's full state encoded, ``state`` the same decoded when it was
    (None for a small state, decoded on demand): never a caller's object.
    """

    entry_id: str
    index: int
    snap: int
    depth: int
    delta_bytes: int
    state_raw: bytes
    state: Mapping[str, Any] | None = None


def next_entry(
    checkpoint: Checkpoint, tip: ChainTip | None, *, index: int, state_raw: bytes | None = None
) -> tuple[bytes, ChainTip]:
    """Encode ``checkpoint`` as the entry at list position ``index``; returns it and the new tip.

    ``tip`` must describe the entry at ``index - 1`` (or be None: a snapshot is written).
    ``state_raw`` is ``encode(checkpoint.state)`` when the caller has it (the state is not
    encoded again). The returned tip holds the state's encoding (decoded from it when
    diffed), so it shares nothing with ``checkpoint``. Raises ``TypeError``/``ValueError``
    if the state is not JSON.
    """
    # Unique within a workflow's list is enough (a delta names its base entry); the random
    # module reseeds itself in a forked child, and costs no system call per step.
    entry_id = f"{random.getrandbits(64):016x}"
    fields = checkpoint.to_dict()
    state = fields.pop("state")
    fields["writes"], from_state = split_writes(fields["writes"], state)
    if from_state:  # last: entry_step and delta_snap read an entry's first bytes
        fields["from_state"] = from_state
    if state_raw is None:
        state_raw = encode(state)
    state = None
    if tip is not None and tip.index == index - 1 and tip.depth < MAX_CHAIN and len(state_raw) >= SMALL_STATE:
        state = decode(state_raw)
        old = tip.state if tip.state is not None else decode(tip.state_raw)
        delta = diff(old, state)
        delta_raw = encode({"delta": {"base": tip.entry_id, "snap": tip.snap, **delta}, "id": entry_id, **fields})
        if tip.delta_bytes + len(delta_raw) < len(state_raw):
            return delta_raw, ChainTip(entry_id, index, tip.snap, tip.depth + 1,
                                       tip.delta_bytes + len(delta_raw), state_raw, state)
    # The state's encoding is spliced in rather than encoded a second time.
    snapshot = encode({**fields, "id": entry_id})[:-1] + b',"state":' + state_raw + b"}"
    return snapshot, ChainTip(entry_id, index, index, 0, 0, state_raw, state)


def delta_snap(entry: bytes) -> int | None:
    """The index of the snapshot a delta entry's chain starts at; None for a snapshot entry."""
    found = _SNAP_RE.match(entry)
    return None if found is None else int(found.group(1))


# Matches the start of a snapshot entry (``Checkpoint.to_dict`` order: workflow id, then step)
# and captures its step. Inside an encoded string every '"' follows a backslash, so the first
# '","step":' ends the workflow id. Delta entries lead with their delta: read them whole.
SNAPSHOT_STEP_PATTERN = rb'^\{"workflow_id":"(?:[^"\\]|\\.)*","step":([0-9]+)[,}]'
_STEP_RE = re.compile(SNAPSHOT_STEP_PATTERN)


def entry_step(entry: bytes, *, workflow_id: str | None = None, where: str | None = None) -> int:
    """The step of the checkpoint a stored entry (snapshot or delta) holds.

    A snapshot's step is read from its first bytes, without parsing its state; a delta
    is decoded. Raises ``PayloadDecodeError`` (``damaged_checkpoints``, naming
    ``workflow_id`` and ``where``) if the entry is not a checkpoint entry.
    """
    found = _STEP_RE.match(entry) if not entry.startswith(b'{"delta":') else None
    if found is not None:
        return int(found.group(1))
    try:
        item = decode(entry)
    except PayloadDecodeError as exc:
        raise damaged_checkpoints(workflow_id, where, f"an entry is not JSON ({exc})") from None
    step = item.get("step") if isinstance(item, dict) else None
    if type(step) is not int:
        raise damaged_checkpoints(workflow_id, where, f"an entry has no step (it starts with {entry[:60]!r})")
    return step


def damaged_checkpoints(workflow_id: str | None, where: str | None, problem: str) -> PayloadDecodeError:
    """The error for a workflow's stored checkpoints that cannot be read: names the workflow,
    where they are stored, the entry or step and ``problem``, and says what to do."""
    what = f"workflow {workflow_id!r}" if workflow_id else "a workflow"
    at = f" at {where}" if where else ""
    return PayloadDecodeError(
        f"the stored checkpoints of {what}{at} are damaged: {problem}. They were not written by this version of "
        "the engine (or were truncated or edited). That workflow cannot be continued or inspected from them: "
        "read an earlier checkpoint (get_state_history(before=<step>)) and fork from it, or delete the workflow "
        "(distributed-agents delete) to free its id; other workflows are unaffected")


_OPTIONAL_DICTS = ("frontier", "writes", "metadata")


def checked_entry(raw: bytes, *, workflow_id: str | None = None) -> dict[str, Any]:
    """One stored checkpoint entry decoded and checked against the entry layout (module docstring).

    Raises ``ValueError`` (``PayloadDecodeError`` for bytes that are not JSON) naming the
    problem: not an object, a field of the wrong JSON type, a negative step, another
    workflow's entry, a delta without its base, snapshot index or changes. An entry that
    passes rebuilds without any other exception.
    """
    item = decode(raw)
    if not isinstance(item, dict):
        raise ValueError(f"an entry must be a JSON object, got a JSON {type(item).__name__}")
    owner = item.get("workflow_id")
    if not isinstance(owner, str):
        raise ValueError("its 'workflow_id' is missing or not a string")
    if workflow_id is not None and owner != workflow_id:
        raise ValueError(f"it belongs to workflow {owner[:80]!r}")
    step = item.get("step")
    if type(step) is not int or step < 0:
        raise ValueError(f"its 'step' is {_kind(step)}, not a step number")
    for name in _OPTIONAL_DICTS:
        if item.get(name) is not None and not isinstance(item[name], dict):
            raise ValueError(f"its {name!r} is {_kind(item[name])}, not an object")
    created = item.get("created_at")
    if created is not None and (type(created) not in (int, float) or created - created != 0):
        raise ValueError(f"its 'created_at' is {_kind(created)}, not a finite number")
    if item.get("id") is not None and not isinstance(item["id"], str):
        raise ValueError("its 'id' is not a string")
    from_state = item.get("from_state")
    if from_state is not None:
        writes = item.get("writes") or {}
        if not isinstance(from_state, dict) or not all(
                isinstance(keys, list) and all(isinstance(k, str) for k in keys)
                and isinstance(writes.get(node, {}), dict) for node, keys in from_state.items()):
            raise ValueError("its 'from_state' is not an object of key lists naming nodes whose writes are objects")
    delta = item.get("delta")
    if delta is None:
        if not isinstance(item.get("state"), dict):
            raise ValueError(f"it is a snapshot whose 'state' is {_kind(item.get('state'))}, not an object")
        return item
    if not isinstance(delta, dict):
        raise ValueError(f"its 'delta' is {_kind(delta)}, not an object")
    if not isinstance(delta.get("base"), str) or type(delta.get("snap")) is not int or delta["snap"] < 0:
        raise ValueError("it is a delta without the id of the entry it applies to or the index of its snapshot")
    if not isinstance(delta.get("set", {}), dict) or not isinstance(delta.get("append", {}), dict):
        raise ValueError("its delta's 'set' or 'append' is not an object")
    if not all(isinstance(items, list) for items in delta.get("append", {}).values()):
        raise ValueError("its delta appends something that is not a list")
    removed = delta.get("del", [])
    if not isinstance(removed, list) or not all(isinstance(key, str) for key in removed):
        raise ValueError("its delta's 'del' is not a list of keys")
    return item


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a JSON {type(value).__name__}"


def rebuild(
    entries: Sequence[bytes], first_index: int, *, limit: int | None = None, before: int | None = None,
    workflow_id: str | None = None, where: str | None = None,
) -> list[Checkpoint]:
    """Full checkpoints from stored entries, as ``list_checkpoints`` returns them (newest first).

    ``entries`` are consecutive entries of one workflow, oldest first, the first at list
    position ``first_index``; every delta among the selected checkpoints must have its
    chain's snapshot among them. Each returned state is a separate object. Raises
    ``PayloadDecodeError`` (``damaged_checkpoints``: naming ``workflow_id``, ``where``
    the store keeps them, the entry and the problem) if an entry is not a checkpoint
    entry (``checked_entry``), the steps do not go up (an entry reordered or repeated),
    or a chain is broken (a delta whose base is not the entry before it: an entry
    missing; or whose snapshot is missing). This is the one place every store's
    checkpoints are decoded, so no other exception comes out of a damaged one.
    """
    decoded: list[dict[str, Any]] = []
    for position, raw in enumerate(entries):
        try:
            item = checked_entry(raw, workflow_id=workflow_id)
        except ValueError as exc:
            raise damaged_checkpoints(workflow_id, where, f"entry {first_index + position} ({exc})") from None
        # Steps may skip (durability "exit" commits fewer checkpoints) but never go back or repeat.
        # A missing entry inside a chain of deltas shows as a delta whose base is not the entry before it.
        if decoded and item["step"] <= decoded[-1]["step"]:
            raise damaged_checkpoints(
                workflow_id, where, f"entry {first_index + position} holds step {item['step']} after step "
                f"{decoded[-1]['step']} (an entry is reordered or repeated)")
        decoded.append(item)
    steps = [(position, item["step"]) for position, item in enumerate(decoded)]
    wanted_steps = _page(steps, limit=limit, before=before)
    if not wanted_steps:
        return []
    wanted = set(wanted_steps)
    start = min(wanted)
    while decoded[start].get("delta") is not None:
        snap = decoded[start]["delta"]["snap"] - first_index
        if not 0 <= snap < start:
            raise damaged_checkpoints(
                workflow_id, where, f"checkpoint {decoded[start]['step']} is a delta whose snapshot (entry "
                f"{snap + first_index}) was not read")
        start = snap
    out: list[Checkpoint] = []
    state: dict[str, Any] = {}
    previous_id: Any = None
    for position in range(start, max(wanted) + 1):
        item = decoded[position]
        delta = item.get("delta")
        if delta is None:
            state = dict(item["state"])
        else:
            if delta["base"] != previous_id or previous_id is None:
                raise damaged_checkpoints(
                    workflow_id, where, f"checkpoint {item['step']} is a delta on entry {delta['base']!r} but "
                    f"follows entry {previous_id!r}")
            try:
                apply_delta(state, delta)
            except PayloadDecodeError as exc:
                raise damaged_checkpoints(workflow_id, where, f"checkpoint {item['step']}: {exc}") from None
        previous_id = item.get("id")
        if position in wanted:
            writes = _restore_writes(item, state)
            out.append(Checkpoint.from_dict({**item, "state": copy.deepcopy(state), "writes": writes}))
    out.reverse()
    return out


def _page(steps: list[tuple[int, int]], *, limit: int | None, before: int | None) -> list[int]:
    """The positions ``checkpoints_page`` would keep, given (position, step) oldest first."""
    kept = checkpoints_page([Checkpoint(workflow_id="", step=step, state={}, created_at=float(position))
                             for position, step in steps], limit=limit, before=before)
    return [int(cp.created_at) for cp in kept]
