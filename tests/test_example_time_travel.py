"""examples/time_travel.py runs as a plain script and prints the forked trip and the original."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "time_travel.py"


def test_time_travel_example_forks_changes_and_resumes_without_async() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "trip-1: Paris -> Lyon -> Turin -> Milan"
    assert lines[1].startswith("history: trip-1:3 next=[], trip-1:2 next=['extend']")
    assert lines[2] == "trip-2: Paris -> Geneva -> Milan | log: planned; rerouted; extended to Milan"
    assert lines[3] == "trip-2 forked from trip-1:1; trip-1 is still Paris -> Lyon -> Turin -> Milan"
    assert lines[4] == "graph 'trip'" and "  |-.-> [extend]  (far_enough: more)" in lines
