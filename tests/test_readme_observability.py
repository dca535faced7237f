"""The README's Observability section: its Python block runs as written and prints what it says."""

from __future__ import annotations

import subprocess
import sys

from support.readme import python_blocks


def test_observability_block_counts_the_node_it_ran() -> None:
    (block,) = python_blocks("Observability")
    expected = [line.removeprefix("# ") for line in block.splitlines() if line.startswith("# [")]
    # A fresh interpreter: enable() installs its observers process-wide.
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
