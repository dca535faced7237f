"""A research team of LLM agents: supervisor, researcher with tools, writer, reviewer, human approval.

The graph (state: ``TeamState``, a ``MessagesState`` whose ``messages`` use ``add_messages``)::

    START -> supervisor --Command(goto)--> researcher <-> research_tools   (tool-calling loop)
                 ^                              |
                 +------------------------------+  (research notes)
             supervisor --Command(goto)--> writer -> reviewer --Command(goto)--> writer (at most 3 reviews)
                                                             \\--> approval (interrupt: a human says yes/no) -> END

- ``supervisor`` asks the model (a forced ``route`` tool call) who works next.
- ``researcher`` calls the model with two tools, ``calculator`` (arithmetic parsed with
  ``ast``, never ``eval``) and ``search_docs`` (the text files in ``examples/docs/``);
  ``research_tools`` runs the calls it asked for, each result goes back to it, until it
  answers with its notes.
- ``writer`` drafts the report; ``reviewer`` approves it or sends it back with feedback.
- ``approval`` pauses the workflow with ``interrupt()`` until a person answers.

Every model reply is streamed: each token goes to the caller as it arrives
(``stream_mode="messages"``, through the node's stream writer), also from worker processes.

The model is any OpenAI-compatible chat-completions endpoint (OpenAI, Azure's OpenAI
v1 endpoint, vLLM, Ollama, LM Studio, llama.cpp's server, ...), called with the official
``openai`` client (``pip install 'distributed-agents[llm]'``), configured by environment:

    OPENAI_BASE_URL   the endpoint (default https://api.openai.com/v1)
    OPENAI_API_KEY    its key (required; any text for a local server that checks none)
    OPENAI_MODEL      the model (default gpt-4o-mini); it must support tool calls
    OPENAI_MAX_RETRIES  retries of a request answered 408/409/429/5xx or cut off (default 4)

Retries are the client's own: exponential backoff from 0.5 s to at most 8 s with jitter,
or the server's ``Retry-After``/``retry-after-ms`` when it sends one.

Run it in this process (the ``memory://`` backend):

    OPENAI_API_KEY=sk-... .venv/bin/python examples/llm_agents.py

or with the agents on two worker processes (one serving the researcher and its tools,
one the supervisor, writer, reviewer and approval) on Redis or NATS JetStream; this
process starts them with ``distributed-agents worker --app llm_agents:graph`` from this
folder, runs the workflow as the orchestrator, then stops them:

    .venv/bin/python examples/llm_agents.py --backend-url redis://127.0.0.1:6379/0
    .venv/bin/python examples/llm_agents.py --backend-url nats://127.0.0.1:4222

Without an API key, ``tests/support/scripted_openai.py`` is a scripted endpoint on
your machine (see the README's Examples). ``--approve yes|no`` answers the approval
without asking.
"""

import argparse
import ast
import asyncio
import json
import logging
import math
import operator
import os
import pathlib
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from distributed_agents import END, START, Command, Graph, MessagesState, Orchestrator, interrupt
from distributed_agents.core.errors import ExecutionError
from distributed_agents.core.redaction import redact_url

# The HTTP client logs every request at INFO; the workers' logs keep to the workflow.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)

HERE = pathlib.Path(__file__).resolve().parent
DOCS = HERE / "docs"
MAX_TOOL_ROUNDS = 5  # researcher model calls that may ask for tools before it must answer
MAX_REVIEWS = 3  # reviewer verdicts before the draft goes to the human anyway
MAX_SUPERVISOR_TURNS = 4

