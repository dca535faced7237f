"""Every code block of the README's local sections runs as written."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from support.aio import run
from support.readme import bash_blocks, code_blocks, debian_path, python_blocks, run_block, shell_script

from distributed_agents import Graph, NodeRegistry, Orchestrator, State, Worker


def test_quick_start_local_execution_prints_the_report() -> None:
    """The Quick Start block calls asyncio.run itself, so it runs in a fresh interpreter."""
    (block,) = python_blocks("Local Execution")
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Report with 1 findings"


def test_conditional_routing_compiles_and_loops_until_approved() -> None:
    (block,) = python_blocks("Conditional Routing")
    namespace: dict[str, Any] = {}
    run(run_block(block, namespace))
    graph = namespace["graph"]
    assert graph.compiled
    # Run the very graph the README built: revise twice, then approve.
    registry = NodeRegistry()
    registry.register_node("writer", lambda s: {"drafts": s.get("drafts", 0) + 1})
    registry.register_node("reviewer", lambda s: {"decision": "approve" if s["drafts"] >= 3 else "revise"})
    registry.register_node("publisher", lambda s: {"published": True})
    result = run(Orchestrator(registry=registry).execute(graph, {}))
    assert result["drafts"] == 3 and result["published"] is True


def test_core_concepts_graph_block() -> None:
    async def step1_func(state: State) -> dict[str, Any]:
        return {"a": 1}

    def step2_func(state: State) -> dict[str, Any]:
        return {"b": state["a"] + 1}

    namespace: dict[str, Any] = {"Graph": Graph, "step1_func": step1_func, "step2_func": step2_func}
    (block,) = python_blocks("Graph")
    run(run_block(block, namespace))
    result = run(Orchestrator().execute(namespace["graph"], {}))
    assert dict(result) == {"a": 1, "b": 2}


def test_core_concepts_state_block() -> None:
    namespace: dict[str, Any] = {"State": State}
    (block,) = python_blocks("State")
    run(run_block(block, namespace))
    state = namespace["state"]
    assert state.workflow_id == "wf_123"
    assert dict(state) == {"query": "AI trends", "results": [], "new_key": "value"}
    checkpoint = namespace["checkpoint"]
    assert checkpoint["node"] == "current_node" and checkpoint["data"]["query"] == "AI trends"


def test_core_concepts_nodes_block() -> None:
    async def process(value: Any) -> str:
        return f"processed {value}"

    namespace: dict[str, Any] = {"State": State, "process": process}
    (block,) = python_blocks("Nodes")
    run(run_block(block, namespace))
    graph = Graph("nodes").add_node("my_node", namespace["my_node"])
    graph.set_entry_point("my_node").set_finish_point("my_node").compile()
    result = run(Orchestrator().execute(graph, {"input": "x"}))
    assert result["output"] == "processed x"


@pytest.mark.timeout(30)
def test_workers_block_serves_an_orchestrator_in_the_same_process() -> None:
    """The Workers block runs as written: ``await worker.start()`` serves until stopped."""

    async def researcher_func(state: State) -> dict[str, Any]:
        return {"findings": [f"about {state['query']}"]}

    async def writer_func(state: State) -> dict[str, Any]:
        return {"report": f"{len(state['findings'])} findings"}

    namespace: dict[str, Any] = {"Worker": Worker, "researcher_func": researcher_func, "writer_func": writer_func}
    (block,) = python_blocks("Workers")

    async def scenario() -> State:
        serving = asyncio.ensure_future(run_block(block, namespace))
        while "worker" not in namespace or not namespace["worker"]._serving:
            await asyncio.sleep(0.01)
        graph = Graph("via_worker")
        graph.add_node("researcher").add_node("writer")
        graph.set_entry_point("researcher").add_edge("researcher", "writer").set_finish_point("writer").compile()
        result = await Orchestrator().execute(graph, {"query": "AI"})  # no local functions: tasks go to the worker
        await namespace["worker"].stop()
        await serving
        return result

    result = run(scenario())
    assert result["report"] == "1 findings"
    assert namespace["worker"].stats.succeeded == 2


def test_readme_opens_with_the_two_setup_commands() -> None:
    install, test = [source for language, source in code_blocks() if language == "bash"][:2]
    assert "pip install ." in install and "examples/simple_workflow.py" in install
    assert test.strip().splitlines()[-1] == "./scripts/test"


# -- the shell blocks, as a newcomer on a fresh Debian machine types them ---------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"


def fresh_checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder laid out like the checkout, with ``.venv`` (fast profile: the test venv, linked).

    The thorough profile copies the repository's files instead and leaves ``.venv`` to the
    README's own ``python3 -m venv .venv`` and ``pip install`` commands (needs the package index).
    """
    checkout = tmp_path / "checkout"
    if THOROUGH:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split("\n")
        for name in filter(None, files):
            if (ROOT / name).is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, checkout / name)
    else:
        checkout.mkdir()
        for name in ("examples", "benchmarks"):  # copies: ".." inside a linked folder would leave the checkout
            shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        (checkout / ".venv").symlink_to(sys.prefix)
    return checkout


def run_shell(block: str, checkout: pathlib.Path, tmp_path: pathlib.Path, *, timeout: float,
              replace: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = debian_path(tmp_path / "debian-bin", getattr(sys, "_base_executable", sys.executable))
    assert shutil.which("python", path=path) is None, "the test PATH should have no python, as on Debian"
    environment = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    script = shell_script(block, install=THOROUGH, replace=replace)
    return subprocess.run(["bash", "-c", script], cwd=checkout, env={**environment, "PATH": path},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(900 if THOROUGH else 120)
def test_the_first_command_installs_and_runs_the_example_without_python_or_activation(
    tmp_path: pathlib.Path,
) -> None:
    install = [source for language, source in code_blocks() if language == "bash"][0]
    assert re.search(r"(^|[\s;&|(])python\s", install) is None, "Debian has no 'python' command"
    done = run_shell(install, fresh_checkout(tmp_path), tmp_path, timeout=850 if THOROUGH else 100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Report on 'AI trends' with 2 findings" in done.stdout


def test_no_shell_command_in_the_readme_needs_python_on_path_or_an_activated_venv() -> None:
    for language, source in code_blocks():
        if language != "bash":
            continue
        for line in source.splitlines():
            code = line.split("#", 1)[0]
            assert re.search(r"(^|[\s;&|(])(python|pip|distributed-agents|nats-server)\s", code) is None, line
            assert "activate" not in code, line
            assert "pip install distributed-agents" not in code, "not on an index yet: " + line


def test_the_installation_block_installs_from_the_checkout_with_the_extras() -> None:
    blocks = bash_blocks("Installation")
    text = "\n".join(blocks)
    for command in (".venv/bin/pip install .", ".venv/bin/pip install '.[redis]'", "-e '.[dev]'"):
        assert command in text
    # The wheel the README names is the one this version builds.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheel = f"dist/distributed_agents-{version}-py3-none-any.whl"
    assert f"# writes {wheel}" in text and f"'{wheel}[redis]'" in text


@pytest.mark.timeout(1200)
@pytest.mark.skipif(not THOROUGH, reason="installs from the package index: DA_TEST_PROFILE=thorough")
def test_the_installation_blocks_run_as_written_in_a_fresh_checkout(tmp_path: pathlib.Path) -> None:
    checkout = fresh_checkout(tmp_path)
    for block in ["python3 -m venv .venv\n", *bash_blocks("Installation")]:
        done = run_shell(block, checkout, tmp_path, timeout=1100)
        assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run([str(checkout / ".venv/bin/python"), "-c", "import redis, distributed_agents"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
