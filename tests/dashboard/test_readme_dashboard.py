"""The README's Dashboard example runs as written (on memory://, on a free port) and serves the workflow."""

from __future__ import annotations

from typing import Any

import httpx

from distributed_agents import Graph, Orchestrator, State
from support.aio import run
from support.readme import python_blocks, run_block


def write(state: State) -> dict[str, Any]:
    return {"text": f"about {state['topic']}"}


def test_the_readme_dashboard_block_serves_the_workflow_it_runs() -> None:
    (block,) = python_blocks("Dashboard")
    assert "port=8080" in block
    graph = Graph("readme").add_node("write", write).set_entry_point("write").set_finish_point("write").compile()
    orchestrator = Orchestrator()
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        def show(*parts: Any) -> None:  # the block prints the URL: read the page it names, while it serves
            seen["url"] = parts[-1]

        namespace: dict[str, Any] = {"orchestrator": orchestrator, "graph": graph, "print": show}
        source = block.replace("port=8080", "port=0").replace(
            "    await orchestrator.execute(graph, {\"topic\": \"tides\"})",
            "    await orchestrator.execute(graph, {\"topic\": \"tides\"}, workflow_id=\"wf-readme\")\n"
            "    async with httpx.AsyncClient(base_url=board.url) as http:\n"
            "        seen['page'] = (await http.get('/workflows/wf-readme')).text")
        waits = '    await asyncio.to_thread(input, "open the URL above; press Enter to stop the dashboard\\n")'
        assert waits in source  # the example keeps the dashboard up for its reader
        source = source.replace(waits, "")
        namespace.update(httpx=httpx, seen=seen)
        await run_block(source, namespace)
        await orchestrator.close()

    run(scenario())
    assert seen["url"].startswith("http://127.0.0.1:")
    assert "completed" in seen["page"] and 'data-node="write"' in seen["page"]
