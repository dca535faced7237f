"""``interrupt(value)``: pause a workflow inside a node until a human (or anything) answers.

How it works (as in LangGraph):

* The first time a node calls ``interrupt(value)`` in a step, the call raises
  ``GraphInterrupt``; the node's other writes are discarded, the other nodes of the
  step keep theirs (as pending writes), and the workflow is committed as
  ``interrupted`` with ``value`` in ``get_workflow_status(id).interrupts`` (each an
  ``Interrupt`` with ``id``, ``node`` and ``value``). ``execute`` returns the state so
  far with the pending interrupts under ``"__interrupt__"``.
* ``Orchestrator.resume(workflow_id, Command(resume=answer))`` (or ``resume=answer``)
  runs the interrupted node again **from its start**; this time ``interrupt`` returns
  ``answer`` instead of raising. Code before the ``interrupt`` call therefore runs
  again: keep side effects after it, or make them idempotent (``NodeContext.idempotency_key``).
* A node may call ``interrupt`` several times: answers are matched by the order of the
  calls (the first call gets the first answer, and so on), so the calls must happen
  in the same order on every run. Each answer resumes one more call; the node pauses
  again at the next unanswered one.
* Several interrupts pending at once (parallel nodes, several Sends) are answered by
  id: ``Command(resume={interrupt_id: answer, ...})``; unanswered ones pause again.

Interrupt ids are ``"<step>:<task>:<index>"`` (``task`` is the node name, or
``node#i`` for the i-th ``Send`` to it): the same pause always has the same id.

Static breakpoints (``interrupt_before`` / ``interrupt_after``) pause the workflow
before or after a step that runs the named nodes; ``resume(workflow_id)`` continues. As
in LangGraph, a resume continues past the pause it answers: the step it runs first never
pauses before it (so a pause after ``x`` is not followed by a second pause before the
next node at the same point), also when ``update_state`` edited the state in between;
the breakpoints of the steps after it pause as usual.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed_agents.core.errors import ExecutionError

__all__ = ["GraphInterrupt", "Interrupt", "interrupt", "interrupt_id", "resume_scope"]


class GraphInterrupt(Exception):
    """Raised by ``interrupt()`` to pause the node; the framework catches it.

    Do not catch it in a node (``except Exception`` would): the node would run on as
    if it had an answer it does not have.
    """

    def __init__(self, value: Any, index: int) -> None:
        super().__init__(f"interrupt {index}: {value!r}")
        self.value = value
        self.index = index


@dataclass(frozen=True)
class Interrupt:
    """A pending pause: ``id`` to answer it by, the ``node`` that paused, its ``value``.

    ``kind`` is ``"interrupt"`` for ``interrupt(value)``, ``"before"``/``"after"`` for a
    static breakpoint (``value`` None: ``resume(workflow_id)`` continues, no answer).
    ``task`` is the node name, or ``node#i`` for the i-th Send to it.

    A pause inside a subgraph (see ``core.subgraphs``) surfaces at its parent with
    ``task`` the subgraph node's task, ``subgraph`` the pause's id inside the child
    workflow and ``namespace`` the subgraph tasks it is nested in (``"<node>:<task id>"``,
    outermost first); ``node`` is the node that paused, inside the subgraph.
    """

    id: str
    node: str
    value: Any = None
    kind: str = "interrupt"
    task: str = ""
    index: int = 0
    subgraph: str = ""
    namespace: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        """``pause["id"]``, ``pause["value"]``, ...: read like the dicts ``execute()`` returns under ``__interrupt__``."""
        if key in _FIELDS:
            value = getattr(self, key)
            return list(value) if key == "namespace" else value
        raise KeyError(f"{key!r}: an interrupt has {', '.join(map(repr, _FIELDS))}")

    def get(self, key: str, default: Any = None) -> Any:
        """``pause[key]``, or ``default`` for a key an interrupt does not have."""
        return self[key] if key in _FIELDS else default

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, as stored in the frontier."""
        data = {"id": self.id, "node": self.node, "value": self.value, "kind": self.kind,
                "task": self.task or self.node, "index": self.index}
        if self.subgraph:  # only then, so other pauses keep their stored shape
            data.update(subgraph=self.subgraph, namespace=list(self.namespace))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interrupt:
        """Rebuild from ``to_dict`` output."""
        return cls(str(data["id"]), str(data.get("node", "")), data.get("value"), str(data.get("kind", "interrupt")),
                   str(data.get("task") or data.get("node", "")), int(data.get("index", 0)),
                   str(data.get("subgraph") or ""), tuple(str(n) for n in data.get("namespace") or ()))


