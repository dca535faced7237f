"""``run`` and ``submit`` with an ``--input`` that is JSON but not a state the graph takes.

The example (hostile-input trial): ``run myapp:graph --input '{"__x": 1}'`` (also NaN,
1e999) printed "workflow failed at step 0" and "cannot stream workflow ...: no such workflow"
with exit status 1, hiding the real error; ``submit`` exited 2 for the reserved key but 1
for NaN. Now both say what is wrong with the input and exit 2, and ``Orchestrator.astream``
raises the run's own error when the run fails before the workflow is stored.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.errors import ConfigurationError, StateNotSerializableError

from .test_cli import assert_one_line_error, in_process

pytestmark = pytest.mark.timeout(60)

APP = '''
from distributed_agents import Graph
graph = Graph("cli_g").add_node("a", lambda s: {"done": True}).set_entry_point("a").set_finish_point("a").compile()
'''


@pytest.fixture
def app_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A folder holding ``inputapp.py`` (graph ``cli_g``), the current directory."""
    (tmp_path / "inputapp.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


BAD_INPUTS = [('{"__x": 1}', ["'__x'", "reserved"]), ('{"x": NaN}', ["--input", "'x'", "nan is not JSON"]),
              ('{"x": 1e999}', ["--input", "inf is not JSON"]), ('{"x": [1, {"y": -Infinity}]}', ["x[1].y"])]


@pytest.mark.parametrize("text,needles", BAD_INPUTS)
def test_run_with_an_input_the_graph_refuses_says_why_and_exits_2(
        app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]) -> None:
    status, out, err = in_process(capsys, "run", "inputapp:graph", "--backend-url", "memory://", "--input", text)
    assert_one_line_error(status, err, *needles, code=2)
    assert "no such workflow" not in err and "failed at step" not in err and out == ""


@pytest.mark.parametrize("text,needles", BAD_INPUTS)
def test_submit_with_an_input_the_graph_refuses_exits_2_too(
        app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str], redis_url: str, text: str,
        needles: list[str]) -> None:
    status, out, err = in_process(capsys, "submit", "inputapp:graph", "--backend-url", redis_url, "--input", text)
    assert_one_line_error(status, err, *needles, code=2)
    assert out == ""


@pytest.mark.parametrize("state,error", [({"__x": 1}, ConfigurationError), ({"x": float("nan")},
                                                                             StateNotSerializableError)])
def test_astream_of_a_run_that_fails_before_it_is_stored_raises_the_runs_error(state: dict[str, Any],
                                                                                 error: type[Exception]) -> None:
    graph = Graph("refusing").add_node("a", lambda s: {}).set_entry_point("a").set_finish_point("a").compile()

    async def scenario() -> None:
        orchestrator = Orchestrator()
        try:
            async for _ in orchestrator.astream(graph, state, stream_mode=["debug", "updates"]):
                pass
        finally:
            await orchestrator.close()

    with pytest.raises(error) as caught:
        run(scenario(), 30)
    assert "no such workflow" not in str(caught.value)


@pytest.mark.parametrize("argv,needles", [
    (["run", "../app/myapp.py:graph", "--backend-url", "memory://"], ["is a file path", "run from '../app'",
                                                                      "myapp:graph"]),
    (["run", "app/myapp:graph", "--backend-url", "memory://"], ["is a file path", "myapp:graph"]),
    (["draw", "flows.py:g"], ["is a file path", "pass flows:g"]),
    (["worker", "--app", "./nodes.py:registry", "--backend-url", "memory://"], ["is a file path",
                                                                                 "pass nodes:registry"]),
])
def test_a_file_path_given_for_a_module_says_to_pass_the_module_name(
        app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]) -> None:
    """From the trial: 'run ../app/myapp.py:graph' suggested "python3 -c 'import ../app/myapp.py'"."""
    status, _, err = in_process(capsys, *argv)
    assert_one_line_error(status, err, *needles, code=2)
    assert "import ../" not in err
