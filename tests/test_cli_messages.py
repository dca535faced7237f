"""Every command, option and URL option a message tells the user to use exists.

Errors and hints say what to do, often by naming a command (``'distributed-agents
dead-letters purge ID'``), its flags, or a backend URL option (``?tls_ca=``). A message
naming one that does not exist (``distributed-agents delete`` before there was such a
command, ``?ssl_ca_certs=`` where the documented name is ``tls_ca=``) sends the user
nowhere. This test reads every string literal of the package (f-strings with
``{PROG}`` as the command name; docstrings left out), finds those mentions, and checks
them against the CLI's own parser and the adapters' lists of URL options.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
from collections.abc import Iterator
from dataclasses import fields

import pytest

from distributed_agents.adapters.nats import connection as nats_connection
from distributed_agents.adapters.redis import connection as redis_connection
from distributed_agents.cli import _parser
from distributed_agents.core.ports.backend import BackendOptions

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("core", "adapters", "facade", "conformance")
# "distributed-agents" followed by a word that is prose, not a command (the project's name).
PROSE = {"workflows"}
COMMAND = re.compile(r"distributed-agents ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")
URL_OPTION = re.compile(r"[?&]([a-z_]+)=")
# A command mention's flags run to the end of the quoted or bracketed example.
EXAMPLE_END = re.compile(r"['\")`]|; ")

OURS = {f.name for f in fields(BackendOptions)} - {"extra"}
REDIS_OPTIONS = (OURS | set(redis_connection._ADAPTER_OPTIONS) | set(redis_connection._TLS_OPTIONS)
                 | set(redis_connection._CLIENT_OPTIONS))
NATS_OPTIONS = OURS | set(nats_connection._OPTIONS)


def _strings(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of each string literal of ``path`` but docstrings; an f-string's
    ``{PROG}`` reads as ``distributed-agents``, other fields as ``{}``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                skip.add(id(value))
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                elif isinstance(value.value, ast.Name) and value.value.id == "PROG":  # type: ignore[attr-defined]
                    parts.append("distributed-agents")
                else:
                    parts.append("{}")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _sources() -> list[pathlib.Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def command_problems(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with each ``distributed-agents ...`` mention in ``text`` (empty: nothing)."""
    problems = []
    commands = _subparsers(parser)
    for match in COMMAND.finditer(text):
        name, action = match.group(1), match.group(2)
        if name in PROSE:
            continue
        if name not in commands:
            problems.append(f"no command {name!r} (commands: {', '.join(sorted(commands))})")
            continue
        command = commands[name]
        actions = _subparsers(command)
        if actions:
            if action not in actions:
                problems.append(f"'{name}' has no action {action!r} (actions: {', '.join(sorted(actions))})")
                continue
            command = actions[action]
        rest = text[match.end():]
        end = EXAMPLE_END.search(rest)
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest[:end.start()] if end else rest):
            if flag not in _flags(command) | _flags(parser):
                problems.append(f"'{name}' has no option {flag}")
    return problems


def url_option_problems(text: str, known: set[str]) -> list[str]:
    return [f"no URL option {name!r}" for name in URL_OPTION.findall(text) if name not in known]


def _known_url_options(path: pathlib.Path) -> set[str] | None:
    relative = path.relative_to(ROOT).parts
    if relative[:2] == ("facade", "dashboard"):
        return None  # its ?step= and the like are the dashboard's own page links
    if relative[:2] == ("adapters", "redis"):
        return REDIS_OPTIONS
    if relative[:2] == ("adapters", "nats"):
        return NATS_OPTIONS
    return REDIS_OPTIONS | NATS_OPTIONS


def test_every_command_and_option_a_message_names_exists() -> None:
    parser = _parser()
    problems = []
    for path in _sources():
        known = _known_url_options(path)
        for line, text in _strings(path):
            found = command_problems(text, parser)
            if known is not None:
                found += url_option_problems(text, known)
            problems += [f"{path.relative_to(ROOT)}:{line}: {problem}: {text[:120]!r}" for problem in found]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("text", "problem"), [
    ("delete the workflow (distributed-agents delete) to free its id", None),
    ("remove it (distributed-agents erase) first", "no command 'erase'"),
    ("'distributed-agents dead-letters purge ID' deletes it", None),
    ("'distributed-agents dead-letters drop ID' deletes it", "no action 'drop'"),
    ("e.g. distributed-agents worker --app m:registry --node-types a --backend-url redis://h", None),
    ("e.g. distributed-agents worker --app m:registry --types a", "no option --types"),
    ("'distributed-agents list' shows them (check --backend-url and --prefix)", None),
    ("run distributed-agents workflows and inspect their backend", None),
])
def test_the_check_catches_commands_actions_and_flags_that_do_not_exist(text: str, problem: str | None) -> None:
    found = command_problems(text, _parser())
    assert (found == []) if problem is None else any(problem in p for p in found), found


@pytest.mark.parametrize(("text", "known", "problem"), [
    ("pass the CA as ?tls_ca=/path/ca.pem", REDIS_OPTIONS, None),
    ("pass the CA as ?ssl_ca_certs=/path/ca.pem", REDIS_OPTIONS, None),  # redis-py's name, also accepted
    ("pass the CA as ?ca_file=/path/ca.pem", REDIS_OPTIONS, "ca_file"),
    ("pass ?creds=/path/user.creds", NATS_OPTIONS, None),
    ("pass ?credentials=/path/user.creds", NATS_OPTIONS, "credentials"),
])
def test_the_check_catches_url_options_that_do_not_exist(text: str, known: set[str], problem: str | None) -> None:
    found = url_option_problems(text, known)
    assert (found == []) if problem is None else any(problem in p for p in found), found
