"""A scripted OpenAI-compatible chat-completions server for the LLM agents example.

Real HTTP on a loopback port (standard library ``http.server`` in a thread) speaking the
parts of the API ``examples/llm_agents.py`` uses: ``POST /v1/chat/completions`` with
``stream: true`` answered as Server-Sent Events (``data: {chunk}\\n\\n`` ... ``data:
[DONE]\\n\\n``), content streamed a word at a time, tool calls streamed as OpenAI sends
them (the id and name first, the JSON arguments split over several deltas, two calls
interleaved by ``index``). Without ``stream`` the same reply comes as one JSON body.

The replies are deterministic: ``reply_for(request)`` picks the answer from the tools
offered (which agent is asking) and the request's last messages (what that agent has
seen so far). ``faults`` holds HTTP statuses served, in order, before any real reply
(by default one 429 and one 500, each with ``retry-after-ms``), so a client must retry.
Everything received is kept in ``requests``, every status sent in ``statuses``.

Run it by hand to try the example without an API key::

    python tests/support/scripted_openai.py --port 8765
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=scripted python examples/llm_agents.py
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DRAFT_1", "DRAFT_2", "FEEDBACK", "NOTES_TEMPLATE", "SEARCHES", "ScriptedOpenAI", "reply_for", "tokens"]

DRAFT_1 = ("Tidal power report: Sihwa Lake in South Korea, at 254 MW, is the largest tidal power station "
           "in the world.")
DRAFT_2 = DRAFT_1 + " It is 14 MW larger than La Rance in France (240 MW), the first one, opened in 1966."
FEEDBACK = "REVISE: compare it with La Rance, the oldest station."
NOTES_TEMPLATE = ("Sihwa Lake (254 MW, 2011) is the largest tidal power station; La Rance (240 MW, 1966) "
                  "was the first. Sihwa Lake is {difference} MW larger.")
SEARCHES = ("La Rance tidal power station capacity", "Sihwa Lake tidal power station capacity")
DIFFERENCE = "254 - 240"


def tokens(text: str) -> list[str]:
    """How the server splits ``text`` into streamed content deltas: a word and its trailing space each."""
    return re.findall(r"\S+\s*", text)


# -- the script -------------------------------------------------------------------------------------


def _tool_names(request: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in request.get("tools") or []}


def _last_assistant_calls(messages: list[dict[str, Any]]) -> list[str]:
    for message in reversed(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            return [call["function"]["name"] for call in message["tool_calls"]]
    return []


def reply_for(request: dict[str, Any]) -> dict[str, Any]:
    """The scripted reply to one chat-completions request: ``{"content": str}`` or ``{"tool_calls": [...]}``.

    Each tool call is ``{"id", "name", "arguments"}`` with ``arguments`` a JSON text.
    """
    messages = request["messages"]
    last = messages[-1]
    names = _tool_names(request)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "route" in names:  # the supervisor: research first, then write
        target = "researcher" if "Research notes: none yet" in last["content"] else "writer"
        return {"tool_calls": [{"id": "call_route", "name": "route", "arguments": json.dumps({"next": target})}]}
    if "search_docs" in names:  # the researcher's tool loop
        if last["role"] == "user":
            return {"tool_calls": [
                {"id": f"call_search_{i}", "name": "search_docs", "arguments": json.dumps({"query": query})}
                for i, query in enumerate(SEARCHES)]}
        if _last_assistant_calls(messages) == ["search_docs", "search_docs"]:
            return {"tool_calls": [{"id": "call_calc", "name": "calculator",
                                    "arguments": json.dumps({"expression": DIFFERENCE})}]}
        return {"content": NOTES_TEMPLATE.format(difference=last["content"])}  # the calculator's result
    if system.startswith("You are the writer"):
        return {"content": DRAFT_2 if "Reviewer feedback" in last["content"] else DRAFT_1}
    if system.startswith("You are the reviewer"):
        draft = last["content"].rpartition("Draft:")[2]
        return {"content": "APPROVE" if "La Rance" in draft else FEEDBACK}
    return {"content": "I have no script for this request."}


# -- the wire format --------------------------------------------------------------------------------


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)]


def stream_chunks(reply: dict[str, Any], model: str, *, indexed: bool = True) -> Iterator[dict[str, Any]]:
    """The SSE chunks of ``reply`` as OpenAI streams them.

    ``indexed=False`` streams each tool call whole in one delta without ``index``, as some
    OpenAI-compatible servers do.
    """
    if "content" in reply:
        yield _chunk(model, {"role": "assistant", "content": ""})
        for token in tokens(reply["content"]):
            yield _chunk(model, {"content": token})
        yield _chunk(model, {}, "stop")
        return
    calls = reply["tool_calls"]
    if not indexed:
        for call in calls:
            yield _chunk(model, {"role": "assistant", "tool_calls": [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}}]})
        yield _chunk(model, {}, "tool_calls")
        return
    yield _chunk(model, {"role": "assistant", "content": None, "tool_calls": [
        {"index": i, "id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": ""}}
        for i, call in enumerate(calls)]})
    pieces = [_split(call["arguments"], 3) for call in calls]
    for round_ in range(max(len(p) for p in pieces)):  # interleaved: call 0's piece, call 1's piece, ...
        for i, parts in enumerate(pieces):
            if round_ < len(parts):
                yield _chunk(model, {"tool_calls": [{"index": i, "function": {"arguments": parts[round_]}}]})
    yield _chunk(model, {}, "tool_calls")


def whole_response(reply: dict[str, Any], model: str) -> dict[str, Any]:
    """``reply`` as one non-streamed chat completion."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if "tool_calls" in reply:
        message["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                                 for c in reply["tool_calls"]]
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if "tool_calls" in reply else "stop"}]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads ``requests``
        pass

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.server.owner._record_status(status)

    def do_POST(self) -> None:
        owner = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        fault = owner._next_fault()
        if fault is not None:
            kind = "rate_limit_exceeded" if fault == 429 else "server_error"
            self._send_json(fault, {"error": {"message": f"scripted {fault}", "type": kind, "code": kind}},
                            {"retry-after-ms": "20"})
            return
        owner._record_request(body)
        reply = owner.reply(body)
        model = body.get("model", "scripted")
        if not body.get("stream"):
            self._send_json(200, whole_response(reply, model))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in stream_chunks(reply, model, indexed=owner.indexed_tool_calls):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()  # one network write per delta, as a real endpoint streams
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        owner._record_status(200)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedOpenAI


