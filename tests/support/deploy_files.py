"""What the deployment tests share: the files under deploy/ and the CLI's own help text."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
EXAMPLES = ROOT / "examples"
CLI = "distributed-agents"


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes manifest file's documents, by file name."""
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
            for path in sorted(KUBERNETES.glob("*.yaml"))}


def find(kind: str, name: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(file, document) of every manifest document of ``kind`` (and ``name``)."""
    return [(file, doc) for file, docs in manifests().items() for doc in docs
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def cli_commands() -> set[str]:
    """The commands ``distributed-agents`` has (from its parser)."""
    from distributed_agents.cli import _parser

    parser = _parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)  # type: ignore[arg-type]


def command_help(command: str) -> str:
    """``distributed-agents COMMAND --help``, run in this process (argparse is the same as in a subprocess)."""
    from distributed_agents.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    text = out.getvalue()
    assert text.startswith("usage:"), text
    return text


def help_flags(command: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z-]+)", command_help(command)))


def help_env(command: str) -> set[str]:
    """The environment variables ``--help`` of ``command`` names (``env: $NAME``)."""
    return set(re.findall(r"\$([A-Z][A-Z0-9_]+)", re.sub(r"\s+", " ", command_help(command))))
