"""The README's "Typed state and messages" example runs as written and prints what it says."""

from __future__ import annotations

import subprocess
import sys

from support.readme import python_blocks


def test_typed_state_and_messages_block_prints_its_documented_result() -> None:
    (block,) = python_blocks("Typed state and messages")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documented = block.rsplit("# ", 1)[1].strip()  # the comment after the print
    assert done.stdout.strip() == documented == "You said: hello ['Let me check.']"
