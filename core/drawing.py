"""Drawing a compiled graph: Mermaid flowchart text and a plain-text rendering.

Both read only ``Graph.spec()`` (nodes, edges, conditional edges), so what is drawn
is exactly what the engine routes on:

* a static edge ``a -> b`` is a solid arrow;
* a conditional edge is a dashed arrow to each target it may choose, labelled with
  the condition's key for that target (the condition's name when it returns node
  names itself); one without declared targets may choose any node or END;
* a join ``add_edge(["a", "b"], "c")`` is drawn as a join point that every source
  leads into and that leads on to ``c`` (``c`` runs once all of them ran);
* a node's ``destinations`` (where its ``Command(goto=...)`` may go) are dashed arrows
  labelled ``goto``; a ``Send`` goes where its condition's targets say;
* a node's error handler (``on_error``) is a dashed arrow labelled ``on_error``;
* a deferred node (``defer=True``) and a breakpoint (``interrupt_before`` /
  ``interrupt_after``) are noted in the node's label;
* ``START`` and, when something leads there, ``END``;
* a subgraph node (``add_node(name, compiled_graph)``) is a nested block holding the
  subgraph's own drawing (a Mermaid ``subgraph``; indented under the node in text),
  as deep as subgraphs nest.

No external library is needed; ``draw_mermaid`` output renders wherever Mermaid does
(GitHub, GitLab, mermaid.live, Jupyter with an extension).

Images: ``draw_dot`` writes the same drawing in Graphviz's DOT language (plain text,
no library), and ``draw_image`` renders it as PNG or SVG with Graphviz's ``dot``
program, the one optional piece: a system package (Debian/Ubuntu ``apt-get install
graphviz``, macOS ``brew install graphviz``, conda ``conda install graphviz``), run as a
subprocess, so nothing is imported and the core stays standard-library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from distributed_agents.core.errors import ConfigurationError, ExecutionError
from distributed_agents.core.graph import END, START

__all__ = ["IMAGE_FORMATS", "draw_ascii", "draw_dot", "draw_image", "draw_mermaid"]


class _Drawable(Protocol):
    def spec(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Route:
    """One arrow: ``sources`` (several for a join) to ``target``."""

    sources: tuple[str, ...]
    target: str
    kind: str  # "edge", "conditional", "goto", "on_error" or "join"
    label: str = ""
    condition: str = ""


def _routes(spec: Mapping[str, Any]) -> list[_Route]:
    nodes = [node["name"] for node in spec["nodes"]]
    routes: list[_Route] = []
    position = {name: i for i, name in enumerate(nodes)}
    for edge in spec["edges"]:
        # A join's sources are a set (sorted in the spec): drawn in node declaration order.
        sources = tuple(sorted(edge["sources"], key=lambda name: position.get(name, len(position))))
        routes.append(_Route(sources, edge["target"], "join" if len(sources) > 1 else "edge"))
    for node in spec["nodes"]:
        for target in node.get("destinations") or ():
            routes.append(_Route((node["name"],), target, "goto", "goto"))
        if node.get("on_error"):
            routes.append(_Route((node["name"],), node["on_error"], "on_error", "on_error"))
    for edge in spec["conditional_edges"]:
        targets = edge["targets"]
        name = str(edge["condition"])
        if isinstance(targets, Mapping):
            labels: dict[str, list[str]] = {}
            for key, target in targets.items():
                labels.setdefault(target, []).append(str(key))
            for target, keys in labels.items():
                routes.append(_Route((edge["source"],), target, "conditional", " / ".join(keys), name))
        else:
            choices = list(targets) if targets is not None else [*nodes, END]
            for target in sorted(choices, key=lambda t: (nodes.index(t) if t in nodes else len(nodes), t)):
                routes.append(_Route((edge["source"],), target, "conditional", "", name))
    return list(dict.fromkeys(routes))  # a route declared twice is drawn once


def _order(spec: Mapping[str, Any], routes: Sequence[_Route]) -> list[str]:
    """Nodes in the order a reader follows them: breadth first from START, declaration order within."""
    declared = [node["name"] for node in spec["nodes"]]
    successors: dict[str, list[str]] = {}
    for route in routes:
        for source in route.sources:
            successors.setdefault(source, []).append(route.target)
    seen: list[str] = []
    frontier = [START]
    while frontier:
        following: list[str] = []
        for name in frontier:
            for target in sorted(successors.get(name, ()), key=lambda t: declared.index(t) if t in declared else 0):
                if target in declared and target not in seen and target not in following:
                    following.append(target)
        seen.extend(following)
        frontier = following
    return seen + [name for name in declared if name not in seen]


def _notes(spec: Mapping[str, Any]) -> dict[str, str]:
    """Node name -> what its label adds: deferred, interrupt before/after."""
    notes: dict[str, list[str]] = {}
    for node in spec["nodes"]:
        if node.get("defer"):
            notes.setdefault(node["name"], []).append("deferred")
    for when in ("before", "after"):
        for name in spec.get(f"interrupt_{when}") or ():
            notes.setdefault(name, []).append(f"interrupt {when}")
    return {name: ", ".join(items) for name, items in notes.items()}


def _mermaid_text(text: str) -> str:
    """``text`` inside a Mermaid quoted label (entity codes for what the parser would read)."""
    replaced = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;"}
    # Line breaks and other unprintable characters would end the line: numeric codes instead.
    return "".join(replaced.get(char, char if char.isprintable() else f"#{ord(char)};") for char in text)


def draw_mermaid(graph: _Drawable) -> str:
    """A Mermaid ``flowchart TD`` of a compiled graph (see the module docstring for the notation).

    Node ids are generated (``n0``, ``n1``, ...), so any node name is safe; names are
    the labels. Raises ``GraphNotCompiledError`` for a graph not compiled yet.
    """
    spec = graph.spec()
    # A JSON string is a valid YAML double-quoted scalar: any graph name is safe as the title.
    lines = ["---", f"title: {json.dumps(str(spec['name']), ensure_ascii=False)}", "---", "flowchart TD",
             *_mermaid_lines(spec, "", "    ")]
    lines += ["    classDef terminal fill:#f2f2f2,stroke:#555", "    classDef join fill:#333,stroke:#333"]
    return "\n".join(lines) + "\n"


def _subgraphs(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Node name -> the spec of the subgraph it runs, for subgraph nodes."""
    return {node["name"]: node["subgraph"] for node in spec["nodes"] if node.get("subgraph")}


