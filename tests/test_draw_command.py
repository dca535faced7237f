"""``distributed-agents draw MODULE:GRAPH``: prints the graph; bad input is one line, exit 2."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from distributed_agents.cli import main

FLOWS = '''
from distributed_agents import END, Graph

def noop(state):
    return {}

def route(state):
    return "again" if state.get("n", 0) < 2 else "stop"

def build():
    graph = Graph("loop")
    graph.add_node("work", noop).add_node("check", noop)
    graph.set_entry_point("work").add_edge("work", "check")
    graph.add_conditional_edge("check", route, {"again": "work", "stop": END})
    return graph

graph = build().compile()
draft = build()                    # not compiled: draw compiles it
broken = Graph("broken").add_node("lonely", noop)
not_a_graph = 42

def needs_arguments(name):
    return Graph(name)
'''


@pytest.fixture
def flows_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    (tmp_path / "flows.py").write_text(FLOWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DA_DRAW_FORMAT", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_draw_prints_mermaid_by_default_and_ascii_on_request(flows_dir: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from flows import graph  # type: ignore[import-not-found]

    status, out, err = run_main(capsys, "draw", "flows:graph")
    assert (status, err) == (0, "") and out == graph.draw_mermaid()
    assert '    n1 -.->|"again"| n0' in out and '    n1 -.->|"stop"| __end__' in out
    status, out, _ = run_main(capsys, "draw", "flows:build", "--format", "ascii")
    assert status == 0 and out == graph.draw_ascii()
    status, out, _ = run_main(capsys, "draw", "flows:draft", "--format", "ASCII")
    assert status == 0 and out == graph.draw_ascii()


@pytest.mark.parametrize(("argv", "needles"), [
    (["draw", "flows"], ["'flows' must look like MODULE:GRAPH"]),
    (["draw", "nosuchmodule_xyz:graph"], ["cannot import 'nosuchmodule_xyz'", "PYTHONPATH"]),
    (["draw", "flows:nope"], ["has no attribute 'nope'", "flows:draft, flows:graph"]),
    (["draw", "flows:not_a_graph"], ["is of type int, not a Graph"]),
    (["draw", "flows:needs_arguments"], ["could not be called without arguments"]),
    (["draw", "flows:broken"], ["does not compile", "no entry point"]),
    (["draw", "flows:graph", "--format", "gif"], ["--format", "'gif' is not a format", "mermaid, ascii, dot, png, svg"]),
    (["draw"], ["MODULE:GRAPH"]),
])
def test_bad_input_is_one_line_exit_2(flows_dir: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], needles: list[str]) -> None:
    status, out, err = run_main(capsys, *argv)
    assert status == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distributed-agents") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_draw_in_a_real_process_reads_the_format_from_the_environment(flows_dir: pathlib.Path) -> None:
    env = {**os.environ, "DA_DRAW_FORMAT": "ascii"}
    done = subprocess.run([sys.executable, "-m", "distributed_agents", "draw", "flows:graph"], capture_output=True,
                          text=True, env=env, cwd=flows_dir, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("graph 'loop'\n") and "  |-.-> [work]  (route: again)" in done.stdout
