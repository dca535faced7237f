"""``add_messages``: the chat-history reducer, on JSON message dicts in the OpenAI chat format.

A message is a dict such as ``{"role": "user", "content": "hi", "id": "..."}`` (any
other keys, e.g. ``tool_calls`` or ``tool_call_id``, are kept as they are). The
reducer, as LangGraph's ``add_messages``:

- appends messages whose ``id`` is new, in the order given;
- replaces, in place, an existing message whose ``id`` matches (its position is kept);
- removes an existing message for a removal marker ``{"type": "remove", "id": ID}``
  (``RemoveMessage(ID)`` builds one); removing an id that is not there is an error;
- drops every earlier message for ``{"type": "remove", "id": "__remove_all__"}``
  (``RemoveMessage(REMOVE_ALL_MESSAGES)``): the result is the messages after that marker;
- gives a message without an ``id`` a new one (``uuid4().hex``), so it can be replaced
  or removed later; the id is stored with the message, so it stays the same in every
  later step, checkpoint and process.

Both sides may be one message or a list; a plain string is a user message
(``{"role": "user", "content": s}``) and a ``(role, content)`` tuple is a message
of that role, as in LangGraph (``("user", "hi")``, ``("ai", "hello")``; LangGraph's
``human``/``ai`` become the OpenAI roles ``user``/``assistant``). A state key whose
reducer is ``add_messages`` accepts these shorthands in the input, in a node's
output and in ``Command(update=)``: they are turned into message dicts
(``coerce_messages``) before the JSON check, which refuses tuples elsewhere. Nothing given is changed in
place: the result is a new list of plain JSON dicts, which may share unchanged message
dicts with the arguments (state values are never mutated in place, so sharing is safe
and keeps a long history's merge cheap). Where LangGraph
uses ``RemoveMessage`` objects, the marker here is a JSON dict, because state is JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypedDict

__all__ = ["REMOVE_ALL_MESSAGES", "MessagesState", "RemoveMessage", "add_messages", "coerce_messages",
           "coerce_message_updates"]

REMOVE_ALL_MESSAGES = "__remove_all__"


def RemoveMessage(id: str) -> dict[str, str]:  # noqa: N802 - LangGraph's name, so a port is mechanical
    """The removal marker for the message with ``id``: ``{"type": "remove", "id": id}``.

    ``RemoveMessage(REMOVE_ALL_MESSAGES)`` removes every message before it.
    """
    if not isinstance(id, str) or not id:
        raise TypeError(f"RemoveMessage needs the id (a non-empty str) of the message to remove, got {id!r}")
    return {"type": "remove", "id": id}


# LangGraph's message types (and the OpenAI roles) -> the OpenAI chat role.
_ROLES = {"user": "user", "human": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
          "developer": "developer", "tool": "tool", "function": "function"}


def _coerce_one(item: Any) -> Any:
    if isinstance(item, str):
        return {"role": "user", "content": item}
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0] in _ROLES:
        return {"role": _ROLES[item[0]], "content": item[1]}
    if isinstance(item, dict):
        return _coerce_dict(item)
    return item


def _coerce_dict(item: dict[str, Any]) -> dict[str, Any]:
    """A message dict with LangChain's spellings read as LangGraph reads them: ``{"type": "human"}``
    (no ``role``) and ``{"role": "human"|"ai"}`` get the OpenAI role, and a tool call given as
    ``{"name", "args", ...}`` gets ``"type": "tool_call"``; the dict itself if none applies."""
    role, kind = item.get("role"), item.get("type")
    out = item
    if isinstance(role, str) and role in _ROLES and _ROLES[role] != role:
        out = {**item, "role": _ROLES[role]}
    elif role is None and isinstance(kind, str) and kind in _ROLES:  # LangChain's message dict: type, no role
        out = {key: value for key, value in item.items() if key != "type"}
        out["role"] = _ROLES[kind]
    calls = out.get("tool_calls")
    if isinstance(calls, list) and any(isinstance(call, dict) and "args" in call and "name" in call
                                       and "type" not in call for call in calls):
        out = {**out, "tool_calls": [{**call, "type": "tool_call"} if isinstance(call, dict) and "args" in call
                                     and "name" in call and "type" not in call else call for call in calls]}
    return out


def coerce_messages(value: Any) -> Any:
    """``value`` with LangGraph's message shorthands as message dicts; anything else unchanged.

    A ``str`` is ``{"role": "user", "content": s}``; a ``(role, content)`` tuple whose
    role is one of user/human, assistant/ai, system, developer, tool, function is
    ``{"role": <OpenAI role>, "content": content}``; a dict spelled as LangChain's
    (``{"type": "human", ...}`` without a role, ``{"role": "ai", ...}``) gets the OpenAI
    role, and its ``{"name", "args"}`` tool calls ``"type": "tool_call"`` (``_coerce_dict``). Applies to ``value`` itself and to
    the items of a list (or tuple) of messages; returns a new list, never mutating.
    Ids are given later, by ``add_messages``.
    """
    if isinstance(value, (str, dict)) or (isinstance(value, tuple) and _coerce_one(value) is not value):
        return _coerce_one(value)
    if isinstance(value, (list, tuple)):
        return [_coerce_one(item) for item in value]
    return value


def coerce_message_updates(updates: Mapping[str, Any], message_keys: Iterable[str]) -> dict[str, Any]:
    """``updates`` with ``coerce_messages`` applied to the values of ``message_keys`` (a new dict)."""
    result = dict(updates)
    for key in message_keys:
        if key in result:
            result[key] = coerce_messages(result[key])
    return result


def _is_removal(message: Mapping[str, Any]) -> bool:
    return message.get("type") == "remove"


def _messages(side: str, value: Any) -> list[dict[str, Any]]:
    """``value`` (one message, a string or a list of them) as a list of message dicts, each with an id."""
    value = coerce_messages(value)
    items = value if isinstance(value, list) else [value]
    result = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            where = f"{side}[{index}]" if isinstance(value, list) else side
            raise TypeError(
                f"add_messages: {where} is of type {type(item).__name__}, not a message; messages are dicts in the "
                "OpenAI chat format, e.g. {'role': 'assistant', 'content': 'hi'}"
            )
        message_id = item.get("id")
        if message_id is None:
            if _is_removal(item):
                raise TypeError(f"add_messages: removal marker {item!r} has no id; use RemoveMessage(id)")
            item = {**item, "id": uuid.uuid4().hex}  # a copy: the caller's dict stays as it was
        elif not isinstance(message_id, str):
            raise TypeError(f"add_messages: message id {message_id!r} must be a str, got {type(message_id).__name__}")
        result.append(item)
    return result


def add_messages(left: Any, right: Any) -> list[dict[str, Any]]:
    """Merge messages ``right`` into the history ``left``; see the module docstring.

    ``left`` may be None (no history yet). Raises ``TypeError`` for something that is
    not a message, ``ValueError`` for removing an id that is not in the history.
    """
    history = [] if left is None else _messages("left", left)
    updates = _messages("right", right)
    for index in range(len(updates) - 1, -1, -1):
        if _is_removal(updates[index]) and updates[index]["id"] == REMOVE_ALL_MESSAGES:
            return [m for m in updates[index + 1:] if not _is_removal(m)]
    merged = list(history)
    position = {message["id"]: i for i, message in enumerate(merged)}
    removed: set[str] = set()
    for message in updates:
        found = position.get(message["id"])
        if _is_removal(message):
            if found is None:
                raise ValueError(f"add_messages: cannot remove message {message['id']!r}: no message has that id")
            removed.add(message["id"])
        elif found is None:
            position[message["id"]] = len(merged)
            merged.append(message)
        else:
            removed.discard(message["id"])  # removed then written again in one update: kept, as LangGraph
            merged[found] = message
    return [message for message in merged if message["id"] not in removed]


class MessagesState(TypedDict):
    """A state schema with a chat history: ``Graph(name, state_schema=MessagesState)``.

    Subclass it to add keys (``class AgentState(MessagesState): summary: str``).
    """

    messages: Annotated[list[dict[str, Any]], add_messages]