def _mermaid_lines(spec: Mapping[str, Any], prefix: str, indent: str) -> list[str]:
    """Nodes and arrows of ``spec``, ids prefixed with ``prefix`` (a subgraph's block id and ``_``)."""
    routes = _routes(spec)
    order = _order(spec, routes)
    ids = {START: f"{prefix}__start__", END: f"{prefix}__end__", **{name: f"{prefix}n{i}" for i, name in enumerate(order)}}
    lines = [f'{indent}{ids[START]}(["START"]):::terminal']
    notes = _notes(spec)
    nested = _subgraphs(spec)
    for name in order:
        label = name + (f" ({notes[name]})" if name in notes else "")
        if name in nested:
            label += f" (subgraph {nested[name]['name']})"
            lines.append(f'{indent}subgraph {ids[name]}["{_mermaid_text(label)}"]')
            lines.append(f"{indent}    direction TB")
            lines += _mermaid_lines(nested[name], f"{ids[name]}_", indent + "    ")
            lines.append(f"{indent}end")
        else:
            lines.append(f'{indent}{ids[name]}["{_mermaid_text(label)}"]')
    if any(route.target == END for route in routes):
        lines.append(f'{indent}{ids[END]}(["END"]):::terminal')
    joins = 0
    for route in routes:
        if route.kind == "join":
            point = f"{prefix}join{joins}"
            joins += 1
            lines.append(f'{indent}{point}((" ")):::join')
            lines += [f"{indent}{ids[source]} --- {point}" for source in route.sources]
            lines.append(f"{indent}{point} --> {ids[route.target]}")
        elif route.kind in ("conditional", "goto", "on_error"):
            label = route.label or route.condition
            lines.append(f'{indent}{ids[route.sources[0]]} -.->|"{_mermaid_text(label)}"| {ids[route.target]}')
        else:
            lines.append(f"{indent}{ids[route.sources[0]]} --> {ids[route.target]}")
    return lines


def _box(name: str) -> str:
    return {START: "(START)", END: "(END)"}.get(name, f"[{name}]")


