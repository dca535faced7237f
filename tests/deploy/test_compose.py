"""deploy/compose.yaml: it parses, and its services run real commands with what those commands read.

Docker is not needed: the file is read with PyYAML (merge keys included, as Compose
does), and each service is checked against the CLI's parser and help and against
deploy/Dockerfile.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml
from support.deploy_files import DEPLOY, EXAMPLES, ROOT, cli_commands, help_env, help_flags

COMPOSE = DEPLOY / "compose.yaml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _default(value: str) -> str:
    """``${NAME:-default}`` as Compose resolves it with NAME unset; plain text as is."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_and_profiles() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "nats", "orchestrator", "worker"}
    assert services["redis"]["profiles"] == ["redis"] and services["nats"]["profiles"] == ["nats"]
    for name in ("orchestrator", "worker"):
        service = services[name]
        assert "profiles" not in service
        assert "deploy" not in service and "container_name" not in service  # --scale needs neither
        assert service["init"] is True  # SIGTERM reaches the command even while it starts
        for backend in ("redis", "nats"):  # only the chosen profile's backend exists
            assert service["depends_on"][backend] == {"condition": "service_healthy", "required": False}


def test_agents_run_real_commands_with_variables_they_read() -> None:
    services = _compose()["services"]
    for name in ("orchestrator", "worker"):
        service = services[name]
        command, *flags = service["command"]
        assert command == name and command in cli_commands()
        assert {f for f in flags if f.startswith("--")} <= help_flags(command)
        env = service["environment"]
        ours = {key for key in env if not key.startswith("OPENAI_")}
        assert ours <= help_env(command), ours - help_env(command)
    llm_example = (EXAMPLES / "llm_agents.py").read_text()
    for key in services["worker"]["environment"]:
        if key.startswith("OPENAI_"):
            assert key in llm_example  # read by the LLM example's nodes
            assert services["worker"]["environment"][key] is None  # passed through from the shell, if set


def test_default_backend_url_names_the_redis_service() -> None:
    services = _compose()["services"]
    url = urlsplit(_default(services["worker"]["environment"]["DA_BACKEND_URL"]))
    assert url.scheme == "redis" and url.hostname == "redis"
    assert services["orchestrator"]["environment"]["DA_BACKEND_URL"] == services["worker"]["environment"]["DA_BACKEND_URL"]
    assert "nats://nats:4222" in COMPOSE.read_text()  # the documented NATS choice names the nats service
    assert "-js" in services["nats"]["command"]


def test_build_and_healthchecks() -> None:
    services = _compose()["services"]
    for name in ("orchestrator", "worker"):
        service = services[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert (ROOT / _default(build["args"]["APP_DIR"])).is_dir()
        port = service["environment"]["DA_HEALTH_PORT"]
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check


def test_worker_stop_grace_outlasts_its_drain() -> None:
    worker = _compose()["services"]["worker"]
    grace = int(worker["stop_grace_period"].removesuffix("s"))
    assert grace >= float(worker["environment"]["SHUTDOWN_GRACE"]) + 10


def test_the_apps_named_exist(monkeypatch: Any) -> None:
    from distributed_agents.cli import load_app
    from distributed_agents.draw import load_graph

    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    services = _compose()["services"]
    worker = services["worker"]["environment"]
    registry = load_app(_default(worker["DA_APP"]))
    served = set(_default(worker["NODE_TYPES"]).split(","))
    assert served <= set(registry.node_types())
    graph = load_graph(_default(services["orchestrator"]["environment"]["DA_APP"]))
    assert {spec.node_type for spec in graph.nodes.values()} <= served
