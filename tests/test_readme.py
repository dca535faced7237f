"""Every code block of the README's local sections runs as written."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from support.aio import run
from support.readme import code_blocks, python_blocks, run_block

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
