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


# -- shell blocks: run as written, on a machine like a fresh Debian one ---------------------------

# What each ``sudo apt-get install`` package in the README provides; the tests check it is
# there instead of installing system packages. A package the README adds must be listed.
APT_PROVIDES = {
    "redis-server": "command -v redis-server >/dev/null",
    "python3-venv": "python3 -c 'import venv, ensurepip' >/dev/null",
}


def bash_blocks(heading: str) -> list[str]:
    """The ```bash blocks under the markdown heading ``heading``, in order."""
    return [source for language, source in _blocks(heading) if language == "bash"]


def shell_script(block: str, *, install: bool, replace: dict[str, str] | None = None) -> str:
    """A bash script that runs ``block`` as written, with these exceptions.

    ``sudo apt-get install -y PKG...`` becomes a check that each package's program is
    present (see ``APT_PROVIDES``). With ``install`` False, ``python3 -m venv .venv``
    and ``.venv/bin/pip install ...`` are skipped: the caller provides a ready ``.venv``
    (the default, fast profile); with True they run as written (needs the package index).
    ``replace`` maps text (server addresses) to what the test uses. Background jobs
    (``&``) are killed when the script ends; the script stops at the first failure.
    """
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for line in block.splitlines():
        for old, new in (replace or {}).items():
            line = line.replace(old, new)
        code = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not code:
            continue
        steps = []
        for step in code.split(" && "):
            words = step.split()
            if words[:4] == ["sudo", "apt-get", "install", "-y"]:
                unknown = [w for w in words[4:] if w not in APT_PROVIDES]
                if unknown:
                    raise AssertionError(f"README installs {unknown} with apt-get; add them to APT_PROVIDES")
                steps += [APT_PROVIDES[w] for w in words[4:]]
            elif not install and (words[:4] == ["python3", "-m", "venv", ".venv"]
                                  or words[:2] == [".venv/bin/pip", "install"]):
                continue
            else:
                steps.append(step)
        if steps:
            out.append(" && ".join(steps))
    return "\n".join(out) + "\n"


def debian_path(bin_dir: pathlib.Path, python3: str) -> str:
    """A PATH like a fresh Debian's: ``python3`` but no ``python``, system folders only.

    ``bin_dir`` gets a ``python3`` link to ``python3`` (an interpreter of the right version).
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "python3"
    if not link.exists():
        link.symlink_to(python3)
    return f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
