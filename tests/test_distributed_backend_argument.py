"""``DistributedOrchestrator``/``DistributedWorker`` take ``backend=`` as ``Orchestrator`` and ``Worker`` do.

``backend=`` used to fall into ``**options``: without an environment URL it was the
misleading "no backend URL: pass redis_url=... or backend_url=...", and with
``REDIS_URL`` set a raw ``TypeError`` (``backend`` given twice to ``Orchestrator``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from support.aio import run

from distributed_agents import Graph, NodeRegistry, open_backend
from distributed_agents.core.errors import ConfigurationError
from distributed_agents.distributed import DistributedOrchestrator, DistributedWorker

pytestmark = pytest.mark.timeout(120)

FACADES = [DistributedOrchestrator, DistributedWorker]
IDS = ["DistributedOrchestrator", "DistributedWorker"]
ELSEWHERE = "redis://127.0.0.1:1/0"  # an environment URL that must not be used (nothing listens there)


@pytest.fixture
def no_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKEND_URL", "REDIS_URL", "NATS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
@pytest.mark.parametrize("environment", [None, "REDIS_URL", "BACKEND_URL"])
def test_backend_keyword_is_the_backend_whatever_the_environment_says(
    facade: Any, environment: str | None, monkeypatch: pytest.MonkeyPatch, no_environment_url: None,
) -> None:
    if environment is not None:
        monkeypatch.setenv(environment, ELSEWHERE)
    made = facade(backend="nats://127.0.0.1:4222")
    assert made._backend_arg == "nats://127.0.0.1:4222"


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_backend_keyword_takes_an_opened_backend(facade: Any, no_environment_url: None) -> None:
    backend = open_backend("redis://127.0.0.1:1/0")
    made = facade(backend=backend)
    assert made._backend is backend and not made._owns_backend


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_the_same_url_given_twice_is_accepted(facade: Any, no_environment_url: None) -> None:
    url = "redis://127.0.0.1:1/0"
    assert facade(redis_url=url, backend=url)._backend_arg == url
    assert facade(backend_url=url, backend=url)._backend_arg == url


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
@pytest.mark.parametrize("arguments, names", [
    ({"redis_url": "redis://a:1/0", "backend": "nats://b:2"}, ("redis_url='redis://a:1/0'", "backend='nats://b:2'")),
    ({"backend_url": "redis://a:1/0", "backend": "redis://a:1/1"}, ("backend_url=", "backend=")),
    ({"redis_url": "redis://a:1/0", "backend_url": "nats://b:2"}, ("redis_url=", "backend_url=")),
])
def test_two_arguments_naming_different_backends_are_a_configuration_error(
    facade: Any, arguments: dict[str, Any], names: tuple[str, ...], no_environment_url: None,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        facade(**arguments)
    message = str(caught.value)
    assert message.startswith(f"{facade.__name__}: ") and "name different backends" in message
    assert all(name in message for name in names), message


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_a_url_and_an_opened_backend_conflict_with_the_password_masked(facade: Any, no_environment_url: None) -> None:
    with pytest.raises(ConfigurationError, match="name different backends") as caught:
        facade(redis_url="redis://user:hunter2@a:1/0", backend=open_backend("redis://127.0.0.1:1/0"))
    assert "hunter2" not in str(caught.value) and "RedisBackend" in str(caught.value)


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_an_in_process_backend_is_refused_as_a_url_or_an_opened_backend(facade: Any) -> None:
    for backend in ("memory://", open_backend("memory://")):
        with pytest.raises(ConfigurationError, match="inside one process"):
            facade(backend=backend)


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_bad_backend_arguments_name_the_facade(facade: Any, no_environment_url: None) -> None:
    name = facade.__name__
    with pytest.raises(ConfigurationError, match=rf"{name}\(backend=\.\.\.\) takes a backend URL string or a Backend"):
        facade(backend=3)
    with pytest.raises(ConfigurationError, match=f"{name}: no backend: pass backend="):
        facade()
    with pytest.raises(ConfigurationError, match="got RedisBackend; pass an opened Backend as backend="):
        facade(open_backend("redis://127.0.0.1:1/0"))
    with pytest.raises(ConfigurationError, match="redis_url must be a backend URL.*registry="):
        facade(NodeRegistry())


@pytest.mark.parametrize("facade", FACADES, ids=IDS)
def test_backend_options_come_as_keywords_or_as_backend_options(facade: Any, no_environment_url: None) -> None:
    """``backend_options=`` used to reach the base class twice (a raw TypeError)."""
    url = "redis://127.0.0.1:1/0"
    made = facade(backend=url, prefix="p", backend_options={"state_ttl": 5})
    assert made._backend_options == {"prefix": "p", "state_ttl": 5}
    with pytest.raises(ConfigurationError, match="prefix='a' and backend_options=.*differ"):
        facade(backend=url, prefix="a", backend_options={"prefix": "b"})
    with pytest.raises(ConfigurationError, match=r"backend options \(prefix\) cannot apply to an opened Backend"):
        facade(backend=open_backend(url), prefix="p")


def test_the_orchestrator_refuses_switching_off_what_makes_it_distributed(no_environment_url: None) -> None:
    """``local_nodes=``/``wait_for_workers=`` used to reach the base class twice (a raw TypeError)."""
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ConfigurationError, match=r"always runs with local_nodes=False .*Orchestrator\(backend=url\)"):
        DistributedOrchestrator(backend=url, local_nodes=True)
    with pytest.raises(ConfigurationError, match="always runs with wait_for_workers=True"):
        DistributedOrchestrator(backend=url, wait_for_workers=False)
    made = DistributedOrchestrator(backend=url, local_nodes=False, wait_for_workers=True)  # what it does anyway
    assert not made.local_nodes and made.wait_for_workers


@pytest.mark.parametrize("server", ["redis_url", "nats_url"])
def test_a_workflow_runs_end_to_end_with_backend_given_as_the_readme_gives_it_to_orchestrator(
    server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orchestrator and worker on ``backend=``; an environment URL elsewhere is ignored."""
    url = str(request.getfixturevalue(server))
    monkeypatch.setenv("REDIS_URL", ELSEWHERE)
    prefix = f"bk{uuid.uuid4().hex[:8]}"
    registry = NodeRegistry()

    @registry.register("double")
    async def double(state: Any) -> dict[str, Any]:
        return {"value": state["value"] * 2}

    graph = Graph("backend_kw").add_node("double").set_entry_point("double").set_finish_point("double").compile()

    async def scenario() -> Any:
        worker = DistributedWorker(backend=url, node_types={"double"}, registry=registry, prefix=prefix,
                                   handle_signals=False, poll_wait=0.1)
        orchestrator = DistributedOrchestrator(backend=url, prefix=prefix)
        serving = asyncio.ensure_future(worker.start())
        try:
            return await orchestrator.execute(graph, {"value": 21})
        finally:
            await worker.stop(grace=1)
            await serving
            await orchestrator.close()

    assert run(scenario(), timeout=60)["value"] == 42
