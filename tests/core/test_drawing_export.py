"""Images of graphs: DOT text, and PNG / SVG rendered by a real Graphviz ``dot`` process."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import struct
from typing import Any

import pytest

from distributed_agents import END, Graph
from distributed_agents.core.drawing import draw_dot, draw_image
from distributed_agents.core.errors import ConfigurationError, ExecutionError, GraphNotCompiledError

# scripts/test installs Graphviz; where it is missing, only CI insists on it.
needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


def noop(state: Any) -> dict[str, Any]:
    return {}


def review_graph() -> Graph:
    """plan -> (draft, research) -> join -> review -(approve / revise)-> END / plan; review may goto fix."""
    graph = Graph("review", reducers={"notes": "append"})
    graph.add_node("plan", noop).add_node("draft", noop).add_node("research", noop)
    graph.add_node("review", noop, destinations=["fix"], on_error="fix").add_node("fix", noop)
    graph.set_entry_point("plan").add_edge("plan", "draft").add_edge("plan", "research")
    graph.add_edge(["draft", "research"], "review")
    graph.add_conditional_edge("review", lambda s: "approve", {"approve": END, "revise": "plan"})
    return graph.add_edge("fix", END).compile()


def test_dot_text_has_every_node_edge_join_and_label() -> None:
    text = draw_dot(review_graph())
    assert text.startswith('digraph "review" {\n') and text.endswith("}\n")
    labels = dict(re.findall(r'^\s+(\w+) \[label="([^"]*)"', text, re.M))
    ids = {label: node for node, label in labels.items() if label}
    assert set(ids) == {"START", "plan", "draft", "research", "review", "fix", "END"}
    plan, draft, research, review, fix = (ids[n] for n in ("plan", "draft", "research", "review", "fix"))
    assert f"    {ids['START']} -> {plan};" in text
    assert f"    {plan} -> {draft};" in text and f"    {plan} -> {research};" in text
    # The join: both sources lead into one point, which leads on to review.
    assert f"    {draft} -> join0 [arrowhead=none];" in text and f"    {research} -> join0 [arrowhead=none];" in text
    assert f"    join0 -> {review};" in text
    assert f'    {review} -> {ids["END"]} [style=dashed, label="approve"];' in text
    assert f'    {review} -> {plan} [style=dashed, label="revise"];' in text
    assert f'    {review} -> {fix} [style=dashed, label="goto"];' in text
    assert f'    {review} -> {fix} [style=dashed, label="on_error"];' in text


def test_names_are_quoted_for_dot() -> None:
    graph = Graph('say "hi"\\now')
    graph.add_node('a "quoted"\nname', noop).set_entry_point('a "quoted"\nname').set_finish_point('a "quoted"\nname')
    text = draw_dot(graph.compile())
    assert 'digraph "say \\"hi\\"\\\\now" {' in text
    assert '[label="a \\"quoted\\"\\nname"];' in text


def test_subgraph_is_a_cluster_with_its_own_drawing() -> None:
    inner = Graph("inner").add_node("step", noop).set_entry_point("step").set_finish_point("step").compile()
    outer = Graph("outer").add_node("child", inner).add_node("after", noop)
    outer.set_entry_point("child").add_edge("child", "after").set_finish_point("after")
    text = draw_dot(outer.compile())
    assert "subgraph cluster_" in text and 'label="inner";' in text
    assert '[label="step"];' in text and '[style=dotted, label="runs", arrowhead=open];' in text
    assert '[label="child\\n(subgraph inner)"];' in text


@needs_dot
def test_svg_is_rendered_with_the_node_and_edge_labels(tmp_path: pathlib.Path) -> None:
    graph = review_graph()
    svg = graph.draw_svg()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for label in ("review", "START", "plan", "draft", "research", "fix", "END", "approve", "revise", "on_error"):
        assert label in texts, (label, texts)
    path = tmp_path / "review.svg"
    assert graph.draw_svg(path) == svg and path.read_text(encoding="utf-8") == svg


@needs_dot
def test_png_is_a_real_png_image(tmp_path: pathlib.Path) -> None:
    graph = review_graph()
    path = tmp_path / "review.png"
    png = graph.draw_png(str(path))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes() == png
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 200  # a tall flowchart, not an empty image


def test_missing_graphviz_names_what_to_install(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without dot
    with pytest.raises(ConfigurationError) as caught:
        review_graph().draw_png()
    message = str(caught.value)
    assert "graph 'review' as PNG needs Graphviz's 'dot' program" in message
    assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert "draw_mermaid()" in message


def test_a_failing_dot_is_an_error_with_its_message(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "dot"  # a dot that fails the way a broken install does
    fake.write_text("#!/bin/sh\necho 'Format: \"png\" not recognized' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutionError, match=r"could not draw graph 'review' as png: Format: \"png\" not recognized"):
        review_graph().draw_png()


@needs_dot
def test_bad_format_and_unwritable_path_are_configuration_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot draw an image as 'gif'; use one of png, svg"):
        draw_image(review_graph(), "gif")
    with pytest.raises(ConfigurationError, match="cannot write the drawing of graph 'review' to .*missing"):
        review_graph().draw_svg(tmp_path / "missing" / "x.svg")


def test_uncompiled_graph_is_refused() -> None:
    with pytest.raises(GraphNotCompiledError):
        Graph("raw").add_node("a", noop).draw_dot()
