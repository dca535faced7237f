"""A library of Lua helpers from which each script takes only the definitions it uses.

Redis scripts cannot call each other, so every script carries the helpers it needs as its
own Lua locals. Defining one costs the server on every call (each ``local function`` makes
a closure when the script runs: ~435 instructions each), so a script holding the whole
library pays for all of it. ``LuaLibrary(source).script(body)`` gives ``body`` headed by
the definitions it needs: those whose names ``body`` uses, and theirs in turn (resolved once,
in Python, when the script is built), in the library's order (a Lua local is seen only
below its definition). The result depends only on the two texts, so a script's SHA-1 is the
same in every process.

The library's source is a sequence of top-level definitions, each starting at column 0 with
``local function NAME``, ``local NAME[, NAME2...] [= ...]`` (a forward declaration when there
is no ``=``) or ``NAME = function``; indented lines and ``end`` belong to the definition above,
and comment lines at column 0 to the definition below. Names are found outside comments and
strings, not after a ``.`` (a field). A name used but not taken would fail the script when
it runs (Redis refuses reads of undefined globals), so anything else at the top level is
refused here (``ValueError``).
"""

from __future__ import annotations

import re

__all__ = ["LuaLibrary"]

# Left to right, so a '--' inside a string is the string's and a quote inside a comment the comment's.
_TOKEN = re.compile(r"""(--[^\n]*)|('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|(?<!\.)(\.[A-Za-z_]\w*)|([A-Za-z_]\w*)""")
_DEFINITION = re.compile(
    r"^(?:local\s+function\s+(?P<function>\w+)"
    r"|local\s+(?P<locals>\w+(?:\s*,\s*\w+)*)\s*(?:=|$)"
    r"|(?P<assigned>\w+)\s*=\s*function\b)"
)


def names_in(lua: str) -> set[str]:
    """The identifiers ``lua`` uses or defines, outside comments, strings and field accesses."""
    return {match.group(4) for match in _TOKEN.finditer(lua) if match.group(4)}


def _without_comments(line: str) -> str:
    for match in _TOKEN.finditer(line):
        if match.group(1):
            return line[:match.start()]
    return line


class LuaLibrary:
    """Helper definitions (Lua source, see the module docstring) to head scripts with."""

    def __init__(self, source: str) -> None:
        if "[[" in source:
            raise ValueError("the Lua library holds a long string or comment ([[ ]]), which its names are not read from")
        self._chunks: list[tuple[frozenset[str], str]] = []  # (names defined, source), in order
        waiting: list[str] = []  # comment and blank lines at column 0: the next definition's
        for line in source.splitlines(keepends=True):
            code = _without_comments(line).rstrip()
            if not code:
                waiting.append(line)
                continue
            if line[:1] in (" ", "\t") or code == "end" or code.startswith("end "):
                if not self._chunks:
                    raise ValueError(f"the Lua library starts inside a definition: {line.strip()!r}")
                names, text = self._chunks[-1]
                self._chunks[-1] = (names, text + "".join(waiting) + line)
                waiting = []
                continue
            match = _DEFINITION.match(code)
            if match is None:
                raise ValueError(f"the Lua library holds a top-level statement that defines no name: {line.strip()!r}")
            defined = match.group("function") or match.group("assigned") or match.group("locals")
            names = frozenset(name.strip() for name in defined.split(","))
            self._chunks.append((names, "".join(waiting) + line))
            waiting = []
        self._defined = frozenset().union(*(names for names, _ in self._chunks))
        self._uses = [names_in(text) & self._defined for _, text in self._chunks]

    @property
    def names(self) -> frozenset[str]:
        """Every name the library defines."""
        return self._defined

    def needed(self, body: str) -> str:
        """The library's definitions ``body`` needs (directly or through others), in library order."""
        wanted = sorted(names_in(body) & self._defined)
        taken = [False] * len(self._chunks)
        seen: set[str] = set()
        while wanted:
            name = wanted.pop()
            if name in seen:
                continue
            seen.add(name)
            for index, (names, _) in enumerate(self._chunks):
                if name in names and not taken[index]:
                    taken[index] = True
                    wanted.extend(self._uses[index] - seen)
        return "".join(text for index, (_, text) in enumerate(self._chunks) if taken[index])

    def script(self, body: str) -> str:
        """``body`` headed by the definitions it needs."""
        return self.needed(body) + body
