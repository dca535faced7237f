"""An LLM agent with tools: the model picks a tool, a tool node runs it, until it answers.

    .venv/bin/python examples/llm_agents.py

The graph is the usual tool-calling loop: ``agent`` asks the model for the next step;
if the model asks for a tool, ``tools`` runs it and its result goes back to ``agent``;
when the model answers, the workflow ends. The conversation is kept in ``messages``,
appended to by both nodes (an ``append``/``extend`` reducer).

The model here is ``ScriptedModel``, a stand-in that needs no network or API key: it
answers the one question below by calling the ``search`` and ``calculator`` tools. To
use a real LLM, replace ``call_model`` with your provider's chat API, returning either
``{"tool": name, "arguments": {...}}`` or ``{"answer": text}``. Every node is an
ordinary node, so the same graph runs on workers across machines unchanged
(``DistributedOrchestrator`` + ``distributed-agents worker --app llm_agents:registry``).
"""

from __future__ import annotations

import ast
import asyncio
import operator
from typing import Any

from distributed_agents import Graph, NodeRegistry, Orchestrator, State
from distributed_agents.core.graph import END

registry = NodeRegistry()

# -- tools: plain functions of JSON arguments --------------------------------------------------

FACTS = {
    "population of france": "France has about 68 million inhabitants (2024).",
    "population of germany": "Germany has about 84 million inhabitants (2024).",
}


def search(query: str) -> str:
    """A tiny offline 'search engine'."""
    return FACTS.get(query.strip().lower(), f"no result for {query!r}")


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculator(expression: str) -> str:
    """Evaluate + - * / on numbers (parsed, never eval'ed)."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"unsupported expression: {expression!r}")

    return f"{value(ast.parse(expression, mode='eval').body):g}"


TOOLS = {"search": search, "calculator": calculator}


# -- the model ----------------------------------------------------------------------------------


class ScriptedModel:
    """Stands in for an LLM: decides the next step from the conversation so far."""

    def next_step(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        tool_results = [m["content"] for m in messages if m["role"] == "tool"]
        if len(tool_results) == 0:
            return {"tool": "search", "arguments": {"query": "population of France"}}
        if len(tool_results) == 1:
            return {"tool": "search", "arguments": {"query": "population of Germany"}}
        if len(tool_results) == 2:
            return {"tool": "calculator", "arguments": {"expression": "84 - 68"}}
        return {"answer": f"Germany has about {tool_results[2]} million more inhabitants than France."}


MODEL = ScriptedModel()


async def call_model(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One model call; replace with a real chat-completion API."""
    return MODEL.next_step(messages)


# -- nodes ----------------------------------------------------------------------------------------


@registry.register("agent")
async def agent(state: State) -> dict:
    step = await call_model(list(state.get("messages", [])))
    if "answer" in step:
        return {"messages": [{"role": "assistant", "content": step["answer"]}], "answer": step["answer"],
                "next": "done"}
    return {"messages": [{"role": "assistant", "tool_call": step}], "pending_call": step, "next": "tools"}


@registry.register("tools")
def tools(state: State) -> dict:  # a plain function: it runs in a thread
    call = state["pending_call"]
    tool = TOOLS.get(call["tool"])
    result = tool(**call["arguments"]) if tool is not None else f"unknown tool {call['tool']!r}"
    return {"messages": [{"role": "tool", "name": call["tool"], "content": result}], "tool_calls": 1}


def route(state: dict) -> str:
    return str(state.get("next", "done"))


def build_graph() -> Graph:
    graph = Graph(name="tool_agent", reducers={"messages": "extend", "tool_calls": "add"})
    graph.add_node("agent")
    graph.add_node("tools")
    graph.set_entry_point("agent")
    graph.add_conditional_edge("agent", route, {"tools": "tools", "done": END})
    graph.add_edge("tools", "agent")
    return graph.compile()


async def main() -> None:
    orchestrator = Orchestrator(registry=registry)
    question = "How many more people live in Germany than in France?"
    result = await orchestrator.execute(build_graph(), initial_state={
        "messages": [{"role": "user", "content": question}], "tool_calls": 0})
    for message in result["messages"]:
        if message["role"] == "tool":
            print(f"  tool {message['name']}: {message['content']}")
    print(f"{result['answer']} ({result['tool_calls']} tool calls)")
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main())
