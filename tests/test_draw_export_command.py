"""``distributed-agents draw ... --format png|svg|dot --output FILE``: images from the command line."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from distributed_agents.cli import main

needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")

FLOWS = '''
from distributed_agents import END, Graph

def noop(state):
    return {}

graph = Graph("loop")
graph.add_node("work", noop).add_node("check", noop)
graph.set_entry_point("work").add_edge("work", "check")
graph.add_conditional_edge("check", lambda s: "stop", {"again": "work", "stop": END})
graph = graph.compile()
'''


@pytest.fixture
def flows_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    (tmp_path / "flows_export.py").write_text(FLOWS)
    monkeypatch.chdir(tmp_path)
    for name in ("DA_DRAW_FORMAT", "DA_DRAW_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@needs_dot
def test_svg_and_png_written_to_output(flows_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "draw", "flows_export:graph", "--output", "loop.svg")  # format from suffix
    assert (status, out, err) == (0, "", "")
    svg = (flows_dir / "loop.svg").read_text()
    assert "<svg" in svg and ">work</text>" in svg and ">again</text>" in svg
    status, out, err = run_main(capsys, "draw", "flows_export:graph", "--format", "png", "--output", "loop.img")
    assert (status, out, err) == (0, "", "")
    assert (flows_dir / "loop.img").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, out, _ = run_main(capsys, "draw", "flows_export:graph", "--format", "svg")  # SVG is text: printed
    assert status == 0 and out == svg


def test_dot_is_printed_and_png_needs_an_output(flows_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows_export import graph  # type: ignore[import-not-found]

    status, out, _ = run_main(capsys, "draw", "flows_export:graph", "--format", "dot")
    assert status == 0 and out == graph.draw_dot()
    status, out, err = run_main(capsys, "draw", "flows_export:graph", "--format", "png")
    assert (status, out) == (2, "") and "pass --output FILE" in err and len(err.strip().splitlines()) == 1


def test_missing_graphviz_is_one_line_naming_the_package(flows_dir: pathlib.Path) -> None:
    env = {**os.environ, "PATH": str(flows_dir)}  # no dot on it
    done = subprocess.run([sys.executable, "-m", "distributed_agents", "draw", "flows_export:graph", "--output",
                           "loop.png"], capture_output=True, text=True, env=env, cwd=flows_dir, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Graphviz's 'dot' program" in lines[0], done.stderr
    assert "apt-get install graphviz" in lines[0] and "--format mermaid or dot" in lines[0]
    assert not (flows_dir / "loop.png").exists()


@needs_dot
def test_unwritable_output_is_one_line(flows_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "draw", "flows_export:graph", "--output", "no/such/dir/loop.svg")
    assert (status, out) == (2, "") and "cannot write it" in err and "no/such/dir/loop.svg" in err
