"""Arguments of the wrong kind get a ConfigurationError naming what was given and what to pass.

The examples (hostile-input trial): ``Graph("e", reducers=["a"])`` raised a bare
AttributeError; ``execute(graph, [1, 2])`` a TypeError about "dictionary update sequence";
``workflow_id=""`` silently ran under a fresh id; ``memory://foo?x=1`` accepted an option
no backend knows; ``redis://host/abc`` silently used database 0.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, Orchestrator
from distributed_agents.core.errors import BackendConfigError, ConfigurationError
from distributed_agents.plugins import open_backend


def _graph() -> Graph:
    return Graph("inputs").add_node("a", lambda s: {"seen": sorted(s)}).set_entry_point("a").set_finish_point("a").compile()


@pytest.mark.parametrize("reducers", [["a"], "append", ("a", "append"), 5, {1: "append"}, {("a",): "append"}])
def test_reducers_that_are_no_mapping_are_refused(reducers: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"graph 'e': reducers must map state keys \(strings\) to reducers .* got "
                                                 rf"{type(reducers).__name__}"):
        Graph("e", reducers=reducers)


@pytest.mark.parametrize("state", [[1, 2], "hello", b"x", ("a", "b"), 5, {"a", "b"}, [("k", "v")], object()])
def test_an_input_state_that_is_no_dict_is_refused_naming_its_type(state: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"the input state of graph 'inputs' must be a dict of state keys "
                                                 rf"\(or None\), got {type(state).__name__}"):
        Orchestrator().invoke(_graph(), state)


def test_a_pydantic_model_instance_is_still_read_as_its_fields() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Question(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        question: str = "q"

    assert Orchestrator().invoke(_graph(), Question())["seen"] == ["question"]


def test_an_empty_workflow_id_is_refused_not_replaced() -> None:
    async def scenario() -> None:
        orchestrator = Orchestrator()
        with pytest.raises(ConfigurationError, match="workflow_id '' must be 1-200 characters"):
            await orchestrator.execute(_graph(), {}, workflow_id="")
        await orchestrator.execute(_graph(), {}, workflow_id="wf-input-errors")
        with pytest.raises(ConfigurationError, match="workflow_id '' must be 1-200 characters"):
            await orchestrator.fork("wf-input-errors:1", workflow_id="")
        assert not [r for r in await orchestrator.list_workflows() if r.workflow_id == ""]

    run(scenario())


@pytest.mark.parametrize("url", ["memory://foo?x=1", "memory://?cluster=true", "memory://?tls_ca=/ca.pem"])
def test_the_memory_backend_refuses_options_it_does_not_know(url: str) -> None:
    with pytest.raises(BackendConfigError, match=r"unknown option\(s\) .* the memory backend takes only"):
        open_backend(url)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/-1", "redis://127.0.0.1/0x1",
                                 "redis://127.0.0.1/?db=x", "redis://127.0.0.1/1234567890"])
def test_a_redis_database_that_is_no_number_is_refused(url: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(BackendConfigError, match="is not a database number"):
        open_backend(url)


@pytest.mark.parametrize("url", ["redis://127.0.0.1/0?max_attempts=2&max_attempts=3",
                                 "memory://?prefix=a&prefix=b", "nats://127.0.0.1:4222?result_ttl=5&result_ttl=5"])
def test_an_option_given_twice_is_refused(url: str) -> None:
    with pytest.raises(BackendConfigError, match="given more than once"):
        open_backend(url)


@pytest.mark.parametrize("url", ["redis://:s3cret@[::1:6379/0", "nats://[::1:4222", "memory://[x"])
def test_an_unparseable_url_is_a_config_error_that_shows_no_secret(url: str) -> None:
    """The trial's example: a ValueError traceback ('Invalid IPv6 URL') from the Python API and the CLI."""
    with pytest.raises(BackendConfigError, match="cannot be parsed .*brackets") as caught:
        open_backend(url)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(BackendConfigError, match="cannot be parsed"):
        run(Orchestrator(backend=url).connect())
