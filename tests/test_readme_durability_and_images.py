"""The README's Durability modes block prints what it shows; its Images block writes the
drawing the README displays (docs/research.svg)."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
from support.aio import run
from support.readme import README, python_blocks, run_block

needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


def test_durability_block_prints_each_modes_history() -> None:
    (block,) = python_blocks("Durability modes")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert done.stdout.splitlines() == shown == [
        "sync ['fetch', 'parse', 'store'] [3, 2, 1, 0]",
        "async ['fetch', 'parse', 'store'] [3, 2, 1, 0]",
        "exit ['fetch', 'parse', 'store'] [3, 0]",
    ]


def _labels(svg: str) -> list[str]:
    return sorted(re.findall(r"<text[^>]*>([^<]*)</text>", svg))


@needs_dot
def test_images_block_draws_the_svg_the_readme_shows(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, Any] = {}
    (drawing,) = python_blocks("Drawing")
    with contextlib.redirect_stdout(io.StringIO()):
        run(run_block(drawing, namespace))
    (images,) = python_blocks("Images")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    run(run_block(images, namespace))
    drawn = (tmp_path / "docs" / "research.svg").read_text(encoding="utf-8")
    assert namespace["svg"] == drawn and namespace["png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert "](docs/research.svg)" in README.read_text(encoding="utf-8")
    committed = (README.parent / "docs" / "research.svg").read_text(encoding="utf-8")
    # The committed image shows the same nodes and labels (regenerate it with the block if not).
    assert _labels(committed) == _labels(drawn)
    assert {"plan", "search", "read", "summarise", "START", "END", "more", "done"} <= set(_labels(committed))