# -- tools ------------------------------------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses) as text.

    The expression is parsed with ``ast`` and only those nodes are evaluated (no names,
    calls or attributes: never ``eval``). Raises ``ValueError`` saying what is not allowed.
    """

    def value(node: ast.AST) -> float | int:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError(f"exponent {right} too large in {expression!r} (at most 100)")
            return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))  # type: ignore[no-any-return]
        raise ValueError(f"calculator: {ast.unparse(node)!r} is not allowed in {expression!r}; "
                         "use numbers, + - * / // % ** and parentheses")

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"calculator: {expression!r} is not an arithmetic expression ({exc.msg})") from None
    result = value(tree.body)
    if isinstance(result, float) and math.isfinite(result) and result.is_integer():
        result = int(result)
    return str(result)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def search_docs(query: str, limit: int = 2) -> str:
    """The ``limit`` documents in ``examples/docs/`` sharing most words with ``query``, as text."""
    wanted = _words(query)
    scored = []
    for path in sorted(DOCS.glob("*.txt")):
        text = path.read_text(encoding="utf-8").strip()
        score = len(wanted & _words(text))
        if score:
            scored.append((-score, path.name, text))
    if not scored:
        return f"no document matches {query!r}"
    return "\n\n".join(f"[{name}]\n{text}" for _, name, text in sorted(scored)[:limit])


TOOLS: dict[str, Callable[..., str]] = {"calculator": calculator, "search_docs": search_docs}
TOOL_SCHEMAS = [
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression, e.g. '254 - 240'.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the team's documents on energy; returns matching texts.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]
ROUTE_SCHEMA = {"type": "function", "function": {
    "name": "route", "description": "Choose who works next.",
    "parameters": {"type": "object", "properties": {"next": {"type": "string", "enum": ["researcher", "writer"]}},
                   "required": ["next"]}}}

# -- the model: any OpenAI-compatible chat-completions endpoint ------------------------------------


def llm_settings() -> dict[str, Any]:
    """The endpoint settings from the environment; ``RuntimeError`` naming what is missing."""
    key = os.environ.get("OPENAI_API_KEY")
    base_url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if not key:
        raise RuntimeError(f"OPENAI_API_KEY is not set: the agents call the chat-completions endpoint {base_url} "
                           "(OPENAI_BASE_URL); set the key (any text for a local server that checks none)")
    return {"base_url": base_url, "api_key": key, "model": os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
            "max_retries": int(os.environ.get("OPENAI_MAX_RETRIES") or 4)}


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise RuntimeError("the LLM agents example needs the openai client: pip install 'distributed-agents[llm]'"
                           " (or pip install openai)") from None
    return openai


def _for_api(message: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message as the API takes it (the state's ``id``/``name`` keys left out)."""
    return {key: message[key] for key in ("role", "content", "tool_calls", "tool_call_id") if key in message}


async def chat(messages: list[Mapping[str, Any]], *, agent: str, context: Any = None,
               tools: list[dict[str, Any]] | None = None, tool_choice: Any = None) -> dict[str, Any]:
    """One streamed chat completion; returns the assistant message ``{"role", "content", "tool_calls"?}``.

    Each content delta is emitted to the caller's ``messages`` stream as it arrives
    (``context.emit_message``, metadata ``agent`` and ``pid``); tool-call deltas are
    joined by their ``index`` into whole calls. ``openai.APIError`` subclasses when the
    endpoint still fails after the client's retries.
    """
    openai, settings = _openai(), llm_settings()
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = tools
    if tool_choice is not None:
        options["tool_choice"] = tool_choice
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    async with openai.AsyncOpenAI(base_url=settings["base_url"], api_key=settings["api_key"],
                                  max_retries=settings["max_retries"], timeout=120.0) as client:
        try:
            stream = await client.chat.completions.create(
                model=settings["model"], messages=[_for_api(m) for m in messages], stream=True, **options)
        except openai.APIConnectionError as exc:  # and APITimeoutError: the endpoint is not there
            # One line naming the endpoint (never the key); the client's own message is only "Connection error."
            raise ConnectionError(
                f"cannot reach the chat-completions endpoint {redact_url(settings['base_url'])} (OPENAI_BASE_URL) "
                f"after {settings['max_retries']} retries ({type(exc).__name__}: {exc}); check that the server is "
                "running there, or set OPENAI_BASE_URL to one that is") from None
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                content.append(delta.content)
                if context is not None:
                    context.emit_message(delta.content, metadata={"agent": agent, "pid": os.getpid()})
            for part in delta.tool_calls or []:
                # OpenAI numbers each call's deltas by index; a server that sends each call whole
                # may leave the index out: then a delta with an id starts a new call.
                index = part.index if part.index is not None else (
                    len(calls) if part.id or not calls else max(calls))
                call = calls.setdefault(index, {"id": "", "type": "function",
                                                "function": {"name": "", "arguments": ""}})
                if part.id:
                    call["id"] = part.id
                if part.function is not None:
                    call["function"]["name"] += part.function.name or ""
                    call["function"]["arguments"] += part.function.arguments or ""
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        reply["tool_calls"] = [calls[index] for index in sorted(calls)]
        for number, call in enumerate(reply["tool_calls"]):
            call["id"] = call["id"] or f"call_{number}"  # each tool result must name its call
    return reply