def draw_ascii(graph: _Drawable) -> str:
    """A plain-text rendering of a compiled graph, one block per node in flow order.

    Each block lists the node's way out: ``-->`` an edge, ``-.->`` a conditional
    edge (with the condition and the key that chooses it) or a ``Command(goto=)``
    destination, ``==>`` a join (with all the sources it waits for). Pure ASCII, no external library. Raises
    ``GraphNotCompiledError`` for a graph not compiled yet.
    """
    spec = graph.spec()
    lines = [f"graph {spec['name']!r}", "=" * (len(str(spec["name"])) + 8), *_ascii_lines(spec)]
    lines += ["", "--> edge   -.-> conditional edge (condition: key) or Command goto   "
              "==> join (runs once all its sources ran)"]
    return "\n".join(_strip(lines)) + "\n"


def _ascii_lines(spec: Mapping[str, Any]) -> list[str]:
    """The node blocks of ``draw_ascii``; a subgraph node's own blocks follow its name, indented."""
    routes = _routes(spec)
    order = _order(spec, routes)
    lines: list[str] = []
    notes = _notes(spec)
    nested = _subgraphs(spec)
    for name in [START, *order]:
        outgoing = [route for route in routes if name in route.sources]
        note = ", ".join([*([notes[name]] if name in notes else []),
                          *([f"subgraph {nested[name]['name']!r}"] if name in nested else [])])
        lines.append(_box(name) + (f"  ({note})" if note else ""))
        if name in nested:
            lines += [f"    {line}" for line in _ascii_lines(nested[name])]
        rows = []
        for route in outgoing:
            target = _box(route.target)
            if route.kind == "join":
                others = " + ".join(route.sources)
                rows.append(("==>", target, f"join: after {others}"))
            elif route.kind == "conditional":
                rows.append(("-.->", target, f"{route.condition}: {route.label}" if route.label else route.condition))
            elif route.kind == "goto":
                rows.append(("-.->", target, "Command goto"))
            elif route.kind == "on_error":
                rows.append(("-.->", target, "on_error: its failures"))
            else:
                rows.append(("-->", target, ""))
        width = max((len(arrow) + len(target) for arrow, target, _ in rows), default=0)
        for index, (arrow, target, note) in enumerate(rows):
            branch = "`" if index == len(rows) - 1 else "|"
            text = f"{arrow} {target}"
            lines.append(f"  {branch}{text}" + (f"{' ' * (width + 3 - len(text))}({note})" if note else ""))
    return lines


def _strip(lines: Iterable[str]) -> list[str]:
    return [line.rstrip() for line in lines]


# -- images: DOT text, rendered by Graphviz --------------------------------------------

IMAGE_FORMATS = ("png", "svg")
DOT_TIMEOUT = 60.0  # seconds a dot run may take before it is given up


