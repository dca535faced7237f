"""Read the README's code blocks by section, so tests can run them as written."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import re
from typing import Any

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks under the markdown heading ``heading`` (any level), in order."""
    return [source for language, source in _blocks(heading) if language == "python"]


def code_blocks(heading: str | None = None) -> list[tuple[str, str]]:
    """(language, source) of every fenced block, under ``heading`` or in the whole file."""
    return _blocks(heading)


def _blocks(heading: str | None) -> list[tuple[str, str]]:
    blocks: list[tuple[str, str]] = []
    current: str | None = None
    fence: tuple[str, list[str]] | None = None
    for line in README.read_text(encoding="utf-8").splitlines():
        if fence is not None:
            if line.startswith("```"):
                if heading is None or current == heading:
                    blocks.append((fence[0], "\n".join(fence[1]) + "\n"))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif re.match(r"^#{1,6} ", line):
            current = line.lstrip("#").strip()
    if not blocks:
        raise AssertionError(f"README.md has no code block under heading {heading!r}")
    return blocks


async def run_block(source: str, namespace: dict[str, Any]) -> None:
    """Run ``source`` in ``namespace``, allowing top-level ``await`` as the README does."""
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await result
