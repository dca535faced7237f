"""Nodes and graphs of the chaos suite, served by real worker processes via the CLI.

Every node is a pure function of the state it is given (plus a short sleep, so that
faults land while tasks are in flight), so a workflow's final state depends only on
its graph and inputs: a run with faults must end in exactly the state of a run without.
Three graphs mix the shapes the engine has to get right:

* ``chaos_chain``: four nodes in a row;
* ``chaos_fanout``: ``split`` fans out to three parallel branches whose writes meet in
  reducers (``extend``, ``add``, ``merge``), then a join (``gather``) waits for all three;
* ``chaos_review``: the writer/reviewer revise loop, ``revisions`` rounds long;
* ``chaos_map``: ``mapper`` sends one ``mapped`` task per item (``Send``), whose results
  meet in reducers before ``reduce``: faults land mid-map;
* ``chaos_approval``: ``plan`` sends one ``review`` task per item; every other one calls
  ``interrupt()``, so the workflow pauses mid-map with the other reviews' writes pending,
  waiting for answers (``answers_for``) that another process gives later, by id;
* ``chaos_nested``: ``prep``, then ``inner`` - a compiled three-node graph used as a
  node (a child workflow whose nodes run on the workers) - then ``post``;
* ``chaos_fallback``: ``flaky`` always fails (two attempts), its ``on_error`` handler
  ``fallback`` takes over, then ``finish``: the handled failure must leave no dead letter.

``DA_CHAOS_NODE_DELAY`` (seconds, default 0.15) is how long each node sleeps.

Side effects: with ``DA_CHAOS_EFFECTS=DIR`` every node, once it returns, applies one
side effect to an "external system" (a directory) through its
``NodeContext.idempotency_key``: the system keeps the first effect per key and ignores
repeats, as a payment API with idempotency keys does. ``read_effects(DIR)`` lists the
effects that took; the suite checks that each committed step's node (per ``Send``
item) has at most one, i.e. that every re-delivery of a task carries the same key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from typing import Any

from distributed_agents import Graph, NodeContext, NodeRegistry, RetryPolicy, Send, State, interrupt

# The node functions as written; ``registry`` (built at the end) serves each wrapped by ``_with_effect``.
_plain = NodeRegistry()

# chaos_approval first: its workflows pause early, so an orchestrator kill need not wait for one.
GRAPH_NAMES = ("chaos_approval", "chaos_chain", "chaos_fanout", "chaos_review", "chaos_map", "chaos_nested",
               "chaos_fallback")


def _delay() -> float:
    return float(os.environ.get("DA_CHAOS_NODE_DELAY", "0.15"))


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _chain_node(name: str) -> Any:
    async def node(state: State) -> dict[str, Any]:
        await asyncio.sleep(_delay())
        return {"value": _digest(name, state["value"]), "trail": [name]}
    node.__name__ = name
    return node


for _name in ("c1", "c2", "c3", "c4"):
    _plain.register_node(_name, _chain_node(_name))


@_plain.register("split")
async def split(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"seed_text": _digest("split", state["value"]), "trail": ["split"]}


def _branch(name: str, weight: int) -> Any:
    async def node(state: State) -> dict[str, Any]:
        await asyncio.sleep(_delay())
        part = _digest(name, state["seed_text"])
        return {"parts": [part], "total": weight * len(state["seed_text"]), "by_branch": {name: part},
                "trail": [name]}
    node.__name__ = name
    return node


for _name, _weight in (("b1", 1), ("b2", 10), ("b3", 100)):
    _plain.register_node(_name, _branch(_name, _weight))


@_plain.register("gather")
async def gather(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"value": _digest("gather", *state["parts"], state["total"]), "trail": ["gather"]}


@_plain.register("writer")
async def writer(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    revision = state.get("revision", 0) + 1
    return {"revision": revision, "draft": _digest("draft", state["value"], revision), "trail": ["writer"]}


@_plain.register("reviewer")
async def reviewer(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    decision = "approve" if state["revision"] >= state["revisions"] else "revise"
    return {"decision": decision, "trail": ["reviewer"]}


@_plain.register("publisher")
async def publisher(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"published": state["draft"], "trail": ["publisher"]}


def _after_review(state: Any) -> str:
    return str(state["decision"])


@_plain.register("mapper")
async def mapper(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"items": [_digest("item", state["value"], i) for i in range(state["width"])], "trail": ["mapper"]}


@_plain.register("mapped")
async def mapped(state: State) -> dict[str, Any]:  # state is the Send's argument
    await asyncio.sleep(_delay())
    return {"parts": [_digest("mapped", state["item"])], "total": len(state["item"])}


@_plain.register("reduce")
async def reduce(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"value": _digest("reduce", *state["parts"], state["total"]), "trail": ["reduce"]}


def _map_items(state: Any) -> list[Send]:
    return [Send("mapped", {"item": item}) for item in state["items"]]


@_plain.register("plan")
async def plan(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"items": [_digest("ask", state["value"], i) for i in range(state["width"])], "trail": ["plan"]}


@_plain.register("review")
async def review(state: State) -> dict[str, Any]:  # state is the Send's argument
    await asyncio.sleep(_delay())
    if state["ask"]:
        # Runs again from the start once answered (the sleep too): the answer is all that differs.
        verdict = interrupt({"item": state["item"]})
        return {"approved": [_digest("approved", state["item"], verdict)]}
    return {"approved": [_digest("auto", state["item"])]}


@_plain.register("conclude")
async def conclude(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    return {"value": _digest("conclude", *state["approved"]), "trail": ["conclude"]}


def _review_items(state: Any) -> list[Send]:
    return [Send("review", {"item": item, "ask": i % 2 == 0}) for i, item in enumerate(state["items"])]


def answers_for(interrupts: list[dict[str, Any]]) -> dict[str, str]:
    """The answer to each pending interrupt of a ``chaos_approval`` workflow, by interrupt id (a pure function)."""
    return {str(pause["id"]): _digest("verdict", pause["value"]["item"]) for pause in interrupts}


for _name in ("prep", "sub_a", "sub_b", "sub_c", "post"):
    _plain.register_node(_name, _chain_node(_name))


def _into_inner(state: Any) -> dict[str, Any]:
    return {"value": state["value"], "trail": []}


def _out_of_inner(final: Any) -> dict[str, Any]:
    return {"value": final["value"], "inner": final["trail"]}


for _name in ("prepare", "finish"):
    _plain.register_node(_name, _chain_node(_name))


@_plain.register("flaky")
async def flaky(state: State) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    raise ConnectionError(f"upstream for {state['value']} is down")


@_plain.register("fallback")
async def fallback(state: State) -> dict[str, Any]:  # state is {"error": {...}, "state": <flaky's input>}
    await asyncio.sleep(_delay())
    # Only what every run agrees on: a killed worker's lease expiry may change the attempts and the message.
    return {"value": _digest("fallback", state["state"]["value"], state["error"]["node"]), "trail": ["fallback"]}


def _apply_effect(directory: str, context: NodeContext, state: Any) -> None:
    """Apply the node's side effect once per idempotency key (a repeat with a known key is a no-op).

    Written to a temporary file, then hard-linked to the key's name: the link fails if the
    key is known, and a SIGKILL between the two steps leaves only a temporary file, so an
    effect either took (with its whole record) or did not.
    """
    record = {"key": context.idempotency_key, "workflow_id": context.workflow_id, "step": context.step,
              "node": context.node, "item": state.get("item", "") if isinstance(state, dict) else ""}
    name = hashlib.sha256(context.idempotency_key.encode()).hexdigest()[:40]
    temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    with open(temporary, "w") as out:
        json.dump(record, out)
    try:
        os.link(temporary, os.path.join(directory, name))
    except FileExistsError:
        pass  # the key is known: this is a repeat, and the system ignores it
    finally:
        os.unlink(temporary)


def read_effects(directory: str) -> list[dict[str, Any]]:
    """Every side effect that took (one record per idempotency key)."""
    found = []
    for name in os.listdir(directory):
        if not name.startswith("."):
            with open(os.path.join(directory, name)) as record:
                found.append(json.load(record))
    return found


def _with_effect(func: Any) -> Any:
    async def node(state: State, context: NodeContext) -> Any:
        result = await func(state)  # an interrupt() or a failure raises before the effect
        directory = os.environ.get("DA_CHAOS_EFFECTS")
        if directory:
            _apply_effect(directory, context, state)
        return result
    node.__name__ = getattr(func, "__name__", "node")
    return node


registry = NodeRegistry()
for _type in sorted(_plain):
    registry.register_node(_type, _with_effect(_plain.get(_type)))


def build_graphs() -> dict[str, Graph]:
    """The compiled graphs by name (nodes run wherever their type is served)."""
    chain = Graph("chaos_chain", reducers={"trail": "extend"})
    for name in ("c1", "c2", "c3", "c4"):
        chain.add_node(name)
    chain.set_entry_point("c1").add_edge("c1", "c2").add_edge("c2", "c3").add_edge("c3", "c4").set_finish_point("c4")

    fanout = Graph("chaos_fanout", reducers={"trail": "extend", "parts": "extend", "total": "add",
                                             "by_branch": "merge"})
    for name in ("split", "b1", "b2", "b3", "gather"):
        fanout.add_node(name)
    fanout.set_entry_point("split")
    for name in ("b1", "b2", "b3"):
        fanout.add_edge("split", name)
    fanout.add_edge(["b1", "b2", "b3"], "gather").set_finish_point("gather")

    review = Graph("chaos_review", reducers={"trail": "extend"})
    for name in ("writer", "reviewer", "publisher"):
        review.add_node(name)
    review.set_entry_point("writer").add_edge("writer", "reviewer")
    review.add_conditional_edge("reviewer", _after_review, {"approve": "publisher", "revise": "writer"})
    review.set_finish_point("publisher")

    mapping = Graph("chaos_map", reducers={"trail": "extend", "parts": "extend", "total": "add"})
    for name in ("mapper", "mapped", "reduce"):
        mapping.add_node(name)
    mapping.set_entry_point("mapper").add_conditional_edge("mapper", _map_items, ["mapped"])
    mapping.add_edge("mapped", "reduce").set_finish_point("reduce")

    approval = Graph("chaos_approval", reducers={"trail": "extend", "approved": "extend"})
    for name in ("plan", "review", "conclude"):
        approval.add_node(name)
    approval.set_entry_point("plan").add_conditional_edge("plan", _review_items, ["review"])
    approval.add_edge("review", "conclude").set_finish_point("conclude")

    inner = Graph("chaos_inner", reducers={"trail": "extend"})
    for name in ("sub_a", "sub_b", "sub_c"):
        inner.add_node(name)
    inner.set_entry_point("sub_a").add_edge("sub_a", "sub_b").add_edge("sub_b", "sub_c").set_finish_point("sub_c")
    nested = Graph("chaos_nested", reducers={"trail": "extend"})
    nested.add_node("prep").add_node("inner", inner.compile(), input=_into_inner, output=_out_of_inner)
    nested.add_node("post")
    nested.set_entry_point("prep").add_edge("prep", "inner").add_edge("inner", "post").set_finish_point("post")

    handled = Graph("chaos_fallback", reducers={"trail": "extend"})
    handled.add_node("prepare").add_node("flaky", retry=RetryPolicy(max_attempts=2, initial_interval=0.1, jitter=False, retry_on=Exception),
                                         on_error="fallback")
    handled.add_node("fallback").add_node("finish")
    handled.set_entry_point("prepare").add_edge("prepare", "flaky").add_edge("flaky", "finish")
    handled.add_edge("fallback", "finish").set_finish_point("finish")
    return {g.name: g.compile() for g in (chain, fanout, review, mapping, approval, nested, handled)}


def workflow_spec(index: int) -> tuple[str, dict[str, Any]]:
    """Graph name and initial state of the ``index``-th workflow of a run (a pure function)."""
    graph = GRAPH_NAMES[index % len(GRAPH_NAMES)]
    state: dict[str, Any] = {"value": f"input-{index}", "trail": []}
    if graph == "chaos_review":
        state["revisions"] = 1 + index % 3
    if graph == "chaos_map":
        state["width"] = 3 + index % 5
    if graph == "chaos_approval":
        state["width"] = 3 + index % 4
    return graph, state


NODE_TYPES = ("c1", "c2", "c3", "c4", "split", "b1", "b2", "b3", "gather", "writer", "reviewer", "publisher",
              "mapper", "mapped", "reduce", "plan", "review", "conclude", "prep", "sub_a", "sub_b", "sub_c", "post",
              "prepare", "flaky", "fallback", "finish")