def _dot_text(text: str) -> str:
    """``text`` as a DOT double-quoted string (quotes and backslashes escaped, line breaks kept)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n") + '"'


def draw_dot(graph: _Drawable) -> str:
    """A Graphviz DOT ``digraph`` of a compiled graph, in the notation of ``draw_mermaid``.

    Solid arrows are edges, dashed ones conditional edges / ``goto`` / ``on_error`` with
    their labels, a small black dot a join; START and END are ovals; a subgraph node is
    a box with a dotted ``runs`` arrow into a frame holding the subgraph's own drawing.
    Node ids are generated, names are labels, so any name is safe. Raises
    ``GraphNotCompiledError`` for a graph not compiled yet.
    """
    spec = graph.spec()
    lines = [f"digraph {_dot_text(str(spec['name']))} {{",
             f"    graph [label={_dot_text(str(spec['name']))}, labelloc=t, fontname=\"Helvetica\", "
             "fontsize=16, rankdir=TB, nodesep=0.4, ranksep=0.45];",
             '    node [shape=box, style="rounded,filled", fillcolor="#eef3fb", color="#4a6fa5", '
             'fontname="Helvetica", fontsize=12];',
             '    edge [color="#444444", fontname="Helvetica", fontsize=10, fontcolor="#333333"];',
             *_dot_lines(spec, "", "    "), "}"]
    return "\n".join(lines) + "\n"


def _dot_lines(spec: Mapping[str, Any], prefix: str, indent: str) -> list[str]:
    """Nodes and arrows of ``spec`` with ids prefixed by ``prefix``; subgraphs as clusters."""
    routes = _routes(spec)
    order = _order(spec, routes)
    ids = {START: f"{prefix}__start__", END: f"{prefix}__end__",
           **{name: f"{prefix}n{i}" for i, name in enumerate(order)}}
    terminal = 'shape=oval, style=filled, fillcolor="#f2f2f2", color="#555555"'
    lines = [f"{indent}{ids[START]} [label=\"START\", {terminal}];"]
    notes, nested = _notes(spec), _subgraphs(spec)
    clusters: list[str] = []
    for name in order:
        label = name + (f" ({notes[name]})" if name in notes else "")
        if name in nested:
            label += f"\n(subgraph {nested[name]['name']})"
            inner = f"{ids[name]}_"
            clusters += [f"{indent}subgraph cluster_{ids[name]} {{",
                         f"{indent}    label={_dot_text(str(nested[name]['name']))}; style=\"rounded,dashed\"; "
                         'color="#888888"; fontname="Helvetica";',
                         *_dot_lines(nested[name], inner, indent + "    "), f"{indent}}}",
                         f'{indent}{ids[name]} -> {inner}__start__ [style=dotted, label="runs", arrowhead=open];']
        lines.append(f"{indent}{ids[name]} [label={_dot_text(label)}];")
    if any(route.target == END for route in routes):
        lines.append(f"{indent}{ids[END]} [label=\"END\", {terminal}];")
    joins = 0
    for route in routes:
        if route.kind == "join":
            point = f"{prefix}join{joins}"
            joins += 1
            lines.append(f'{indent}{point} [label="", shape=circle, width=0.12, height=0.12, style=filled, '
                         'fillcolor="#333333", color="#333333"];')
            lines += [f"{indent}{ids[source]} -> {point} [arrowhead=none];" for source in route.sources]
            lines.append(f"{indent}{point} -> {ids[route.target]};")
        elif route.kind in ("conditional", "goto", "on_error"):
            label = route.label or route.condition
            lines.append(f"{indent}{ids[route.sources[0]]} -> {ids[route.target]} "
                         f"[style=dashed, label={_dot_text(label)}];")
        else:
            lines.append(f"{indent}{ids[route.sources[0]]} -> {ids[route.target]};")
    return lines + clusters


def draw_image(graph: _Drawable, output_format: str, path: str | os.PathLike[str] | None = None) -> bytes:
    """The graph drawn as an image (``output_format`` ``"png"`` or ``"svg"``); its bytes.

    Renders ``draw_dot``'s text with Graphviz's ``dot`` program (found on ``PATH``); with
    ``path`` the image is also written to that file. Raises ``ConfigurationError`` for
    another format, when ``dot`` is not installed (naming the package to install), or
    when ``path`` cannot be written; ``ExecutionError`` if ``dot`` fails (with its
    message); ``GraphNotCompiledError`` for a graph not compiled yet.
    """
    if output_format not in IMAGE_FORMATS:
        raise ConfigurationError(f"cannot draw an image as {output_format!r}; use one of {', '.join(IMAGE_FORMATS)} "
                                 "(or draw_mermaid() / draw_ascii() / draw_dot() for text)")
    text = draw_dot(graph)
    name = graph.spec()["name"]
    program = shutil.which("dot")
    if program is None:
        raise ConfigurationError(
            f"drawing graph {name!r} as {output_format.upper()} needs Graphviz's 'dot' program, which is not on PATH: "
            "install Graphviz (Debian/Ubuntu: apt-get install graphviz; Fedora: dnf install graphviz; macOS: brew "
            "install graphviz; conda: conda install graphviz), or draw it as text instead (draw_mermaid() or draw_dot(); "
            "in the CLI --format mermaid or dot)")
    try:
        done = subprocess.run([program, f"-T{output_format}"], input=text.encode("utf-8"), capture_output=True,
                              timeout=DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ExecutionError(f"Graphviz ({program}) did not draw graph {name!r} within {DOT_TIMEOUT:.0f}s") from None
    if done.returncode != 0 or not done.stdout:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise ExecutionError(f"Graphviz ({program}) could not draw graph {name!r} as {output_format}: {message}")
    if path is not None:
        try:
            with open(path, "wb") as file:
                file.write(done.stdout)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the drawing of graph {name!r} to {os.fspath(path)!r}: "
                                     f"{exc.strerror or exc}") from None
    return done.stdout
