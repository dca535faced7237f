"""A workflow record's JSON, encoded once per commit: what the engine measured is what a store writes.

The step loop encodes each commit's record before saving it, to check its size against
the backend's limit (``core.limits``); a store then writes the record as JSON. To not
encode the same record twice, the engine keeps its encoding on the record object
(``remember``), and a store asks ``record_json`` for the bytes to write: the kept
encoding when the record still holds the very values it was made from, else a fresh
one. Kept are two parts: the state, and every other field but ``version`` and
``updated_at`` (which the store sets as it writes); ``record_json`` joins them with
those two. The stored record is a JSON object with the same fields and values as
``WorkflowRecord.to_dict()`` (in another key order), read back by ``stored_record``.

Only the engine keeps encodings, for records whose mappings nobody changes in place
(the step loop makes a new state, frontier and metadata object for every change).
Standard library only.
"""

from __future__ import annotations

from typing import Any

from distributed_agents.core.codec import encode
from distributed_agents.core.ports.state_store import WorkflowRecord

__all__ = ["encode_rest", "kept", "record_json", "remember"]

# Where a record keeps its encoding: an attribute that is not a field (equality, repr,
# to_dict and evolve's result ignore it; evolve copies it along, record_json checks it).
_SLOT = "_distributed_agents_json"
_TAIL_SLOT = "_distributed_agents_json_tail"  # encode_rest's kept tail: (graph, metadata, created_at, bytes)


def encode_rest(record: WorkflowRecord, *, keep: bool = False) -> bytes:
    """``record``'s JSON object without ``state``, ``version`` and ``updated_at``.

    With ``keep`` (the engine's records, whose mappings nobody changes in place), the
    part that stays the same for a whole run (``graph``, ``metadata``, ``created_at``) is
    kept on ``record`` and reused for records evolved from it that hold the same
    objects: a commit encodes only what a step changes. Raises ``TypeError``/``ValueError``
    if a field is not JSON.
    """
    head = {
        "workflow_id": record.workflow_id,
        "graph_name": record.graph_name,
        "status": record.status,
        "step": record.step,
        "frontier": dict(record.frontier),
        "error": None if record.error is None else dict(record.error),
    }
    values = object.__getattribute__(record, "__dict__")
    graph, metadata, created = record.graph, record.metadata, record.created_at
    tail = values.get(_TAIL_SLOT) if keep else None
    if tail is None or tail[0] is not graph or tail[1] is not metadata or type(tail[2]) is not type(created) \
            or tail[2] != created:
        if not keep:
            head.update(graph=None if graph is None else dict(graph), metadata=dict(metadata), created_at=created)
            return encode(head)
        encoded = encode({"graph": None if graph is None else dict(graph), "metadata": dict(metadata),
                          "created_at": created})
        tail = (graph, metadata, created, encoded[1:])  # '"graph":...}': spliced after the head's fields
        values[_TAIL_SLOT] = tail
    # One object in the same key order as encoding the whole: '{head...' + ',' + 'tail...}'.
    return encode(head)[:-1] + b"," + tail[3]


def remember(record: WorkflowRecord, state_json: bytes, rest_json: bytes) -> None:
    """Keep ``encode(record.state)`` and ``encode_rest(record)`` on ``record`` for ``record_json``.

    The caller promises that neither was changed in place since: they describe
    ``record`` exactly as it is.
    """
    values = object.__getattribute__(record, "__dict__")
    values[_SLOT] = (_identity(record), state_json, rest_json)


def kept(record: WorkflowRecord) -> tuple[bytes, bytes] | None:
    """``(state JSON, rest JSON)`` that ``remember`` kept for ``record`` as it is now, or None."""
    found = object.__getattribute__(record, "__dict__").get(_SLOT)
    if found is not None and _same(found[0], record):
        return found[1], found[2]
    return None


def record_json(record: WorkflowRecord) -> tuple[bytes, bytes]:
    """``(the stored JSON of record, the JSON of its state alone)``.

    Reuses what ``remember`` kept when ``record`` holds the same objects and values
    it was kept for (a record evolved from it with only a new version or update time
    does), else encodes. Raises ``TypeError``/``ValueError`` if a field is not JSON.
    """
    parts = kept(record)
    state_json, rest_json = parts if parts is not None else (encode(dict(record.state)), encode_rest(record))
    # The two fields the store sets, then the state, spliced in as encoded.
    moment = record.updated_at  # a finite float's repr is its JSON; anything else is encoded (or refused)
    updated_at = repr(moment).encode() if type(moment) is float and moment - moment == 0.0 else encode(moment)
    tail = b',"version":%d,"updated_at":%s,"state":' % (record.version, updated_at)
    return rest_json[:-1] + tail + state_json + b"}", state_json


def _identity(record: WorkflowRecord) -> tuple[Any, ...]:
    """What the kept encoding was made from: the mappings by identity, the rest by value."""
    return (record.state, record.frontier, record.error, record.graph, record.metadata,
            record.workflow_id, record.graph_name, record.status, record.step, record.created_at)


def _same(kept: tuple[Any, ...], record: WorkflowRecord) -> bool:
    """Whether ``record`` is as ``_identity`` found it when ``kept`` was made.

    The five mappings by identity; the scalars by type and value (1 and 1.0 encode
    differently). Read from the record field by field, in ``_identity``'s order: no tuple
    of the record's fields is made for a check that runs for every save.
    """
    state, frontier, error, graph, metadata, workflow_id, graph_name, status, step, created_at = kept
    return (state is record.state and frontier is record.frontier and error is record.error
            and graph is record.graph and metadata is record.metadata
            and type(workflow_id) is type(record.workflow_id) and workflow_id == record.workflow_id
            and type(graph_name) is type(record.graph_name) and graph_name == record.graph_name
            and type(status) is type(record.status) and status == record.status
            and type(step) is type(record.step) and step == record.step
            and type(created_at) is type(record.created_at) and created_at == record.created_at)