_FIELDS = ("id", "node", "value", "kind", "task", "index", "subgraph", "namespace")


class PendingInterrupt(dict[str, Any]):
    """A pending interrupt as ``execute()`` returns it under ``"__interrupt__"``: a plain dict
    (``{"id", "node", "value", "kind"}``, JSON as it is) also readable as attributes,
    ``pause.id`` / ``pause.value``, like LangGraph's ``Interrupt`` and like the ``Interrupt``
    objects of ``get_workflow_status(id).interrupts`` (which read as ``pause["id"]`` too).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"pending interrupt has no {name!r}; it has {', '.join(map(repr, self))}") from None


def interrupt_id(step: int, task: str, index: int) -> str:
    """The id of the ``index``-th interrupt of ``task`` in ``step``."""
    return f"{step}:{task}:{index}"


_ID_SHAPE = re.compile(r"\d+:.+:\d+")


def looks_like_interrupt_id(key: Any) -> bool:
    """Whether ``key`` has the shape of an interrupt id, ``"<step>:<task>:<index>"``."""
    return isinstance(key, str) and _ID_SHAPE.fullmatch(key) is not None


def read_interrupts(frontier: Mapping[str, Any]) -> tuple[Interrupt, ...]:
    """The pending interrupts stored in a frontier."""
    return tuple(Interrupt.from_dict(item) for item in frontier.get("interrupts") or ())


@dataclass
class _Scratchpad:
    answers: Sequence[Any]
    node: str
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # How many pauses interrupt() raised in this run of the node: any, in a node that returned or
    # raised another error, or more than the one pausing it, were caught by its code (an ``except
    # Exception`` around interrupt()): node_runner warns.
    pauses: int = 0


_scratchpad: contextvars.ContextVar[_Scratchpad | None] = contextvars.ContextVar(
    "distributed_agents_interrupts", default=None)


def resume_scope(answers: Sequence[Any] | None, node: str) -> contextvars.Token[_Scratchpad | None]:
    """Make ``answers`` the values ``interrupt`` returns in the node about to run; reset with the token."""
    return _scratchpad.set(_Scratchpad(list(answers or ()), node))


def reset_scope(token: contextvars.Token[_Scratchpad | None]) -> None:
    """Undo ``resume_scope``."""
    _scratchpad.reset(token)


def interrupt(value: Any) -> Any:
    """Pause the workflow with ``value`` (JSON) shown to the caller; return the answer once resumed.

    Raises ``GraphInterrupt`` (caught by the framework) until the workflow is resumed
    with an answer for this call; then returns that answer. The node re-runs from its
    start when resumed (see the module docstring). ``ExecutionError`` outside a node.
    """
    pad = _scratchpad.get()
    if pad is None:
        raise ExecutionError("interrupt() was called outside a node; call it inside a node function while the "
                             "workflow runs")
    index = pad.calls
    pad.calls += 1
    if index < len(pad.answers):
        return pad.answers[index]
    pad.pauses += 1
    raise GraphInterrupt(value, index)


NO_ANSWER: Any = object()  # resume() without an answer (a breakpoint, or a failed/cancelled workflow)


def _check_answer(workflow_id: str, pause: Interrupt, answer: Any) -> None:
    """``StateNotSerializableError`` unless JSON carries ``answer`` (the resume value for ``pause``) unchanged."""
    from distributed_agents.core.errors import StateNotSerializableError
    from distributed_agents.core.state import JSON_VALUES, non_json_problem

    problem = non_json_problem(answer, "answer")
    if problem is None:
        return
    raise StateNotSerializableError(
        f"resume({workflow_id!r}): the resume value (the answer to interrupt {pause.id!r} of node {pause.node!r} in "
        f"workflow {workflow_id!r}) is not JSON-serialisable: {problem}. An answer is stored with the workflow, "
        f"so it holds only {JSON_VALUES}", key="resume")


def answer_interrupts(workflow_id: str, frontier: Mapping[str, Any], answer: Any) -> dict[str, Any]:
    """``frontier`` of an interrupted workflow with ``answer`` applied, ready to run again.

    ``answer`` answers the one pending ``interrupt()``, or, as a dict keyed by
    interrupt ids, several (unanswered ones pause again); ``NO_ANSWER`` continues past
    static breakpoints. The answers are kept under ``"resume"`` (per task, in call
    order) for the re-run; the pending interrupts are dropped. After a static breakpoint
    (before or after a step) the frontier is marked ``breakpoint_passed``: the step the
    resume runs first does not pause at an ``interrupt_before`` breakpoint. Raises
    ``ConfigurationError`` saying what to pass when the answer does not fit the pauses,
    ``StateNotSerializableError`` for an answer JSON cannot carry.
    """
    from distributed_agents.core.errors import ConfigurationError

    pending = read_interrupts(frontier)
    waiting = [p for p in pending if p.kind == "interrupt"]
    ids = ", ".join(repr(p.id) for p in waiting)
    chosen: list[tuple[Interrupt, Any]] = []
    if answer is NO_ANSWER:
        if waiting:
            raise ConfigurationError(
                f"workflow {workflow_id!r} is paused by interrupt() in node(s) "
                f"{', '.join(sorted({p.node for p in waiting}))} (interrupt id(s) {ids}); answer with "
                f"resume({workflow_id!r}, Command(resume=answer)), or Command(resume={{id: answer}}) for several")
    elif not waiting:
        raise ConfigurationError(
            f"workflow {workflow_id!r} has no interrupt() waiting for an answer (it is paused at a breakpoint, or not "
            f"paused); resume({workflow_id!r}) without an answer")
    elif isinstance(answer, Mapping) and answer and any(key in {p.id for p in waiting} for key in answer):
        by_id = {p.id: p for p in waiting}
        unknown = [key for key in answer if key not in by_id]
        if unknown:
            raise ConfigurationError(
                f"resume({workflow_id!r}): {', '.join(map(repr, unknown))} is not a pending interrupt id; the "
                f"pending ones are {ids}")
        chosen = [(by_id[key], value) for key, value in answer.items()]
    elif isinstance(answer, Mapping) and answer and all(looks_like_interrupt_id(key) for key in answer):
        # Keys shaped like ids but matching none: a typo or a stale id, never an answer.
        named = ", ".join(map(repr, answer))
        verb = "is not a pending interrupt id" if len(answer) == 1 else "are not pending interrupt ids"
        itself = ", or pass the answer itself" if len(waiting) == 1 else ""
        raise ConfigurationError(
            f"resume({workflow_id!r}): {named} {verb} of workflow {workflow_id!r}; the pending ones are {ids}: "
            f"answer by those ids (Command(resume={{id: answer}})){itself}")
    elif len(waiting) == 1:
        chosen = [(waiting[0], answer)]
    else:
        keys = (f"; the answer's keys {', '.join(map(repr, answer))} are not pending ids"
                if isinstance(answer, Mapping) and answer else "")
        raise ConfigurationError(
            f"workflow {workflow_id!r} has {len(waiting)} interrupts pending ({ids}){keys}; answer each by id: "
            f"resume({workflow_id!r}, Command(resume={{interrupt_id: answer, ...}}))")
    answers = {task: list(values) for task, values in (frontier.get("resume") or {}).items()}
    # A subgraph's pauses are answered inside its child workflow, by their ids there;
    # an empty dict continues a child paused at its breakpoints.
    nested: dict[str, dict[str, Any]] = {p.task: {} for p in pending if p.subgraph}
    for pause, value in chosen:
        _check_answer(workflow_id, pause, value)
        if pause.subgraph:
            nested[pause.task][pause.subgraph] = value
        else:
            answers[pause.task] = [*answers.get(pause.task, [])[:pause.index], value]
    updated = {key: value for key, value in frontier.items() if key not in ("interrupts", "subgraph_resume")}
    if answers:
        updated["resume"] = answers
    if nested:
        updated["subgraph_resume"] = nested
    if any(p.kind in ("before", "after") and not p.subgraph for p in pending):
        # As LangGraph's resume: the step it runs first does not pause before it, also after
        # an ``interrupt_after`` pause (that step boundary has paused once already).
        updated["breakpoint_passed"] = True
    return updated
