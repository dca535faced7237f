"""Map-reduce and a human approval: Send one task per source, then pause for a reviewer.

``plan`` lists sources; a ``Send`` per source runs ``summarise`` on that source alone;
the summaries meet in a reducer; ``review`` pauses with ``interrupt()`` until a human
answers, and routes with ``Command(goto=)``: a rejection sends the draft back for one
more source. The "human" here is a scripted answer given to ``resume``; in a real
deployment any process on the same backend could give it, hours later.

Run: .venv/bin/python examples/human_in_the_loop.py
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, Literal, TypedDict

from distributed_agents import END, START, Command, Graph, Orchestrator, Send, State, interrupt


class Research(TypedDict):
    topic: str
    sources: list[str]
    summaries: Annotated[list[str], operator.add]
    report: str
    approved: bool


def plan(state: State) -> dict[str, Any]:
    return {"sources": [f"{state['topic']} survey", f"{state['topic']} dataset", f"{state['topic']} blog"]}


def fan_out(state: State) -> list[Send]:
    return [Send("summarise", {"source": source}) for source in state["sources"]]


def summarise(state: State) -> dict[str, Any]:  # state is the Send's argument: one source
    return {"summaries": [f"notes on {state['source']}"]}


def write(state: State) -> dict[str, Any]:
    return {"report": f"Report on {state['topic']} from {len(state['summaries'])} sources"}


def review(state: State) -> Command[Literal["publish", "more"]]:
    # Runs again from here when resumed: nothing above has side effects.
    verdict = interrupt({"question": "Publish this report?", "report": state["report"]})
    return Command(update={"approved": verdict == "yes"}, goto="publish" if verdict == "yes" else "more")


def more(state: State) -> dict[str, Any]:
    return {"summaries": [f"notes on {state['topic']} interviews"]}


def publish(state: State) -> dict[str, Any]:
    return {"report": state["report"] + " (published)"}


def build() -> Graph:
    graph = Graph("human_in_the_loop", state_schema=Research)
    graph.add_node("plan", plan).add_node("summarise", summarise).add_node("write", write)
    graph.add_node("review", review).add_node("more", more).add_node("publish", publish)
    graph.add_edge(START, "plan").add_conditional_edge("plan", fan_out, ["summarise"])
    graph.add_edge("summarise", "write").add_edge("write", "review")
    graph.add_edge("more", "write").add_edge("publish", END)
    return graph.compile()


async def main() -> None:
    orchestrator = Orchestrator()
    graph = build()
    state = await orchestrator.execute(graph, {"topic": "tides"}, workflow_id="research-1")
    answers = iter(["no", "yes"])  # the scripted reviewer: one more source, then publish
    while "__interrupt__" in state:
        question = state["__interrupt__"][0]["value"]
        answer = next(answers)
        print(f"{question['question']} {question['report']!r} -> {answer}")
        state = await orchestrator.resume("research-1", Command(resume=answer))
    print(state["report"])
    await orchestrator.close()


if __name__ == "__main__":
    asyncio.run(main())