# -- state and nodes ---------------------------------------------------------------------------------


class TeamState(MessagesState):
    task: str
    notes: str
    draft: str
    feedback: str
    report: str
    approved: bool
    reviews: Annotated[int, operator.add]
    research_rounds: Annotated[int, operator.add]
    supervisor_turns: Annotated[int, operator.add]


SUPERVISOR = ("You are the supervisor of a research team. Call the route tool: 'researcher' while facts are "
              "missing, 'writer' once the research notes answer the task.")
RESEARCHER = ("You are the researcher. Use search_docs to find facts and calculator for any arithmetic; "
              "then answer with short research notes citing the numbers.")
WRITER = "You are the writer. Write a short, factual report for the task from the research notes."
REVIEWER = ("You are the reviewer. Reply APPROVE if the draft answers the task accurately; otherwise reply "
            "REVISE: followed by what to change.")


async def supervisor(state: Mapping[str, Any]) -> Command:
    """Route to the researcher or the writer, as the model decides (a forced ``route`` call)."""
    notes = state.get("notes") or ""
    if state.get("supervisor_turns", 0) >= MAX_SUPERVISOR_TURNS:
        return Command(goto="writer")
    prompt = f"Task: {state['task']}\nResearch notes: {notes or 'none yet'}"
    reply = await chat([{"role": "system", "content": SUPERVISOR}, {"role": "user", "content": prompt}],
                       agent="supervisor", tools=[ROUTE_SCHEMA],
                       tool_choice={"type": "function", "function": {"name": "route"}})
    target = "researcher" if not notes else "writer"  # if the model answers without the tool
    for call in reply.get("tool_calls", []):
        try:
            chosen = json.loads(call["function"]["arguments"] or "{}").get("next")
        except json.JSONDecodeError:
            chosen = None
        if chosen in ("researcher", "writer"):
            target = chosen
    return Command(update={"supervisor_turns": 1}, goto=target)


