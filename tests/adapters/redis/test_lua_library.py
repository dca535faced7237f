"""Scripts built from the Lua helper library: each defines the helpers it uses, and only those."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest
import redis

from distributed_agents.adapters.redis import queue_scripts
from distributed_agents.adapters.redis import state_store
from distributed_agents.adapters.redis.lua_library import LuaLibrary, names_in

LIBRARY = r"""
local P = ARGV[1]
local UNUSED_LIMIT = 5  -- a limit: 'k_task' in a comment is no use of k_task
local function k_task(id) return P .. ':t:' .. id end
-- Says what a task is.
local function shown(v)
  return "'" .. tostring(v) .. "' -- not a comment"
end
local late  -- below
local function early(id) return late(id) end
late = function(id)
  local x = {}
  x.shown = 1  -- a field, not the helper

  return k_task(id)
end
local a, b = 1, 2
"""

# A top-level definition: its defined names (a name left out of a script that uses it fails the script).
_DEFINED = re.compile(r"^(?:local function (\w+)|local (\w+(?:\s*,\s*\w+)*)|(\w+) = function)", re.M)


def defined(script: str) -> list[str]:
    return [name.strip() for m in _DEFINED.finditer(script) for name in (m.group(1) or m.group(2) or m.group(3)).split(",")]


def test_a_script_takes_what_it_uses_and_what_that_uses_in_library_order() -> None:
    library = LuaLibrary(LIBRARY)
    assert library.names == {"P", "UNUSED_LIMIT", "k_task", "shown", "late", "early", "a", "b"}
    script = library.script("return early(ARGV[2])\n")
    # The forward declaration and the assignment both come, above and below their user; the
    # comment above a definition goes with it; names in comments, strings and fields use nothing.
    assert defined(script) == ["P", "k_task", "late", "early", "late"]
    assert "-- Says what a task is." not in script
    assert "UNUSED_LIMIT" not in script and "local a, b" not in script
    assert library.script("return shown(a)\n").startswith("-- Says what a task is.\nlocal function shown(v)")
    assert defined(library.script("return b\n")) == ["a", "b"]
    assert library.script("return 1\n") == "return 1\n"
    assert "  x.shown = 1" in script and "\n\n  return k_task(id)" in script  # a definition's lines stay whole


@pytest.mark.parametrize("source", [
    "local P = ARGV[1]\nredis.call('DEL', P)\n",  # a statement defining no name
    "  local x = 1\n",  # starts inside a definition
    "local s = [[long]]\n",  # a long string, whose names are not read
])
def test_a_library_it_cannot_read_names_from_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="Lua library"):
        LuaLibrary(source)


def test_names_skip_comments_strings_and_fields() -> None:
    assert names_in("local x = y.z .. 'w' -- v\nreturn q..r\n") == {"local", "x", "y", "return", "q", "r"}


SCRIPTS = {name: getattr(queue_scripts, name) for name in queue_scripts.__all__
           if name not in ("SERVER_CLOCK",)} | {"CREATE_ENQUEUE": state_store._CREATE_ENQUEUE}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_defines_each_helper_it_names_and_no_other(name: str) -> None:
    script = SCRIPTS[name]
    helpers = set(queue_scripts._LIBRARY.names)
    used = names_in(re.sub(r"^(?:local function \w+|local [\w, ]+|\w+ = function)", "", script, flags=re.M))
    mine = set(defined(script)) & helpers
    assert used & helpers <= mine, f"{name} uses {sorted((used & helpers) - mine)} without defining them"
    assert mine <= used, f"{name} defines {sorted(mine - used)} without using them"
    if name != "ENQUEUE_BODY":  # (embedded under the clock of the script holding it)
        assert ("local function now_ms" in script) == ("now_ms(" in script.replace("local function now_ms(", ""))


def test_the_scripts_are_the_same_text_in_every_process() -> None:
    code = ("import hashlib; from distributed_agents.adapters.redis import queue_scripts as q;"
            "print(' '.join(hashlib.sha1(getattr(q, n).encode()).hexdigest() for n in sorted(q.__all__)))")
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                    check=True).stdout for _ in range(2))
    here = " ".join(hashlib.sha1(getattr(queue_scripts, n).encode()).hexdigest() for n in sorted(queue_scripts.__all__))
    assert first == second == here + "\n"


@pytest.mark.timeout(30)
def test_every_script_compiles_on_a_real_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        for name, script in SCRIPTS.items():
            assert client.script_load(script) == hashlib.sha1(script.encode()).hexdigest(), name
    finally:
        client.close()
