"""A workflow's graph as inline SVG whose nodes the page can mark (running, finished, failed).

Graphviz draws the graph (``core.drawing.draw_image``, the ``dot`` program) once per
graph version; each top-level node's ``<g>`` then gets ``data-node="NAME"`` and a class
``da-node``, and ``mark`` adds ``state-current``, ``state-finished``, ``state-failed`` or
``state-interrupted`` to the nodes of one workflow (the stylesheet colours them, and the
page's script re-marks them as events arrive). Nodes inside subgraph frames keep their
drawing unmarked.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from distributed_agents.core.drawing import draw_dot, draw_image
from distributed_agents.core.graph import Graph

__all__ = ["graph_svg", "mark"]

_NODE_LINE = re.compile(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)"', re.M)
_NODE_GROUP = re.compile(r'<g id="(node\d+)" class="node">\s*<title>(n\d+)</title>')
_cache: dict[str, str] = {}


def _unescape(label: str) -> str:
    return label.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _names_by_id(graph: Graph, dot: str) -> dict[str, str]:
    """Top-level node id (``n3``) -> node name, from the DOT text's labels (a label may add a note)."""
    names = sorted(graph.nodes, key=len, reverse=True)
    found: dict[str, str] = {}
    for node_id, label in _NODE_LINE.findall(dot):
        text = _unescape(label)
        for name in names:  # the longest name the label starts with: "a (note)" is node "a"
            if text == name or text.startswith(name + " (") or text.startswith(name + "\n"):
                found[node_id] = name
                break
    return found


def graph_svg(graph: Graph) -> str:
    """``graph`` as an SVG element with markable nodes (cached per graph version).

    Raises what ``draw_image`` raises (``ConfigurationError`` when Graphviz is missing).
    """
    # The fingerprint leaves breakpoints out; the drawing marks them: both make the version drawn.
    key = f"{graph.name}/{graph.fingerprint()['sha256']}/{graph.interrupt_before}/{graph.interrupt_after}"
    cached = _cache.get(key)
    if cached is not None:
        return cached
    dot = draw_dot(graph)
    svg = draw_image(graph, "svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline into HTML
    names = _names_by_id(graph, dot)

    def tag(match: re.Match[str]) -> str:
        name = names.get(match.group(2))
        if name is None:
            return match.group(0)
        return (f'<g id="{match.group(1)}" class="node da-node" data-node="{html.escape(name, quote=True)}">'
                f"<title>{match.group(2)}</title>")

    svg = _NODE_GROUP.sub(tag, svg)
    svg = svg.replace("<svg ", '<svg role="img" aria-labelledby="graph-title" ', 1)
    _cache[key] = svg
    return svg


def mark(svg: str, states: Mapping[str, str]) -> str:
    """``svg`` with each node named in ``states`` given the class ``state-<state>``."""
    def tag(match: re.Match[str]) -> str:
        state = states.get(html.unescape(match.group(1)))
        return match.group(0) if state is None else match.group(0).replace(
            'class="node da-node"', f'class="node da-node state-{state}"')

    return re.sub(r'class="node da-node" data-node="([^"]*)"', lambda m: tag(m), svg)
