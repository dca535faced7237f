"""``Send`` and ``Command``: control flow a condition or a node returns, as in LangGraph.

``Send(node, arg)`` runs ``node`` once more in the next step with ``arg`` (a JSON
object) as its input instead of the shared state; a condition (or a ``Command``'s
``goto``) returns a list of them to map over a list. ``Command(update=, goto=)``
returned by a node updates the state and routes in one value; ``Command(resume=)``
given to ``Orchestrator.resume`` answers an ``interrupt``.

What a node returns crosses processes as JSON: plain updates stay a dict, a
``Command`` becomes ``{COMMAND_KEY: {"update": {...}, "goto": [...]}}`` and a paused
node ``{INTERRUPT_KEY: {"value": ..., "index": i}}`` (see ``node_output`` and
``read_output``); the step engine reads them back with ``read_output``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from distributed_agents.core.errors import InvalidNodeOutputError, StateNotSerializableError
from distributed_agents.core.quick_init import quick_init
from distributed_agents.core.state import JSON_VALUES, check_values, non_json_problem

__all__ = ["COMMAND_KEY", "INTERRUPT_KEY", "Command", "NodeResult", "ParentCommand", "Send", "command_output", "read_output",
           "update_dict"]

COMMAND_KEY = "__command__"
INTERRUPT_KEY = "__interrupt__"
END_NAME = "__end__"  # graph.END; not imported from graph, which imports this module

N = TypeVar("N")


class Send:
    """Run ``node`` in the next step with ``arg`` as its input (LangGraph's ``Send``).

    ``arg`` must be a dict of JSON values: it is what the node receives as its state
    (``State``), on this machine or in a worker's task payload. Each ``Send`` is its
    own task, with task id ``<workflow>:<run>.<incarnation>:<step>:<node>#<i>`` for the i-th Send to
    that node in the step; the tasks' updates merge through the graph's reducers in
    node declaration order, a node's Sends by their index, after an edge-triggered
    run of the same node.
    """

    __slots__ = ("node", "arg")

    def __init__(self, node: str, arg: Any) -> None:
        self.node = node
        self.arg = arg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Send) and (self.node, self.arg) == (other.node, other.arg)

    def __hash__(self) -> int:
        return hash(self.node)

    def __repr__(self) -> str:
        return f"Send(node={self.node!r}, arg={self.arg!r})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape stored in a frontier: ``{"node": ..., "arg": {...}}``."""
        return {"node": self.node, "arg": self.arg}


class ParentCommand(Exception):
    """Raised by a graph's ``invoke``/``ainvoke`` run inside a node when the graph ended with
    ``Command(graph=Command.PARENT)`` (LangGraph's ``ParentCommand``): the node that called it
    ends as if it had returned ``command`` (its ``update`` and ``goto``, for the node's own graph).
    Not to be caught by node code (``except Exception`` would)."""

    def __init__(self, command: Command[Any]) -> None:
        super().__init__(f"Command.PARENT for the calling node's graph: {command!r}")
        self.command = command


@dataclass(frozen=True)
class Command(Generic[N]):
    """What a node returns to update the state and route in one value (LangGraph's ``Command``).

    ``update``: a dict of state updates, merged through the reducers like a node's
    returned dict. ``goto``: a node name, a ``Send``, or a list of them (``END`` is
    allowed and does nothing): they run in the next step *in addition to* the node's
    static edges and conditional edges, as in LangGraph. A node declared with
    ``add_node(..., destinations=(...))`` (or annotated ``-> Command[Literal["a", "b"]]``)
    may only go to those. ``resume``: the answer to an ``interrupt``, given to
    ``Orchestrator.resume(workflow_id, Command(resume=...))``; a node does not return it.
    ``graph=Command.PARENT``, returned by a node inside a subgraph, ends the subgraph
    and applies ``update`` and ``goto`` in the parent graph, as if the subgraph's node
    in the parent had returned ``Command(update=, goto=)`` (LangGraph's semantics; see
    ``core.subgraphs``). Returned by a node of a graph run on its own, it fails the node.
    """

    graph: str | None = None
    update: Any = None
    resume: Any = None
    goto: Any = field(default=())

    PARENT: ClassVar[str] = "__parent__"

    def goto_list(self) -> list[str | Send]:
        """``goto`` as a list of node names and ``Send``s."""
        if isinstance(self.goto, (str, Send)):
            return [self.goto]
        if isinstance(self.goto, (list, tuple)):
            return list(self.goto)
        raise InvalidNodeOutputError(
            f"Command(goto={self.goto!r}): goto must be a node name, a Send or a list of them")


@quick_init  # made every step
@dataclass(frozen=True)
class NodeResult:
    """A node's output as the engine reads it: updates, routes, or a pause."""

    updates: dict[str, Any]
    goto: list[str | Send]
    interrupt: Mapping[str, Any] | None = None
    parent: bool = False  # a Command(graph=Command.PARENT): updates and goto are for the parent graph

    def __init__(self, updates: dict[str, Any], goto: list[str | Send], interrupt: Mapping[str, Any] | None = None,
                 parent: bool = False) -> None:
        # One per task and step: the fields at once (core.quick_init checks this against them).
        self.__dict__.update({"updates": updates, "goto": goto, "interrupt": interrupt, "parent": parent})


def update_dict(update: Any, where: str) -> dict[str, Any]:
    """A ``Command``'s ``update`` as a dict: a dict as it is (None: empty), or LangGraph's list of
    ``(key, value)`` pairs with one pair per key. ``InvalidNodeOutputError`` naming ``where`` for
    anything else, or a key repeated (two writes of one key: merge them into one value)."""
    if update is None:
        return {}
    if isinstance(update, Mapping):
        return dict(update)
    if isinstance(update, (list, tuple)) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) for pair in update):
        keys = [pair[0] for pair in update]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise InvalidNodeOutputError(
                f"{where}: the list of (key, value) pairs writes {', '.join(map(repr, repeated))} more than once; "
                "give one pair per key (for a list key with a reducer, one list holding every item)")
        return {key: value for key, value in update}
    raise InvalidNodeOutputError(
        f"{where}: update is {type(update).__name__}; it must be a dict of state updates (or a list of (key, value) "
        "pairs)")


