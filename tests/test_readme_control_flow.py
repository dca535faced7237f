"""The README's "Map-reduce with Send", "Command", "Error handlers" and "Human in the loop" examples run as written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.readme import python_blocks


@pytest.mark.parametrize(("section", "printed"), [
    ("Map-reduce with Send", "['a joke about lions', 'a joke about elephants', 'a joke about penguins']"),
    ("Command", "billing - refund issued"),
    ("Error handlers", "summary of the cached copy - ConnectionError after 2 attempts"),
])
def test_block_prints_the_result_its_comment_documents(section: str, printed: str) -> None:
    (block,) = python_blocks(section)
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documented = block.rsplit("# ", 1)[1].strip()  # the comment after the print
    assert done.stdout.strip() == documented == printed


def test_human_in_the_loop_block_pauses_then_resumes_as_documented() -> None:
    (block,) = python_blocks("Human in the loop")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    documented = [line[2:] for line in block.strip().splitlines()[-2:]]
    assert done.stdout.strip().splitlines() == documented == ["interrupted Send this?", "True"]
