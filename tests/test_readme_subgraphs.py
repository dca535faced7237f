"""The README's "Subgraphs" example runs as written and prints what its comments document."""

from __future__ import annotations

import subprocess
import sys

from support.readme import python_blocks


def test_subgraphs_block_pauses_inside_the_subgraph_then_resumes_as_documented() -> None:
    (block,) = python_blocks("Subgraphs")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documented = [line[2:] for line in block.strip().splitlines()[-2:]]
    assert done.stdout.strip().splitlines() == documented == [
        "0:review/1:approve:0 {'draft': 'TIDES'}", "TIDES True 5"]
