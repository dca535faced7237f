"""``core.messages``: LangGraph's message shorthands and spellings read as OpenAI-style message dicts."""

from __future__ import annotations


def test_message_dicts_spelled_as_langchains_get_their_openai_role_as_in_langgraph() -> None:
    """LangGraph 1.2.24, side by side: ``{"type": "human"}`` and ``{"role": "human"}`` are user
    messages, ``{"role": "ai"}`` an assistant's, and a ``{"name", "args"}`` tool call gets
    ``"type": "tool_call"``; other dicts (a removal marker, OpenAI's own) are left as they are."""
    from distributed_agents.core.messages import coerce_messages

    call = {"id": "c1", "name": "f", "args": {}}
    coerced = coerce_messages([{"type": "human", "content": "a"}, {"role": "human", "content": "b"},
                               {"role": "ai", "content": "", "tool_calls": [call]},
                               {"role": "tool", "content": "r", "tool_call_id": "c1"},
                               {"type": "remove", "id": "x"},
                               {"role": "assistant", "content": "", "tool_calls": [
                                   {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
    assert coerced[0] == {"role": "user", "content": "a"}
    assert coerced[1] == {"role": "user", "content": "b"}
    assert coerced[2] == {"role": "assistant", "content": "", "tool_calls": [{**call, "type": "tool_call"}]}
    assert coerced[3] == {"role": "tool", "content": "r", "tool_call_id": "c1"}
    assert coerced[4] == {"type": "remove", "id": "x"}
    assert coerced[5]["tool_calls"][0]["type"] == "function"
    assert call == {"id": "c1", "name": "f", "args": {}}  # the caller's dicts are not changed
