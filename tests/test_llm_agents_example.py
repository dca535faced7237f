"""``examples/llm_agents.py`` end to end against a scripted OpenAI-compatible endpoint.

The endpoint (``support.scripted_openai``) is a real HTTP server on a loopback port that
streams Server-Sent Events, splits tool-call arguments over several deltas and answers
the first two requests with 429 and 500, so the example's ``openai`` client must retry.
Its replies depend only on what each request holds, so the report, the tool calls and
the streamed tokens are known exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import uuid
from types import ModuleType
from typing import Any

import pytest
from support.aio import run
from support.readme import bash_blocks, shell_script
from support.scripted_openai import (
    DRAFT_1, DRAFT_2, FEEDBACK, NOTES_TEMPLATE, SEARCHES, ScriptedOpenAI, reply_for, tokens,
)
from support.server_process import free_port

from distributed_agents import Orchestrator

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "llm_agents.py"
NOTES = NOTES_TEMPLATE.format(difference="14")
EXPECTED_TOOL_CALLS = [("search_docs", {"query": SEARCHES[0]}), ("search_docs", {"query": SEARCHES[1]}),
                       ("calculator", {"expression": "254 - 240"})]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llm_agents_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_scripted_conversation(server: ScriptedOpenAI) -> None:
    """What the endpoint saw: both faults retried, the three tool calls sent back whole, every agent asked."""
    assert server.statuses[:2] == [429, 500]
    assert server.statuses[2:] == [200] * len(server.requests)
    assert server.tool_calls_seen() == EXPECTED_TOOL_CALLS
    # supervisor x2, researcher x3, writer x2, reviewer x2; every request streamed
    assert len(server.requests) == 9
    assert all(request["stream"] is True for request in server.requests)
    tool_results = [m["content"] for m in server.requests[3]["messages"] if m["role"] == "tool"]
    assert "254 MW" in tool_results[1] and "240 MW" in tool_results[0] and tool_results[2] == "14"


def test_tools_are_real() -> None:
    example = load_example()
    assert example.calculator("254 - 240") == "14"
    assert example.calculator("(2 + 3) * 4 / 8") == "2.5"
    assert example.calculator("-2 ** 10") == "-1024"
    for bad in ("__import__('os').system('true')", "open('x')", "2 ** 1000", "1 +"):
        with pytest.raises(ValueError, match="calculator|exponent"):
            example.calculator(bad)
    assert example.search_docs("Sihwa Lake capacity").startswith("[sihwa_lake.txt]")
    assert "no document matches" in example.search_docs("zebra")


@pytest.mark.timeout(60)
def test_llm_agents_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "scripted-key")
        monkeypatch.setenv("OPENAI_MODEL", "scripted-model")
        example = load_example()
        streamed: list[tuple[str, str]] = []
        asked: list[dict[str, Any]] = []

        def ask(value: dict[str, Any]) -> str:
            asked.append(dict(value))
            return "yes"

        async def go() -> dict[str, Any]:
            orchestrator = Orchestrator()
            try:
                return await example.run_team(orchestrator, "Which tidal power station is the largest?", ask=ask,
                                               on_token=lambda agent, token, meta: streamed.append((agent, token)),
                                               workflow_id="research-1")
            finally:
                await orchestrator.close()

        result = run(go(), timeout=50)

    assert result["approved"] is True and result["report"] == DRAFT_2
    assert result["notes"] == NOTES and result["reviews"] == 2 and result["feedback"] == FEEDBACK
    assert asked == [{"question": "Publish this report?", "draft": DRAFT_2, "reviews": 2}]
    expected = [("researcher", t) for t in tokens(NOTES)] + [("writer", t) for t in tokens(DRAFT_1)] + \
        [("reviewer", t) for t in tokens(FEEDBACK)] + [("writer", t) for t in tokens(DRAFT_2)] + [("reviewer", "APPROVE")]
    assert streamed == expected
    assert all(request["model"] == "scripted-model" for request in server.requests)
    assert_scripted_conversation(server)
    roles = [(m["role"], m.get("name")) for m in result["messages"]]
    assert roles[:5] == [("user", None), ("assistant", "researcher"), ("tool", "search_docs"),
                         ("tool", "search_docs"), ("assistant", "researcher")]


def test_missing_key_says_what_to_set(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    assert "OPENAI_API_KEY is not set" in done.stderr and "OPENAI_BASE_URL" in done.stderr


@pytest.mark.redis
@pytest.mark.timeout(180)  # seconds when idle; the margin is for a loaded machine
def test_llm_agents_on_redis_worker_processes(redis_url: str) -> None:
    with ScriptedOpenAI() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "scripted-key",
               "PYTHONUNBUFFERED": "1"}
        prefix = f"llm-{uuid.uuid4().hex[:8]}"
        done = subprocess.run([sys.executable, str(EXAMPLE), "--backend-url", redis_url, "--prefix", prefix],
                              input="yes\n", capture_output=True, text=True, timeout=170, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"Final report (2 review(s), 3 tool call(s)):\n{DRAFT_2}\n" in out
    assert "Publish this report? [y/N]" in out  # asked on stdin, answered "yes"
    # Tokens reached this caller from the workers, in order, each agent's under its header.
    assert f"[researcher] {NOTES}\n[writer] {DRAFT_1}\n[reviewer] {FEEDBACK}\n[writer] {DRAFT_2}\n[reviewer] APPROVE" in out
    pids_line = next(line for line in out.splitlines() if line.startswith("tokens streamed from worker pids"))
    worker_pids = {int(p) for p in pids_line.split("[")[1].split("]")[0].split(", ")}
    orchestrator_pid = int(pids_line.rsplit(" ", 1)[1])
    assert len(worker_pids) == 2 and orchestrator_pid not in worker_pids  # researcher and writer sides
    assert_scripted_conversation(server)


@pytest.mark.timeout(90)
def test_readme_runs_the_example_against_the_scripted_endpoint() -> None:
    real, scripted = bash_blocks("Examples")
    assert all(name in real for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL", "--backend-url"))
    script = shell_script(scripted, install=False, replace={"8765": str(free_port()),
                                                             ".venv/bin/python": sys.executable})
    done = subprocess.run(["bash", "-c", script], cwd=EXAMPLE.parents[1], capture_output=True, text=True,
                          timeout=80, env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Final report (2 review(s), 3 tool call(s)):\n{DRAFT_2}\n" in done.stdout


@pytest.mark.timeout(60)
def test_reviews_are_bounded_and_a_rejected_report_is_not_published(monkeypatch: pytest.MonkeyPatch) -> None:
    def never_satisfied(request: dict[str, Any]) -> dict[str, Any]:
        if request["messages"][0]["content"].startswith("You are the reviewer"):
            return {"content": "REVISE: shorter."}
        return reply_for(request)

    with ScriptedOpenAI(faults=(), reply=never_satisfied) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "scripted-key")
        example = load_example()
        asked: list[dict[str, Any]] = []

        async def go() -> dict[str, Any]:
            orchestrator = Orchestrator()
            try:
                return await example.run_team(orchestrator, "Largest tidal station?",
                                               ask=lambda value: asked.append(dict(value)) or "no",
                                               on_token=lambda agent, token, meta: None)
            finally:
                await orchestrator.close()

        result = run(go(), timeout=50)
    assert result["reviews"] == example.MAX_REVIEWS == 3
    assert [m["content"] for m in result["messages"] if m.get("name") == "reviewer"] == ["REVISE: shorter."] * 3
    assert asked and asked[0]["reviews"] == 3
    assert result["approved"] is False and result["report"] == ""
    assert server.statuses == [200] * len(server.requests)


def test_without_the_openai_client_it_names_the_extra_to_install() -> None:
    code = ("import runpy, sys; sys.modules['openai'] = None; sys.argv = ['llm_agents.py']; "
            f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENAI_API_KEY": "scripted-key"})
    assert done.returncode != 0
    assert "pip install 'distributed-agents[llm]'" in done.stderr, done.stderr


@pytest.mark.parametrize("indexed", [True, False])
def test_chat_joins_streamed_tool_calls(monkeypatch: pytest.MonkeyPatch, indexed: bool) -> None:
    with ScriptedOpenAI(faults=(), indexed_tool_calls=indexed) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "scripted-key")
        example = load_example()
        reply = run(example.chat([{"role": "user", "content": "Largest tidal station?"}], agent="researcher",
                                 tools=example.TOOL_SCHEMAS))
    assert reply["content"] is None
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply["tool_calls"]] == [
        ("call_search_0", "search_docs", {"query": SEARCHES[0]}), ("call_search_1", "search_docs", {"query": SEARCHES[1]})]
