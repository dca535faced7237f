"""quick_init: the faster __init__ of the step loop's frozen dataclasses behaves as dataclass's own."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, strategies as st

from distributed_agents.core.executors import NodeCall, NodeOutcome
from distributed_agents.core.frontier import TaskEntry
from distributed_agents.core.node_runner import NodeContext
from distributed_agents.core.ports.state_store import Checkpoint
from distributed_agents.core.ports.task_queue import Task
from distributed_agents.core.quick_init import quick_init
from distributed_agents.core.types import NodeResult


def _shape() -> dict[str, Any]:
    return {"__annotations__": {"node": "str", "index": "int | None", "handles": "list[str]",
                                "state_ref": "Any", "hidden": "list[int]"},
            "index": None, "handles": field(default_factory=list),
            "state_ref": field(default=None, kw_only=True),
            "hidden": field(default_factory=list, init=False, compare=False)}


Quick = quick_init(dataclass(frozen=True)(type("Quick", (), _shape())))
Plain = dataclass(frozen=True)(type("Quick", (), _shape()))


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("n",), {}), (("n", 1), {}), (("n", 1, ["a"]), {"state_ref": {"k": 1}}), ((), {"node": "n", "index": 2}),
    # refused, with the same kind of error
    ((), {}), (("n", 1, [], 4), {}), (("n",), {"node": "m"}), (("n",), {"hidden": [1]}), (("n",), {"other": 1}),
    (("n", 1, [], None), {}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_same_objects_and_same_refusals_as_the_generated_init(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        expected: Any = dataclasses.asdict(Plain(*args, **kwargs))
    except TypeError:
        with pytest.raises(TypeError):
            Quick(*args, **kwargs)
        return
    made = Quick(*args, **kwargs)
    assert dataclasses.asdict(made) == expected
    assert made == Quick(*args, **kwargs)


def test_factories_run_per_instance_frozen_hash_replace_pickle_and_signature() -> None:
    one, two = Quick("n"), Quick("n")
    assert one.handles == [] and one.handles is not two.handles and one.hidden is not two.hidden
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.node = "m"  # type: ignore[misc]
    assert dataclasses.replace(Quick("n", 1), index=3) == Quick("n", 3)
    assert pickle.loads(pickle.dumps(Quick("n", 1, ["a"]))) == Quick("n", 1, ["a"])
    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))


def test_refuses_what_it_cannot_reproduce() -> None:
    @dataclass(frozen=True)
    class WithInitVar:
        a: int
        b: dataclasses.InitVar[int] = 0

    @dataclass
    class NotFrozen:
        a: int

    @dataclass(frozen=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (WithInitVar, NotFrozen, PostInit):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


@given(node=st.text(max_size=5), index=st.none() | st.integers(), handles=st.lists(st.text(max_size=3), max_size=3))
def test_step_loop_classes_hash_and_compare_as_before(node: str, index: int | None, handles: list[str]) -> None:
    entry = TaskEntry(node, index)
    assert entry == TaskEntry(node=node, index=index) and hash(entry) == hash(TaskEntry(node, index))
    assert Quick(node, index, handles) == Quick(node, index, list(handles))


def test_every_step_loop_class_keeps_its_defaults() -> None:
    call = NodeCall(workflow_id="w", graph_name="g", step=1, node="n", node_type="function", task_id="t",
                    state_json=b"{}")
    assert call.retry is None and call.priority == 0 and call.message_keys == () and call.state is None
    outcome = NodeOutcome("n", "t", None, None, 1, 0.0, 0.0)
    assert outcome.worker_id == "" and outcome.cached is False and outcome.ok
    context = NodeContext("w", 1, "n", "function", 1, "t")
    assert context.worker_id == "" and context._cancel == [] and context._cancel is not \
        NodeContext("w", 1, "n", "function", 1, "t")._cancel
    checkpoint = Checkpoint("w", 1, {"a": 1})
    assert checkpoint.frontier == {} and checkpoint.writes == {} and isinstance(checkpoint.created_at, float)
    assert NodeResult({}, []).interrupt is None and NodeResult({}, []).parent is False
    task = Task("t", "w", "n", "function", {"state": {}})
    assert task.priority == 0 and task.max_attempts is None and isinstance(task.created_at, float)
    assert Task(id="t", workflow_id="w", node="n", node_type="function", payload={}, created_at=5.0).created_at == 5.0
    assert dataclasses.replace(task, priority=3) == Task("t", "w", "n", "function", {"state": {}}, 3, None,
                                                         task.created_at)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.priority = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Task("t", "w", "n", "function")  # type: ignore[call-arg]


def test_a_hand_written_init_is_kept_when_it_takes_exactly_the_fields_and_refused_otherwise() -> None:
    from distributed_agents.core.quick_init import FACTORY

    @quick_init
    @dataclass(frozen=True)
    class Own:
        a: int
        b: list[int] = field(default_factory=list)
        c: str = field(default="x", kw_only=True)

        def __init__(self, a: int, b: list[int] = FACTORY, *, c: str = "x") -> None:
            self.__dict__.update({"a": a, "b": [] if b is FACTORY else b, "c": c})

    assert Own(1) == Own(1, [], c="x") and Own(1).b is not Own(1).b

    def missing(self: Any, a: int) -> None:
        pass

    def wrong_default(self: Any, a: int, b: list[int] = FACTORY, *, c: str = "y") -> None:
        pass

    def not_keyword_only(self: Any, a: int, b: list[int] = FACTORY, c: str = "x") -> None:
        pass

    for init in (missing, wrong_default, not_keyword_only):
        shape = {"__annotations__": {"a": "int", "b": "list[int]", "c": "str"},
                 "b": field(default_factory=list), "c": field(default="x", kw_only=True), "__init__": init}
        with pytest.raises(TypeError, match="does not match its fields"):
            quick_init(dataclass(frozen=True)(type("Own", (), shape)))
