"""The examples run as they are and print their result."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(("script", "expected"), [
    ("simple_workflow.py", "Report on 'AI trends' with 2 findings"),
    ("conditional_workflow.py", "published 'draft v3 about graphs' after 3 revisions"),
    ("human_in_the_loop.py", "Report on tides from 4 sources (published)"),
])
def test_example_runs(script: str, expected: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