def command_output(command: Command[Any], node: str) -> dict[str, Any]:
    """The JSON form of ``command`` returned by ``node`` (see the module docstring).

    ``graph=Command.PARENT`` adds ``"graph": "__parent__"`` to the body. Raises
    ``InvalidNodeOutputError`` for another ``graph``, a ``resume`` (only
    ``Orchestrator.resume`` takes one), an ``update`` that is not a dict, or a bad
    ``goto``; ``StateNotSerializableError`` for a value JSON cannot carry.
    """
    if command.graph is not None and command.graph != Command.PARENT:
        raise InvalidNodeOutputError(
            f"node {node!r} returned Command(graph={command.graph!r}); graph= takes only Command.PARENT (route in "
            "the parent graph of a subgraph), or None for this graph")
    if command.resume is not None:
        raise InvalidNodeOutputError(
            f"node {node!r} returned Command(resume=...); resume answers an interrupt and is given to "
            "Orchestrator.resume(workflow_id, Command(resume=answer)), not returned by a node")
    updates = update_dict(command.update, f"node {node!r} returned Command(update=...)")
    try:
        check_values(updates)
    except StateNotSerializableError as exc:
        raise StateNotSerializableError(f"node {node!r}: Command(update=...): {exc}", key=exc.key) from None
    goto: list[Any] = []
    for target in command.goto_list():
        if isinstance(target, Send):
            goto.append(send_dict(target, f"node {node!r}: Command(goto=...)"))
        elif isinstance(target, str):
            goto.append(target)
        else:
            raise InvalidNodeOutputError(
                f"node {node!r} returned Command(goto=...) with {target!r}; goto takes node names and Sends")
    body: dict[str, Any] = {"update": updates, "goto": goto}
    if command.graph is not None:
        body["graph"] = command.graph
    return {COMMAND_KEY: body}


def send_dict(send: Send, where: str) -> dict[str, Any]:
    """``send.to_dict()``, checked: ``node`` a string, ``arg`` a dict of JSON values.

    Raises ``InvalidNodeOutputError`` (``where`` says who produced the Send) otherwise.
    """
    if not isinstance(send.node, str) or not send.node:
        raise InvalidNodeOutputError(f"{where}: Send node must be a node name, got {send.node!r}")
    if not isinstance(send.arg, Mapping):
        raise InvalidNodeOutputError(
            f"{where}: Send({send.node!r}, ...) argument must be a dict (it becomes the node's state), got "
            f"{type(send.arg).__name__}; wrap it, e.g. Send({send.node!r}, {{'item': value}})")
    arg = dict(send.arg)
    try:
        check_values(arg)
    except StateNotSerializableError as exc:
        raise StateNotSerializableError(f"{where}: Send({send.node!r}, ...) argument: {exc}", key=exc.key) from None
    return {"node": send.node, "arg": arg}


def interrupt_output(value: Any, index: int, node: str) -> dict[str, Any]:
    """The JSON form of a node paused by its ``index``-th ``interrupt(value)``."""
    problem = non_json_problem(value, "value")
    if problem is not None:
        raise StateNotSerializableError(
            f"node {node!r}: the value given to interrupt() is not JSON-serialisable: {problem}. It is stored with "
            f"the workflow and shown to whoever answers, so it holds only {JSON_VALUES}", key="interrupt")
    return {INTERRUPT_KEY: {"value": value, "index": index}}


def read_output(output: Mapping[str, Any] | None) -> NodeResult:
    """A node's output (plain updates, or the forms above) as a ``NodeResult``.

    Sends in ``goto`` come back as ``Send`` objects.
    """
    if not output:
        return NodeResult({}, [])
    if len(output) == 1 and INTERRUPT_KEY in output and isinstance(output[INTERRUPT_KEY], Mapping):
        return NodeResult({}, [], dict(output[INTERRUPT_KEY]))
    if len(output) == 1 and COMMAND_KEY in output and isinstance(output[COMMAND_KEY], Mapping):
        body = output[COMMAND_KEY]
        goto: list[str | Send] = []
        for target in body.get("goto") or ():
            goto.append(Send(target["node"], target.get("arg")) if isinstance(target, Mapping) else str(target))
        return NodeResult(dict(body.get("update") or {}), goto, parent=body.get("graph") == Command.PARENT)
    return NodeResult(dict(output), [])


def is_interrupt_output(output: Mapping[str, Any] | None) -> bool:
    """Whether a task's stored output is a paused node (never reused as a finished result)."""
    return bool(output) and output is not None and len(output) == 1 and INTERRUPT_KEY in output


def goto_names(goto: Sequence[str | Send]) -> list[str]:
    """The node names ``goto`` routes to (Sends by their node), END left out."""
    return [t.node if isinstance(t, Send) else t for t in goto if (t.node if isinstance(t, Send) else t) != END_NAME]
