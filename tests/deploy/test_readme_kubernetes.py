"""The README's "Containers and Kubernetes" section is the real deployment, and its pods work.

Every YAML block there is a file of deploy/kubernetes/ (its first line names it) and
is that file, byte for byte. The worker and orchestrator containers then run as their
pods would (command, environment from the manifest and the agents-backend ConfigMap,
the image's /app as working directory), against a real Redis: a workflow submitted
with the README's command runs to its end, both readiness probes answer 200, and
SIGTERM stops both with exit status 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.deploy_files import EXAMPLES, KUBERNETES, ROOT, find
from support.readme import bash_blocks, code_blocks

from distributed_agents import Orchestrator

SECTION = "Containers and Kubernetes"
PATIENCE = 90.0


def test_yaml_blocks_are_the_manifest_files() -> None:
    blocks = [source for language, source in code_blocks(SECTION) if language == "yaml"]
    shown = []
    for block in blocks:
        match = re.match(r"# deploy/kubernetes/([\w.-]+\.yaml)", block)
        assert match, block.splitlines()[0]
        shown.append(match.group(1))
        assert block == (KUBERNETES / match.group(1)).read_text()
    assert shown == ["worker.yaml", "autoscaler.yaml"]


def test_commands_name_the_real_files() -> None:
    commands = "\n".join(bash_blocks(SECTION))
    for path in re.findall(r"(deploy/[\w/.-]+\.(?:yaml|ya?ml)|deploy/Dockerfile)", commands):
        assert (ROOT / path).is_file(), path
    for file in ("redis.yaml", "nats.yaml", "worker.yaml", "orchestrator.yaml", "autoscaler.yaml"):
        assert f"deploy/kubernetes/{file}" in commands
    assert "--scale worker=4" in commands and "--profile redis" in commands and "--profile nats" in commands


def _pod_env(deployment: str, backend_url: str, prefix: str) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of the deployment's container as its pod gets them, on ``backend_url``."""
    (_, manifest), = find("Deployment", deployment)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    (_, config), = [(f, d) for f, d in find("ConfigMap", "agents-backend") if f == "redis.yaml"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DA_", "REDIS_", "NATS_", "BACKEND_"))}
    env.pop("PYTHONPATH", None)
    env.update(config["data"])
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # the pod's own name (fieldRef metadata.name)
            env[item["name"]] = f"{deployment}-7d9f-{uuid.uuid4().hex[:5]}"
    # Only these differ from a cluster: this test's Redis and prefix, and free health and metrics ports.
    assert env["DA_HEALTH_PORT"] == "8080" and env["DA_METRICS_PORT"] == "9464"
    env.update(DA_BACKEND_URL=backend_url, DA_PREFIX=prefix, DA_HEALTH_PORT="0", DA_METRICS_PORT="0",
               DA_LOG_FORMAT="text",
               PATH=f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin")
    return container["command"], env


def _wait(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)


def _ready(log: pathlib.Path) -> bool:
    ports = re.findall(r"health endpoint on port (\d+)", log.read_text())
    if not ports:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/readyz", timeout=10) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_the_pods_run_a_submitted_workflow(redis_url: str, tmp_path: pathlib.Path) -> None:
    app = tmp_path / "app"  # the image's WORKDIR, with what deploy/Dockerfile copies there (APP_DIR)
    shutil.copytree(EXAMPLES, app, ignore=shutil.ignore_patterns("__pycache__"))
    prefix = f"pods{uuid.uuid4().hex[:8]}"
    pods: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, pathlib.Path] = {}
    try:
        for deployment in ("agent-worker", "agent-orchestrator"):
            command, env = _pod_env(deployment, redis_url, prefix)
            logs[deployment] = tmp_path / f"{deployment}.log"
            with open(logs[deployment], "w") as log:
                pods[deployment] = subprocess.Popen(command, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    text=True)
        everything = lambda: "\n".join(f"--- {name}\n{path.read_text()}" for name, path in logs.items())  # noqa: E731
        for deployment in pods:
            _wait(lambda: _ready(logs[deployment]), everything)

        # The README's submit command, from a client (kubectl exec runs it in the orchestrator's container).
        (submit,) = [line for block in code_blocks(SECTION) for line in block[1].splitlines()
                     if "kubectl exec" in line and " submit distributed_workflow:" in line]
        argv = submit.split(" -- ", 1)[1]
        graph, payload = re.match(r"/usr/local/bin/distributed-agents submit (\S+) --input '(.*)'$", argv).groups()  # type: ignore[union-attr]
        _, client_env = _pod_env("agent-orchestrator", redis_url, prefix)
        done = subprocess.run(["distributed-agents", "submit", graph, "--input", payload], cwd=app, env=client_env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        workflow_id = done.stdout.strip()

        async def result() -> Any:
            async with Orchestrator(backend=redis_url, backend_options={"prefix": prefix}) as client:
                return await client.wait(workflow_id, timeout=PATIENCE)

        values = asyncio.run(result())
        assert values["report"] == "Report with 2 findings"
        assert values["researched_by"] == values["written_by"] == pods["agent-worker"].pid
        assert json.loads(json.dumps(values["findings"])) == [f"Finding about {json.loads(payload)['query']}",
                                                              f"Trend in {json.loads(payload)['query']}"]
        for deployment, pod in pods.items():  # what Kubernetes sends when it stops a pod
            pod.send_signal(signal.SIGTERM)
            assert pod.wait(timeout=60) == 0, everything()
        worker_log = logs["agent-worker"].read_text()
        assert "serving ['researcher', 'writer'] (capacity 4)" in worker_log, worker_log
    finally:
        for pod in pods.values():
            if pod.poll() is None:
                pod.kill()
                pod.wait(timeout=10)


def test_the_llm_commands_fit_the_example(monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed_agents.draw import load_graph

    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    lines = [line for block in bash_blocks(SECTION) for line in block.splitlines() if "llm_agents:graph" in line]
    submit = next(line for line in lines if " submit " in line)
    resume = next(line for line in lines if " resume " in line)
    graph = load_graph(re.search(r"submit (\S+) ", submit).group(1))  # type: ignore[union-attr]
    payload = json.loads(re.search(r"--input '(.*)'$", submit).group(1))  # type: ignore[union-attr]
    assert graph.schema is not None and set(payload) <= set(graph.schema.keys)
    assert payload["messages"][0]["role"] == "user"
    assert "--graph llm_agents:graph --value" in resume
    secret = next(block for block in bash_blocks(SECTION) if "create secret generic openai" in block)
    llm_example = (EXAMPLES / "llm_agents.py").read_text()
    for name in re.findall(r"--from-literal=([A-Z_]+)=", secret):
        assert name in llm_example  # a variable the example reads
    (_, worker), = find("Deployment", "agent-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "openai", "optional": True}} in container["envFrom"]


def test_the_compose_settings_for_the_llm_example_fit_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed_agents.cli import load_app

    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    section = (ROOT / "README.md").read_text().split(f"## {SECTION}\n", 1)[1].split("\n## ", 1)[0]
    settings = dict(re.findall(r"\b([A-Z_]+)=(\S+?)[`\s]", section.split("WORKER_APP=llm_agents", 1)[1][:400]))
    settings["WORKER_APP"] = "llm_agents" + re.search(r"WORKER_APP=llm_agents(\S+?)\s", section).group(1)  # type: ignore[union-attr]
    registry = load_app(settings["WORKER_APP"])
    assert set(settings["NODE_TYPES"].split(",")) == set(registry.node_types())
    assert settings["ORCHESTRATOR_APP"] == settings["WORKER_APP"]
    assert "llm" in settings["EXTRAS"].split(",")
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    for name in ("WORKER_APP", "ORCHESTRATOR_APP", "NODE_TYPES", "APP_DIR", "EXTRAS"):
        assert "${" + name + ":-" in compose, name
