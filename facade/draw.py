"""``distributed-agents draw MODULE:GRAPH``: find a graph by its import path and draw it.

Text formats (``mermaid``, ``ascii``, ``dot``) need nothing; images (``png``, ``svg``)
are rendered by Graphviz's ``dot`` program (see ``core.drawing.draw_image``).
"""

from __future__ import annotations

import importlib
import os
import sys

from distributed_agents.core.drawing import IMAGE_FORMATS, draw_image
from distributed_agents.core.errors import ConfigurationError, GraphValidationError
from distributed_agents.core.graph import Graph

__all__ = ["FORMATS", "IMAGE_FORMATS", "draw_graph", "format_for_path", "load_graph"]

FORMATS = ("mermaid", "ascii", "dot", *IMAGE_FORMATS)
_SUFFIXES = {".png": "png", ".svg": "svg", ".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".txt": "ascii"}


def file_path_problem(module_name: str, attribute: str) -> str | None:
    """Why ``module_name`` of a ``MODULE:ATTRIBUTE`` spec is a file path, not a module (None if it is not one).

    ``python -m``-style specs name a module as Python imports it (``myapp.flows``); a path
    (``../app/myapp.py``, ``app/myapp``) would otherwise fail the import with a hint to
    ``import ../app/myapp.py``, which is no Python.
    """
    if "/" not in module_name and "\\" not in module_name and not module_name.endswith(".py"):
        return None
    folder, _, file = module_name.replace("\\", "/").rpartition("/")
    module = file[:-3] if file.endswith(".py") else file
    where = f"run from {folder!r} (or add it to PYTHONPATH) and pass" if folder not in ("", ".") else "pass"
    return (f"{module_name!r} is a file path; MODULE:ATTRIBUTE takes a module name as Python imports it: "
            f"{where} {module}:{attribute}")


def load_graph(spec: str) -> Graph:
    """Import ``module:attribute`` and return the compiled ``Graph`` it names.

    The attribute may be a ``Graph`` or a function taking no arguments that returns
    one; a graph not compiled yet is compiled. ``ConfigurationError`` (naming the
    spec and what to do) if the spec is malformed, the module cannot be imported, the
    attribute is missing or not a graph, or the graph does not compile.
    """
    module_name, separator, attribute = spec.strip().partition(":") if isinstance(spec, str) else ("", "", "")
    if not separator or not module_name or not attribute:
        raise ConfigurationError(f"{spec!r} must look like MODULE:GRAPH, e.g. myapp.flows:graph")
    path_like = file_path_problem(module_name, attribute)
    if path_like:
        raise ConfigurationError(f"{spec!r}: {path_like}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{spec!r}: cannot import {module_name!r} ({exc}); run from the folder that contains it, "
            "or add that folder to PYTHONPATH"
        ) from None
    except SyntaxError as exc:
        raise ConfigurationError(
            f"{spec!r}: {module_name!r} has a syntax error at {exc.filename}:{exc.lineno}: {exc.msg}; fix it, "
            "then run again"
        ) from None
    except Exception as exc:  # the module's own code failed at import time: one line, not a traceback
        raise ConfigurationError(
            f"{spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}; fix the module "
            f"(python3 -c 'import {module_name}' shows the traceback)"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        graphs = sorted(name for name, value in vars(module).items() if isinstance(value, Graph))
        hint = f"; it has {', '.join(f'{module_name}:{name}' for name in graphs)}" if graphs else ""
        raise ConfigurationError(f"{spec!r}: module {module_name!r} has no attribute {attribute!r}{hint}") from None
    if callable(found) and not isinstance(found, Graph):
        try:
            found = found()
        except TypeError as exc:
            raise ConfigurationError(
                f"{spec!r} is a function that could not be called without arguments ({exc}); "
                "point at a Graph, or at a function that builds one from nothing"
            ) from None
    if not isinstance(found, Graph):
        raise ConfigurationError(f"{spec!r} is of type {type(found).__name__}, not a Graph (or a function returning one)")
    try:
        return found if found.compiled else found.compile()
    except GraphValidationError as exc:
        raise ConfigurationError(f"{spec!r} does not compile: {exc}") from None


def format_for_path(path: str) -> str | None:
    """The format a file name asks for by its suffix (``graph.svg`` -> ``svg``), None if it says none."""
    return _SUFFIXES.get(os.path.splitext(path)[1].lower())


def draw_graph(spec: str, output_format: str) -> str | bytes:
    """The graph at ``spec`` drawn in ``output_format``: text for ``mermaid``, ``ascii``, ``dot``,
    image bytes for ``png`` and ``svg`` (``ConfigurationError`` naming what to install if Graphviz is missing).
    """
    if output_format not in FORMATS:
        raise ConfigurationError(f"unknown format {output_format!r}; use one of {', '.join(FORMATS)}")
    graph = load_graph(spec)
    if output_format in IMAGE_FORMATS:
        return draw_image(graph, output_format)
    return {"mermaid": graph.draw_mermaid, "ascii": graph.draw_ascii, "dot": graph.draw_dot}[output_format]()