def _research_thread(messages: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The researcher's side of the conversation: the task, its own turns and its tool results."""
    return [m for m in messages if m.get("role") == "tool" or m.get("name") in (None, "researcher")]


async def researcher(state: Mapping[str, Any], context: Any) -> Command:
    """One model call with the tools: run the tools it asks for, or take its answer as the notes."""
    thread = [{"role": "system", "content": RESEARCHER}, *_research_thread(state["messages"])]
    reply = await chat(thread, agent="researcher", context=context, tools=TOOL_SCHEMAS)
    reply["name"] = "researcher"
    if reply.get("tool_calls") and state.get("research_rounds", 0) < MAX_TOOL_ROUNDS:
        return Command(update={"messages": [reply], "research_rounds": 1}, goto="research_tools")
    reply.pop("tool_calls", None)  # past the limit: no call is left without its result
    notes = reply["content"] or f"(no notes: the research stopped after {MAX_TOOL_ROUNDS} tool rounds)"
    return Command(update={"messages": [reply], "notes": notes}, goto="supervisor")


def research_tools(state: Mapping[str, Any]) -> dict[str, Any]:
    """Run every tool call of the researcher's last message; each result is a ``tool`` message."""
    results = []
    for call in state["messages"][-1].get("tool_calls", []):
        name = call["function"]["name"]
        try:
            arguments = json.loads(call["function"]["arguments"] or "{}")
            if name not in TOOLS:
                raise ValueError(f"no tool named {name!r}; the tools are {sorted(TOOLS)}")
            result = TOOLS[name](**arguments)
        except (ValueError, TypeError, ArithmeticError) as exc:  # the model reads the error and tries again
            result = f"error: {exc}"
        results.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": result})
    return {"messages": results}


async def writer(state: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Draft the report from the notes (and the reviewer's feedback on the last draft, if any)."""
    prompt = f"Task: {state['task']}\n\nResearch notes:\n{state.get('notes', '')}"
    if state.get("feedback"):
        prompt += f"\n\nReviewer feedback on your previous draft:\n{state['feedback']}\n\nPrevious draft:\n{state['draft']}"
    reply = await chat([{"role": "system", "content": WRITER}, {"role": "user", "content": prompt}],
                       agent="writer", context=context)
    draft = reply["content"] or ""
    return {"draft": draft, "messages": [{"role": "assistant", "name": "writer", "content": draft}]}


async def reviewer(state: Mapping[str, Any], context: Any) -> Command:
    """Approve the draft (on to the human) or send it back to the writer, at most ``MAX_REVIEWS`` times."""
    prompt = f"Task: {state['task']}\n\nResearch notes:\n{state.get('notes', '')}\n\nDraft:\n{state['draft']}"
    reply = await chat([{"role": "system", "content": REVIEWER}, {"role": "user", "content": prompt}],
                       agent="reviewer", context=context)
    verdict = (reply["content"] or "").strip()
    message = {"role": "assistant", "name": "reviewer", "content": verdict}
    if verdict.upper().startswith("APPROVE") or state.get("reviews", 0) + 1 >= MAX_REVIEWS:
        return Command(update={"reviews": 1, "messages": [message]}, goto="approval")
    return Command(update={"reviews": 1, "feedback": verdict, "messages": [message]}, goto="writer")


def approval(state: Mapping[str, Any]) -> dict[str, Any]:
    """Pause for a person: ``interrupt`` returns their answer when the workflow is resumed."""
    answer = interrupt({"question": "Publish this report?", "draft": state["draft"], "reviews": state["reviews"]})
    approved = answer is True or str(answer).strip().lower() in ("y", "yes", "approve", "approved")
    return {"approved": approved, "report": state["draft"] if approved else ""}


def build_graph() -> Graph:
    graph = Graph("research_team", state_schema=TeamState)
    graph.add_node("supervisor", supervisor, destinations=["researcher", "writer"])
    graph.add_node("researcher", researcher, destinations=["research_tools", "supervisor"])
    graph.add_node("research_tools", research_tools)
    graph.add_node("writer", writer)
    graph.add_node("reviewer", reviewer, destinations=["writer", "approval"])
    graph.add_node("approval", approval)
    graph.add_edge(START, "supervisor")
    graph.add_edge("research_tools", "researcher")
    graph.add_edge("writer", "reviewer")
    graph.add_edge("approval", END)
    return graph.compile()


graph = build_graph()  # workers serve it: distributed-agents worker --app llm_agents:graph

# -- running it ----------------------------------------------------------------------------------------

TokenSink = Callable[[str, str, Mapping[str, Any]], None]
Ask = Callable[[Mapping[str, Any]], Any]


async def run_team(orchestrator: Orchestrator, task: str, *, ask: Ask, on_token: TokenSink,
                   workflow_id: str | None = None) -> dict[str, Any]:
    """Run the team on ``task``, streaming; return the final state.

    ``on_token(agent, token, metadata)`` gets every streamed model token as it arrives;
    ``ask(value)`` is called at the approval interrupt with its value (``question``,
    ``draft``, ``reviews``) and returns the answer (``"yes"`` publishes).
    """
    workflow_id = workflow_id or f"research-{uuid.uuid4().hex[:8]}"
    payload: Any = {"task": task, "messages": [{"role": "user", "content": task}]}
    while True:
        pending: list[Any] = []
        async for mode, chunk in orchestrator.astream(graph, payload, workflow_id=workflow_id,
                                                      stream_mode=["messages", "updates"]):
            if mode == "messages":
                token, metadata = chunk
                on_token(str(metadata.get("agent", metadata["node"])), token, metadata)
            elif "__interrupt__" in chunk:
                pending = list(chunk["__interrupt__"])
        if not pending:
            return dict(await orchestrator.get_result(workflow_id))
        payload = Command(resume=ask(pending[0]["value"]))


class Console:
    """Prints tokens as they stream, a header when another agent speaks; remembers their pids."""

    def __init__(self) -> None:
        self.agent: str | None = None
        self.pids: set[int] = set()

    def __call__(self, agent: str, token: str, metadata: Mapping[str, Any]) -> None:
        if agent != self.agent:
            print(f"\n[{agent}] ", end="")
            self.agent = agent
        print(token, end="", flush=True)
        if "pid" in metadata:
            self.pids.add(int(metadata["pid"]))


def asker(approve: str | None) -> Ask:
    def ask(value: Mapping[str, Any]) -> Any:
        print(f"\n\n--- approval needed after {value['reviews']} review(s) ---\n{value['draft']}\n")
        if approve is not None:
            print(f"{value['question']} {approve}")
            return approve
        try:
            return input(f"{value['question']} [y/N] ")
        except EOFError:
            return "no"
    return ask


WORKER_GROUPS = ("researcher,research_tools", "supervisor,writer,reviewer,approval")


async def main_async(args: argparse.Namespace) -> None:
    llm_settings()  # fail at once, not in a worker, without a key
    _openai()
    console = Console()
    workers: list[subprocess.Popen[bytes]] = []
    if args.backend_url:
        from distributed_agents.distributed import DistributedOrchestrator

        for i, node_types in enumerate(WORKER_GROUPS):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", "llm_agents:graph",
                 "--backend-url", args.backend_url, "--prefix", args.prefix, "--node-types", node_types,
                 "--worker-id", f"agents-{i}-{os.getpid()}"], cwd=HERE))
        orchestrator: Orchestrator = DistributedOrchestrator(backend_url=args.backend_url, prefix=args.prefix,
                                                             worker_timeout=120)
    else:
        orchestrator = Orchestrator()
    try:
        result = await run_team(orchestrator, args.task, ask=asker(args.approve), on_token=console)
        await orchestrator.close()
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)  # they drain and deregister
        for process in workers:
            process.wait(timeout=30)
    tools = sum(1 for m in result["messages"] if m.get("role") == "tool")
    if result.get("approved"):
        print(f"\nFinal report ({result['reviews']} review(s), {tools} tool call(s)):\n{result['report']}")
    else:
        print(f"\nThe report was not approved ({result['reviews']} review(s), {tools} tool call(s)).")
    if workers:
        print(f"tokens streamed from worker pids {sorted(console.pids)}; orchestrator pid {os.getpid()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Which tidal power station is the largest, and by how many MW does it "
                                          "beat La Rance?")
    parser.add_argument("--backend-url", default=os.environ.get("BACKEND_URL"),
                        help="redis://... or nats://...: run the agents on two worker processes (default: "
                             "in this process)")
    parser.add_argument("--prefix", default="llm_agents", help="key/subject prefix on the backend")
    parser.add_argument("--approve", choices=("yes", "no"), default=None,
                        help="answer the approval without asking")
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args))
    except RuntimeError as exc:
        if "OPENAI_API_KEY" in str(exc) or "pip install" in str(exc):
            sys.exit(f"error: {exc}")
        raise
    except ExecutionError as exc:  # a node failed (the endpoint unreachable, say): its message, not the engine's stack
        sys.exit(f"error: {str(exc).splitlines()[0]}")


if __name__ == "__main__":
    main()
