"""``token``: the escaping of ids into subject tokens is character by character, injective,
and uses only the characters NATS names allow."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from distributed_agents.adapters.nats.naming import token, untoken


def _reference(value: str) -> str:
    """The mapping written out per character: safe characters kept, others as ``_XX`` UTF-8 bytes."""
    if not value:
        return "_"
    safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
    return "".join(ch if ch in safe else "".join(f"_{b:02x}" for b in ch.encode()) for ch in value)


@given(st.text(max_size=40))
def test_token_escapes_each_unsafe_character(value: str) -> None:
    escaped = token(value)
    assert escaped == _reference(value)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", escaped)


@given(st.text(st.characters(max_codepoint=127), max_size=40))
def test_token_escapes_ascii_ids_the_same_way(value: str) -> None:
    """ASCII ids (every id this engine makes) take a table lookup instead of the regex: same result."""
    assert token(value) == _reference(value)


@given(st.text(max_size=20), st.text(max_size=20))
def test_token_is_injective(a: str, b: str) -> None:
    assert (token(a) == token(b)) == (a == b)


@given(st.text(max_size=40))
def test_untoken_inverts_token(value: str) -> None:
    assert untoken(token(value)) == value


@given(st.from_regex(r"[-/_=.A-Za-z0-9]{1,24}", fullmatch=True))
def test_untoken_names_a_value_only_for_keys_token_makes(key: str) -> None:
    """A key written by hand (``bad_key``, ``a.b``, ``a_2E``) names no id; any other is ``token`` of its id."""
    value = untoken(key)
    assert value is None or token(value) == key
    if value is None:
        assert all(token(candidate) != key for candidate in (key, key.replace("_", "")))
