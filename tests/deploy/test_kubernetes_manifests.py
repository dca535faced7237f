"""deploy/kubernetes/: valid against the Kubernetes schemas, and consistent with the code they run.

Every built-in object is validated (strictly: no unknown fields) with
``kubernetes-validate`` against the schemas it ships for the versions below. The KEDA
ScaledObject (a custom resource those schemas do not have) is checked against what it
points at: the worker Deployment, the orchestrator Service and the ``/queues`` answer.
The containers run real ``distributed-agents`` commands with flags and environment
variables those commands read, probe routes the health endpoint serves, and modules
and node types that exist.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
from support.deploy_files import EXAMPLES, KUBERNETES, cli_commands, find, help_env, help_flags, manifests

# The oldest minor version still maintained by the big cloud providers, and a recent one.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
CUSTOM_KINDS = {"ScaledObject"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [(file, doc) for file, docs in manifests().items() for doc in docs]


def test_every_file_holds_manifests() -> None:
    files = manifests()
    assert set(files) == {"redis.yaml", "nats.yaml", "worker.yaml", "orchestrator.yaml", "autoscaler.yaml"}
    assert all(files.values())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_validate_against_the_schemas(version: str) -> None:
    checked = 0
    for file, doc in _documents():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file}: {doc['kind']} {doc['metadata']['name']} is invalid for Kubernetes {version}: "
                        f"{exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 8


def test_the_validator_catches_a_broken_deployment() -> None:
    (_, worker), = find("Deployment", "agent-worker")
    broken = {**worker, "spec": {**worker["spec"], "terminationGracePeriod": 45}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def _container(name: str) -> dict[str, Any]:
    (_, deployment), = find("Deployment", name)
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def _backend_configs() -> dict[str, dict[str, str]]:
    return {file: doc["data"] for file, doc in find("ConfigMap", "agents-backend")}


@pytest.mark.parametrize("deployment", ["agent-worker", "agent-orchestrator"])
def test_containers_run_real_commands_with_flags_and_variables_they_read(deployment: str) -> None:
    container = _container(deployment)
    program, command, *flags = [*container["command"], *container.get("args", [])]
    assert program == "distributed-agents"
    assert command in cli_commands()
    assert {f.split("=")[0] for f in flags if f.startswith("--")} <= help_flags(command)
    read = help_env(command)
    assert set(_env(container)) <= read, set(_env(container)) - read
    configs = [ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref]
    assert configs == ["agents-backend"]
    for file, data in _backend_configs().items():
        assert set(data) <= read, (file, set(data) - read)


def test_both_backends_give_the_same_configmap_pointing_at_their_service() -> None:
    configs = _backend_configs()
    assert set(configs) == {"redis.yaml", "nats.yaml"}
    assert {tuple(sorted(data)) for data in configs.values()} == {("DA_BACKEND_URL", "DA_PREFIX")}
    for file, data in configs.items():
        url = urlsplit(data["DA_BACKEND_URL"])
        assert url.scheme == file.removesuffix(".yaml")
        services = [doc for f, doc in find("Service") if f == file]
        (service,) = services
        assert url.hostname == service["metadata"]["name"]
        assert url.port in [p["port"] for p in service["spec"]["ports"]]
        (_, statefulset), = [(f, d) for f, d in find("StatefulSet") if f == file]
        assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("deployment", ["agent-worker", "agent-orchestrator"])
def test_probes_use_the_health_endpoint_on_the_port_the_process_serves(deployment: str) -> None:
    from distributed_agents.health import HealthServer

    async def ready() -> None:
        return None

    served = set(HealthServer(0, ready=ready)._checks)
    container = _container(deployment)
    port = int(_env(container)["DA_HEALTH_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in served, (probe, get)
        assert ports[get["port"]] == port, (probe, get)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_worker_termination_grace_outlasts_its_drain() -> None:
    (_, worker), = find("Deployment", "agent-worker")
    env = _env(_container("agent-worker"))
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The drain: SHUTDOWN_GRACE for running tasks, then giving back the rest, flushing streams
    # (core.worker.STREAM_FLUSH_TIMEOUT) and deregistering.
    from distributed_agents.core.worker import STREAM_FLUSH_TIMEOUT

    assert grace >= float(env["SHUTDOWN_GRACE"]) + STREAM_FLUSH_TIMEOUT + 5


def test_the_modules_and_node_types_named_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed_agents.cli import load_app
    from distributed_agents.draw import load_graph

    monkeypatch.chdir(EXAMPLES)  # the image's /app: deploy/Dockerfile copies examples/ there
    monkeypatch.syspath_prepend(str(EXAMPLES))
    worker = _env(_container("agent-worker"))
    registry = load_app(worker["DA_APP"])
    served = set(worker["NODE_TYPES"].split(","))
    assert served <= set(registry.node_types())
    graph = load_graph(_env(_container("agent-orchestrator"))["DA_APP"])
    assert {spec.node_type for spec in graph.nodes.values()} == served  # every node has its workers


def test_autoscaler_reads_the_backlog_the_orchestrator_serves() -> None:
    from distributed_agents.orchestrator_service import queue_backlog
    from distributed_agents.plugins import open_backend

    (_, scaled), = find("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert find("Deployment", spec["scaleTargetRef"]["name"])
    assert 1 <= spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "metrics-api"
    meta = trigger["metadata"]
    url = urlsplit(meta["url"])
    (_, service), = find("Service", url.hostname.split(".")[0])
    assert url.hostname.endswith(".svc.cluster.local")  # KEDA calls it from its own namespace
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"] == {"app": "agent-orchestrator"}
    assert url.path == "/queues"
    worker = _env(_container("agent-worker"))
    assert parse_qs(url.query)["node_types"] == [worker["NODE_TYPES"]]
    assert float(meta["targetValue"]) == float(worker["CAPACITY"])  # one worker per CAPACITY tasks

    async def answer() -> dict[str, Any]:
        backend = open_backend("memory://autoscaler-test")
        await backend.connect()
        try:
            return await queue_backlog(backend, worker["NODE_TYPES"].split(","))
        finally:
            await backend.close()

    body = asyncio.run(answer())
    value = body
    for part in meta["valueLocation"].split("."):  # GJSON paths of plain keys are dotted
        value = value[part]
    assert value == 0 and math.isfinite(value)


def test_manifest_files_say_what_they_are() -> None:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert re.match(rf"# deploy/kubernetes/{re.escape(path.name)}: ", first), (path.name, first)


@pytest.mark.parametrize("deployment", ["agent-worker", "agent-orchestrator"])
def test_metrics_are_served_where_the_annotations_say(deployment: str) -> None:
    from support.deploy_files import DEPLOY

    (_, manifest), = find("Deployment", deployment)
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    container = _container(deployment)
    port = _env(container)["DA_METRICS_PORT"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
    assert ports["metrics"] == int(port)
    assert "DA_METRICS_PORT" in help_env(container["command"][1])
    # The image has prometheus-client: the [metrics] extra is among the Dockerfile's default EXTRAS.
    (extras,) = re.findall(r"^ARG EXTRAS=(\S+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert "metrics" in extras.split(",")
