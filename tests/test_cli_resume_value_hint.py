"""``resume --value yes``: the hint shows how to pass a JSON string, not a dict example."""

from __future__ import annotations

import pathlib
import sys

import pytest

from distributed_agents.cli import main
from distributed_agents.cli_client import parse_json_value
from distributed_agents.core.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)

APP = """
from distributed_agents import END, START, Graph
graph = Graph("hint")
graph.add_node("a", lambda state: {})
graph.add_edge(START, "a").add_edge("a", END)
graph.compile()
"""


def test_resume_with_a_bare_word_shows_the_json_string_to_pass(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "hintapp.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hintapp", raising=False)
    # The value is refused before any connection: nothing listens on port 1.
    status = main(["resume", "wf_x", "--graph", "hintapp:graph", "--value", "yes",
                   "--backend-url", "redis://127.0.0.1:1/0"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert "--value 'yes' is not JSON" in line and "--value '\"yes\"'" in line, line
    assert "topic" not in line


@pytest.mark.parametrize("text, shown", [
    ("yes please", "--value '\"yes please\"'"),
    ("it's", "--value '\"it'\"'\"'s\"'"),  # quoted so a shell passes exactly "it's"
])
def test_the_suggested_value_is_what_the_shell_passes_as_that_json_string(text: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_json_value("--value", text)
    assert shown in str(caught.value)


@pytest.mark.parametrize("flag, text", [("--value", "{approved: true}"), ("--input", "{topic")])
def test_broken_json_objects_still_get_the_object_example(flag: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{flag} .* is not JSON .*quote it for the shell, e.g. {flag} "
                                                 "'{\"topic\": \"tides\"}'"):
        parse_json_value(flag, text)
