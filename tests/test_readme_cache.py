"""The README's "Node cache" example runs as written and prints what its comment documents."""

from __future__ import annotations

import subprocess
import sys

from support.readme import python_blocks


def test_node_cache_block_prints_the_result_its_comment_documents() -> None:
    (block,) = python_blocks("Node cache")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documented = block.rsplit("# ", 1)[1].strip()  # the comment after the last call
    # Both workflows got the translation, the second from the cache; the node ran twice in all
    # (first run, then again after clear_cache).
    assert done.stdout.strip() == documented == "BONJOUR BONJOUR 2"