class ScriptedOpenAI:
    """The scripted endpoint on ``127.0.0.1:<port>`` (0: a free port), served from a thread.

    ``base_url`` is what ``OPENAI_BASE_URL`` takes (``http://127.0.0.1:<port>/v1``).
    ``faults`` are HTTP statuses served first, one per request, before scripted replies;
    ``reply`` makes the replies (default ``reply_for``).
    Use as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(self, port: int = 0, faults: Iterable[int] = (429, 500),
                 reply: Callable[[dict[str, Any]], dict[str, Any]] = reply_for, indexed_tool_calls: bool = True,
                 ) -> None:
        self.indexed_tool_calls = indexed_tool_calls  # False: each call whole, without "index"
        self.reply = reply  # request body -> {"content": ...} or {"tool_calls": [...]}, as reply_for
        self._lock = threading.Lock()
        self._faults = deque(faults)
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-openai", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedOpenAI:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_fault(self) -> int | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _record_status(self, status: int) -> None:
        with self._lock:
            self.statuses.append(status)

    def tool_calls_seen(self) -> list[tuple[str, dict[str, Any]]]:
        """Each tool call the client sent back in a later request (name, parsed arguments), first seen first."""
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        with self._lock:
            for request in self.requests:
                for message in request["messages"]:
                    for call in message.get("tool_calls") or []:
                        seen.setdefault(call["id"], (call["function"]["name"],
                                                     json.loads(call["function"]["arguments"])))
        return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-faults", action="store_true", help="serve no 429/500 before the replies")
    args = parser.parse_args()
    server = ScriptedOpenAI(args.port, faults=() if args.no_faults else (429, 500)).start()
    print(f"scripted OpenAI-compatible endpoint at {server.base_url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
